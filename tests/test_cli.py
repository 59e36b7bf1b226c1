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
