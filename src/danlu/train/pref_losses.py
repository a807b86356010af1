"""Preference losses as pure functions of per-sequence log-probabilities (unit-tested on fixed numbers).

Inputs, one value per pair (tensors of shape [P]):
    pc, pr    the policy's log-probability of the chosen / rejected answer: the SUM over the answer's tokens
    rc, rr    the reference model's (the frozen starting model's), same sums
    nc, nr    the number of answer tokens (for the length-normalised losses)
Every function returns the loss per pair ([P]); the stage sums them and the loop divides by the pairs of the step.

    sigmoid  DPO (Rafailov et al. 2023), conservative with label_smoothing eps (Mitchell 2023):
             h = (pc - rc) - (pr - rr);  -(1 - eps) log sigma(beta h) - eps log sigma(-beta h)
    ipo      IPO (Azar et al. 2023, eq. 17) on per-token averages, as TRL and LLaMA-Factory compute it (the IPO
             authors' normalisation, so beta means the same whatever the answer lengths):
             h = (pc - rc) / nc - (pr - rr) / nr;  (h - 1 / (2 beta))^2
    hinge    SLiC-HF's hinge on the DPO log-ratio (Zhao et al. 2023): max(0, 1 - beta h)
    simpo    SimPO (Meng et al. 2024), reference-free: -log sigma(beta (pc / nc - pr / nr) - gamma)
    orpo     ORPO (Hong et al. 2024), reference-free: the chosen answer's mean NLL + beta x -log sigma(log odds
             ratio), odds(y) = p / (1 - p) with p = exp(mean token log-prob)
    kto      KTO (Ethayarajh et al. 2024), unpaired: r = p - ref per record;
             desirable: lambda_D (1 - sigma(beta (r - z0))), undesirable: lambda_U (1 - sigma(beta (z0 - r)))
             z0, the KL term, see `kto_kl`.
ftx adds ftx x (the chosen answer's mean NLL, -pc / nc) to any pair loss (LLaMA-Factory's pref_ftx).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

PAIR_LOSSES = ("sigmoid", "ipo", "hinge", "simpo", "orpo")
REFERENCE_FREE = ("simpo", "orpo")


def sigmoid(pc, pr, rc, rr, beta: float, label_smoothing: float = 0.0) -> torch.Tensor:
    h = (pc - rc) - (pr - rr)
    return -(1 - label_smoothing) * F.logsigmoid(beta * h) - label_smoothing * F.logsigmoid(-beta * h)


def ipo(pc, pr, rc, rr, nc, nr, beta: float) -> torch.Tensor:
    h = (pc - rc) / nc - (pr - rr) / nr
    return (h - 1 / (2 * beta)) ** 2


def hinge(pc, pr, rc, rr, beta: float) -> torch.Tensor:
    return torch.relu(1 - beta * ((pc - rc) - (pr - rr)))


def simpo(pc, pr, nc, nr, beta: float, gamma: float) -> torch.Tensor:
    return -F.logsigmoid(beta * (pc / nc - pr / nr) - gamma)


def log_odds(mean_logp: torch.Tensor) -> torch.Tensor:
    """log(p / (1 - p)) for p = exp(mean_logp) < 1, computed without forming p - 1."""
    return mean_logp - torch.log1p(-torch.exp(mean_logp))


def orpo(pc, pr, nc, nr, beta: float) -> torch.Tensor:
    mc, mr = pc / nc, pr / nr
    return -mc - beta * F.logsigmoid(log_odds(mc) - log_odds(mr))


def kto_kl(p: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """KTO's reference point z0: the batch's mean policy/reference log-ratio, clamped at 0 and detached.

    The paper (and TRL) estimate the KL from mismatched pairs (prompt i with completion i+1), which costs a
    second forward of every record through the policy and the reference. danlu uses the records' own log-ratios:
    no extra forward, and precomputed reference log-probs keep working. Either way z0 only shifts the rewards
    (no gradient flows through it); here it is the batch's average reward, so the loss compares each record's
    reward to that baseline."""
    if p.numel() == 0:
        return p.new_zeros(())
    return (p - ref).mean().clamp(min=0).detach()


def kto(p, ref, desirable, beta: float, z0, desirable_weight: float = 1.0,
        undesirable_weight: float = 1.0) -> torch.Tensor:
    r = p - ref
    good = desirable_weight * (1 - torch.sigmoid(beta * (r - z0)))
    bad = undesirable_weight * (1 - torch.sigmoid(beta * (z0 - r)))
    return torch.where(desirable.bool(), good, bad)


def pair_loss(kind: str, pc, pr, rc, rr, nc, nr, beta: float, label_smoothing: float = 0.0,
              simpo_gamma: float = 0.5, ftx: float = 0.0) -> torch.Tensor:
    """The configured pair loss per pair, plus the optional SFT term."""
    if kind == "sigmoid":
        loss = sigmoid(pc, pr, rc, rr, beta, label_smoothing)
    elif kind == "ipo":
        loss = ipo(pc, pr, rc, rr, nc, nr, beta)
    elif kind == "hinge":
        loss = hinge(pc, pr, rc, rr, beta)
    elif kind == "simpo":
        loss = simpo(pc, pr, nc, nr, beta, simpo_gamma)
    elif kind == "orpo":
        loss = orpo(pc, pr, nc, nr, beta)
    else:
        raise ValueError(f"unknown pair loss {kind!r} (one of {', '.join(PAIR_LOSSES)})")
    return loss + ftx * (-pc / nc) if ftx else loss


def rewards(kind: str, p, ref, n, beta: float) -> torch.Tensor:
    """The implicit reward the loss optimises, per sequence (for the logged margins and accuracy):
    beta x (policy - reference) log-prob, or for the reference-free losses beta x the mean token log-prob."""
    return beta * (p / n) if kind in REFERENCE_FREE else beta * (p - ref)
