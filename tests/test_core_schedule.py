"""Guidance schedule, prefix cutting and group advantages (docs/method.md), checked by hand."""

from __future__ import annotations

import math

import pytest

from trapo.core.schedule import (
    PAPER_SCHEDULE,
    REFERENCE_CODE_SCHEDULE,
    MicroGroup,
    is_guided,
    schedule_size,
    validate_schedule,
)

# --------------------------------------------------------------------------------------------------
# group_advantages
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# cut_prefix
# --------------------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------------------
# schedule
# --------------------------------------------------------------------------------------------------


def test_paper_schedule_matches_design_table():
    rows = [(s.n, s.prefix_ratio) for s in PAPER_SCHEDULE]
    assert rows == [(4, 0.0), (2, 0.25), (1, 0.5), (1, 1.0)]
    assert [s.threshold for s in PAPER_SCHEDULE[1:]] == [0.5, 0.7, 0.9]
    assert not PAPER_SCHEDULE[0].can_guide
    assert all(s.can_guide for s in PAPER_SCHEDULE[1:])
    assert schedule_size(PAPER_SCHEDULE) == 8
    assert validate_schedule(PAPER_SCHEDULE) == tuple(PAPER_SCHEDULE)


def test_reference_code_schedule_differs_only_at_stage3():
    assert validate_schedule(REFERENCE_CODE_SCHEDULE) == tuple(REFERENCE_CODE_SCHEDULE)
    assert schedule_size(REFERENCE_CODE_SCHEDULE) == 8
    for i in (0, 1, 3):
        assert REFERENCE_CODE_SCHEDULE[i] == PAPER_SCHEDULE[i]
    s3 = REFERENCE_CODE_SCHEDULE[2]
    assert (s3.n, s3.prefix_ratio) == (1, 0.5)
    # "sum < 4 of 6": guided for 0..3 successes of 6, not for 4..6
    for k in range(7):
        assert is_guided(s3, [1.0] * k + [0.0] * (6 - k)) == (k < 4), k


def test_paper_worked_example():
    s1, s2, s3, s4 = PAPER_SCHEDULE
    stage1 = [1.0, 0.0, 0.0, 0.0]
    assert not is_guided(s1, [])
    assert is_guided(s2, stage1)  # 1/4 = 0.25 < 0.5 -> guided with 25% prefix
    stage2 = [0.0, 0.0]  # both guided samples fail
    assert is_guided(s3, stage1 + stage2)  # 1/6 < 0.7
    stage3 = [0.0]
    assert is_guided(s4, stage1 + stage2 + stage3)  # 1/7 < 0.9


def test_stage2_threshold_is_strict():
    assert not is_guided(PAPER_SCHEDULE[1], [1.0, 1.0, 0.0, 0.0])  # 0.5 is not < 0.5
    assert is_guided(PAPER_SCHEDULE[1], [1.0, 0.0, 0.0, 0.0])
    assert not is_guided(PAPER_SCHEDULE[1], [1.0, 1.0, 1.0, 0.0])


def test_four_of_six_paper_vs_reference():
    four = [1.0, 1.0, 1.0, 0.0, 1.0, 0.0]  # 4/6 = 0.667
    assert is_guided(PAPER_SCHEDULE[2], four)  # 0.667 < 0.7
    assert not is_guided(REFERENCE_CODE_SCHEDULE[2], four)  # 0.667 >= 0.66
    three = [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    assert is_guided(PAPER_SCHEDULE[2], three)
    assert is_guided(REFERENCE_CODE_SCHEDULE[2], three)
    five = [1.0, 1.0, 1.0, 1.0, 1.0, 0.0]
    assert not is_guided(PAPER_SCHEDULE[2], five)
    assert not is_guided(REFERENCE_CODE_SCHEDULE[2], five)


def test_stage1_never_guided():
    s1 = PAPER_SCHEDULE[0]
    assert not is_guided(s1, [])
    assert not is_guided(s1, [0.0, 0.0, 0.0])
    assert not is_guided(MicroGroup(8), [0.0] * 8)
    assert not is_guided(MicroGroup(2, 0.0, math.inf), [0.0])  # ratio 0 ignores the threshold


def test_stage4_needs_all_seven_correct():
    s4 = PAPER_SCHEDULE[3]
    assert not is_guided(s4, [1.0] * 7)
    assert is_guided(s4, [1.0] * 6 + [0.0])  # 6/7 = 0.857 < 0.9
    for k in range(7):
        assert is_guided(s4, [1.0] * k + [0.0] * (7 - k))


def test_fractional_rewards_use_mean():
    # mean (0.9 + 0.4) / 2 = 0.65: below 0.7, above 0.5
    assert is_guided(PAPER_SCHEDULE[2], [0.9, 0.4])
    assert not is_guided(PAPER_SCHEDULE[1], [0.9, 0.4])


def test_infinite_threshold_always_guided():
    stage = MicroGroup(2, 0.5, math.inf)
    assert is_guided(stage, [1.0] * 6)
    assert is_guided(stage, [0.0])
    validate_schedule([MicroGroup(4), stage])


def test_guided_stage_without_earlier_rewards_raises():
    with pytest.raises(ValueError):
        is_guided(PAPER_SCHEDULE[1], [])


def test_plain_grpo_schedule_is_valid():
    assert validate_schedule([MicroGroup(8)]) == (MicroGroup(8),)
    assert schedule_size([MicroGroup(8)]) == 8


def test_validate_accepts_list_returns_tuple():
    out = validate_schedule(list(PAPER_SCHEDULE))
    assert isinstance(out, tuple) and out == PAPER_SCHEDULE


def test_validate_empty_raises():
    with pytest.raises(ValueError):
        validate_schedule([])


@pytest.mark.parametrize(
    ("schedule", "stage_no"),
    [
        pytest.param([MicroGroup(4), MicroGroup(0, 0.25, 0.5)], 2, id="n=0"),
        pytest.param([MicroGroup(4), MicroGroup(-1, 0.25, 0.5)], 2, id="n<0"),
        pytest.param([MicroGroup(4), MicroGroup(2.0, 0.25, 0.5)], 2, id="n-float"),
        pytest.param([MicroGroup(4), MicroGroup(2, 0.25, 0.5), MicroGroup(1, 1.5, 0.9)], 3, id="ratio>1"),
        pytest.param([MicroGroup(4), MicroGroup(2, -0.1, 0.5)], 2, id="ratio<0"),
        pytest.param([MicroGroup(4), MicroGroup(2, 0.5, 0.5), MicroGroup(1, 0.25, 0.7)], 3, id="descending"),
        pytest.param([MicroGroup(4, 0.25, 0.5), MicroGroup(4, 0.5, 0.5)], 1, id="first-guided"),
        pytest.param([MicroGroup(4), MicroGroup(2, 0.25)], 2, id="no-threshold"),
        pytest.param([MicroGroup(4), MicroGroup(2, 0.25, 0.5), MicroGroup(1, 0.5, math.nan)], 3, id="nan-threshold"),
        pytest.param([MicroGroup(4), (2, 0.25, 0.5)], 2, id="not-a-microgroup"),
    ],
)
def test_validate_errors_name_the_stage(schedule, stage_no):
    with pytest.raises(ValueError, match=rf"stage {stage_no}\b"):
        validate_schedule(schedule)


def test_validate_equal_ratios_allowed():
    validate_schedule([MicroGroup(4), MicroGroup(2, 0.5, 0.5), MicroGroup(2, 0.5, 0.8)])


def test_validate_rejects_boolean_stage_size():
    with pytest.raises(ValueError, match="stage 1"):
        validate_schedule([MicroGroup(True)])
