"""Significance hints for paired comparisons: a paired bootstrap interval of the difference, and McNemar's exact
test for paired right/wrong outcomes. Small enough to write here (numpy only) rather than pull in scipy."""

from __future__ import annotations

import math

import numpy as np


def bootstrap_delta(a: np.ndarray, b: np.ndarray, resamples: int = 1000, confidence: float = 0.95, seed: int = 0,
                    den_a: np.ndarray | None = None, den_b: np.ndarray | None = None) -> tuple[float, float]:
    """Interval of stat(b) - stat(a) over items resampled together (paired), where stat is the mean, or with
    denominators the ratio sum(x) / sum(den) (bits per byte: nats over bytes)."""
    n = len(a)
    if n == 0 or resamples <= 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(np.float64)  # [R, n] resample weights
    if den_a is None:
        stat_a, stat_b = counts @ a / n, counts @ b / n
    else:
        stat_a, stat_b = (counts @ a) / (counts @ den_a), (counts @ b) / (counts @ den_b)
    d = stat_b - stat_a
    lo, hi = np.quantile(d, [(1 - confidence) / 2, 1 - (1 - confidence) / 2])
    return float(lo), float(hi)


def mcnemar_exact(b: int, c: int) -> float:
    """Two-sided exact McNemar p-value: b = right before and wrong after, c = wrong before and right after;
    under no change the b + c discordant items split as Binomial(b + c, 1/2)."""
    n = b + c
    if n == 0:
        return 1.0
    k = min(b, c)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0 ** n
    return min(1.0, 2.0 * tail)
