"""`trapo demo`: settings, sweeps, and `--quick` end to end through the CLI (table, results.json and plots)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from trapo.commands.demo import parse_sweeps
from trapo.demo import DEMO_METHODS, DemoSettings
from trapo.demo.report import format_table, paired_difference, summarize


@pytest.mark.slow
def test_quick_demo_writes_table_json_and_plots(tmp_path):
    out = tmp_path / "demo"
    # `make test` runs this beside another test worker on two cores: one process, one thread (a second would only
    # spin-wait for the core the other worker holds).
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "trapo.cli", "demo", "--quick", "--cache-dir", str(tmp_path / "cache")]
    cmd += ["--workers", "1"]
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

    # Run again with one more sweep value: the three finished runs are reused as saved, only the new one trains.
    args[args.index("alpha=0.3")] = "alpha=0.3,0.5"
    again = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=600, env=env)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "reusing 3 finished run(s)" in again.stdout and "training 1 runs" in again.stdout
    assert "base model: reusing its held-out measurement" in again.stdout
    rerun = json.loads((out / "results.json").read_text())
    assert [r["method"] for r in rerun["runs"]] == [*methods, "trapo alpha=0.5"]
    assert rerun["runs"][:3] == json.loads(json.dumps(results["runs"]))


def test_demo_settings_reject_bad_values():
    with pytest.raises(ValueError, match="unknown demo method"):
        DemoSettings(methods=("trapo", "ppo"))
    with pytest.raises(ValueError, match="cannot sweep 'momentum'"):
        DemoSettings(sweep={"momentum": (0.9,)})
    with pytest.raises(ValueError, match=r"unknown method\(s\) \['ppo'\]"):
        DemoSettings(sweep={"sft+ppo:steps": (80,)})
    with pytest.raises(ValueError, match="temperature must be > 0"):
        DemoSettings(temperature=0.0)
    with pytest.raises(ValueError, match="eval_split must be one of"):
        DemoSettings(eval_split="train")
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
    # `make demo`: the paper's rows and fixed-prefix; `all` and the tuning: every method, controls included.
    assert default.methods == ("trapo", "grpo", "fixed-prefix", "luffy", "relift", "sft", "sft-then-grpo")
    assert settings_from_args(parser.parse_args(["--methods", "all"])).methods == DEMO_METHODS
    assert settings_from_args(parser.parse_args(["--tune"])).methods == DEMO_METHODS
    assert settings_from_args(parser.parse_args(["--expert-order", "right"])).expert_order == "right"
    flags = ["--expert-deviation", "0.3", "--seeds", "2", "--first-seed", "3", "--methods", "sft"]
    settings = settings_from_args(parser.parse_args(flags))
    assert settings.expert == Expert(DemoSettings.expert_order, 0.3)
    assert settings.runs() == [("sft", 3, {}), ("sft", 4, {})]
    flags = ["--temperature", "0.7", "--expert-mixture", "0.3", "--eval-split", "test"]
    settings = settings_from_args(parser.parse_args(flags))
    assert (settings.temperature, settings.expert.mixture, settings.eval_split) == (0.7, 0.3, "test")
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
    from trapo.demo.evaluation import evaluate
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


def test_sft_then_grpo_rl_phase_takes_its_own_learning_rate_and_warmup(tmp_path):
    from trapo.demo.runner import method_args

    settings = DemoSettings(learning_rate=3e-4, rl_learning_rate=1e-4, rl_warmup_steps=5, temperature=0.7)
    configs = method_args("sft-then-grpo", 0, settings, tmp_path)
    assert configs["sft_args"].learning_rate == 3e-4 and configs["sft_args"].warmup_steps == 0
    rl = configs["rl_args"]
    assert (rl.learning_rate, rl.warmup_steps, rl.temperature) == (1e-4, 5, 0.7)
    assert configs["sft_args"].max_steps + rl.max_steps == settings.steps


def test_each_method_trains_at_its_tuned_learning_rate_unless_one_is_given(tmp_path):
    from trapo.demo.runner import method_args
    from trapo.demo.settings import TUNED

    for method in ("trapo", "sft", "grpo"):
        configs = method_args(method, 0, DemoSettings(), tmp_path)
        args = configs.get("rl_args") or configs["sft_args"]
        assert args.learning_rate == TUNED[method]["learning_rate"]
        assert method_args(method, 0, DemoSettings(learning_rate=5e-5), tmp_path).popitem()[1].learning_rate == 5e-5
    # SFT→RL: its SFT phase at its tuned rate, its RL phase at its own tuned rate and warm-up
    configs = method_args("sft-then-grpo", 0, DemoSettings(), tmp_path)
    tuned = TUNED["sft-then-grpo"]
    assert configs["sft_args"].learning_rate == tuned["learning_rate"]
    assert (configs["rl_args"].learning_rate, configs["rl_args"].warmup_steps) == (
        tuned["rl_learning_rate"],
        tuned["rl_warmup_steps"],
    )


def test_a_sweep_can_target_named_methods_and_a_longer_run_keeps_its_number_of_evaluations():
    settings = DemoSettings(methods=("trapo", "sft"), seeds=2, steps=40, eval_every=5,
                            sweep={"sft:prompts_per_step": (12,), "sft+sft-trsft:steps": (400,)})  # fmt: skip
    assert settings.runs()[4:] == [
        ("sft", 0, {"prompts_per_step": 12}),
        ("sft", 1, {"prompts_per_step": 12}),
        ("sft", 0, {"steps": 400}),
        ("sft", 1, {"steps": 400}),
        ("sft-trsft", 0, {"steps": 400}),
        ("sft-trsft", 1, {"steps": 400}),
    ]
    longer = settings.with_overrides({"steps": 400.0})
    assert (longer.steps, longer.eval_every) == (400, 50)  # integer settings parse as int; 8 evaluations either way
    assert settings.with_overrides({"prompts_per_step": 12.0}).prompts_per_step == 12


def test_paired_bootstrap_resamples_seeds_and_problems_together():
    from trapo.demo.stats import paired_bootstrap

    def run(method, seed, greedy):
        return {"method": method, "seed": seed, "problems": {"greedy": greedy}}

    problems = [{"tier": 6}] * 4 + [{"tier": 2}]
    base = {"hard_tiers": [6], "eval_problems": problems, "settings": {}}
    # a beats b by exactly one of the four hard problems on every seed; the easy problem (index 4) is not counted
    runs = [run("a", s, [1, 1, 0, 0, 0]) for s in range(3)] + [run("b", s, [1, 0, 0, 0, 1]) for s in range(3)]
    same = paired_bootstrap(base | {"runs": runs}, "a", "b")
    assert same["mean"] == pytest.approx(0.25) and (same["seeds"], same["problems"], same["ahead"]) == (3, 4, 3)
    assert 0.0 <= same["low"] <= 0.25 <= same["high"] <= 1.0  # problems vary; the interval is wide with four
    # identical per-problem differences: every resample gives the mean, an interval of width 0 that excludes 0
    runs = [run("a", s, [1, 1, 1, 1, 0]) for s in range(2)] + [run("b", s, [0, 0, 0, 0, 0]) for s in range(2)]
    flat = paired_bootstrap(base | {"runs": runs}, "a", "b")
    assert flat["low"] == flat["high"] == flat["mean"] == 1.0 and flat["excludes_zero"]
    assert paired_bootstrap(base | {"runs": runs}, "a", "c") is None  # no common seeds


def test_the_differences_table_shows_intervals_when_runs_have_per_problem_results():
    from trapo.demo.report import format_differences

    problems = [{"tier": 6}] * 4
    runs = []
    for seed, (a, b) in enumerate((([1, 1, 1, 0], [1, 0, 0, 0]), ([1, 1, 0, 0], [0, 0, 0, 0]))):
        runs.append(record("trapo", seed, sum(a) / 4) | {"problems": {"greedy": a}})
        runs.append(record("sft", seed, sum(b) / 4) | {"problems": {"greedy": b}})
    table = format_differences({"runs": runs, "hard_tiers": [6], "eval_problems": problems, "settings": {}})
    assert "| sft | +0.500 [" in table and "(ahead on 2 of 2 seeds)" in table
    # one seed: resampling problems alone says nothing of the seed-to-seed noise, so no interval and no star
    one = format_differences({"runs": runs[:2], "hard_tiers": [6], "eval_problems": problems, "settings": {}})
    assert "| sft | +0.500 (1 seed: no interval) |" in one and "*" not in one


def test_the_report_shows_the_budget_the_stage_firing_rates_and_a_key():
    from trapo.demo.report import format_budget, format_guidance, key_lines

    runs = [record("trapo", s, 0.5) for s in range(2)] + [record("sft", 0, 0.4)]
    runs[0] |= {"guidance": [{"step": 1, "guided_frac/stage2": 0.5, "guided_frac/stage3": 0.25},
                             {"step": 2, "guided_frac/stage2": 0.0, "guided_frac/stage3": 0.25}]}  # fmt: skip
    runs[1] |= {"guidance": [{"step": 1, "guided_frac/stage2": 1.0, "guided_frac/stage3": 0.25}]}
    # LUFFY's schedule is 7 samples + the full trace: its "stage 2" is not TRAPO's 25% prefix, so it has no row
    luffy = record("luffy", 0, 0.4) | {"guidance": [{"step": 1, "guided_frac/stage2": 1.0}]}
    assert "luffy" not in format_guidance({"runs": [*runs, luffy]})
    for r, flops in zip(runs, (1e12, 3e12, 1e11), strict=True):
        r["budget"] = {"generated_tokens": 10, "trained_tokens": 20, "expert_tokens": 5, "flops": flops,
                       "wall_seconds": 2.0}  # fmt: skip
    from trapo.demo.report import collapsed

    base = {"tier_4": 0.93, "tier_6": 0.0, "sampled_tier_4": 0.9}
    assert collapsed({"tier_4": 0.40, "tier_6": 0.3}, base) and not collapsed({"tier_4": 0.6, "tier_6": 0.0}, base)
    guidance = format_guidance({"runs": runs})
    assert "| trapo | 50% | 25% | 0% |" in guidance and "| sft |" not in guidance  # over every step of every seed
    budget = format_budget({"runs": runs})
    assert "| trapo | 10 | 20 | 5 | 2e+12 | 2 |" in budget and "| sft | 10 | 20 | 5 | 1e+11 | 2 |" in budget
    results = {
        "runs": runs,
        "hard_tiers": [6],
        "eval_problems": [{"tier": 6}] * 200,
        "settings": {"eval_split": "test"},
    }
    key = key_lines(results)
    assert len(key.splitlines()) == 3 and "0.005" in key and "test split" in key and "2 seed(s)" in key


def test_results_name_no_path_of_this_machine(tmp_path):
    from trapo.demo.runner import provenance, published_settings

    settings = DemoSettings(output_dir=str(tmp_path / "out"), cache_dir=str(tmp_path / "cache"))
    published = json.dumps(published_settings(settings))
    assert str(tmp_path) not in published and "cache_dir" not in published
    record = provenance(settings)
    assert set(record) == {"git_commit", "git_dirty", "versions", "base_model_key"}
    assert record["base_model_key"] == settings.base.key() and record["versions"]["trl"]


def test_a_saved_run_is_reused_only_under_the_same_settings(tmp_path):
    from trapo.demo.runner import run_dir, run_key, saved_record

    settings = DemoSettings(output_dir=str(tmp_path), learning_rate=3e-4)
    task = {"method": "trapo", "seed": 3, "overrides": {"alpha": 0.3}, "settings": settings}
    path = run_dir(settings, "trapo", 3, {"alpha": 0.3}) / "record.json"
    path.parent.mkdir(parents=True)
    key = run_key("trapo", 3, {"alpha": 0.3}, settings)
    path.write_text(json.dumps({"key": key, "record": {"method": "trapo alpha=0.3"}}))
    assert saved_record(task) == {"method": "trapo alpha=0.3"}
    # Which runs a demo trains (its seeds, methods, workers) does not matter; how one trains does.
    assert saved_record({**task, "settings": DemoSettings(output_dir=str(tmp_path), learning_rate=3e-4, seeds=8,
                                                          workers=1)}) is not None  # fmt: skip
    assert saved_record({**task, "settings": DemoSettings(output_dir=str(tmp_path), learning_rate=1e-3)}) is None
    assert saved_record({**task, "seed": 4}) is None  # no file
    path.write_text('{"key": ')  # a run killed while writing
    assert saved_record(task) is None


def test_the_base_is_measured_once_per_output_folder_and_again_when_what_it_depends_on_changes(tmp_path, monkeypatch):
    from trapo.demo import base_eval

    calls = []

    def measure(base, settings, rows, log):
        calls.append(settings.eval_split)
        return {"hard": 0.25 * len(calls)}, {6: {"alone": {"pass": 0.0}}}

    monkeypatch.setattr(base_eval, "measure_base", measure)
    said = []
    base = tmp_path / "demo-base-abc"
    first = base_eval.measure_base_once(base, DemoSettings(output_dir=str(tmp_path)), [], said.append)
    assert first == ({"hard": 0.25}, {6: {"alone": {"pass": 0.0}}}) and calls == ["valid"]
    # More seeds or methods: the saved measurement, tiers as integers again, and a line that says so.
    again = base_eval.measure_base_once(base, DemoSettings(output_dir=str(tmp_path), seeds=3), [], said.append)
    assert again == first and calls == ["valid"] and said[-1].startswith("base model: reusing its held-out")
    base_eval.measure_base_once(base, DemoSettings(output_dir=str(tmp_path), eval_split="test"), [], said.append)
    base_eval.measure_base_once(tmp_path / "demo-base-other", DemoSettings(output_dir=str(tmp_path)), [], said.append)
    assert calls == ["valid", "test", "valid"]  # another split, another base: measured again
    (tmp_path / "runs" / "base.json").write_text('{"key": ')  # cut off while writing
    base_eval.measure_base_once(base, DemoSettings(output_dir=str(tmp_path)), [], said.append)
    assert len(calls) == 4


def test_tuning_chooses_by_the_last_three_evaluations_over_seeds_and_breaks_ties_low():
    from trapo.demo.tuning import budget_factors, choose, tuned_settings

    def run(method, seed, lr, last3, budget=None):
        return {"base_method": method, "seed": seed, "overrides": {} if lr == 1e-4 else {"learning_rate": lr},
                "last3": {"hard": last3}, "budget": budget or {}}  # fmt: skip

    runs = [run("grpo", s, lr, h) for s, (lr, h) in enumerate([(1e-4, 0.2), (3e-4, 0.5), (1e-3, 0.9)])]
    runs += [run("grpo", 9, 3e-4, 0.6), run("grpo", 9, 1e-3, 0.0)]  # 1e-3: 0.45 over seeds, 3e-4: 0.55
    runs += [run("sft", 0, 1e-4, 0.4, {"expert_tokens": 10, "flops": 1.0})]
    runs += [run("sft", 0, 3e-4, 0.4, {"expert_tokens": 99, "flops": 99.0})]  # a tie: the smaller rate wins
    runs += [run("trapo", 0, 1e-3, 0.7, {"expert_tokens": 15, "flops": 8.0}), run("trapo", 0, 1e-4, 0.1)]
    results = {"runs": runs, "settings": {"learning_rate": 1e-4}}
    table = choose(results)
    assert table["grpo"]["chosen"] == 3e-4 and table["grpo"]["grid"]["0.0003"]["score"] == pytest.approx(0.55)
    assert table["grpo"]["grid"]["0.001"]["seeds"] == [2, 9]
    assert table["sft"]["chosen"] == 1e-4 and table["trapo"]["chosen"] == 1e-3
    chosen = {m: t["chosen"] for m, t in table.items()}
    assert budget_factors(results, chosen) == {"expert_tokens": 1.5, "flops": 8.0}
    record = {"learning_rate": table, "sft-then-grpo rl phase": {"chosen": {
        "rl_learning_rate": 1e-4, "rl_warmup_steps": 5, "sft_learning_rate": 1e-4}}}  # fmt: skip
    tuned = tuned_settings(record)
    assert tuned["grpo"] == {"learning_rate": 3e-4}
    assert tuned["sft-then-grpo"] == {"learning_rate": 1e-4, "rl_learning_rate": 1e-4, "rl_warmup_steps": 5}
