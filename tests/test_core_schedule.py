"""Guidance schedule, prefix cutting and group advantages (docs/method.md), checked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from trapo.core.advantages import group_advantages
from trapo.core.prefix import cut_prefix
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


def test_advantages_two_groups_mean_only():
    rewards = [1, 0, 0, 0, 1, 1, 0, 1] + [1, 0, 0, 0]
    ids = [0] * 8 + [1] * 4
    adv = group_advantages(torch.tensor(rewards, dtype=torch.float32), ids)
    # group 0 mean 4/8 = 0.5, group 1 mean 1/4 = 0.25
    expected = [0.5, -0.5, -0.5, -0.5, 0.5, 0.5, -0.5, 0.5] + [0.75, -0.25, -0.25, -0.25]
    torch.testing.assert_close(adv, torch.tensor(expected))


def test_advantages_interleaved_arbitrary_group_labels():
    rewards = torch.tensor([1.0, 0.0, 0.0, 0.5, 1.0, 0.5])
    ids = torch.tensor([7, 3, 7, 3, 7, 3])
    adv = group_advantages(rewards, ids)
    m7 = (1.0 + 0.0 + 1.0) / 3
    m3 = (0.0 + 0.5 + 0.5) / 3
    expected = [1.0 - m7, 0.0 - m3, 0.0 - m7, 0.5 - m3, 1.0 - m7, 0.5 - m3]
    torch.testing.assert_close(adv, torch.tensor(expected))


def test_advantages_scaled_by_unbiased_std():
    rewards = [1, 0, 0, 0, 1, 1, 0, 1] + [1, 0, 0, 0]
    ids = [0] * 8 + [1] * 4
    eps = 1e-6
    adv = group_advantages(torch.tensor(rewards, dtype=torch.float32), ids, scale=True, eps=eps)
    # group 0: mean 0.5, squared deviations 8 * 0.25 = 2, unbiased var 2/7
    std0 = math.sqrt(2.0 / 7.0)
    # group 1: mean 0.25, squared deviations 0.5625 + 3 * 0.0625 = 0.75, unbiased var 0.75/3 = 0.25
    std1 = 0.5
    expected = [(r - 0.5) / (std0 + eps) for r in rewards[:8]] + [(r - 0.25) / (std1 + eps) for r in rewards[8:]]
    torch.testing.assert_close(adv, torch.tensor(expected, dtype=torch.float32))
    assert adv[8].item() == pytest.approx(1.5, rel=1e-5)


def test_advantages_group_of_one_is_zero_not_nan():
    rewards = torch.tensor([1.0, 1.0, 0.0, 0.3])
    ids = [0, 1, 1, 2]  # groups 0 and 2 have one sample
    for scale in (False, True):
        adv = group_advantages(rewards, ids, scale=scale)
        assert not torch.isnan(adv).any()
        assert adv[0].item() == 0.0 and adv[3].item() == 0.0
    assert group_advantages(rewards, ids)[1].item() == pytest.approx(0.5)


def test_advantages_constant_group_scaled_is_zero():
    adv = group_advantages(torch.ones(8), [0] * 8, scale=True)
    torch.testing.assert_close(adv, torch.zeros(8))


def test_advantages_shape_mismatch_raises():
    with pytest.raises(ValueError):
        group_advantages(torch.tensor([1.0, 0.0, 1.0]), [0, 0])
    with pytest.raises(ValueError):
        group_advantages(torch.ones(2, 2), torch.zeros(2, 2, dtype=torch.long))


# --------------------------------------------------------------------------------------------------
# cut_prefix
# --------------------------------------------------------------------------------------------------

BR = 99  # paragraph-break token id


def _trace(n: int, breaks: tuple[int, ...] = ()) -> list[int]:
    return [BR if i in breaks else 1 + (i % 7) for i in range(n)]


def test_cut_boundary_inside_window_cuts_right_after_it():
    # n = 20, ratio 0.25: k = 5, window ends before 0.55 * 20 = 11; break at 8 -> prefix of 9 tokens
    assert cut_prefix(_trace(20, (8,)), 0.25, {BR}) == 9


def test_cut_first_boundary_after_k_is_used():
    assert cut_prefix(_trace(20, (7, 9)), 0.25, {BR}) == 8


def test_cut_boundary_just_inside_window():
    # index 10 < 11 -> taken
    assert cut_prefix(_trace(20, (10,)), 0.25, {BR}) == 11


def test_cut_boundary_outside_window_falls_back_to_floor():
    # break at 12 >= 11 -> cut at k = 5
    assert cut_prefix(_trace(20, (12,)), 0.25, {BR}) == 5


def test_cut_boundary_at_window_limit_not_taken():
    # lookahead 0.25: limit (0.25 + 0.25) * 20 = 10 exactly; a break at index 10 is not *before* it
    assert cut_prefix(_trace(20, (10,)), 0.25, {BR}, lookahead=0.25) == 5
    assert cut_prefix(_trace(20, (9,)), 0.25, {BR}, lookahead=0.25) == 10


def test_cut_no_boundary_is_floor():
    assert cut_prefix(_trace(20), 0.25, {BR}) == 5
    assert cut_prefix(_trace(7), 0.5, {BR}) == 3  # floor(3.5)
    assert cut_prefix(_trace(10), 0.25, {BR}) == 2  # floor(2.5)


def test_cut_boundary_exactly_at_k_is_not_taken():
    # k = 5; break at index 5 is not > k; no later break -> 5, not 6
    assert cut_prefix(_trace(20, (5,)), 0.25, {BR}) == 5
    # with a later one inside the window, that later one is used
    assert cut_prefix(_trace(20, (5, 7)), 0.25, {BR}) == 8


def test_cut_boundary_before_k_ignored():
    assert cut_prefix(_trace(20, (2, 4)), 0.25, {BR}) == 5


def test_cut_any_of_several_boundary_ids():
    trace = _trace(20)
    trace[7] = 98
    assert cut_prefix(trace, 0.25, {BR, 98}) == 8
    assert cut_prefix(trace, 0.25, {BR}) == 5


def test_cut_ratio_one_and_zero():
    trace = _trace(13, (2, 9))
    assert cut_prefix(trace, 1.0, {BR}) == 13
    assert cut_prefix(trace, 0.0, {BR}) == 0
    assert cut_prefix([], 0.5, {BR}) == 0


def test_cut_half_ratio_paper_stage3():
    # n = 40, ratio 0.5: k = 20, window before 0.8 * 40 = 32
    assert cut_prefix(_trace(40, (25,)), 0.5, {BR}) == 26
    assert cut_prefix(_trace(40, (33,)), 0.5, {BR}) == 20


def test_cut_never_exceeds_length():
    trace = _trace(4, (3,))
    # k = 2, window before 0.8 * 4 = 3.2 -> index 3 taken, prefix = whole trace
    assert cut_prefix(trace, 0.5, {BR}) == 4


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


def test_cut_threshold_is_exact_floor_despite_float_rounding():
    # 0.7 * 90 == 62.999... and 0.57 * 100 == 56.999... in floating point; ⌊·⌋ of the true products is 63 and 57.
    assert cut_prefix(list(range(90)), 0.7, set()) == 63
    assert cut_prefix(list(range(100)), 0.57, set()) == 57


def test_validate_rejects_boolean_stage_size():
    with pytest.raises(ValueError, match="stage 1"):
        validate_schedule([MicroGroup(True)])
