"""The two grading protocols of `trapo eval` (``--grading trapo | released``) and the OAT grader's rules
(`trapo.eval.oat_grader`), on hand-made cases: first vs last ``</think>``, a missing one, several boxes, the OAT
fallback; the released evaluation's ``simplerl`` prompt; the MMLU-Pro loader on a hand-made file."""

from __future__ import annotations

import pytest

from trapo.eval.benchmarks import Problem
from trapo.eval.grading import Grader
from trapo.eval.oat_grader import (
    boxed_reward,
    extract_answer,
    mathd_normalize,
    split_tuple,
    sympy_equal,
    sympy_normalize,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (r"first \boxed{1} then \boxed{2}", "2"),  # the last box
        (r"\boxed{\frac{1}{2}}", r"\frac{1}{2}"),  # nested braces
        (r"\fbox{3}", None),  # found, but only \boxed{...} is read
        (r"\boxed 5", None),  # no braces
        (r"\boxed{5", None),  # unbalanced
        ("no box", None),
    ],
)
def test_the_grader_reads_the_last_boxed_answer(text, expected):
    assert extract_answer(text) == expected


@pytest.mark.parametrize(
    ("raw", "normalised"),
    [
        (r"\frac12", r"\frac{1}{2}"),
        (r"\dfrac1{72}", r"\frac{1}{72}"),
        (r"\sqrt3", r"\sqrt{3}"),
        ("3/4", r"\frac{3}{4}"),
        ("0.5", r"\frac{1}{2}"),
        (".25", "0.25"),  # a leading point gets its zero
        (".5", r"\frac{1}{2}"),  # ... and then 0.5 is a half
        ("x = 5", "5"),  # a short left-hand side goes
        (r"5 \text{ cm}", "5"),  # units after the answer go
        (r"\left( 1, 2 \right)", "(1,2)"),
        (r"10\%", "10"),
        (r"\text{even}", "even"),
        (r"90^\circ", "90"),
    ],
)
def test_the_math_normaliser_rules(raw, normalised):
    assert mathd_normalize(raw) == normalised


def test_the_sympy_normaliser_and_tuples():
    assert sympy_normalize("1,000,000") == "1000000" and sympy_normalize("3 million") == "3*10^6"
    assert sympy_normalize("7 3/4") == "7+3/4" and sympy_normalize(r"\$5.00") == "5"
    assert sympy_normalize("12 inches") == "12" and sympy_normalize(r"\frac{\pi}{2}") == "pi/2"
    assert split_tuple("(1,2)") == ["1", "2"] and split_tuple("[1,(2)]") == ["[1,(2)]"] and split_tuple("5") == ["5"]
    assert sympy_equal("7 3/4", r"\frac{31}{4}")  # a mixed number equals its improper fraction
    assert sympy_equal(r"\sqrt{2}/2", r"\frac{1}{\sqrt{2}}")  # sympy simplifies the difference to 0
    assert not sympy_equal("2/4", "1/2")  # fractions compare exactly: an unreduced one is not the answer
    assert not sympy_equal("(1,2)", "[1,2]")  # open and closed intervals differ
    assert not sympy_equal("2.0001", "2")  # an integer answer needs an integer


def test_the_oat_grader_accepts_what_each_of_its_three_tests_accepts():
    assert boxed_reward(r"so \boxed{5 \text{ cm}}", "5")  # the MATH normaliser
    assert boxed_reward(r"\boxed{7 3/4}", r"\frac{31}{4}")  # sympy
    assert boxed_reward(r"\boxed{\frac{\sqrt{3}}{2}}", r"\sqrt{3}/2")  # equal as LaTeX
    assert boxed_reward(r"\boxed{3}", r"\boxed{3}")  # a boxed gold answer is unboxed first
    assert not boxed_reward(r"\boxed{2}, \boxed{3}", "2, 3")  # only the last box
    assert not boxed_reward("The answer is 7.", "7")  # no box: wrong


def problem(answer: str) -> Problem:
    return Problem("math", 0, (("user", "q"),), answer)


@pytest.fixture(scope="module")
def graders():
    pair = {name: Grader(timeout=10.0, num_workers=0, grading=name) for name in ("trapo", "released")}
    yield pair
    for grader in pair.values():
        grader.close()


def grade(grader, answer, completion, prompt=None) -> bool:
    return grader.grade([problem(answer)], [[completion]], [prompt])[0][0][0]


THINK_PROMPT = "<|im_start|>assistant\n<think>\n"


def test_released_grading_reads_between_the_first_and_the_second_think_close(graders):
    completion = r"reasoning </think> so \boxed{4} </think> wait, \boxed{5}"
    assert grade(graders["released"], "4", completion, THINK_PROMPT)  # after the first </think>
    assert not grade(graders["released"], "5", completion, THINK_PROMPT)
    assert grade(graders["trapo"], "5", completion, THINK_PROMPT)  # after the last
    assert not grade(graders["trapo"], "4", completion, THINK_PROMPT)


def test_released_grading_counts_a_missing_think_close_wrong_only_when_the_prompt_opens_one(graders):
    completion = r"reasoning that never closes \boxed{4}"
    assert not grade(graders["released"], "4", completion, THINK_PROMPT)
    assert grade(graders["released"], "4", completion, "<|im_start|>assistant\n")  # a plain prompt: the whole text
    assert grade(graders["trapo"], "4", completion, THINK_PROMPT)  # trapo grades the whole text


def test_released_grading_credits_several_boxes_and_falls_back_to_the_oat_grader(graders):
    two_boxes = r"The roots are \boxed{2} and \boxed{3}."
    assert grade(graders["released"], "2, 3", two_boxes)  # Math-Verify on the whole text reads both
    assert not grade(graders["trapo"], "2, 3", two_boxes)  # the last box alone is 3
    mixed = r"so \boxed{7 3/4}"
    assert grade(graders["released"], r"\frac{31}{4}", mixed)  # Math-Verify says no, the OAT grader yes
    assert not grade(graders["trapo"], r"\frac{31}{4}", mixed)
    assert not grade(graders["released"], "8", r"\boxed{7}")


def test_a_bad_grading_name_is_refused():
    from trapo.rewards.math import MathReward

    with pytest.raises(ValueError, match="grading must be one of"):
        MathReward(grading="lenient")


def test_the_simplerl_prompt_differs_from_trapos_by_two_bytes():
    from trapo.data.text import restyle_prompt

    chat = [{"role": "system", "content": "dataset system"}, {"role": "user", "content": "What is 1+1?"}]
    trapo = restyle_prompt(chat, "trapo")[1]["content"]
    simplerl = restyle_prompt(chat, "simplerl")[1]["content"]
    assert simplerl.endswith("final answer within\\boxed{{}}.") and trapo.endswith("final answer within \\boxed{}.")
    assert len(simplerl) - len(trapo) == 1  # a space fewer, two braces more: two bytes changed, one added
    assert restyle_prompt(chat, "simplerl")[0] == restyle_prompt(chat, "trapo")[0]


def test_mmlu_pro_loads_from_its_public_layout(tmp_path):
    import pandas as pd

    from trapo.eval.benchmarks import load_benchmark
    from trapo.eval.grading import extract_choice

    rows = [
        {"question": "Which is a prime?", "options": ["4", "6", "7", "8", "9", "10", "12", "14", "15", "16"],
         "answer": "C", "answer_index": 2, "category": "math"},
        {"question": "Pick B.", "options": ["x", "y", "z"], "answer": "B", "answer_index": 1, "category": "other"},
    ]  # fmt: skip
    pd.DataFrame(rows).to_parquet(tmp_path / "mmlu_pro.parquet")
    problems = load_benchmark("mmlu_pro", tmp_path)
    assert [p.answer for p in problems] == ["C", "B"]
    assert problems[0].choices == tuple("ABCDEFGHIJ") and problems[1].choices == ("A", "B", "C")
    assert problems[0].question.splitlines()[1:4] == ["(A) 4", "(B) 6", "(C) 7"]
    assert extract_choice(r"so the answer is \boxed{J}", problems[0].choices) == "J"  # ten labels, not five
    grader = Grader(num_workers=0)
    assert grader.grade(problems, [[r"\boxed{C}", "the answer is (A)"], ["B"]])[0][0] == [True, False]
    pd.DataFrame([{**rows[1], "answer": "Z"}]).to_parquet(tmp_path / "mmlu_pro.parquet")
    with pytest.raises(ValueError, match="answer 'Z' is not one of its option letters"):
        load_benchmark("mmlu_pro", tmp_path)
