"""Group advantages (docs/method.md, "The loss"), checked by hand."""

from __future__ import annotations

import math

import pytest
import torch

from trapo.core.advantages import group_advantages


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
