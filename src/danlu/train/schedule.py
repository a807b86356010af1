"""Learning-rate schedules as multipliers of the peak LR (for torch.optim.lr_scheduler.LambdaLR)."""

from __future__ import annotations

import math
from typing import Callable


def lr_multiplier(kind: str, total_steps: int, warmup_steps: int, min_ratio: float = 0.1,
                  decay_fraction: float = 0.2) -> Callable[[int], float]:
    """step -> multiplier: linear warmup, then cosine to `min_ratio`, warmup-stable-decay (linear decay over
    the last `decay_fraction` of steps), or constant. Steps run 0..total_steps-1, so the last one gets
    `min_ratio` exactly."""
    warmup = min(warmup_steps, max(total_steps - 1, 0))

    def fn(step: int) -> float:
        if step < warmup:
            return (step + 1) / (warmup + 1)
        if kind == "constant":
            return 1.0
        if kind == "cosine":
            progress = min(1.0, (step - warmup) / max(1, total_steps - 1 - warmup))
            return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
        if kind == "wsd":
            decay_steps = max(1, int(round(total_steps * decay_fraction)))
            decay_start = max(warmup, total_steps - decay_steps)
            if step < decay_start:
                return 1.0
            progress = min(1.0, (step - decay_start + 1) / max(1, total_steps - decay_start))
            return 1.0 - (1 - min_ratio) * progress
        raise ValueError(f"schedule.kind {kind!r} is not one of cosine, wsd, constant")

    return fn
