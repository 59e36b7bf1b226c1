"""Math-Verify reward: verdicts, extraction, the hard timeout (alarm and killed worker), TRL compatibility."""

from __future__ import annotations

import inspect
import logging
import os
import pickle
import signal
import threading
import time

import pytest

from trapo.rewards import MathReward, math_reward, reward_stats
from trapo.rewards.math_pool import _KILL_GRACE_S
from trapo.rewards.verify import gold_text, last_boxed, prediction_text

TIMEOUT = 1.0
PATHOLOGICAL = "\\boxed{9^{9^{9^{9}}}}"
REASONING = "We expand $(x+1)^2 = x^2 + 2x + 1$ and compare coefficients, so $a = 3$ and $b = 7$.\n\n"

# (completion, answer, expected reward)
VERDICTS = [
    # fractions
    ("\\boxed{\\frac{1}{2}}", "1/2", 1.0),
    ("So $x = 0.5$, i.e. \\boxed{0.5}", "\\frac{1}{2}", 1.0),
    ("\\boxed{\\dfrac{2}{4}}", "0.5", 1.0),
    ("\\boxed{\\frac12}", "\\frac{1}{2}", 1.0),
    ("\\boxed{0.3333}", "\\frac{1}{3}", 0.0),
    ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt3}{2}", 1.0),
    # LaTeX vs plain
    ("The answer is 1/2", "\\frac{1}{2}", 1.0),
    ("\\boxed{3\\sqrt{2}}", "\\sqrt{18}", 1.0),
    ("\\boxed{x^{2}+1}", "1+x^2", 1.0),
    ("\\boxed{\\sqrt{2}}", "sqrt(2)", 1.0),
    ("\\boxed{\\pi}", "3.14159265358979", 1.0),
    ("\\boxed{1{,}000}", "1000", 1.0),
    ("\\boxed{\\{1, 2\\}}", "\\{2,1\\}", 1.0),
    ("\\boxed{\\text{(C)}}", "C", 1.0),
    # units
    ("\\boxed{5 \\text{ cm}}", "5", 1.0),
    ("\\boxed{90^\\circ}", "90", 1.0),
    ("\\boxed{12\\,\\mathrm{m}}", "12", 1.0),
    ("\\boxed{\\$5}", "5", 1.0),
    ("\\boxed{5}", "6 \\text{ cm}", 0.0),
    # several boxes: the last balanced one counts
    ("First \\boxed{3}, but wait, actually \\boxed{4}", "4", 1.0),
    ("First \\boxed{3}, but wait, actually \\boxed{4}", "3", 0.0),
    ("\\boxed{4} ... hmm, so \\fbox{5}", "5", 1.0),
    ("\\boxed{7} and then, cut off by the length limit, \\boxed{\\frac{8", "7", 1.0),
    # no box: the tail of the text
    ("The answer is 42.", "42", 1.0),
    ("42 is wrong; the final answer is 41", "42", 0.0),
    ("Therefore $x = \\frac{3}{4}$", "0.75", 1.0),
    # empty
    ("", "42", 0.0),
    ("   \n", "42", 0.0),
    ("\\boxed{}", "42", 0.0),
    # wrong
    ("\\boxed{-3}", "3", 0.0),
    ("\\boxed{(1,2)}", "[1,2]", 0.0),
    ("\\boxed{\\sqrt{3}}", "\\sqrt{2}", 0.0),
    ("\\boxed{C}", "B", 0.0),
    # answer column types
    ("\\boxed{7}", 7, 1.0),
    ("\\boxed{0.25}", 0.25, 1.0),
    ("\\boxed{7}", "$7$", 1.0),
    ("\\boxed{7}", None, 0.0),
    ("\\boxed{7}", "", 0.0),
    # chat messages: the last assistant turn
    ([{"role": "assistant", "content": "\\boxed{7}"}], "7", 1.0),
    (
        [
            {"role": "assistant", "content": "let me check"},
            {"role": "tool", "content": "\\boxed{9}"},
            {"role": "assistant", "content": [{"type": "text", "text": "so \\boxed{8}"}]},
        ],
        "8",
        1.0,
    ),
    # pathological and malformed
    (PATHOLOGICAL, "42", 0.0),
    ("x" * 100_000, "42", 0.0),
    (REASONING * 1200 + "Final answer: \\boxed{42}", "42", 1.0),  # ~100 kB, correct
    ("\\boxed{" * 20_000, "42", 0.0),
    ("1+" * 50_000, "42", 0.0),
    ("\ud800 lone surrogate, then \\boxed{1}", "1", 1.0),
    (None, "1", 0.0),
    (12345, "12345", 1.0),
]


@pytest.fixture(scope="module")
def reward():
    r = MathReward(timeout=TIMEOUT, num_workers=2, name="math_test")
    r(["\\boxed{1}"], ["1"])  # start the workers outside the timed tests
    yield r
    r.close()


@pytest.fixture(scope="module")
def verdicts(reward):
    """All verdicts from one batched call, as TRL makes it."""
    completions, answers, _ = zip(*VERDICTS, strict=True)
    return reward(list(completions), list(answers))


@pytest.mark.parametrize("index", range(len(VERDICTS)), ids=[repr(v[0])[:40] for v in VERDICTS])
def test_verdict(verdicts, index):
    completion, answer, expected = VERDICTS[index]
    assert verdicts[index] == expected, (completion if isinstance(completion, str) else completion, answer)


def test_pathological_answer_times_out_within_bound(reward):
    metrics = []
    before = reward_stats()
    start = time.monotonic()
    scores = reward([PATHOLOGICAL, "\\boxed{42}"], ["42", "42"], log_metric=lambda k, v: metrics.append((k, v)))
    elapsed = time.monotonic() - start
    assert scores == [0.0, 1.0]
    assert TIMEOUT * 0.9 <= elapsed < TIMEOUT + _KILL_GRACE_S + 1.0  # the worker's own alarm fired
    after = reward_stats()
    assert after["timeouts"] == before.get("timeouts", 0) + 1
    assert ("rewards/math_timeouts", 1.0) in metrics and ("rewards/math_parse_failures", 0.0) in metrics


def test_hung_worker_is_killed_and_replaced():
    """A worker stuck where no alarm reaches (simulated by SIGSTOP) is killed after timeout + grace."""
    r = MathReward(timeout=0.5, num_workers=2)
    try:
        deadline = time.monotonic() + 30
        while r._pool is None or not all(w.ready for w in r._pool.workers):  # both must be busy with an item
            assert r(["\\boxed{1}"] * 4, ["1"] * 4) == [1.0] * 4 and time.monotonic() < deadline
        old_pids = [w.proc.pid for w in r._pool.workers]
        for pid in old_pids:
            os.kill(pid, signal.SIGSTOP)
        start = time.monotonic()
        scores = r(["\\boxed{1}"] * 3, ["1"] * 3)
        elapsed = time.monotonic() - start
        assert scores == [0.0, 0.0, 1.0]  # the two items sent to frozen workers time out; the third gets a new one
        assert 0.5 + _KILL_GRACE_S <= elapsed < 20
        assert not set(old_pids) & {w.proc.pid for w in r._pool.workers}
        # a worker that died while idle is replaced before its item is sent: no zero for a valid answer. Wait until
        # the replacements have started: one killed while still importing sympy counts as a failed start instead.
        while not all(w.ready for w in r._pool.workers):
            assert r(["\\boxed{1}"] * 4, ["1"] * 4) == [1.0] * 4 and time.monotonic() < deadline + 30
        r._pool.workers[0].proc.kill()
        r._pool.workers[0].proc.wait()
        assert r(["\\boxed{2}"] * 2, ["2"] * 2) == [1.0, 1.0]
        # a call interrupted mid-item (Ctrl-C) leaves a stale answer in flight: the next call must not read it
        r._pool.workers[0].send(5, ["\\boxed{1}", "\\boxed{2}", 1.0], time.monotonic() + 5)
        assert r(["\\boxed{3}"], ["3"]) == [1.0]
        assert r.num_workers == 2 and r._pool is not None  # and the pool did not fail over to in-process scoring
    finally:
        r.close()


def test_in_process_mode_main_thread_alarm_and_threads():
    r = MathReward(timeout=0.5, num_workers=0)
    start = time.monotonic()
    assert r([PATHOLOGICAL, "\\boxed{\\frac{1}{2}}"], ["42", "0.5"]) == [0.0, 1.0]
    assert time.monotonic() - start < 0.5 + 2.0
    out = []
    thread = threading.Thread(target=lambda: out.append(r(["\\boxed{1/2}", "\\boxed{3}"], ["0.5", "4"])))
    thread.start()
    thread.join(30)
    assert out == [[1.0, 0.0]]  # no SIGALRM off the main thread, but no crash either


def test_pool_from_a_thread(reward):
    out = []
    thread = threading.Thread(target=lambda: out.append(reward([PATHOLOGICAL, "\\boxed{2}"], ["1", "2"])))
    thread.start()
    thread.join(30)
    assert out == [[0.0, 1.0]]


def test_timeout_warning_is_rate_limited(caplog):
    r = MathReward(timeout=0.3, num_workers=0)
    with caplog.at_level(logging.WARNING, logger="trapo.rewards"):
        r([PATHOLOGICAL], ["1"])
        r([PATHOLOGICAL], ["1"])
    warnings = [rec for rec in caplog.records if rec.name == "trapo.rewards"]
    assert len(warnings) == 1 and "timeout" in warnings[0].getMessage()


def test_parse_failures_are_counted():
    before = reward_stats().get("parse_failures", 0)
    metrics = {}
    MathReward(num_workers=0)(["no answer here", "\\boxed{1}"], [None, None], log_metric=metrics.__setitem__)
    assert reward_stats()["parse_failures"] == before + 2
    assert metrics["rewards/math_parse_failures"] == 2.0


def test_trl_compatibility():
    # TRL 1.16 names a reward by getattr(f, "__name__", type(f).__name__) and awaits it when f.__call__ is a
    # coroutine function (trl.trainer.utils.get_callable_name / is_async_callable; not imported: it costs seconds)
    assert getattr(math_reward, "__name__", None) == "math_reward"
    assert not inspect.iscoroutinefunction(math_reward.__call__)
    assert MathReward(name="boxed").__name__ == "boxed"
    # TRL passes every dataset column and its own hooks as keyword arguments
    r = MathReward(num_workers=0)
    kwargs = dict(prompts=["q"], completion_ids=[[1]], trainer_state=None, log_extra=print, log_metric=None)
    assert r(["\\boxed{3}"], answer=["3"], expert=[["..."]], **kwargs) == [1.0]
    with pytest.raises(ValueError):
        r(["a", "b"], ["1"])


def test_picklable_after_use(reward):
    clone = pickle.loads(pickle.dumps(reward))
    assert clone._pool is None and clone.__name__ == "math_test"
    clone.num_workers = 0
    assert clone(["\\boxed{5}"], ["5"]) == [1.0]


def test_extraction_helpers():
    assert last_boxed("a \\boxed{1} b \\boxed{ {2}+\\{3\\} } c") == " {2}+\\{3\\} "
    assert last_boxed("\\fbox{1} then \\boxed{2}") == "2"
    assert last_boxed("\\boxed{1} then \\boxed{2") == "1"
    assert last_boxed("\\boxed 5") is None and last_boxed("no box") is None
    assert last_boxed("\\boxed{" + "1" * 50 + "}", max_chars=10) is None  # longer than any answer
    assert prediction_text("x" * 10_000 + " 42", max_chars=100) == "x" * 97 + " 42"
    assert prediction_text(REASONING * 1000 + "\\boxed{42}" + REASONING * 100) == "\\boxed{42}"
    assert gold_text(3) == "\\boxed{3}" and gold_text("$\\frac12$") == "\\boxed{\\frac12}"
    assert gold_text("\\boxed{3}") == "\\boxed{3}" and gold_text("  ") is None and gold_text(None) is None


def test_think_format_reward_needs_a_closed_think_block():
    """LUFFY's reward (reward_impl_version=3): no </think> scores 0; the answer is read after the first </think>."""
    from trapo.rewards import MathReward

    reward = MathReward(num_workers=0, require_think_close=True)
    completions = [
        "reasoning...</think>\n\nso the answer is \\boxed{5}",  # closed, right answer after it
        "reasoning... \\boxed{5}",  # right answer, never closed the block
        "it is \\boxed{5}</think>\n\nfinal: \\boxed{6}",  # the answer after </think> is wrong
        [{"role": "assistant", "content": "ok</think>\\boxed{5}"}],  # chat completions too
    ]
    assert reward(completions, answer="5") == [1.0, 0.0, 0.0, 1.0]
    plain = MathReward(num_workers=0)
    assert plain(completions, answer="5") == [1.0, 1.0, 0.0, 1.0]  # the default reward has no format check


def test_the_released_rewards_read_the_whole_text_so_several_boxes_count():
    """TRAPO's v4 and LUFFY's v3 rewards parse the whole text with Math-Verify's own extraction: an answer given in
    two boxes is right for "2, 3", where `math` reads the last box only."""
    from trapo.rewards import REWARDS
    from trapo.rewards.math import math_released_reward, math_think_released_reward

    whole = MathReward(num_workers=0, grading="whole")
    completions = ["x is \\boxed{2} and y is \\boxed{3}", "The answer is 5.", "no answer here"]
    answers = ["2, 3", "5", "5"]
    assert whole(completions, answer=answers) == [1.0, 1.0, 0.0]
    assert MathReward(num_workers=0)(completions, answer=answers) == [0.0, 1.0, 0.0]  # the last box; no box: the tail
    think = MathReward(num_workers=0, grading="whole", require_think_close=True)
    assert think(["<think>\\boxed{7}</think> \\boxed{2} and \\boxed{3}", "\\boxed{2} and \\boxed{3}"], "2, 3") == [
        1.0,
        0.0,  # no </think>: wrong, as v3
    ]
    assert REWARDS["math_released"].endswith(":math_released_reward") and math_released_reward.grading == "whole"
    assert REWARDS["math_think_released"].endswith(":math_think_released_reward")
    assert math_think_released_reward.require_think_close
    with pytest.raises(ValueError, match="grading must be one of"):
        MathReward(grading="oat")
