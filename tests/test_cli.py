"""A user's mistake at the CLI is one line (what, where, how to fix), never a traceback; `--debug` shows the trace.
Each case is checked before the model loads wherever it can be (docs/errors.md)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from conftest import addition_rows

from trapo.cli import main


def one_line_error(capsys, argv) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = re.findall(r"trapo [\w-]+: error: .*", err)  # one line, maybe after a progress bar's last state
    assert len(lines) == 1, err
    return lines[0]


@pytest.fixture
def workdir(tmp_path, monkeypatch, tokenizer):
    """A folder with a tiny model, training rows and a config that trains for one step."""
    from trapo.tasks.tiny_model import build_model

    monkeypatch.chdir(tmp_path)
    build_model(tokenizer, hidden_size=32, num_layers=1, num_heads=2).save_pretrained("tiny")
    tokenizer.save_pretrained("tiny")
    Path("rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in addition_rows(8)))
    config = {
        "model_name_or_path": "tiny", "dataset_name": "rows.jsonl", "reward": "chains", "use_cpu": True,
        "num_generations": 8, "per_device_train_batch_size": 8, "max_completion_length": 32, "max_steps": 1,
        "report_to": "none", "save_strategy": "no", "output_dir": "out",
    }  # fmt: skip
    Path("run.yaml").write_text(yaml.safe_dump(config))
    return tmp_path


def train(*overrides):
    return ["train", "--config", "run.yaml", *[x for item in overrides for x in ("--set", item)]]


def test_a_reward_module_that_is_not_on_the_path(workdir, capsys):
    line = one_line_error(capsys, [*train("reward=nowhere:score"), "--dry-run"])
    assert "reward 'nowhere:score': cannot import module 'nowhere'" in line and str(workdir) in line
    line = one_line_error(capsys, train("reward=json:no_such_function"))
    assert "module 'json' has no function 'no_such_function'" in line


def test_a_reward_next_to_the_config_is_found(workdir, capsys):
    Path("my_reward.py").write_text("def score(completions, **kw):\n    return [0.0] * len(completions)\n")
    assert main([*train("reward=my_reward:score"), "--dry-run"]) == 0


def test_a_typo_in_a_local_model_path(workdir, capsys):
    assert "model 'tnyi': no such folder" in one_line_error(capsys, train("model_name_or_path=tnyi"))
    Path("empty").mkdir()
    assert "has no config.json" in one_line_error(capsys, train("model_name_or_path=./empty"))


def test_an_output_dir_that_cannot_be_written(workdir, capsys):
    Path("a_file").write_text("")
    assert "output_dir 'a_file/out' is not writable" in one_line_error(capsys, train("output_dir=a_file/out"))


def test_a_wrong_type_in_the_yaml(workdir, capsys):
    line = one_line_error(capsys, train("learning_rate=fast"))
    assert line.endswith(
        "config key 'learning_rate': expected a number, got 'fast' (str) (--debug shows the traceback)"
    )


def test_a_reward_that_keeps_failing_stops_training_with_one_line(workdir, capsys):
    Path("bad_reward.py").write_text("def score(completions, **kw):\n    raise KeyError('solution')\n")
    line = one_line_error(capsys, train("reward=bad_reward:score", "max_reward_failures=2"))
    assert "'score' failed 2 calls in a row; last: KeyError" in line


def test_chat_prompts_need_a_chat_template(workdir, capsys):
    rows = [{**r, "prompt": [{"role": "user", "content": r["prompt"]}]} for r in addition_rows(8)]
    Path("chat.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert "the prompts are chat messages but the tokenizer has no chat template" in one_line_error(
        capsys, train("dataset_name=chat.jsonl")
    )


def test_debug_shows_the_traceback(workdir):
    with pytest.raises(ValueError, match="learning_rate"):
        main(["--debug", *train("learning_rate=fast")])


def test_eval_on_a_missing_model_folder(tmp_path, capsys):
    line = one_line_error(capsys, ["eval", "--model", str(tmp_path / "nope"), "--data", str(write_rows(tmp_path))])
    assert "no such folder" in line


def write_rows(tmp_path) -> Path:
    path = tmp_path / "held.jsonl"
    path.write_text(json.dumps({"prompt": "1+1=", "answer": "2"}) + "\n")
    return path


def test_prepare_on_rows_that_are_already_trapo_rows(tmp_path, capsys):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in addition_rows(2)))
    line = one_line_error(capsys, ["prepare", str(path), "--output", str(tmp_path / "out.jsonl")])
    assert "already holds TRAPO rows (prompt, answer, expert): train on it directly" in line


def test_bench_writes_its_report_only_where_asked():
    from trapo.cli import build_parser

    args = build_parser().parse_args(["bench"])
    assert args.output is None  # printed only; `--output docs/benchmarks.md` updates the project's report


def test_a_yaml_syntax_error_names_the_file_and_line(workdir, capsys):
    Path("broken.yaml").write_text("model_name_or_path: tiny\nmax_steps: [1\n")
    line = one_line_error(capsys, ["train", "--config", "broken.yaml"])
    assert "broken.yaml: not valid YAML at line 3, column 1" in line


@pytest.mark.parametrize("command", ["train", "prepare"])
def test_a_malformed_jsonl_line_is_named_by_number(workdir, capsys, command):
    lines = Path("rows.jsonl").read_text().splitlines()
    lines[3] = lines[3].replace('"answer":', '"answer"')
    Path("rows.jsonl").write_text("\n".join(lines) + "\n")
    argv = train() if command == "train" else ["prepare", "rows.jsonl", "--output", "out.jsonl"]
    line = one_line_error(capsys, argv)
    assert "rows.jsonl: line 4 is not valid JSON (Expecting ':' delimiter" in line


def test_a_named_schedule_in_yaml_resolves_and_a_wrong_name_is_one_line(workdir, capsys):
    assert main([*train("schedule=released"), "--dry-run"]) == 0
    assert '"threshold": 0.66' in capsys.readouterr().out
    line = one_line_error(capsys, [*train("schedule=papr"), "--dry-run"])
    assert "schedule 'papr' is not a known schedule (paper, released)" in line


def test_a_bad_value_for_a_list_setting_is_one_line_not_argparses_usage(workdir, capsys):
    line = one_line_error(capsys, [*train(), "--reward_weights", "heavy", "--dry-run"])
    assert "argument --reward_weights/--reward-weights: invalid float value: 'heavy' (see trapo train --help)" in line


def test_push_to_hub_without_the_hub_is_refused_before_loading(workdir, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    line = one_line_error(capsys, [*train(), "--push_to_hub", "true"])
    assert "push_to_hub needs the Hugging Face Hub, but HF_HUB_OFFLINE is set" in line
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setenv("HF_TOKEN", "")
    monkeypatch.setattr("huggingface_hub.get_token", lambda: None)
    line = one_line_error(capsys, [*train(), "--push_to_hub", "true"])
    assert "push_to_hub needs a Hugging Face token" in line


@pytest.mark.parametrize("k", ["-3", "0", "two"])
def test_eval_counts_must_be_positive_whole_numbers(capsys, k):
    with pytest.raises(SystemExit) as exit_info:
        main(["eval", "--model", "nowhere", "--k", k])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "argument --k:" in err


def test_ctrl_c_prints_one_line_on_how_to_resume(workdir, capsys, monkeypatch):
    import trapo.train_plan

    def interrupted(plan, resume=None):
        raise KeyboardInterrupt

    monkeypatch.setattr(trapo.train_plan, "run_train", interrupted)
    assert main(train()) == 130
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert (
        err == "trapo train: interrupted; continue from the last complete checkpoint with the same command and --resume"
    )


def test_eval_gives_a_reward_every_column_of_the_file(workdir, capsys):
    rows = [{"prompt": f"{i}+1=", "answer": str(i + 1), "unit": "apples"} for i in range(3)]
    Path("held_out.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    Path("unit_reward.py").write_text(
        "def score(completions, answer, unit, **kw):\n"
        "    assert unit == ['apples'] * len(completions), unit\n"
        "    return [0.0] * len(completions)\n"
    )
    argv = ["eval", "--model", "tiny", "--data", "held_out.jsonl", "--reward", "unit_reward:score", "--backend", "hf",
            "--max-tokens", "4", "--k", "1", "--output-dir", "ev"]  # fmt: skip
    assert main(argv) == 0
