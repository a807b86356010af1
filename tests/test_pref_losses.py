"""The preference losses against their published formulas, evaluated by hand (python's math on fixed numbers, not
the code under test), the per-token log-probs against a hand-computed log-softmax, and gradients against the
closed forms."""

from __future__ import annotations

import math

import pytest
import torch

from danlu.train import pref_losses as L


def t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def logsig(x: float) -> float:
    return -math.log1p(math.exp(-x))


# two pairs: policy / reference sums of the answers' token log-probs, and the answers' token counts
PC, PR, RC, RR, NC, NR = t(-10.0, -4.0), t(-12.0, -3.0), t(-11.0, -4.5), t(-11.5, -2.0), t(5.0, 2.0), t(8.0, 3.0)


def test_sigmoid_is_dpo_and_label_smoothing_is_conservative_dpo():
    beta = 0.1
    h = [(-10 + 11) - (-12 + 11.5), (-4 + 4.5) - (-3 + 2)]  # both 1.5
    expected = [-logsig(beta * x) for x in h]
    assert L.sigmoid(PC, PR, RC, RR, beta).tolist() == pytest.approx(expected, abs=1e-12)
    eps = 0.2
    expected = [-(1 - eps) * logsig(beta * x) - eps * logsig(-beta * x) for x in h]
    assert L.sigmoid(PC, PR, RC, RR, beta, eps).tolist() == pytest.approx(expected, abs=1e-12)
    # at the start (policy == reference) the loss is log 2 whatever the answers
    assert L.sigmoid(RC, RR, RC, RR, beta).tolist() == pytest.approx([math.log(2)] * 2, abs=1e-12)


def test_ipo_is_the_squared_distance_of_the_per_token_log_ratio_gap_to_1_over_2beta():
    beta = 0.5
    h = [(-10 + 11) / 5 - (-12 + 11.5) / 8, (-4 + 4.5) / 2 - (-3 + 2) / 3]
    expected = [(x - 1 / (2 * beta)) ** 2 for x in h]
    assert L.ipo(PC, PR, RC, RR, NC, NR, beta).tolist() == pytest.approx(expected, abs=1e-12)


def test_hinge_is_slic():
    beta = 1.0
    h = [1.5, 1.5]
    assert L.hinge(PC, PR, RC, RR, beta).tolist() == pytest.approx([max(0.0, 1 - beta * x) for x in h], abs=1e-12)
    assert L.hinge(PC, PR, RC, RR, 0.5).tolist() == pytest.approx([1 - 0.75, 1 - 0.75], abs=1e-12)


def test_simpo_is_reference_free_and_length_normalised():
    beta, gamma = 2.0, 0.5
    expected = [-logsig(beta * (-10 / 5 - -12 / 8) - gamma), -logsig(beta * (-4 / 2 - -3 / 3) - gamma)]
    assert L.simpo(PC, PR, NC, NR, beta, gamma).tolist() == pytest.approx(expected, abs=1e-12)


def test_orpo_is_chosen_nll_plus_lambda_times_the_odds_ratio_loss():
    lam = 0.25
    expected = []
    for pc, pr, nc, nr in [(-10, -12, 5, 8), (-4, -3, 2, 3)]:
        p_w, p_l = math.exp(pc / nc), math.exp(pr / nr)
        odds_ratio = (p_w / (1 - p_w)) / (p_l / (1 - p_l))
        expected.append(-pc / nc - lam * logsig(math.log(odds_ratio)))
    assert L.orpo(PC, PR, NC, NR, lam).tolist() == pytest.approx(expected, abs=1e-12)


def test_kto_with_its_batch_kl_reference_point():
    p, ref, good = t(-5.0, -9.0, -2.0), t(-6.0, -8.0, -2.5), torch.tensor([True, False, True])
    beta, wd, wu = 0.1, 1.0, 1.5
    r = [1.0, -1.0, 0.5]
    z0 = max(0.0, sum(r) / 3)  # 0.1667: the batch's mean log-ratio, clamped at 0
    assert float(L.kto_kl(p, ref)) == pytest.approx(z0, abs=1e-12)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    expected = [wd * (1 - sig(beta * (r[0] - z0))), wu * (1 - sig(beta * (z0 - r[1]))),
                wd * (1 - sig(beta * (r[2] - z0)))]
    assert L.kto(p, ref, good, beta, L.kto_kl(p, ref), wd, wu).tolist() == pytest.approx(expected, abs=1e-12)
    assert float(L.kto_kl(t(-3.0), t(-1.0))) == 0.0  # a negative mean log-ratio is clamped
    pg = p.clone().requires_grad_()
    assert not L.kto_kl(pg, ref).requires_grad  # no gradient flows through the reference point


def test_ftx_adds_the_chosen_answers_mean_nll():
    base = L.pair_loss("sigmoid", PC, PR, RC, RR, NC, NR, 0.1)
    with_sft = L.pair_loss("sigmoid", PC, PR, RC, RR, NC, NR, 0.1, ftx=0.5)
    assert (with_sft - base).tolist() == pytest.approx([0.5 * 10 / 5, 0.5 * 4 / 2], abs=1e-12)


def test_dpo_gradient_is_the_published_closed_form():
    """d loss / d pc = -beta (1 - eps) sigma(-beta h) + beta eps sigma(beta h) (and the opposite for pr)."""
    beta, eps = 0.1, 0.1
    pc, pr = PC.clone().requires_grad_(), PR.clone().requires_grad_()
    L.sigmoid(pc, pr, RC, RR, beta, eps).sum().backward()
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    g = [-beta * (1 - eps) * sig(-beta * 1.5) + beta * eps * sig(beta * 1.5)] * 2
    assert pc.grad.tolist() == pytest.approx(g, abs=1e-12)
    assert pr.grad.tolist() == pytest.approx([-x for x in g], abs=1e-12)


def test_rewards_are_beta_log_ratios_or_beta_mean_logps_for_reference_free_losses():
    assert L.rewards("sigmoid", PC, RC, NC, 0.1).tolist() == pytest.approx([0.1, 0.05], abs=1e-12)
    assert L.rewards("simpo", PC, RC, NC, 2.0).tolist() == pytest.approx([-4.0, -4.0], abs=1e-12)


def test_token_log_probs_from_fixed_logits_equal_a_hand_computed_log_softmax_and_its_gradient():
    from danlu.train.objectives import cross_entropy_sum, token_cross_entropy

    logits = torch.tensor([[2.0, 0.5, -1.0, 0.0], [0.0, 0.0, 0.0, 3.0], [1.0, 2.0, 3.0, 4.0]], dtype=torch.float64)
    labels = torch.tensor([0, 3, 1])
    expected = [math.log(sum(math.exp(v) for v in row)) - row[y] for row, y in zip(logits.tolist(), labels.tolist())]
    x = logits.clone().requires_grad_()
    ce = token_cross_entropy(x, labels)
    assert ce.tolist() == pytest.approx(expected, abs=1e-12)
    g = torch.tensor([0.5, -2.0, 1.0], dtype=torch.float64)
    (ce * g).sum().backward()
    soft = torch.softmax(logits, -1)
    onehot = torch.nn.functional.one_hot(labels, 4).double()
    assert torch.allclose(x.grad, (soft - onehot) * g[:, None], atol=1e-12)
    # the SFT sum is built on it: -100 positions are ignored
    masked = torch.tensor([0, -100, 1])
    assert float(cross_entropy_sum(logits, masked)) == pytest.approx(expected[0] + expected[2], abs=1e-12)


def test_every_configured_loss_has_a_formula():
    from danlu.train.config import DPOLossConfig

    kinds = DPOLossConfig.model_fields["loss"].annotation.__args__
    assert set(kinds) == set(L.PAIR_LOSSES) | {"kto"}
    with pytest.raises(ValueError, match="unknown pair loss"):
        L.pair_loss("kto", PC, PR, RC, RR, NC, NR, 0.1)
