"""The built-in chain task: determinism, splits, and a verifier that accepts every expert and nothing else."""

from __future__ import annotations

import pytest

from trapo.tasks.chains import (
    TIERS,
    Problem,
    chain_reward,
    is_held_out,
    make_problems,
    parse_prompt,
    to_rows,
    verify,
)


def test_generator_is_deterministic_and_seeded():
    a = make_problems(40, TIERS, "train", seed=3)
    assert a == make_problems(40, TIERS, "train", seed=3)
    assert a != make_problems(40, TIERS, "train", seed=4)


def test_train_and_eval_splits_are_disjoint_and_cover_every_tier():
    train = make_problems(200, (2, 3, 4), "train", seed=0)
    held = make_problems(200, TIERS, "eval", seed=0)
    assert not {p.operands for p in train} & {p.operands for p in held}
    assert all(not is_held_out(p) for p in train) and all(is_held_out(p) for p in held)
    assert {p.tier for p in held} == set(TIERS)
    assert len({p.operands for p in train}) == len(train)  # distinct


def test_every_expert_solution_verifies_and_has_paragraph_steps():
    problems = make_problems(200, TIERS, "eval", 0)
    for row, problem in zip(to_rows(problems), problems, strict=True):
        assert len(row["expert"]) == 2 and row["expert"][0] != row["expert"][1]
        for trace in row["expert"]:
            assert verify(trace, problem.operands)
            assert trace.count("\n\n") >= problem.tier - 1
        assert chain_reward(row["expert"], [row["prompt"]] * 2) == [1.0, 1.0]
        assert row["answer"] == str(sum(problem.operands) % 10)


@pytest.mark.parametrize(
    "text",
    [
        "3+5=8\n\nanswer 8",  # stops after one step: right format, missing the rest of the chain
        "3+5=8\n\n8+8=6\n\n6+2=8\n\nanswer 9",  # wrong final answer
        "3+5=8\n\n8+8=7\n\n7+2=9\n\nanswer 9",  # a wrong step, consistently carried on
        "3+5=8\n\n8+2=0\n\n0+8=8\n\nanswer 8",  # right answer, operands in the wrong order
        "answer 8",  # a guess of the right digit, no derivation
        "start 3\n\nadd 5 get 8\n\n8+8=6\n\nadd 2 get 8\n\nanswer 8",  # styles mixed
        "3+5=8\n\n8+8=6\n\n6+2=8\n\nanswer 8\n\nanswer 8",  # trailing junk
        "",
    ],
)
def test_wrong_or_unjustified_answers_score_zero(text):
    problem = Problem((3, 5, 8, 2))
    assert problem.answer == 8
    assert not verify(text, problem.operands)
    assert chain_reward([text], [problem.prompt]) == [0.0]


def test_reward_accepts_chat_messages_and_rejects_foreign_prompts():
    p = Problem((1, 2))
    assert chain_reward([[{"role": "assistant", "content": "1+2=3\n\nanswer 3"}]], [p.prompt]) == [1.0]
    assert chain_reward(["1+2=3\n\nanswer 3"], ["what is 1+2?"]) == [0.0]
    assert parse_prompt("mod 10: 1+2+3=") == (1, 2, 3) and parse_prompt("1+2=") is None


def test_tiny_model_and_tokenizer_round_trip_through_auto_classes(tmp_path):
    """A saved tiny checkpoint must reload with the same tokenizer: whitespace and "\\n\\n" are tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trapo.tasks.tiny_model import build_model, build_tokenizer

    tokenizer = build_tokenizer()
    build_model(tokenizer, hidden_size=32, num_layers=1).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    text = "start 3\n\nadd 8 get 1\n\nanswer 1"
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert reloaded.decode(reloaded(text)["input_ids"]) == text
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config.vocab_size == len(tokenizer)
