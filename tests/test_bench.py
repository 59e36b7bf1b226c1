"""`trapo bench` on a fresh tiny model, in process: phase split, counters, summary, report (a few seconds on CPU).

The bench's real ``tiny`` model is the demo's cached warm-started base (minutes to build): these tests replace
`trapo.bench.run.prepare_bench_model` and `trapo.bench.run.load_bench_model`, so nothing is built or read from the
cache.
"""

from __future__ import annotations

import contextlib
import logging
import math

import pytest
import torch

from trapo.bench import run as bench
from trapo.bench.meter import PHASES, MissingHookError, StepMeter
from trapo.bench.report import BEGIN, END, format_report, write_report
from trapo.bench.setup import BenchSettings, make_reward

SETTINGS = dict(
    methods=("trapo", "grpo"),
    reps=2,
    steps=1,
    warmup_steps=1,
    prompts_per_step=2,
    num_generations=8,
    max_completion_length=16,
    reward="random:0.5",
    isolate=False,  # worker processes would not see the monkeypatches
    threads=1,
    train_problems=64,
    rollout="staged",  # one generate call per stage: the counts below follow from it
)
COMMAND = "trapo bench --models tiny --reps 2 --steps 1 --no-isolate"


def tiny_bench_model(settings):
    from trapo.tasks.tiny_model import build_model, build_tokenizer

    tokenizer = build_tokenizer()
    return tokenizer, build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2, seed=0)


@contextlib.contextmanager
def in_process_bench():
    """Tiny model instead of the demo's base; undo what `Runner` changes process-wide (threads, library loggers)."""
    threads = torch.get_num_threads()
    levels = {name: logging.getLogger(name).level for name in ("transformers", "trl", "accelerate", "datasets")}
    prepared: list[BenchSettings] = []
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(bench, "prepare_bench_model", lambda settings, log=None: prepared.append(settings))
            mp.setattr(bench, "load_bench_model", tiny_bench_model)
            yield prepared
    finally:
        torch.set_num_threads(threads)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory):
    """One in-process bench (2 repetitions × TRAPO and GRPO × 1 warm-up + 1 timed step), shared by the tests."""
    logged: list[str] = []
    with in_process_bench() as prepared:
        settings = BenchSettings(**SETTINGS, cache_dir=str(tmp_path_factory.mktemp("cache")))
        result = bench.run_bench(settings, work_dir=str(tmp_path_factory.mktemp("work")), log=logged.append)
    return {"bench": result, "prepared": prepared, "logged": logged, "settings": settings}


def timed_steps(bench_run, method):
    return [step for r in bench_run["bench"]["results"] if r["method"] == method for step in r["steps"]]


def test_bench_prepares_once_and_alternates_methods(bench_run):
    assert bench_run["prepared"] == [bench_run["settings"]]
    order = [(r["rep"], r["method"]) for r in bench_run["bench"]["results"]]
    assert order == [(0, "trapo"), (0, "grpo"), (1, "grpo"), (1, "trapo")]  # AB, BA
    assert len(bench_run["logged"]) == 4 and all("s/step" in line for line in bench_run["logged"])


@pytest.mark.parametrize("method", ["trapo", "grpo"])
def test_every_timed_step_is_split_into_phases_that_sum_to_the_step(bench_run, method):
    steps = timed_steps(bench_run, method)
    assert len(steps) == SETTINGS["reps"] * SETTINGS["steps"]  # the warm-up step is not reported
    for step in steps:
        assert set(PHASES) <= step.keys()
        assert all(step[p] >= 0.0 for p in PHASES)
        for p in ("generation", "forward", "backward", "optimizer"):  # every one of these happens in a step
            assert step[p] > 0.0, p
        # Neither derived phase was clamped: generation and reward happen inside the rollout, everything inside
        # the step, so the phases partition the step's wall time.
        assert step["rollout"] >= step["generation"] + step["reward"] - 1e-9
        assert math.fsum(step[p] for p in PHASES) == pytest.approx(step["step"], rel=1e-3, abs=1e-6)


def test_generation_and_forward_counts(bench_run):
    rows = SETTINGS["prompts_per_step"] * SETTINGS["num_generations"]
    for step in timed_steps(bench_run, "grpo"):
        assert step["generation_calls"] == 1
        assert step["generated_rows"] == rows
        assert step["micro_batches"] >= 1 and step["forwards_loss"] == step["micro_batches"]
    for step in timed_steps(bench_run, "trapo"):
        assert 1 <= step["generation_calls"] <= 4  # paper schedule: at most one call per stage
        assert step["generated_rows"] <= rows  # full-trace samples are not generated
        # One forward pass per micro-batch: the SFT term on the prefixes reuses the policy-gradient pass.
        assert step["micro_batches"] >= 1 and step["forwards_loss"] == step["micro_batches"]
    for r in bench_run["bench"]["results"]:
        assert r["samples"] == rows * SETTINGS["steps"]  # the warm-up's rollout stats are subtracted
        if r["method"] == "grpo":
            assert r["guided_samples"] == 0
        else:  # stage 1 (4 samples per prompt) is never guided
            assert 0 <= r["guided_samples"] <= SETTINGS["prompts_per_step"] * (SETTINGS["num_generations"] - 4)
    methods = bench_run["bench"]["summary"]["methods"]
    for method in ("trapo", "grpo"):
        assert methods[method]["forwards_loss_per_micro_batch"]["median"] == 1.0


def test_speculative_rollout_kept_tokens_exclude_discarded_candidates(tmp_path):
    settings = BenchSettings(**{**SETTINGS, "methods": ("trapo",), "reps": 1, "rollout": "speculative"})
    with in_process_bench():
        result = bench.Runner(settings, "trapo").run_rep(0, str(tmp_path / "out"))
    (step,) = result["steps"]
    assert step["generation_calls"] == 1  # every stage's candidates in one call
    assert step["generated_rows"] > result["samples"]  # some candidates were drawn and discarded
    # Tokens kept in the batch: at most max_completion_length per sample, prefixes included.
    assert 0 < result["kept_tokens"] <= result["samples"] * SETTINGS["max_completion_length"]


def test_summary_has_paired_trapo_over_grpo_ratios(bench_run):
    summary = bench_run["bench"]["summary"]
    assert set(summary["methods"]) == {"trapo", "grpo"}
    ratios = summary["ratios"]["trapo/grpo"]
    assert ratios["step"]["n"] == SETTINGS["reps"]
    assert ratios["step"]["min"] <= ratios["step"]["median"] <= ratios["step"]["max"]
    assert ratios["forwards_loss_per_micro_batch"]["median"] == 1.0
    trapo_calls = summary["methods"]["trapo"]["generation_calls"]["median"]
    assert ratios["generation_calls"]["median"] == pytest.approx(trapo_calls)  # grpo: 1 call
    assert summary["methods"]["grpo"]["step"]["n"] == SETTINGS["reps"]


def test_format_report_has_command_table_and_targets(bench_run):
    text = format_report(bench_run["bench"], COMMAND)
    assert f"Command: `{COMMAND}`" in text
    assert "| per step | trapo | grpo |" in text
    for label in ("step time (s)", "generation calls", "forward passes, loss, per micro-batch", "peak memory (MiB)"):
        assert f"| {label} |" in text or f"|   {label} |" in text, label
    assert "all methods in one process" in text
    assert "Targets (trapo/grpo, measured, not asserted):" in text
    assert "- step time ≤ 1.1×: " in text and "- generation time ≤ 1.1×: " in text
    assert "- forward passes in the loss per micro-batch = 1×: 1.00 → met" in text


def test_write_report_replaces_only_the_marked_block(tmp_path):
    path = tmp_path / "benchmarks.md"
    head, tail = "# Benchmarks\n\nHand-written intro.\n\n", "\n\n## Notes\n\nKept as is.\n"
    path.write_text(f"{head}{BEGIN}\nold results\n{END}{tail}")
    for report in ("### first run\n\n| a |", "### second run\n\n| b |\n\n"):
        write_report(report, path)
        text = path.read_text()
        assert text == f"{head}{BEGIN}\n{report.rstrip()}\n{END}{tail}"
        assert text.count(BEGIN) == text.count(END) == 1
    assert "old results" not in text and "first run" not in text


def test_write_report_appends_or_creates(tmp_path):
    existing = tmp_path / "notes.md"
    existing.write_text("# Notes\n\nno markers yet\n")
    write_report("report one", existing)
    write_report("report two", existing)
    assert existing.read_text() == f"# Notes\n\nno markers yet\n\n{BEGIN}\nreport two\n{END}\n"
    created = write_report("fresh", tmp_path / "sub" / "benchmarks.md")
    assert created.read_text().endswith(f"{BEGIN}\nfresh\n{END}\n")


def test_random_reward_is_deterministic_at_its_rate():
    reward = make_reward("random:0.3")
    prompts = [f"prompt {i % 50}" for i in range(4000)]
    completions = [f"completion {i}" for i in range(4000)]
    values = reward(completions, prompts)
    assert values == reward(completions, prompts)
    assert set(values) <= {0.0, 1.0}
    assert sum(values) / len(values) == pytest.approx(0.3, abs=0.03)
    assert make_reward("random:0")(completions[:100], prompts[:100]) == [0.0] * 100
    assert make_reward("random:1")(completions[:100], prompts[:100]) == [1.0] * 100


@pytest.mark.parametrize("spec", ["random:2", "random:-0.1", "random:x", "random:nan", "random:", "exact", ""])
def test_bad_reward_specs_raise(spec):
    with pytest.raises(ValueError):
        make_reward(spec)


def test_chain_reward_spec_is_the_task_verifier():
    from trapo.tasks.chains import chain_reward

    assert make_reward("chain") is chain_reward


@pytest.mark.parametrize(
    "overrides",
    [{"methods": ("trapo", "ppo")}, {"model": "huge"}, {"reps": 0}, {"steps": 0}, {"reward": "random:5"}],
)
def test_bench_settings_reject_bad_values(overrides):
    with pytest.raises(ValueError):
        BenchSettings(**overrides)


def test_bench_settings_accept_every_rl_method_and_trls_own_grpo():
    from trapo.bench.setup import BENCH_METHODS
    from trapo.recipes import RL_METHODS

    assert set(BENCH_METHODS) == {*RL_METHODS, "trl-grpo"}
    assert BenchSettings(methods=BENCH_METHODS).methods == BENCH_METHODS


def test_cli_bench_help_lists_its_options(capsys):
    from trapo.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    for option in ("--reps", "--models", "--methods", "--no-isolate", "--output"):
        assert option in out


@pytest.mark.parametrize("method", ["trapo", "grpo"])
def test_loss_token_counters_cover_the_batch(bench_run, method):
    for step in timed_steps(bench_run, method):
        assert 0 < step["loss_tokens"] <= step["padded_tokens"]
        assert step["padded_tokens"] % 16 == 0  # 2 prompts × 8 samples per micro-batch, times the padded width


@pytest.mark.parametrize("text", [f"intro\n{END}\nthen {BEGIN}\n", f"intro {BEGIN} no end", f"only {END}"])
def test_write_report_refuses_broken_markers_and_leaves_the_file(tmp_path, text):
    path = tmp_path / "bench.md"
    path.write_text(text)
    with pytest.raises(ValueError, match="markers are broken"):
        write_report("new", path)
    assert path.read_text() == text


def test_a_declared_timed_method_that_does_not_exist_fails_the_meter(tmp_path):
    """Renaming a timed method must break the benchmark, not move its time into another phase unnoticed."""
    settings = BenchSettings(**{**SETTINGS, "methods": ("trapo",), "reps": 1})
    with in_process_bench():
        runner = bench.Runner(settings, "trapo")
        trainer = runner._trainer(seed=0, output_dir=str(tmp_path / "out"))
        trainer.timed_methods = {**trainer.timed_methods, "reward": ("_score_responses_renamed",)}
        with pytest.raises(MissingHookError, match="_score_responses_renamed"):
            StepMeter(trainer)
        trainer.timed_methods = {"reward": ("_score_responses",), "decode": ("_generate_single_turn",)}
        with pytest.raises(ValueError, match="unknown phases"):
            StepMeter(trainer)


def test_every_declared_timed_method_of_the_trainer_exists():
    from trapo.trainer import TRAPOTrainer

    for phase, names in TRAPOTrainer.timed_methods.items():
        for name in names:
            assert callable(getattr(TRAPOTrainer, name, None)), (phase, name)


def test_methods_can_be_measured_with_a_rollout_each_and_the_ratios_pair_them():
    from trapo.bench.report import ratio_pairs

    methods = ("trapo@staged", "trapo@pipelined", "grpo@staged", "grpo@pipelined")
    assert BenchSettings(methods=methods).methods == methods
    assert ratio_pairs(methods) == [
        ("trapo@staged", "grpo@staged"),
        ("trapo@staged", "grpo@pipelined"),
        ("trapo@pipelined", "grpo@staged"),
        ("trapo@pipelined", "grpo@pipelined"),
        ("grpo@pipelined", "grpo@staged"),
    ]
    for bad in ("trapo@eager", "trl-grpo@pipelined", "ppo@staged"):
        with pytest.raises(ValueError, match="unknown bench method"):
            BenchSettings(methods=(bad,))
