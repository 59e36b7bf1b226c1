"""Checks on training data (trapo.data.validation): a bad row, column or tokenizer fails before training, naming
row, field and fix (docs/errors.md); single-trace and over-long rows are counted and warned about."""

from __future__ import annotations

import pytest
from conftest import addition_rows, constant_reward, tiny_config
from datasets import Dataset

from trapo.trainer import TRAPOTrainer


def _rows(**change):
    rows = addition_rows(4)
    rows[2] = {**rows[2], **change}
    return rows


@pytest.mark.parametrize(
    ("rows", "overrides", "message"),
    [
        ([{k: v for k, v in r.items() if k != "prompt"} for r in addition_rows(4)], {}, r"no column\(s\) \['prompt'\]"),
        ([{k: v for k, v in r.items() if k != "answer"} for r in addition_rows(4)], {}, "answer_column=None"),
        ([{k: v for k, v in r.items() if k != "expert"} for r in addition_rows(4)], {}, r"\['expert'\].*rename"),
        (_rows(expert=[]), {}, "row 2: expert: expected a non-empty list"),
        (_rows(expert=["fine", "  "]), {}, "row 2: expert: trace 1 is not a non-empty string"),
        (_rows(answer=""), {}, "row 2: answer: missing or empty"),
        ([{**r, "answer": 7} for r in addition_rows(4)], {}, r"row 0: answer: expected a string, got int.*str\("),
        (_rows(prompt="9" * 40), {"max_prompt_length": 20}, "row 2: prompt: 40 tokens > max_prompt_length 20"),
    ],
)
def test_bad_rows_fail_before_training_naming_row_field_and_fix(make_trainer, rows, overrides, message):
    with pytest.raises(ValueError, match=message):
        make_trainer(rows=rows, **overrides)


def test_non_string_expert_trace_is_named(make_trainer):
    # Arrow cannot hold a list mixing strings and numbers, so the bad trace is a null inside the list.
    with pytest.raises(ValueError, match="row 2: expert: trace 0 is not a non-empty string"):
        make_trainer(rows=_rows(expert=[None, "x"]))


def test_empty_dataset_and_missing_dataset(tmp_path):
    empty = Dataset.from_dict({"prompt": [], "answer": [], "expert": []})
    with pytest.raises(ValueError, match="dataset is empty"):
        TRAPOTrainer(model=None, reward_funcs=constant_reward(0), args=tiny_config(tmp_path), train_dataset=empty)
    with pytest.raises(ValueError, match="needs a train_dataset"):
        TRAPOTrainer(model=None, reward_funcs=constant_reward(0), args=tiny_config(tmp_path), train_dataset=None)


def test_answer_column_none_lets_rewards_without_answers_train(make_trainer):
    rows = [{k: v for k, v in r.items() if k != "answer"} for r in addition_rows(2)]
    trainer = make_trainer(rows=rows, answer_column=None, per_device_train_batch_size=8, max_steps=1)
    trainer.train()
    assert trainer.state.global_step == 1


@pytest.mark.parametrize("missing", ["eos_token", "pad_token"])
def test_tokenizer_without_eos_or_pad(make_trainer, missing):
    from trapo.tasks.tiny_model import build_tokenizer

    tokenizer = build_tokenizer()
    setattr(tokenizer, missing, None)
    if missing == "pad_token":  # TRL pads with the EOS token then, which works: the check sees the fixed tokenizer
        assert make_trainer(tokenizer=tokenizer)._tokenizer.pad_token == tokenizer.eos_token
        return
    with pytest.raises(ValueError, match=f"tokenizer has no {missing}"):
        make_trainer(tokenizer=tokenizer)


def test_single_trace_rows_are_counted_and_warned_about(make_trainer, caplog):

    rows = [{"prompt": "1+1=", "answer": "2", "expert": ["one trace"]}] * 3
    rows += [{"prompt": "2+2=", "answer": "4", "expert": ["a", "b"]}]
    with caplog.at_level("WARNING", logger="trapo.data.validation"):
        make_trainer(rows=rows)
    assert "3 of 4 training rows have a single expert trace" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING", logger="trapo.data.validation"):  # luffy imitates the first trace: no fallback
        make_trainer(rows=rows, method="luffy")
    assert "single expert trace" not in caplog.text


@pytest.mark.parametrize("policy", ["keep", "drop", "error"])
def test_overlong_expert_traces_are_counted_before_training(make_trainer, caplog, policy):

    rows = addition_rows(4)
    rows[1] = {**rows[1], "expert": ["x" * 40, "short"]}  # 40 tokens + EOS > a budget of 32
    rows[3] = {**rows[3], "expert": ["fine", "y" * 35]}  # the full-trace stage's second trace

    def build():
        return make_trainer(rows=rows, per_device_train_batch_size=8, overlong_traces=policy, max_completion_length=32)

    if policy == "error":
        with pytest.raises(ValueError, match=r"2 of 4 training rows have an expert trace longer than .* 40 tokens"):
            build()
        return
    with caplog.at_level("WARNING", logger="trapo.data.validation"):
        trainer = build()
    assert "2 of 4 training rows have an expert trace longer than max_completion_length (32 tokens" in caplog.text
    assert "the longest is 40 tokens): rows [1, 3]" in caplog.text
    assert len(trainer.train_dataset) == (2 if policy == "drop" else 4)
