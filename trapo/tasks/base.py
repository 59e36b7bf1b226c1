"""The demo's tiny base model: a char-level Llama warm-started on short chains until it is in TRAPO's regime.

`trapo demo` trains every method from this base and `trapo bench --models tiny` measures on it; both call
`base_model_path`, which builds the base on first use and finds it in the cache afterwards (keyed by `BaseSpec`).

The warm start is plain SFT (`trapo.sft`, TRL's SFTTrainer) on 2-4 digit chains and on the last line of 5-6
digit ones (`trapo.tasks.chains.warm_start_rows`). Every ``check_every`` steps from ``min_steps`` on, a callback
measures the regime on *training* problems (`trapo.tasks.regime`): the warm-start tiers solved (pass@8 alone ≥
`MIN_WARM_PASS`) and, on each hard tier, pass@8 alone < 0.1 but ≥ 0.3 with a 50% expert prefix. Training stops at
the first check where it holds (or at ``max_steps``, with a warning): the regime depends on the warm start's length,
learning rate and seed (too early the model cannot do the single step; at other settings it learned to carry it
through longer chains on its own; measured in docs/demo.md). The held-out problems are never looked at here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict, dataclass
from pathlib import Path

logger = logging.getLogger(__name__)

TASK_VERSION = 4  # bump when the task, its verifier or the warm start changes, to invalidate cached bases
MIN_WARM_PASS = 0.9  # pass@8 alone on every warm-start tier: the base has the single step


def default_cache_dir() -> str:
    return os.environ.get("TRAPO_CACHE", str(Path.home() / ".cache/trapo"))


@dataclass(frozen=True)
class BaseSpec:
    """Everything that defines the base model; its hash names the cache folder."""

    hidden_size: int = 128
    num_layers: int = 3
    num_heads: int = 4
    warm_lr: float = 5e-4
    warm_batch: int = 32
    continue_lines: int = 1  # lines of a 5-6 digit derivation the warm start trains on, at its end (chains.py)
    min_steps: int = 300  # the single step is not learned before this (docs/demo.md)
    max_steps: int = 2000
    check_every: int = 50
    probe_problems: int = 16  # training problems per tier for the regime checks
    seed: int = 0
    check_regime: bool = True  # False: train max_steps, no checks (the smoke-test base of `trapo demo --quick`)

    @classmethod
    def smoke(cls) -> BaseSpec:
        """A base built in about 20 seconds for smoke runs: it has not learned the task, and is not checked."""
        return cls(min_steps=150, max_steps=150, check_regime=False)

    def key(self) -> str:
        return hashlib.sha256(json.dumps([TASK_VERSION, asdict(self)]).encode()).hexdigest()[:12]


def base_model_path(spec: BaseSpec | None = None, cache_dir: str | None = None, log=print) -> Path:
    """The warm-started base, built on first use and cached under ``cache_dir/demo-base-<key>``."""
    spec = spec or BaseSpec()
    path = Path(cache_dir or default_cache_dir()) / f"demo-base-{spec.key()}"
    if (path / "done").exists():
        log(f"base model: cached at {path}")
        return path
    if spec.check_regime:
        tiers = ", ".join(map(str, _warm_tiers()))
        log(f"base model: warm-starting on {tiers}-digit chains until it is in TRAPO's regime (checked every "
            f"{spec.check_every} steps from {spec.min_steps}; about 2 minutes, cached)")  # fmt: skip
    else:
        log(f"base model: a {spec.max_steps}-step smoke-test warm start (not checked for TRAPO's regime), cached")
    model, tokenizer, record = build_base(spec, path / "_sft", log)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    (path / "done").write_text(json.dumps({"spec": asdict(spec), **record}, indent=2))
    return path


def base_record(path: Path) -> dict:
    """What the builder recorded about a cached base: its spec, steps, and every regime check."""
    return json.loads((Path(path) / "done").read_text())


def _warm_tiers():
    from trapo.tasks.chains import WARM_TIERS

    return WARM_TIERS


def build_base(spec: BaseSpec, work_dir: Path, log=print):
    """Warm-start a fresh tiny model; return (model, tokenizer, record of the regime checks)."""
    import torch
    from datasets import Dataset
    from tqdm.auto import tqdm
    from transformers import TrainerCallback

    from trapo.local_runs import local_trainer_args, quiet_trainer
    from trapo.sft import TRAPOSFTConfig, sft_trainer
    from trapo.tasks.chains import HARD_TIERS, WARM_TIERS, make_problems, warm_start_rows
    from trapo.tasks.regime import format_regime, guided_pass_at_k, in_regime, regime_report
    from trapo.tasks.tiny_model import build_model, build_tokenizer

    say = tqdm.write if log is print else log  # a print would break the progress bar's line
    tokenizer = build_tokenizer()
    model = build_model(
        tokenizer, hidden_size=spec.hidden_size, num_layers=spec.num_layers, num_heads=spec.num_heads, seed=spec.seed
    )
    warm = [
        {"prompt": r["prompt"], "completion": r["completion"]}
        for r in warm_start_rows(2000, spec.seed, spec.continue_lines)
    ]
    # Probe problems: training problems of every tier the checks need, disjoint from nothing the demo evaluates on.
    probes = {
        t: make_problems(spec.probe_problems, (t,), "train", seed=spec.seed + 1000) for t in (*WARM_TIERS, *HARD_TIERS)
    }
    checks: list[dict] = []

    class RegimeCheck(TrainerCallback):
        """Measures the regime every ``check_every`` steps and stops training when it holds; shows progress."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.bar = tqdm(total=spec.max_steps, desc="warm start", unit="step", leave=False)

        def on_train_end(self, args, state, control, **kwargs):
            self.bar.close()

        def on_step_end(self, args, state, control, model=None, **kwargs):
            self.bar.update(1)
            step = state.global_step
            if not spec.check_regime or step < spec.min_steps or step % spec.check_every:
                return
            easy = {t: guided_pass_at_k(model, tokenizer, probes[t], 0.0, seed=step)["pass"] for t in WARM_TIERS}
            hard = regime_report(model, tokenizer, {t: probes[t] for t in HARD_TIERS}, seed=step)
            holds = min(easy.values()) >= MIN_WARM_PASS and in_regime(hard, HARD_TIERS)
            checks.append({"step": step, "easy_pass": easy, "hard": hard, "in_regime": holds})
            say(f"base model, step {step}: warm-start tiers pass@8 "
                + ", ".join(f"{t}: {a:.2f}" for t, a in easy.items()) + ("  → in regime" if holds else "")
                + "\n" + format_regime(hard))  # fmt: skip
            if holds:
                control.should_training_stop = True

    torch.manual_seed(spec.seed)
    args = TRAPOSFTConfig(
        output_dir=str(work_dir),
        max_steps=spec.max_steps,
        per_device_train_batch_size=spec.warm_batch,
        learning_rate=spec.warm_lr,
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=50,
        logging_strategy="no",
        max_expert_traces=1,
        **local_trainer_args(seed=spec.seed),
    )
    trainer = sft_trainer(model, tokenizer, Dataset.from_list(warm), args, callbacks=[RegimeCheck()])
    quiet_trainer(trainer)
    trainer.train()
    reached = bool(checks) and checks[-1]["in_regime"]
    if spec.check_regime and not reached:
        logger.warning(
            "the base model did not reach TRAPO's regime within %d warm-start steps (last check: %s); the demo runs "
            "anyway, but its hard tiers may not show what TRAPO is for",
            spec.max_steps,
            checks[-1] if checks else "none",
        )
    return trainer.model, tokenizer, {"steps": trainer.state.global_step, "in_regime": reached, "checks": checks}
