"""trapo.data: verl/LUFFY and TRAPO row loaders, row validation, and `trapo prepare` on a small OpenR1-style file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from datasets import Dataset

from trapo.cli import main
from trapo.data import (
    LUFFY_SYSTEM_PROMPT,
    PrepareOptions,
    from_verl_row,
    load_training_rows,
    merge_with_base,
    prepare_openr1,
    think_content,
    validate_rows,
)

FIXTURES = Path(__file__).parent / "fixtures"
SYSTEM = {"role": "system", "content": "Think first."}


def verl_row(i: int, **extra_info) -> dict:
    return {
        "data_source": "openr1",
        "prompt": [SYSTEM, {"role": "user", "content": f"What is {i}+1?"}],
        "reward_model": {"ground_truth": str(i + 1), "style": "rule"},
        "target": [{"role": "assistant", "content": f"<think>\n{i}+1={i + 1}\n</think>\n\n\\boxed{{{i + 1}}}"}],
        "extra_info": {"index": i, **extra_info},
    }


def test_think_content():
    assert think_content("<think>\n a \n</think> b") == "a"
    assert think_content("inside already</think>\nanswer") == "inside already"  # template opened the block
    assert think_content("<think>never closed") is None
    assert think_content("<think> </think>") is None


def test_verl_row_conversion_keeps_the_reasoning_of_every_trace():
    row = verl_row(3, answer_list=["<think>4 it is</think>\\boxed{4}", "plain solution 4"])
    out = from_verl_row(row)
    assert out["prompt"][1]["content"] == "What is 3+1?" and out["answer"] == "4"
    assert out["expert"] == ["3+1=4", "4 it is", "plain solution 4"]
    # "full": the whole response, </think> and solution included, without the opening tag (the template adds it).
    assert from_verl_row(row, "full")["expert"][0] == "3+1=4\n</think>\n\n\\boxed{4}"


@pytest.mark.parametrize("suffix", [".parquet", ".jsonl"])
def test_load_training_rows_from_verl_and_trapo_files(tmp_path, suffix):
    verl = Dataset.from_list([verl_row(i) for i in range(3)])
    path = str(tmp_path / f"verl{suffix}")
    verl.to_parquet(path) if suffix == ".parquet" else verl.to_json(path)
    rows = load_training_rows(path)
    assert rows.column_names == ["prompt", "answer", "expert"] and len(rows) == 3
    assert rows[2]["expert"] == ["2+1=3"]

    trapo_path = str(tmp_path / f"rows{suffix}")
    plain = Dataset.from_list([{"prompt": "1+1=", "answer": "2", "expert": ["2"]}])
    plain.to_parquet(trapo_path) if suffix == ".parquet" else plain.to_json(trapo_path)
    assert load_training_rows(trapo_path)[0]["expert"] == ["2"]


def test_loaders_name_bad_rows_and_layouts(tmp_path):
    bad = [
        {"prompt": "ok", "answer": "1", "expert": ["x"]},
        {"prompt": "", "answer": None, "expert": []},
        {"prompt": [{"role": "user", "content": ""}], "answer": "1", "expert": ["x", ""]},
    ]
    with pytest.raises(ValueError) as error:
        validate_rows(bad)
    message = str(error.value)
    for expected in ("row 1: prompt", "row 1: answer", "row 1: expert", "row 2: prompt: message 0", "row 2: expert"):
        assert expected in message
    assert "row 0" not in message

    benchmark = Dataset.from_list([{k: v for k, v in verl_row(0).items() if k != "target"}])
    benchmark.to_parquet(tmp_path / "no_traces.parquet")
    with pytest.raises(ValueError, match="row 0: expert"):
        load_training_rows(str(tmp_path / "no_traces.parquet"))
    load = Dataset.from_list([{"problem": "p", "generations": ["g"]}])
    load.to_json(tmp_path / "openr1.jsonl")
    with pytest.raises(ValueError, match="trapo prepare"):
        load_training_rows(str(tmp_path / "openr1.jsonl"))


def test_prepare_rules():
    rows = [json.loads(line) for line in (FIXTURES / "openr1_sample.jsonl").read_text().splitlines()]
    options = PrepareOptions(max_tokens=200, max_prompt_tokens=None)
    out, report = prepare_openr1(rows, len, options)
    assert [r["answer"] for r in out] == ["5", "16", "8", "3"]
    assert out[0]["expert"] == ["2+3 is 5.\n\nSo 5.", "Add: 3+2=5."]
    # The baselines' traces: the same generations, whole (</think> and the solution kept), without the opening tag.
    assert out[0]["expert_full"] == [
        "2+3 is 5.\n\nSo 5.\n</think>\n\nThe answer is \\boxed{5}.",
        "Add: 3+2=5.\n</think>\n\n\\boxed{5}",
    ]
    assert out[1]["expert"] == ["4*4=16"] and out[1]["expert_full"] == ["4*4=16\n</think>\n\\boxed{16}"]
    assert out[2]["expert"] == ["7+1=8", "1+7=8"]  # two at most, no duplicate, no unclosed block
    assert out[0]["prompt"] == [
        {"role": "system", "content": LUFFY_SYSTEM_PROMPT},
        {"role": "user", "content": "What is 2+3?"},
    ]
    rejected = dict(report.rejected)
    assert set(rejected) == {2, 3, 4, 6}
    assert rejected[2] == "answer: missing or empty"
    assert rejected[3] == "no usable trace (2 unverified)"
    assert rejected[4] == "correctness_math_verify: 1 flags for 2 generations"
    assert rejected[6] == "no usable trace (1 incomplete reasoning)"
    assert report.rows_kept == 4 and report.traces_kept == 6
    assert report.dropped_traces["over 200 tokens"] == 1 and report.dropped_traces["duplicate"] == 1
    assert "kept 4 of 8 rows" in report.summary()
    assert report.single_trace_rows == 2 and "2 rows have a single trace" in report.summary()


def test_merge_with_base_adds_a_second_trace():
    whole = "<think>\nbase\n</think>\n\\boxed{5}"
    base = [{"prompt": [SYSTEM, {"role": "user", "content": "What is  2+3?"}], "answer": "5", "expert": [whole]}]
    extra = [
        {
            "prompt": [{"role": "user", "content": "What is 2+3?"}],
            "answer": "5",
            "expert": ["base", "other"],
            "expert_full": ["base\n</think>\n\\boxed{5}", "other\n</think>\n\\boxed{5}"],
        }
    ]
    merged, matched = merge_with_base(base, extra)
    assert matched == 1 and merged[0]["expert"] == ["base", "other"] and merged[0]["prompt"] == base[0]["prompt"]
    assert merged[0]["expert_full"] == extra[0]["expert_full"]  # the base trace, whole, then the new one


def test_prepare_cli(tmp_path, tokenizer, capsys):
    tokenizer.save_pretrained(tmp_path / "tok")
    output = tmp_path / "rows.jsonl"
    argv = [
        "prepare",
        str(FIXTURES / "openr1_sample.jsonl"),
        "--output",
        str(output),
        "--tokenizer",
        str(tmp_path / "tok"),
    ]
    assert main([*argv, "--max-tokens", "200", "--system-prompt", "", "--max-prompt-tokens", "100"]) == 0
    captured = capsys.readouterr()
    assert "row 2: answer: missing or empty" in captured.err
    assert "row 7: prompt: " in captured.err and "tokens > 100" in captured.err
    assert "kept 3 of 8 rows (5 expert traces" in captured.out
    rows = [json.loads(line) for line in output.read_text().splitlines()]
    assert len(rows) == 3 and rows[0]["prompt"] == [{"role": "user", "content": "What is 2+3?"}]
    rejected = [json.loads(line) for line in Path(str(output) + ".rejected.jsonl").read_text().splitlines()]
    assert [r["row"] for r in rejected] == [2, 3, 4, 6, 7]
    assert len(load_training_rows(str(output))) == 3  # the output is valid training data
