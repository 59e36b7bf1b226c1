"""Prefix cutting (docs/method.md, "Prefix cut"), checked by hand."""

from __future__ import annotations

from trapo.core.prefix import cut_prefix

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


def test_cut_threshold_is_exact_floor_despite_float_rounding():
    # 0.7 * 90 == 62.999... and 0.57 * 100 == 56.999... in floating point; ⌊·⌋ of the true products is 63 and 57.
    assert cut_prefix(list(range(90)), 0.7, set()) == 63
    assert cut_prefix(list(range(100)), 0.57, set()) == 57
