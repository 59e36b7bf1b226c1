"""The demo's base model measured on the held-out problems before any method trains: its greedy and sampled accuracy
per tier (the step-0 point of every curve, and what *collapsed* compares against) and its pass@8 alone and with a 25%
and a 50% expert prefix (whether the hard tier is in TRAPO's regime). Saved once per output folder."""

from __future__ import annotations

import json
from pathlib import Path

from trapo.checkpointing import write_json_atomic
from trapo.demo.evaluation import evaluate, evaluate_sampled
from trapo.demo.settings import DemoSettings

# The settings the base's measurement depends on (with the base itself and trapo's version): a rerun in the same
# output folder that changes none of them (more seeds, methods or sweep values, a resume) reuses the measurement.
_BASE_EVAL_FIELDS = ("eval_split", "eval_per_tier", "eval_hard", "max_completion_length", "sampled_eval_k",
                     "sampled_eval_temperature", "regime_problems", "expert_order", "expert_deviation",
                     "expert_mixture", "device")  # fmt: skip


def measure_base_once(base: Path, settings: DemoSettings, eval_rows: list[dict], log) -> tuple[dict, dict]:
    """`measure_base`, saved as ``runs/base.json`` in the output folder and reused while its key matches."""
    import trapo

    key = {"base": base.name, "trapo": trapo.__version__, **{k: getattr(settings, k) for k in _BASE_EVAL_FIELDS}}
    path = Path(settings.output_dir) / "runs" / "base.json"
    try:
        saved = json.loads(path.read_text())
        if saved["key"] == key:
            log(f"base model: reusing its held-out measurement saved in {path}")
            return saved["accuracy"], {int(tier): report for tier, report in saved["regime"].items()}
    except (OSError, ValueError, KeyError):
        pass  # none saved, or cut off while writing, or an older layout: measure again
    accuracy, regime = measure_base(base, settings, eval_rows, log)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, {"key": key, "accuracy": accuracy, "regime": regime})
    return accuracy, regime


def measure_base(base: Path, settings: DemoSettings, eval_rows: list[dict], log) -> tuple[dict, dict]:
    """The base's greedy held-out accuracy per tier, and its pass@8 alone / with a 25% and a 50% prefix."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trapo.tasks.chains import parse_prompt
    from trapo.tasks.regime import format_regime, regime_report

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base).to(settings.device)
    accuracy = evaluate(model, tokenizer, eval_rows, settings.max_completion_length)
    accuracy |= evaluate_sampled(model, tokenizer, eval_rows, settings, seed=0)[0]
    by_tier: dict[int, list] = {}
    for row in eval_rows:
        problems = by_tier.setdefault(row["tier"], [])
        if len(problems) < settings.regime_problems:
            problems.append(parse_prompt(row["prompt"]))
    regime = regime_report(model, tokenizer, by_tier, expert=settings.expert)
    greedy = {k: v for k, v in accuracy.items() if not k.startswith("sampled_")}
    log("base model, held-out greedy accuracy: " + ", ".join(f"{k} {v:.2f}" for k, v in greedy.items()))
    if settings.sampled_eval_k:
        sampled = ", ".join(f"{k.removeprefix('sampled_')} {v:.2f}" for k, v in accuracy.items() if k not in greedy)
        log(f"base model, held-out avg@{settings.sampled_eval_k} at T={settings.sampled_eval_temperature}: {sampled}")
    log(f"base model, held-out pass@8 ({settings.regime_problems} problems per tier):\n" + format_regime(regime))
    return accuracy, regime
