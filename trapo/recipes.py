"""Method names → training phases: the one place where ``trapo``, ``grpo``, ``sft``, ``sft-then-grpo``, … become
trainers (docs/method.md, "Baselines"). `trapo train` and `trapo demo` both run methods through `train_method`.

- RL methods (`trapo.config.RL_PRESETS`) are one `TRAPOTrainer` run with ``TRAPOConfig(method=...)``;
- ``sft`` is one `trapo.sft.TrSFTTrainer` run on the expert traces;
- ``sft-then-grpo`` is SFT, then GRPO on the same model.
"""

from __future__ import annotations

from collections.abc import Callable

from trapo.checkpointing import last_complete_checkpoint
from trapo.config import RL_PRESETS
from trapo.sft import TRAPOSFTConfig, sft_trainer

PhaseHook = Callable[[str, object], None]

SFT_METHODS = ("sft", "sft-then-grpo")
METHODS = (*RL_PRESETS, *SFT_METHODS)


def phases(method: str) -> tuple[str, ...]:
    """The phases ``method`` runs, in order: ``"sft"`` (TrSFTTrainer) and/or ``"rl"`` (TRAPOTrainer)."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    return {"sft": ("sft",), "sft-then-grpo": ("sft", "rl")}.get(method, ("rl",))


def rl_method(method: str) -> str:
    """The `TRAPOConfig.method` of ``method``'s RL phase (``sft-then-grpo`` runs plain GRPO)."""
    return "grpo" if method == "sft-then-grpo" else method


def train_sft_then_grpo(
    model,
    tokenizer,
    dataset,
    reward_funcs,
    sft_args: TRAPOSFTConfig,
    grpo_args,
    save_final: bool = False,
    resume=None,
    callbacks: list | None = None,
    on_phase_start: PhaseHook | None = None,
    on_phase_end: PhaseHook | None = None,
):
    """The SFT→RL baseline: SFT on the expert traces, then GRPO (`TRAPOTrainer`, method="grpo") on the same model.

    ``resume=True`` continues where a killed run stopped: in the GRPO phase when it has a complete checkpoint (the
    SFT phase is then skipped: the checkpoint holds the weights), otherwise in the SFT phase.
    """
    if grpo_args.method != "grpo":
        raise ValueError(f"the RL phase of sft-then-grpo is plain GRPO: set method='grpo', got {grpo_args.method!r}")
    # accelerate keeps one AcceleratorState per process: the second phase cannot change the first's precision or
    # device, and would only fail after the whole SFT phase has run.
    differ = [k for k in ("bf16", "fp16", "use_cpu") if getattr(sft_args, k) != getattr(grpo_args, k)]
    if differ:
        raise ValueError(f"sft_args and grpo_args must agree on {differ}: both phases share one accelerate state")
    hooks = (on_phase_start, on_phase_end)
    rl_resume, sft_resume = resume, None
    if resume is True:
        rl_resume = True if last_complete_checkpoint(grpo_args.output_dir) else None
        sft_resume = True if rl_resume is None and last_complete_checkpoint(sft_args.output_dir) else None
    if rl_resume is None:
        model = _run_sft(model, tokenizer, dataset, sft_args, save_final, sft_resume, callbacks, hooks)
    return _run_rl(model, tokenizer, dataset, reward_funcs, grpo_args, save_final, rl_resume, callbacks, hooks)


def train_method(
    method: str,
    model,
    tokenizer,
    dataset,
    reward_funcs: Callable | list[Callable] | None = None,
    *,
    sft_args: TRAPOSFTConfig | None = None,
    rl_args=None,
    save_final: bool = False,
    resume: bool | str | None = None,
    callbacks: list | None = None,
    on_phase_start: PhaseHook | None = None,
    on_phase_end: PhaseHook | None = None,
):
    """Run any method by name (`METHODS`) and return the trained model.

    ``save_final`` saves each phase's final model and tokenizer to its ``output_dir`` (``trapo train`` does).
    ``resume``: True resumes from the last complete checkpoint in the output folder, a path from that checkpoint.
    ``callbacks`` are given to every phase's trainer; ``on_phase_start(phase, trainer)`` is called with each phase's
    trainer (``"sft"`` or ``"rl"``) before it trains, ``on_phase_end(phase, trainer)`` after, e.g. to read its
    ``log_history`` or ``rollout_stats``.
    """
    steps = phases(method)
    if "sft" in steps and sft_args is None:
        raise ValueError(f"method {method!r} needs sft_args=TRAPOSFTConfig(...)")
    if "rl" in steps and (rl_args is None or reward_funcs is None):
        raise ValueError(f"method {method!r} needs rl_args=TRAPOConfig(method=...) and reward_funcs")
    if "rl" in steps and rl_args.method != rl_method(method):
        raise ValueError(f"rl_args.method is {rl_args.method!r} but method {method!r} was asked for")
    hooks = (on_phase_start, on_phase_end)
    if method == "sft":
        return _run_sft(model, tokenizer, dataset, sft_args, save_final, resume, callbacks, hooks)
    if method == "sft-then-grpo":
        return train_sft_then_grpo(
            model, tokenizer, dataset, reward_funcs, sft_args, rl_args, save_final, resume, callbacks, *hooks
        )
    return _run_rl(model, tokenizer, dataset, reward_funcs, rl_args, save_final, resume, callbacks, hooks)


def _run_sft(model, tokenizer, dataset, args, save_final, resume, callbacks, hooks):
    trainer = sft_trainer(model, tokenizer, dataset, args, callbacks=callbacks)
    return _train_phase("sft", trainer, save_final, resume, hooks)


def _run_rl(model, tokenizer, dataset, reward_funcs, args, save_final, resume, callbacks, hooks):
    from trapo.trainer import TRAPOTrainer

    trainer = TRAPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=args,
        train_dataset=dataset,
        processing_class=tokenizer,
        callbacks=callbacks,
    )
    return _train_phase("rl", trainer, save_final, resume, hooks)


def _train_phase(phase: str, trainer, save_final: bool, resume, hooks: tuple):
    on_start, on_end = hooks
    if on_start is not None:
        on_start(phase, trainer)
    trainer.train(resume_from_checkpoint=resume)
    if save_final:
        trainer.save_model()
    if on_end is not None:
        on_end(phase, trainer)
    return trainer.model
