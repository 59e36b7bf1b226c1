"""The built-in chain task: determinism, disjoint splits, a verifier that accepts the derivation and nothing else."""

from __future__ import annotations

import pytest

from trapo.tasks.chains import (
    HARD_TIERS,
    TIERS,
    TRAIN_TIERS,
    WARM_TIERS,
    WIDTH,
    Expert,
    Problem,
    _reduce_at,
    chain_reward,
    is_held_out,
    make_problems,
    parse_prompt,
    to_rows,
    verify,
)


def test_the_worked_example():
    problem = Problem((4, 2, 7, 5))
    assert problem.prompt == "...4275="
    assert problem.solution() == "....675\n\n.....35\n\n......8\n\nanswer 8"
    assert problem.answer == 8 and problem.tier == 4


def test_the_expert_order_reduces_from_the_other_end_and_is_a_correct_derivation_too():
    problem = Problem((4, 2, 7, 5))
    assert problem.solution("right") == "....422\n\n.....44\n\n......8\n\nanswer 8"
    assert verify(problem.solution("right"), problem)
    mixed = "....675\n\n.....62\n\n......8\n\nanswer 8"  # left, then right: every step legal
    assert verify(mixed, problem)
    with pytest.raises(ValueError, match="order must be one of"):
        problem.steps("middle")


def test_rows_carry_the_derivation_of_the_expert_asked_for():
    problem = Problem((4, 2, 7, 5))
    assert to_rows([problem], Expert("right"))[0]["expert"] == [problem.solution("right")] * 2
    assert to_rows([problem])[0]["expert"] == [problem.solution("left")] * 2
    assert to_rows([problem], Expert(deviation=0.5))[0]["expert"] == [problem.solution("left", 0.5)] * 2


def _reduced_pairs(problem: Problem, lines: list[str]) -> list[tuple[int, int]]:
    """(pair reduced, pairs there were) at each step of a derivation whose pair is unambiguous (with a 0 in the
    middle, as in 4 0 7, two pairs give the same line)."""
    previous, out = list(problem.digits), []
    for line in lines:
        current = [int(c) for c in line.lstrip(".")]
        pairs = [j for j in range(len(previous) - 1) if _reduce_at(previous, j) == current]
        if len(pairs) == 1:
            out.append((pairs[0], len(previous) - 1))
        previous = current
    return out


def test_a_deviating_expert_breaks_its_convention_at_about_that_share_of_steps_and_stays_correct():
    problems = make_problems(300, (5, 6, 7), "train")
    for order, home in (("left", lambda n: 0), ("right", lambda n: n - 1)):
        assert all(p.steps(order, 0.0) == p.steps(order) for p in problems)
        steps = [s for p in problems for s in _reduced_pairs(p, p.steps(order, 0.3)) if s[1] > 1]  # steps with a choice
        off = sum(j != home(n) for j, n in steps) / len(steps)
        assert 0.25 < off < 0.35, off
        assert all(j != home(n) for p in problems for j, n in _reduced_pairs(p, p.steps(order, 1.0)) if n > 1)
        assert all(verify(p.solution(order, d), p) for p in problems for d in (0.3, 1.0))
    # One derivation per problem, whatever the process (seeded by the digits), so training rows are reproducible.
    assert [p.solution("left", 0.3) for p in problems] == [p.solution("left", 0.3) for p in problems]
    assert Problem((4, 2)).steps("left", 1.0) == ["......6"]  # two digits: no other pair to reduce
    with pytest.raises(ValueError, match="deviation must be a probability"):
        Expert(deviation=-0.1)
    with pytest.raises(ValueError, match="order must be one of"):
        Expert(order="middle")


def test_every_line_has_the_same_width_and_reduces_the_chain_by_one():
    for problem in make_problems(60, TIERS, "eval"):
        lines = problem.steps()
        assert len(lines) == problem.tier - 1
        assert all(len(line) == WIDTH for line in lines) and len(problem.prompt) == WIDTH + 1
        digits = [len(line.lstrip(".")) for line in lines]
        assert digits == list(range(problem.tier - 1, 0, -1))
        assert lines[-1].lstrip(".") == str(problem.answer)


def test_generator_is_deterministic_and_seeded():
    a = make_problems(40, TIERS, "train", seed=3)
    assert a == make_problems(40, TIERS, "train", seed=3)
    assert a != make_problems(40, TIERS, "train", seed=4)


def test_train_and_eval_splits_are_disjoint_and_cover_every_tier():
    train = make_problems(600, TRAIN_TIERS, "train")
    held = make_problems(240, TIERS, "eval")
    assert not {p.digits for p in train} & {p.digits for p in held}
    assert all(not is_held_out(p) for p in train) and all(is_held_out(p) for p in held)
    assert {p.tier for p in held} == set(TIERS)
    assert len({p.digits for p in train}) == len(train)  # distinct
    assert set(HARD_TIERS) <= set(TRAIN_TIERS) and not set(HARD_TIERS) & set(WARM_TIERS)
    assert max(TIERS) not in TRAIN_TIERS  # the longest tier is held out entirely: extrapolation


def test_small_tiers_contribute_their_whole_split_when_asked_for_more():
    held = make_problems(100, (2,), "eval")
    train = make_problems(100, (2,), "train")
    assert len(held) + len(train) == 100 and len(held) < 40
    many = make_problems(3000, (3,), "train")  # more than the ~800 that exist: all of them, and it terminates
    assert len(many) == len({p.digits for p in many}) and 700 < len(many) < 900


def test_every_expert_solution_verifies():
    problems = make_problems(120, TIERS, "eval")
    for row, problem in zip(to_rows(problems), problems, strict=True):
        assert row["expert"] == [problem.solution()] * 2
        assert verify(row["expert"][0], problem) and verify(f"  {row['expert'][0]}\n", problem)
        assert chain_reward(row["expert"], [row["prompt"]] * 2) == [1.0, 1.0]
        assert row["answer"] == str(problem.answer) and row["tier"] == problem.tier
        assert parse_prompt(row["prompt"]) == problem


@pytest.mark.parametrize(
    "text",
    [
        "....675\n\nanswer 8",  # stops after one step: right format, missing the rest of the chain
        "....675\n\n.....35\n\n......8\n\nanswer 9",  # wrong final answer
        "....675\n\n.....45\n\n......9\n\nanswer 9",  # a wrong step, consistently carried on
        "....675\n\n.....35\n\n......8",  # no answer line
        "answer 8",  # a guess of the right digit, no derivation
        "...675\n\n.....35\n\n......8\n\nanswer 8",  # a misaligned line
        "....675\n\n......8\n\nanswer 8",  # a step skipped
        "....675\n\n.....35\n\n......8\n\nanswer 8\n\nanswer 8",  # trailing junk
        "....675\n.....35\n......8\nanswer 8",  # wrong line breaks
        "....422\n\n.....35\n\n......8\n\nanswer 8",  # a legal first step, then one from another chain
        "....6.5\n\n.....35\n\n......8\n\nanswer 8",  # padding inside a line
        "....6²5\n\n.....35\n\n......8\n\nanswer 8",  # a character that is a digit to str.isdigit only
        "....675\n\n.....35\n\n.....35\n\n......8\n\nanswer 8",  # a line repeated
        "",
    ],
)
def test_wrong_malformed_or_unjustified_derivations_score_zero(text):
    problem = Problem((4, 2, 7, 5))
    assert not verify(text, problem)
    assert chain_reward([text], [problem.prompt]) == [0.0]


def test_reward_accepts_chat_messages_and_rejects_foreign_prompts():
    p = Problem((1, 2))
    solution = p.solution()
    assert chain_reward([[{"role": "assistant", "content": solution}]], [p.prompt]) == [1.0]
    assert chain_reward([solution], ["what is 1+2?"]) == [0.0]
    assert chain_reward([None], [p.prompt]) == [0.0]
    for bad in ("12=", "....1x2=", "..1234567=", "1+2=", ""):
        assert parse_prompt(bad) is None, bad


@pytest.mark.parametrize("digits", [(5,), (1, 2, 3, 4, 5, 6, 7, 8), (1, 10), (-1, 2)])
def test_problems_outside_the_task_are_refused(digits):
    with pytest.raises(ValueError, match="a chain has 2 to"):
        Problem(digits)


def test_make_problems_refuses_unknown_splits_and_tiers():
    with pytest.raises(ValueError, match="split"):
        make_problems(4, TIERS, "dev")
    with pytest.raises(ValueError, match="do not exist"):
        make_problems(4, (9,), "train")


def test_tiny_model_and_tokenizer_round_trip_through_auto_classes(tmp_path):
    """A saved tiny checkpoint must reload with the same tokenizer: whitespace and "\\n\\n" are tokens."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from trapo.tasks.tiny_model import build_model, build_tokenizer

    tokenizer = build_tokenizer()
    build_model(tokenizer, hidden_size=32, num_layers=1).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    text = Problem((4, 2, 7, 5)).solution()
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded(text)["input_ids"] == tokenizer(text)["input_ids"]
    assert reloaded.decode(reloaded(text)["input_ids"]) == text
    assert AutoModelForCausalLM.from_pretrained(tmp_path).config.vocab_size == len(tokenizer)


def test_valid_and_test_split_the_held_out_space_and_test_is_fresh():
    from trapo.tasks.chains import legacy_eval_problems, split_of

    valid = make_problems(200 * 6, TIERS, "valid")
    test = make_problems(200 * 6, TIERS, "test")
    assert {split_of(p) for p in valid} == {"valid"} and {split_of(p) for p in test} == {"test"}
    assert not {p.digits for p in valid} & {p.digits for p in test}
    assert not {p.digits for p in test} & legacy_eval_problems()  # read before the split: not in the test
    assert all(is_held_out(p) for p in valid + test)
    assert sum(p.tier == 6 for p in test) == 200  # the hard tier: at least 200 fresh problems
    assert make_problems(200 * 6, TIERS, "test") == test  # deterministic


def test_a_mixture_expert_writes_whole_derivations_in_the_other_convention_at_that_rate():
    from trapo.tasks.chains import Expert

    problems = make_problems(400, (5,), "train")
    expert = Expert(mixture=0.3)
    orders = [expert.order_for(p) for p in problems]
    assert 0.22 < orders.count("right") / len(orders) < 0.38
    for problem, order in zip(problems, orders, strict=True):
        assert expert.solution(problem) == problem.solution(order)  # the whole trace, not single steps
        assert verify(expert.solution(problem), problem)
    assert Expert().order_for(problems[0]) == "left"
    with pytest.raises(ValueError, match="mixture must be a probability"):
        Expert(mixture=1.5)
