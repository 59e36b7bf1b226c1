"""`trapo demo`: settings, sweeps, and `--quick` end to end through the CLI (table, results.json and plots)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from trapo.commands.demo import parse_sweeps
from trapo.demo import DemoSettings
from trapo.demo.report import format_table, paired_difference, summarize


@pytest.mark.slow
def test_quick_demo_writes_table_json_and_plots(tmp_path):
    out = tmp_path / "demo"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "trapo.cli", "demo", "--quick", "--cache-dir", str(tmp_path / "cache")]
    cmd += ["--workers", "1"]  # `make test` runs this beside another test worker on two cores
    args = ["--methods", "trapo,sft-then-grpo", "--alpha", "0.05", "--learning-rate", "5e-4"]
    args += ["--sweep", "alpha=0.3", "--output-dir", str(out)]
    proc = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=600, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| trapo |" in proc.stdout and "| sft-then-grpo |" in proc.stdout and "| trapo alpha=0.3 |" in proc.stdout
    assert "paper's evaluation protocol" in proc.stdout and "avg@8, T=0.6" in proc.stdout
    assert "Warning" not in proc.stderr, proc.stderr[-3000:]  # no library deprecation noise
    results = json.loads((out / "results.json").read_text())
    methods = [r["method"] for r in results["runs"]]
    plain = ["trapo", "sft-then-grpo"]
    assert methods == [*plain, "trapo alpha=0.3"]
    assert results["settings"]["alpha"] == 0.05 and results["settings"]["learning_rate"] == 5e-4
    assert results["runs"][2]["overrides"] == {"alpha": 0.3}
    for tier in ("5", "6"):  # the base's pass@8 alone and with each prefix, per tier, before training
        assert set(results["base_regime"][tier]) == {"alone", "prefix_25", "prefix_50"}
    for run in results["runs"]:
        assert run["curve"][-1][0] == results["settings"]["steps"]  # evaluated at the last step
        assert {"tier_2", "tier_7", "hard", "overall"} <= set(run["final"])
        assert {"sampled_tier_6", "sampled_hard"} <= set(run["final"])  # the paper's protocol, final model only
    trapo = results["runs"][0]
    assert trapo["guided_share"] > 0 and trapo["guidance"]  # the smoke base fails: guidance fires
    assert "guided_frac/stage2" in trapo["guidance"][0]
    assert results["runs"][1]["guided_share"] == 0  # sft-then-grpo's RL phase is GRPO: never guided
    for name in ("accuracy.png", "tiers.png", "guidance.png", "sweep.png", "results.md"):
        assert (out / name).stat().st_size > 0


def test_demo_settings_reject_bad_values():
    with pytest.raises(ValueError, match="unknown demo method"):
        DemoSettings(methods=("trapo", "ppo"))
    with pytest.raises(ValueError, match="cannot sweep 'learning_rate'"):
        DemoSettings(sweep={"learning_rate": (1e-3,)})
    with pytest.raises(ValueError, match="device"):
        DemoSettings(device="tpu")
    with pytest.raises(ValueError, match="expert_order must be one of"):
        DemoSettings(expert_order="middle")
    with pytest.raises(ValueError, match="expert_deviation must be a probability"):
        DemoSettings(expert_deviation=1.5)
    with pytest.raises(ValueError, match="first_seed"):
        DemoSettings(first_seed=-1)
    with pytest.raises(ValueError, match="sampled_eval_k"):
        DemoSettings(sampled_eval_k=-1)


def test_expert_and_seed_flags_reach_the_settings():
    import argparse

    from trapo.commands.demo import add_arguments, settings_from_args
    from trapo.tasks.chains import Expert

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    default = settings_from_args(parser.parse_args([]))
    assert default.expert == Expert(DemoSettings.expert_order, DemoSettings.expert_deviation)
    assert settings_from_args(parser.parse_args(["--expert-order", "right"])).expert_order == "right"
    flags = ["--expert-deviation", "0.3", "--seeds", "2", "--first-seed", "3", "--methods", "sft"]
    settings = settings_from_args(parser.parse_args(flags))
    assert settings.expert == Expert(DemoSettings.expert_order, 0.3)
    assert settings.runs() == [("sft", 3, {}), ("sft", 4, {})]
    with pytest.raises(SystemExit):
        parser.parse_args(["--expert-order", "up"])


def test_a_task_sweep_trains_every_method_at_each_value_with_that_expert():
    settings = DemoSettings(methods=("trapo", "sft"), sweep={"expert_deviation": (0.0, 0.3)}, expert_deviation=0.1)
    assert settings.runs() == [
        ("trapo", 0, {}),
        ("sft", 0, {}),
        ("trapo", 0, {"expert_deviation": 0.0}),
        ("trapo", 0, {"expert_deviation": 0.3}),
        ("sft", 0, {"expert_deviation": 0.0}),
        ("sft", 0, {"expert_deviation": 0.3}),
    ]
    assert settings.with_overrides({"expert_deviation": 0.3}).expert.deviation == 0.3
    assert settings.with_overrides({"alpha": 0.3}) is settings  # TRAPO's settings go to its config, not the task's
    with pytest.raises(ValueError, match="expert_deviation must be a probability"):
        DemoSettings(sweep={"expert_deviation": (0.1, 2.0)})


def test_every_method_and_sweep_value_runs_on_every_seed():
    settings = DemoSettings(methods=("trapo", "grpo"), seeds=2, sweep={"alpha": (0.01, 0.1, 0.3)})  # 0.1: trapo's
    assert settings.runs() == [
        ("trapo", 0, {}),
        ("grpo", 0, {}),
        ("trapo", 1, {}),
        ("grpo", 1, {}),
        ("trapo", 0, {"alpha": 0.01}),
        ("trapo", 0, {"alpha": 0.3}),
        ("trapo", 1, {"alpha": 0.01}),
        ("trapo", 1, {"alpha": 0.3}),
    ]


@pytest.mark.parametrize("bad", ["alpha", "alpha=", "alpha=x,1", "=0.1"])
def test_sweep_flags_parse_or_say_what_is_wrong(bad):
    assert parse_sweeps(["alpha=0.01,0.1,0.3"]) == {"alpha": (0.01, 0.1, 0.3)}
    assert parse_sweeps([]) is None
    with pytest.raises(ValueError, match="expected KEY=V1,V2"):
        parse_sweeps([bad])


def record(method, seed, hard):
    final = {"tier_5": hard, "hard": hard, "overall": hard}
    return {"method": method, "seed": seed, "final": final, "wall_seconds": 1.0, "generated_tokens": 0,
            "guided_share": 0.0}  # fmt: skip


def test_summary_and_paired_difference_over_seeds():
    records = [record("trapo", s, h) for s, h in enumerate((0.5, 0.7, 0.6))]
    records += [record("grpo", s, h) for s, h in enumerate((0.1, 0.2, 0.0))]
    summary = summarize(records)
    assert summary["trapo"]["hard"]["mean"] == pytest.approx(0.6) and summary["trapo"]["hard"]["std"] == pytest.approx(
        0.1
    )
    diff = paired_difference(records, "trapo", "grpo")
    assert diff["mean"] == pytest.approx(0.5) and diff["std"] == pytest.approx(0.1) and diff["n"] == 3
    assert diff["ahead"] == 3
    table = format_table({"summary": summary, "base": {"tier_5": 0.0, "hard": 0.0}, "hard_tiers": [5]})
    assert "| trapo | 0.60 ± 0.10 | 0.60 ± 0.10 |" in table and "5 digits (hard)" in table


def test_the_differences_table_pairs_seeds_and_counts_who_is_ahead():
    from trapo.demo.report import format_differences

    records = [record("trapo", s, h) for s, h in enumerate((0.5, 0.7, 0.6))]
    records += [record("sft", s, h) for s, h in enumerate((0.6, 0.5, 0.2))]  # differences -0.1, +0.2, +0.4
    records += [record("grpo", 0, 0.25)]  # one seed in common: no spread to show
    table = format_differences({"runs": records})
    assert "| trapo minus | greedy |" in table
    assert "| sft | +0.17 ± 0.25 (ahead on 2 of 3 seeds) |" in table and "| grpo | +0.25 |" in table
    for r, sampled in zip(records, (0.5, 0.5, 0.5, 0.1, 0.6, 0.7, 0.0), strict=True):
        r["final"]["sampled_hard"] = sampled
    sampled = format_differences({"runs": records, "settings": {"sampled_eval_k": 8}})
    assert "| greedy | avg@8 |" in sampled and "| grpo | +0.25 | +0.50 |" in sampled
    assert format_differences({"runs": records[:3]}) is None  # nothing to compare with
    assert format_differences({"runs": records[3:]}) is None  # no TRAPO


def test_a_swept_value_overrides_the_demo_setting(tmp_path):
    from trapo.demo.runner import method_args

    configs = method_args("trapo", 0, DemoSettings(alpha=0.1), tmp_path, overrides={"alpha": 0.3})
    assert configs["rl_args"].alpha == 0.3
    assert method_args("trapo", 0, DemoSettings(alpha=0.1), tmp_path)["rl_args"].alpha == 0.1


class _ScriptedModel:
    """Stands in for a causal LM: ``generate`` returns the scripted completions, one row per prompt × sample."""

    training = False
    device = "cpu"

    def __init__(self, tokenizer, completions: list[str]):
        self.tokenizer, self.completions, self.calls = tokenizer, completions, []

    def eval(self):
        return self

    def train(self, mode=True):
        return self

    def generate(self, input_ids, attention_mask, **kwargs):
        import torch

        self.calls.append(kwargs)
        repeats = kwargs.get("num_return_sequences", 1)
        prompts = input_ids.repeat_interleave(repeats, dim=0)
        ids = [self.tokenizer(c, add_special_tokens=False)["input_ids"] for c in self.completions]
        width = max(map(len, ids))
        pad = self.tokenizer.pad_token_id
        rows = torch.tensor([i + [pad] * (width - len(i)) for i in ids])
        return torch.cat([prompts, rows], dim=1)


def test_sampled_evaluation_averages_over_every_sample_of_a_problem():
    """avg@k: a tier's accuracy is the share of right answers over all k samples of all its problems."""
    from trapo.demo.runner import evaluate
    from trapo.tasks.chains import Problem, to_rows
    from trapo.tasks.tiny_model import build_tokenizer

    tokenizer = build_tokenizer()
    five, six = Problem((4, 2, 7, 5, 1)), Problem((4, 2, 7, 5, 1, 3))
    right5, right6 = five.solution(), six.solution("right")  # any legal order is right
    wrong = "answer 9"
    model = _ScriptedModel(tokenizer, [right5, wrong, wrong, wrong, right6, right6, wrong, right6])
    result = evaluate(model, tokenizer, to_rows([five, six]), max_new_tokens=64, samples=4, temperature=0.6)
    assert result["tier_5"] == pytest.approx(0.25) and result["tier_6"] == pytest.approx(0.75)
    assert result["hard"] == pytest.approx(0.75) and result["overall"] == pytest.approx(0.5)
    assert model.calls[0]["do_sample"] and model.calls[0]["temperature"] == 0.6
    greedy = _ScriptedModel(tokenizer, [wrong, right6])
    assert evaluate(greedy, tokenizer, to_rows([five, six]), max_new_tokens=64) == {
        "tier_5": 0.0, "tier_6": 1.0, "hard": 1.0, "overall": 0.5}  # fmt: skip
    assert greedy.calls[0]["do_sample"] is False


def test_the_sampled_table_sits_beside_the_greedy_one():
    from trapo.demo.report import format_sampled_table

    records = [record("trapo", s, h) for s, h in enumerate((0.5, 0.7, 0.6))]
    for r, sampled in zip(records, (0.4, 0.5, 0.6), strict=True):
        r["final"] |= {"sampled_tier_5": sampled, "sampled_hard": sampled, "sampled_overall": sampled}
    base = {"tier_5": 0.0, "hard": 0.0, "sampled_tier_5": 0.1, "sampled_hard": 0.1}
    results = {"summary": summarize(records), "base": base, "hard_tiers": [5]}
    results["settings"] = {"sampled_eval_k": 8, "sampled_eval_temperature": 0.6}
    table = format_sampled_table(results)
    assert "avg@8, T=0.6" in table and "| trapo | 0.50 ± 0.10 | 0.50 ± 0.10 |" in table and "| base | 0.10 |" in table
    assert format_sampled_table({**results, "base": {"tier_5": 0.0, "hard": 0.0}}) is None  # not measured


def test_warmup_applies_to_every_phase_of_a_method(tmp_path):
    from trapo.demo.runner import method_args

    configs = method_args("sft-then-grpo", 0, DemoSettings(warmup_steps=5), tmp_path)
    for args in (configs["sft_args"], configs["rl_args"]):
        assert args.warmup_steps == 5 and args.lr_scheduler_type == "constant_with_warmup"
    assert method_args("grpo", 0, DemoSettings(), tmp_path)["rl_args"].warmup_steps == 0  # constant from step 1
