"""Closed-form checks of the TRAPO losses (docs/method.md, "The loss").

Every expected number below is derived by hand (python floats), never by calling the code under test.
"""

from __future__ import annotations

import math

import pytest
import torch

from trapo.core.losses import (
    PREFIX_LOSS_KINDS,
    luffy_token_loss,
    mixed_loss,
    policy_gradient_token_loss,
    prefix_token_loss,
    trsft_token_loss,
)

ALPHA = 0.1
GAMMA = 0.1
P_VALUES = (0.02, 0.6)  # one outside the trust region (p < alpha), one inside


def _grad_or_zero(loss: torch.Tensor, leaf: torch.Tensor) -> torch.Tensor:
    """d(sum loss)/d(leaf); a loss with no graph (kind 'none') has gradient 0 everywhere."""
    if not loss.requires_grad:
        return torch.zeros_like(leaf)
    (grad,) = torch.autograd.grad(loss.sum(), leaf, allow_unused=True)
    return torch.zeros_like(leaf) if grad is None else grad


def _value_and_grads(kind: str, p0: float, alpha: float = ALPHA, gamma: float = GAMMA):
    """(loss value, dL/dp with p a leaf and logps = log p, dL/dlogps with logps a leaf)."""
    p = torch.tensor(p0, dtype=torch.float64, requires_grad=True)
    loss_p = prefix_token_loss(p.log(), kind, alpha=alpha, gamma=gamma)
    d_dp = _grad_or_zero(loss_p, p).item()

    logps = torch.tensor(math.log(p0), dtype=torch.float64, requires_grad=True)
    loss_l = prefix_token_loss(logps, kind, alpha=alpha, gamma=gamma)
    d_dlogp = _grad_or_zero(loss_l, logps).item()
    return loss_l.item(), d_dp, d_dlogp


def _expected(kind: str, p: float, alpha: float = ALPHA, gamma: float = GAMMA):
    """Hand closed forms: (value, dL/dp, dL/dlogp = p * dL/dp)."""
    if kind == "trsft":
        value, d_dp = -p / max(p, alpha), -1.0 / max(p, alpha)
    elif kind == "nll":
        value, d_dp = -math.log(p), -1.0 / p
    elif kind == "luffy":
        value, d_dp = -p / (p + gamma), -gamma / (p + gamma) ** 2
    elif kind == "none":
        value, d_dp = 0.0, 0.0
    else:  # pragma: no cover
        raise AssertionError(kind)
    return value, d_dp, p * d_dp


# --------------------------------------------------------------------------------------------------
# prefix-token losses
# --------------------------------------------------------------------------------------------------


def test_prefix_loss_kinds_listed():
    assert set(PREFIX_LOSS_KINDS) == {"trsft", "nll", "luffy", "none"}


@pytest.mark.parametrize("p0", P_VALUES)
@pytest.mark.parametrize("kind", ["trsft", "nll", "luffy", "none"])
def test_prefix_loss_value_and_gradients_closed_form(kind, p0):
    value, d_dp, d_dlogp = _value_and_grads(kind, p0)
    exp_value, exp_d_dp, exp_d_dlogp = _expected(kind, p0)
    assert value == pytest.approx(exp_value, rel=1e-9, abs=1e-12)
    assert d_dp == pytest.approx(exp_d_dp, rel=1e-9, abs=1e-12)
    assert d_dlogp == pytest.approx(exp_d_dlogp, rel=1e-9, abs=1e-12)


def test_trsft_explicit_numbers():
    # p = 0.02 < alpha: value -0.02/0.1 = -0.2, dL/dp = -1/0.1 = -10 (bounded), dL/dlogp = -0.2
    assert _value_and_grads("trsft", 0.02) == pytest.approx((-0.2, -10.0, -0.2))
    # p = 0.6 >= alpha: ordinary SFT gradient: value -1, dL/dp = -1/0.6, dL/dlogp = -1
    assert _value_and_grads("trsft", 0.6) == pytest.approx((-1.0, -1.0 / 0.6, -1.0))
    # NLL at p = 0.02 explodes: dL/dp = -50
    assert _value_and_grads("nll", 0.02)[1] == pytest.approx(-50.0)
    # LUFFY at p = 0.02: -0.1 / 0.12^2
    assert _value_and_grads("luffy", 0.02)[1] == pytest.approx(-0.1 / 0.0144)


def test_trsft_vectorised_matches_elementwise_closed_form():
    ps = [0.001, 0.02, 0.0999, 0.1, 0.1001, 0.3, 0.6, 0.99]
    p = torch.tensor(ps, dtype=torch.float64, requires_grad=True)
    loss = trsft_token_loss(p.log(), ALPHA)
    (grad,) = torch.autograd.grad(loss.sum(), p)
    torch.testing.assert_close(loss.detach(), torch.tensor([-x / max(x, ALPHA) for x in ps], dtype=torch.float64))
    torch.testing.assert_close(grad, torch.tensor([-1.0 / max(x, ALPHA) for x in ps], dtype=torch.float64))


def test_trsft_gradient_magnitude_bounded_by_one_over_alpha():
    torch.manual_seed(0)
    p = torch.rand(1000, dtype=torch.float64).clamp(min=1e-12).requires_grad_(True)
    (grad,) = torch.autograd.grad(trsft_token_loss(p.log(), ALPHA).sum(), p)
    assert grad.abs().max().item() <= 1.0 / ALPHA + 1e-9


@pytest.mark.parametrize("p0", P_VALUES)
def test_trsft_alpha_to_zero_gives_nll_gradient(p0):
    value, d_dp, d_dlogp = _value_and_grads("trsft", p0, alpha=1e-8)
    assert d_dp == pytest.approx(-1.0 / p0, rel=1e-9)
    assert d_dlogp == pytest.approx(-1.0, rel=1e-9)
    assert value == pytest.approx(-1.0, rel=1e-9)  # -p/p


@pytest.mark.parametrize("p0", P_VALUES)
def test_trsft_alpha_one_gives_minus_p(p0):
    value, d_dp, d_dlogp = _value_and_grads("trsft", p0, alpha=1.0)
    assert value == pytest.approx(-p0, rel=1e-9)
    assert d_dp == pytest.approx(-1.0, rel=1e-9)
    assert d_dlogp == pytest.approx(-p0, rel=1e-9)


@pytest.mark.parametrize("alpha", [0.0, 1.5, -0.1])
def test_trsft_invalid_alpha_raises(alpha):
    logps = torch.log(torch.tensor([0.5]))
    with pytest.raises(ValueError):
        trsft_token_loss(logps, alpha)
    with pytest.raises(ValueError):
        prefix_token_loss(logps, "trsft", alpha=alpha)


@pytest.mark.parametrize("gamma", [0.0, -1.0])
def test_luffy_invalid_gamma_raises(gamma):
    with pytest.raises(ValueError):
        luffy_token_loss(torch.log(torch.tensor([0.5])), gamma)


def test_unknown_prefix_loss_kind_raises_naming_it():
    with pytest.raises(ValueError, match="bogus_kind"):
        prefix_token_loss(torch.zeros(2, 3), "bogus_kind")


def test_prefix_loss_preserves_shape():
    logps = torch.log(torch.full((2, 5), 0.3))
    for kind in ("trsft", "nll", "luffy", "none"):
        assert prefix_token_loss(logps, kind).shape == (2, 5)


# --------------------------------------------------------------------------------------------------
# policy-gradient token loss
# --------------------------------------------------------------------------------------------------


def test_pg_loss_on_policy_value_and_gradient():
    adv = [0.5, -2.0]
    logps = torch.log(torch.tensor([[0.2, 0.7, 0.9], [0.05, 0.5, 0.3]], dtype=torch.float64)).requires_grad_(True)
    loss = policy_gradient_token_loss(logps, None, torch.tensor(adv, dtype=torch.float64))
    expected = torch.tensor([[-a] * 3 for a in adv], dtype=torch.float64)  # ratio 1 in value
    torch.testing.assert_close(loss.detach(), expected)
    (grad,) = torch.autograd.grad(loss.sum(), logps)
    torch.testing.assert_close(grad, expected)  # d(-A * exp(l - sg(l)))/dl = -A


def test_pg_loss_per_token_advantages():
    adv = torch.tensor([[1.0, -1.0], [0.25, 3.0]], dtype=torch.float64)
    logps = torch.log(torch.tensor([[0.1, 0.2], [0.3, 0.4]], dtype=torch.float64)).requires_grad_(True)
    loss = policy_gradient_token_loss(logps, None, adv)
    (grad,) = torch.autograd.grad(loss.sum(), logps)
    expected = torch.tensor([[-1.0, 1.0], [-0.25, -3.0]], dtype=torch.float64)
    torch.testing.assert_close(loss.detach(), expected)
    torch.testing.assert_close(grad, expected)


def _pg_single(a: float, ratio: float, clip_eps: float | None):
    old = torch.tensor([[math.log(0.4)]], dtype=torch.float64)
    logps = (old + math.log(ratio)).clone().requires_grad_(True)
    loss = policy_gradient_token_loss(logps, old, torch.tensor([a], dtype=torch.float64), clip_eps)
    (grad,) = torch.autograd.grad(loss.sum(), logps)
    return loss.item(), grad.item()


def test_pg_loss_clipped_positive_advantage():
    # A = 2 > 0, ratio 1.5 > 1 + 0.2: pessimistic max picks the clipped term -1.2 * A, which is flat.
    value, grad = _pg_single(2.0, 1.5, 0.2)
    assert value == pytest.approx(-1.2 * 2.0)
    assert grad == pytest.approx(0.0, abs=1e-12)


def test_pg_loss_unclipped_negative_advantage():
    # A = -1 < 0, ratio 1.5: -A*1.5 = 1.5 > -A*1.2 = 1.2, so the unclipped term wins; d/dl = -A * ratio.
    value, grad = _pg_single(-1.0, 1.5, 0.2)
    assert value == pytest.approx(1.5)
    assert grad == pytest.approx(1.5)


def test_pg_loss_low_ratio_cases():
    # A = 2, ratio 0.5: -1.0 vs clipped -1.6 -> unclipped, grad -A*0.5 = -1
    assert _pg_single(2.0, 0.5, 0.2) == pytest.approx((-1.0, -1.0))
    # A = -1, ratio 0.5: 0.5 vs clipped 0.8 -> clipped, flat
    value, grad = _pg_single(-1.0, 0.5, 0.2)
    assert value == pytest.approx(0.8)
    assert grad == pytest.approx(0.0, abs=1e-12)


def test_pg_loss_no_clip_by_default():
    value, grad = _pg_single(2.0, 1.5, None)
    assert value == pytest.approx(-3.0)
    assert grad == pytest.approx(-3.0)


def test_pg_loss_clip_with_ratio_one_is_plain_pg():
    logps = torch.log(torch.tensor([[0.3, 0.6]], dtype=torch.float64)).requires_grad_(True)
    loss = policy_gradient_token_loss(logps, None, torch.tensor([0.7], dtype=torch.float64), clip_eps=0.2)
    (grad,) = torch.autograd.grad(loss.sum(), logps)
    torch.testing.assert_close(loss.detach(), torch.tensor([[-0.7, -0.7]], dtype=torch.float64))
    torch.testing.assert_close(grad, torch.tensor([[-0.7, -0.7]], dtype=torch.float64))


# --------------------------------------------------------------------------------------------------
# mixed_loss on a hand-built batch
# --------------------------------------------------------------------------------------------------
# seq0: unguided, 3 generated tokens + 1 padding
# seq1: guided, tokens 0-1 expert prefix AND SFT-marked, tokens 2-3 generated
# seq2: guided, tokens 0-1 expert prefix NOT SFT-marked (a second copy), token 2 generated, token 3 padding

P = [
    [0.3, 0.8, 0.6, 0.9],
    [0.05, 0.5, 0.7, 0.2],
    [0.02, 0.4, 0.9, 0.5],
]
ADV = [0.5, -0.25, 1.5]
COMPLETION = [[1, 1, 1, 0], [1, 1, 1, 1], [1, 1, 1, 0]]
PREFIX = [[0, 0, 0, 0], [1, 1, 0, 0], [1, 1, 0, 0]]
SFT = [[0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]]
MAX_LEN = 5  # != T = 4 on purpose
NORM = 3 * MAX_LEN  # B * max_completion_length = 15

# hand arithmetic
PG_SUM = 3 * (-0.5) + 2 * (+0.25) + 1 * (-1.5)  # = -2.5 (sum of -A over generated tokens)
SFT_SUM = (-0.05 / 0.1) + (-0.5 / 0.5)  # = -1.5 (trsft values -p/max(p, alpha))
EXPECTED_LOSS = (PG_SUM + SFT_SUM) / NORM  # = -4/15
EXPECTED_GRAD = [
    [-0.5 / NORM, -0.5 / NORM, -0.5 / NORM, 0.0],
    [-(0.05 / 0.1) / NORM, -1.0 / NORM, 0.25 / NORM, 0.25 / NORM],
    [0.0, 0.0, -1.5 / NORM, 0.0],
]


def _batch():
    logps = torch.log(torch.tensor(P, dtype=torch.float64)).requires_grad_(True)
    masks = [torch.tensor(m) for m in (COMPLETION, PREFIX, SFT)]
    return logps, torch.tensor(ADV, dtype=torch.float64), masks


def _run(**kwargs):
    logps, adv, (cm, pm, sm) = _batch()
    kwargs.setdefault("max_completion_length", MAX_LEN)
    loss, metrics = mixed_loss(logps, adv, cm, pm, sm, **kwargs)
    (grad,) = torch.autograd.grad(loss, logps)
    return loss.item(), grad, metrics


def test_mixed_loss_value_and_gradient():
    loss, grad, metrics = _run()
    assert loss == pytest.approx(EXPECTED_LOSS, rel=1e-9)
    torch.testing.assert_close(grad, torch.tensor(EXPECTED_GRAD, dtype=torch.float64))
    assert metrics["pg_loss"] == pytest.approx(PG_SUM / NORM)
    assert metrics["imitation_loss"] == pytest.approx(SFT_SUM / NORM)


@pytest.mark.parametrize("weight", [0.0, 0.5])
def test_the_policy_gradient_weight_scales_only_that_term(weight):
    loss, grad, metrics = _run(pg_weight=weight)
    assert loss == pytest.approx((weight * PG_SUM + SFT_SUM) / NORM, rel=1e-9)
    _, imitation_grad, _ = _run(prefix_loss="trsft", pg_weight=0.0)
    _, full_grad, _ = _run()
    torch.testing.assert_close(grad, imitation_grad + weight * (full_grad - imitation_grad))
    assert metrics["pg_loss"] == pytest.approx(PG_SUM / NORM)  # the term itself is still reported


def test_mixed_loss_unmarked_prefix_and_padding_get_no_gradient():
    _, grad, _ = _run()
    assert grad[2, 0].item() == 0.0 and grad[2, 1].item() == 0.0  # unmarked prefix copy
    assert grad[0, 3].item() == 0.0 and grad[2, 3].item() == 0.0  # padding


def test_mixed_loss_metrics():
    _, _, metrics = _run()
    assert metrics["prefix_clip_frac"] == pytest.approx(0.5)  # 0.05 < 0.1, 0.5 >= 0.1
    assert metrics["prefix_mean_p"] == pytest.approx((0.05 + 0.5) / 2)
    gen_ps = [0.3, 0.8, 0.6, 0.7, 0.2, 0.9]
    assert metrics["gen_mean_p"] == pytest.approx(sum(gen_ps) / len(gen_ps))
    assert metrics["entropy"] == 0.0


def test_mixed_loss_default_normaliser_is_batch_times_seq_len():
    loss, grad, _ = _run(max_completion_length=None)
    assert loss == pytest.approx((PG_SUM + SFT_SUM) / 12.0)
    torch.testing.assert_close(grad, torch.tensor(EXPECTED_GRAD, dtype=torch.float64) * NORM / 12.0)


def test_mixed_loss_entropy_bonus():
    ent = [
        [1.0, 2.0, 3.0, 100.0],  # padding entropy must be ignored
        [0.5, 1.5, 2.5, 3.5],
        [100.0, 100.0, 4.0, 100.0],  # unmarked prefix and padding ignored
    ]
    carried = [1.0, 2.0, 3.0, 0.5, 1.5, 2.5, 3.5, 4.0]  # generated tokens + SFT tokens
    mean_ent = sum(carried) / len(carried)
    coef = 0.01
    entropies = torch.tensor(ent, dtype=torch.float64, requires_grad=True)
    loss, grad, metrics = _run(entropies=entropies, entropy_coef=coef)
    assert loss == pytest.approx(EXPECTED_LOSS - coef * mean_ent, rel=1e-9)
    assert metrics["entropy"] == pytest.approx(mean_ent)
    torch.testing.assert_close(grad, torch.tensor(EXPECTED_GRAD, dtype=torch.float64))  # entropies separate


def test_mixed_loss_entropy_gradient_flows_only_to_loss_tokens():
    logps, adv, (cm, pm, sm) = _batch()
    entropies = torch.ones(3, 4, dtype=torch.float64, requires_grad=True)
    loss, _ = mixed_loss(logps, adv, cm, pm, sm, entropies=entropies, entropy_coef=0.1, max_completion_length=MAX_LEN)
    (g,) = torch.autograd.grad(loss, entropies)
    carried = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [0, 0, 1, 0]], dtype=torch.float64)
    torch.testing.assert_close(g, -0.1 * carried / 8.0)


def test_mixed_loss_sft_none():
    loss, grad, metrics = _run(prefix_loss="none")
    assert loss == pytest.approx(PG_SUM / NORM, rel=1e-9)
    expected = [row[:] for row in EXPECTED_GRAD]
    expected[1][0] = expected[1][1] = 0.0
    torch.testing.assert_close(grad, torch.tensor(expected, dtype=torch.float64))
    assert metrics["imitation_loss"] == 0.0


def test_mixed_loss_sft_nll():
    loss, grad, _ = _run(prefix_loss="nll")
    assert loss == pytest.approx((PG_SUM - math.log(0.05) - math.log(0.5)) / NORM, rel=1e-9)
    assert grad[1, 0].item() == pytest.approx(-1.0 / NORM)
    assert grad[1, 1].item() == pytest.approx(-1.0 / NORM)


def test_mixed_loss_sft_luffy():
    loss, grad, _ = _run(prefix_loss="luffy", gamma=0.1)
    sft = -0.05 / 0.15 - 0.5 / 0.6
    assert loss == pytest.approx((PG_SUM + sft) / NORM, rel=1e-9)
    # dL/dlogp = p * (-gamma / (p + gamma)^2)
    assert grad[1, 0].item() == pytest.approx(-0.05 * 0.1 / 0.15**2 / NORM)
    assert grad[1, 1].item() == pytest.approx(-0.5 * 0.1 / 0.6**2 / NORM)


def test_mixed_loss_prefix_weight_advantage():
    loss, grad, _ = _run(prefix_weight="advantage")
    a1 = -0.25
    assert loss == pytest.approx((PG_SUM + a1 * SFT_SUM) / NORM, rel=1e-9)  # (-2.5 + 0.375) / 15
    assert grad[1, 0].item() == pytest.approx(a1 * -0.5 / NORM)
    assert grad[1, 1].item() == pytest.approx(a1 * -1.0 / NORM)
    torch.testing.assert_close(grad[0], torch.tensor(EXPECTED_GRAD[0], dtype=torch.float64))


def test_mixed_loss_alpha_changes_only_prefix_clip():
    loss, grad, metrics = _run(alpha=0.01)  # now both SFT tokens are in the trust region
    assert loss == pytest.approx((PG_SUM - 2.0) / NORM, rel=1e-9)
    assert grad[1, 0].item() == pytest.approx(-1.0 / NORM)
    assert metrics["prefix_clip_frac"] == 0.0


def test_mixed_loss_with_old_logps_and_clip():
    logps, adv, (cm, pm, sm) = _batch()
    old = logps.detach() - math.log(1.5)  # every ratio is 1.5
    loss, _ = mixed_loss(logps, adv, cm, pm, sm, old_logps=old, clip_eps=0.2, max_completion_length=MAX_LEN)
    (grad,) = torch.autograd.grad(loss, logps)
    # A > 0 tokens clipped at -1.2A (flat); A < 0 tokens unclipped -1.5A (grad -1.5A); SFT term unchanged
    pg = 3 * (-1.2 * 0.5) + 2 * (1.5 * 0.25) + 1 * (-1.2 * 1.5)
    assert loss.item() == pytest.approx((pg + SFT_SUM) / NORM, rel=1e-9)
    expected = [
        [0.0, 0.0, 0.0, 0.0],
        [-0.5 / NORM, -1.0 / NORM, 1.5 * 0.25 / NORM, 1.5 * 0.25 / NORM],
        [0.0, 0.0, 0.0, 0.0],
    ]
    torch.testing.assert_close(grad, torch.tensor(expected, dtype=torch.float64))


def test_mixed_loss_float32_and_bool_masks():
    logps = torch.log(torch.tensor(P)).requires_grad_(True)
    masks = [torch.tensor(m, dtype=torch.bool) for m in (COMPLETION, PREFIX, SFT)]
    loss, _ = mixed_loss(logps, torch.tensor(ADV), *masks, max_completion_length=MAX_LEN)
    assert loss.item() == pytest.approx(EXPECTED_LOSS, rel=1e-5)


def test_mixed_loss_sft_outside_prefix_raises():
    logps, adv, (cm, pm, _) = _batch()
    bad_sft = torch.tensor([[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0]])  # seq0 token 0 is generated
    with pytest.raises(ValueError):
        mixed_loss(logps, adv, cm, pm, bad_sft)


def test_mixed_loss_prefix_outside_completion_raises():
    logps, adv, (cm, _, sm) = _batch()
    bad_prefix = torch.tensor([[0, 0, 0, 1], [1, 1, 0, 0], [1, 1, 0, 0]])  # seq0 token 3 is padding
    with pytest.raises(ValueError):
        mixed_loss(logps, adv, cm, bad_prefix, sm)


def test_mixed_loss_bad_prefix_weight_raises():
    logps, adv, (cm, pm, sm) = _batch()
    with pytest.raises(ValueError, match="prefix_weight"):
        mixed_loss(logps, adv, cm, pm, sm, prefix_weight="half")


def test_mixed_loss_unknown_sft_kind_raises():
    logps, adv, (cm, pm, sm) = _batch()
    with pytest.raises(ValueError, match="sft_wat"):
        mixed_loss(logps, adv, cm, pm, sm, prefix_loss="sft_wat")


def test_mixed_loss_no_sft_tokens_metrics_are_finite():
    logps, adv, (cm, _, _) = _batch()
    zeros = torch.zeros(3, 4, dtype=torch.long)
    loss, metrics = mixed_loss(logps, adv, cm, zeros, zeros, max_completion_length=MAX_LEN)
    # every completion token is generated now: 3*(-0.5) + 4*(0.25) + 3*(-1.5)
    assert loss.item() == pytest.approx((-1.5 + 1.0 - 4.5) / NORM)
    assert metrics["prefix_clip_frac"] == 0.0 and metrics["prefix_mean_p"] == 0.0
    assert all(math.isfinite(v) for v in metrics.values())


def test_mixed_loss_pg_weights_scale_only_the_pg_term():
    weights = torch.tensor([[2.0], [0.5], [1.0]], dtype=torch.float64)
    loss, grad, metrics = _run(pg_weights=weights)
    pg = 2.0 * 3 * (-0.5) + 0.5 * 2 * 0.25 + 1.0 * (-1.5)  # = -4.25
    assert loss == pytest.approx((pg + SFT_SUM) / NORM, rel=1e-9)
    expected = [
        [-1.0 / NORM, -1.0 / NORM, -1.0 / NORM, 0.0],
        [-0.5 / NORM, -1.0 / NORM, 0.125 / NORM, 0.125 / NORM],  # SFT tokens unweighted
        [0.0, 0.0, -1.5 / NORM, 0.0],
    ]
    torch.testing.assert_close(grad, torch.tensor(expected, dtype=torch.float64))
    assert metrics["imitation_loss"] == pytest.approx(SFT_SUM / NORM)


def test_mixed_loss_context_only_prefixes_get_no_entropy_bonus():
    """prefix_loss='none' makes prefixes pure context: the entropy bonus must not touch them either."""
    logps, adv, (cm, pm, sm) = _batch()
    entropies = torch.ones(3, 4, dtype=torch.float64, requires_grad=True)
    loss, _ = mixed_loss(
        logps, adv, cm, pm, sm, prefix_loss="none", entropies=entropies, entropy_coef=0.1, max_completion_length=MAX_LEN
    )
    (g,) = torch.autograd.grad(loss, entropies)
    generated_only = torch.tensor([[1, 1, 1, 0], [0, 0, 1, 1], [0, 0, 1, 0]], dtype=torch.float64)
    torch.testing.assert_close(g, -0.1 * generated_only / 6.0)


def test_sequence_budget_normalization_divides_by_the_budget_only():
    """The released code: each micro-batch's token sum ÷ max_completion_length (not × B)."""
    loss, grad, metrics = _run(loss_normalization="sequence_budget")
    assert loss == pytest.approx((PG_SUM + SFT_SUM) / MAX_LEN, rel=1e-9)
    torch.testing.assert_close(grad, torch.tensor(EXPECTED_GRAD, dtype=torch.float64) * 3)  # B = 3 times larger
    assert metrics["pg_loss"] == pytest.approx(PG_SUM / MAX_LEN)


def test_entropy_over_every_response_token_includes_prefixes_and_unmarked_copies():
    """The released code's entropy bonus: a masked mean over all response tokens (prefix copies included)."""
    ent = [[1.0, 2.0, 3.0, 100.0], [0.5, 1.5, 2.5, 3.5], [6.0, 7.0, 4.0, 100.0]]
    response = [1.0, 2.0, 3.0, 0.5, 1.5, 2.5, 3.5, 6.0, 7.0, 4.0]  # every completion token, padding excluded
    entropies = torch.tensor(ent, dtype=torch.float64, requires_grad=True)
    for prefix_loss in ("trsft", "none"):  # context-only prefixes count too: the mask is the response's
        loss, _, metrics = _run(entropies=entropies, entropy_coef=0.01, entropy_tokens="response",
                                prefix_loss=prefix_loss)  # fmt: skip
        assert metrics["entropy"] == pytest.approx(sum(response) / len(response))


@pytest.mark.parametrize(("key", "value"), [("loss_normalization", "token_mean"), ("entropy_tokens", "all")])
def test_unknown_normalization_options_are_refused(key, value):
    with pytest.raises(ValueError, match=key):
        _run(**{key: value})


@pytest.mark.parametrize("micro_batches", [1, 4, 64])
def test_the_packed_entropy_bonus_is_the_same_however_the_tokens_are_split(micro_batches):
    """entropy_token_budget: each micro-batch's bonus weighs its tokens ÷ the budget, so 64 sequences give one total
    bonus, coef × Σ entropy ÷ budget, in 1, 4 or 64 micro-batches (the per-micro-batch mean alone would count the
    bonus once per micro-batch: 1, 4 or 64 times)."""
    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(1, 9, (64,), generator=generator)
    entropies = torch.rand(64, 8, generator=generator, dtype=torch.float64)
    mask = torch.arange(8).unsqueeze(0) < lengths.unsqueeze(1)
    coef, budget = 0.01, 100
    expected = coef * sum(float(entropies[i, : int(n)].sum()) for i, n in enumerate(lengths)) / budget
    total, mean_only = 0.0, 0.0
    for rows in torch.arange(64).chunk(micro_batches):
        zeros = torch.zeros(len(rows), 8, dtype=torch.float64)
        args = (zeros, torch.zeros(len(rows), dtype=torch.float64), mask[rows], torch.zeros_like(mask[rows]))
        kwargs = dict(imitated_mask=torch.zeros_like(mask[rows]), prefix_loss="none", entropies=entropies[rows],
                      entropy_coef=coef, loss_normalization="sequence_budget", max_completion_length=8)  # fmt: skip
        packed, _ = mixed_loss(*args, **kwargs, entropy_token_budget=budget)
        plain, _ = mixed_loss(*args, **kwargs)
        total -= packed.item()
        mean_only -= plain.item()
    assert total == pytest.approx(expected, rel=1e-12)
    one_mean = coef * float((entropies * mask).sum() / mask.sum())
    assert mean_only == pytest.approx(one_mean * micro_batches, rel=0.2)  # grows with the number of micro-batches
