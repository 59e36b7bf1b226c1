"""Every method by name: the one table of methods (`METHODS`), what each is, the phases it trains and the config values
that make it (docs/method.md, "Baselines"). `trapo train`, `trapo demo`, `trapo bench` and `TRAPOConfig(method=...)`
all read it; `train_method` runs any of them.

- RL methods (``rl`` values) are one `TRAPOTrainer` run with ``TRAPOConfig(method=...)``; the values fill every
  setting the user did not set;
- SFT methods (``sft`` values) are one `trapo.sft.TrSFTTrainer` run on the expert traces;
- ``then`` names the RL method trained after the SFT phase, on the same model (``sft-then-grpo``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from trapo.core.schedule import PAPER_SCHEDULE, MicroGroup, always_guided, schedule_as_data

PhaseHook = Callable[[str, object], None]


@dataclass(frozen=True)
class Method:
    """One method: a name, one line on what it is, and the config values of its phases."""

    name: str
    summary: str
    rl: dict | None = None  # TRAPOConfig values of an RL method
    sft: dict | None = None  # TRAPOSFTConfig values of an SFT phase
    then: str | None = None  # the RL method trained after the SFT phase

    @property
    def phases(self) -> tuple[str, ...]:
        """The phases, in order: ``"sft"`` (TrSFTTrainer) and/or ``"rl"`` (TRAPOTrainer)."""
        return ("sft",) * (self.sft is not None) + ("rl",) * (self.rl is not None or self.then is not None)


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method(
            "trapo",
            "adaptive micro-groups (4/2/1/1, prefixes 0/25/50/100%) + TrSFT on each distinct prefix",
            rl={"schedule": PAPER_SCHEDULE, "prefix_loss": "trsft"},
        ),
        Method("grpo", "one stage of `num_generations` unguided samples, Dr. GRPO loss", rl={"prefix_loss": "none"}),
        Method(
            "fixed-prefix",
            "the same stages, every guided stage fires whatever the rewards (no adaptivity; not in the paper)",
            rl={"schedule": always_guided(PAPER_SCHEDULE), "prefix_loss": "trsft"},
        ),
        Method(
            "context-only",
            "micro-groups, prefixes are context only (no loss on them; the paper's ablation)",
            rl={"schedule": PAPER_SCHEDULE, "prefix_loss": "none"},
        ),
        Method(
            "naive-sft",
            "micro-groups + plain NLL on prefixes (the paper's collapsing ablation)",
            rl={"schedule": PAPER_SCHEDULE, "prefix_loss": "nll"},
        ),
        Method(
            "luffy",
            "7 on-policy samples + 1 full expert trace with advantage-weighted `p/(p+γ)` shaping",
            rl={
                "schedule": (MicroGroup(7), MicroGroup(1, 1.0, float("inf"))),
                "prefix_loss": "luffy",
                "prefix_weight": "advantage",
                "second_trace_for_full": False,
            },
        ),
        Method(
            "imitation-only",
            "TRAPO's micro-groups and TrSFT on the prefixes, without the policy-gradient term (a control)",
            rl={"schedule": PAPER_SCHEDULE, "prefix_loss": "trsft", "pg_weight": 0.0},
        ),
        Method(
            "relift",
            "GRPO, plus one SFT step on the expert traces of the prompts it failed on every sample, whenever a batch "
            "of them has gathered (ReLIFT)",
            rl={"prefix_loss": "none", "relift": True},
        ),
        Method("sft", "SFT on the expert traces (TRL's SFTTrainer, NLL)", sft={"sft_loss": "nll"}),
        Method(
            "sft-trsft",
            "SFT on the whole expert traces with the trust-region loss, no RL (a control: the loss without the method)",
            sft={"sft_loss": "trsft"},
        ),
        Method("sft-then-grpo", "`sft`, then `grpo` on the same model", sft={"sft_loss": "nll"}, then="grpo"),
    )
}
RL_METHODS = tuple(name for name, m in METHODS.items() if m.rl is not None)
RL_DEFAULTS = {
    "prefix_weight": "one",
    "second_trace_for_full": True,
    "pg_weight": 1.0,
    "relift": False,
}  # what a preset leaves


def method(name: str) -> Method:
    """The `Method` called ``name``; a clear error naming the choices otherwise."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {', '.join(METHODS)}")
    return METHODS[name]


def phases(name: str) -> tuple[str, ...]:
    """The phases method ``name`` runs, in order: ``"sft"`` (TrSFTTrainer) and/or ``"rl"`` (TRAPOTrainer)."""
    return method(name).phases


def rl_method(name: str) -> str:
    """The `TRAPOConfig.method` of ``name``'s RL phase (``sft-then-grpo`` runs plain GRPO)."""
    return method(name).then or name


def rl_preset(name: str, num_generations: int) -> dict:
    """The `TRAPOConfig` values of RL method ``name``; one unguided stage of ``num_generations`` unless it has a
    schedule."""
    m = METHODS.get(name)
    if m is None or m.rl is None:
        hint = f" ({name} has an SFT phase: run it with trapo.recipes.train_method or `trapo train`)" if m else ""
        raise ValueError(f"unknown method {name!r} for TRAPOTrainer; choose one of {', '.join(RL_METHODS)}{hint}")
    values = {**RL_DEFAULTS, **m.rl}
    values["schedule"] = schedule_as_data(values.get("schedule") or (MicroGroup(num_generations),))
    return values


def sft_preset(name: str) -> dict:
    """The `TRAPOSFTConfig` values of method ``name``'s SFT phase (empty when it has none)."""
    return dict(method(name).sft or {})


def _train_sft_then_rl(
    model, tokenizer, dataset, reward_funcs, sft_args, rl_args, save_final, resume, callbacks, hooks, rl_dataset=None
):
    """SFT on the expert traces, then the RL phase (`TRAPOTrainer`) on the same model (``sft-then-grpo``), on
    ``rl_dataset`` when given (LUFFY's SFT→RL trains it on held-out problems), else on the same rows.

    ``resume=True`` continues where a killed run stopped: in the RL phase when it has a complete checkpoint (the
    SFT phase is then skipped: the checkpoint holds the weights), otherwise in the SFT phase.
    """
    # accelerate keeps one AcceleratorState per process: the second phase cannot change the first's precision or
    # device, and would only fail after the whole SFT phase has run.
    differ = [k for k in ("bf16", "fp16", "use_cpu") if getattr(sft_args, k) != getattr(rl_args, k)]
    if differ:
        raise ValueError(f"sft_args and rl_args must agree on {differ}: both phases share one accelerate state")
    rl_resume, sft_resume = resume, None
    if resume is True:
        from trapo.checkpointing import last_complete_checkpoint

        rl_resume = True if last_complete_checkpoint(rl_args.output_dir) else None
        sft_resume = True if rl_resume is None and last_complete_checkpoint(sft_args.output_dir) else None
    if rl_resume is None:
        model = _run_sft(model, tokenizer, dataset, sft_args, save_final, sft_resume, callbacks, hooks)
    rl_rows = dataset if rl_dataset is None else rl_dataset
    return _run_rl(model, tokenizer, rl_rows, reward_funcs, rl_args, save_final, rl_resume, callbacks, hooks)


def train_method(
    method: str,
    model,
    tokenizer,
    dataset,
    reward_funcs: Callable | list[Callable] | None = None,
    *,
    sft_args=None,
    rl_args=None,
    save_final: bool = False,
    resume: bool | str | None = None,
    callbacks: list | None = None,
    on_phase_start: PhaseHook | None = None,
    on_phase_end: PhaseHook | None = None,
    rl_dataset=None,
):
    """Run any method by name (`METHODS`) and return the trained model.

    ``rl_dataset``: the RL phase's rows of a two-phase method (``sft-then-grpo``); None trains both on ``dataset``.

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
    for key, value in sft_preset(method).items():
        if getattr(sft_args, key) != value:
            raise ValueError(f"method {method!r} trains with {key}={value!r}; sft_args has {getattr(sft_args, key)!r}")
    hooks = (on_phase_start, on_phase_end)
    if rl_dataset is not None and steps != ("sft", "rl"):
        raise ValueError(f"rl_dataset is for a method with an SFT and an RL phase; {method!r} trains on dataset")
    if steps == ("sft",):
        return _run_sft(model, tokenizer, dataset, sft_args, save_final, resume, callbacks, hooks)
    if steps == ("sft", "rl"):
        return _train_sft_then_rl(
            model, tokenizer, dataset, reward_funcs, sft_args, rl_args, save_final, resume, callbacks, hooks, rl_dataset
        )
    return _run_rl(model, tokenizer, dataset, reward_funcs, rl_args, save_final, resume, callbacks, hooks)


def _run_sft(model, tokenizer, dataset, args, save_final, resume, callbacks, hooks):
    from trapo.sft import sft_trainer

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
