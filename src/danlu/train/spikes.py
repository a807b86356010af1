"""Loss-spike detection. On a spike the loop rolls back to the last good checkpoint and skips the batches
seen since then (the PaLM recipe: the data stream is NOT rewound, so the offending batches are never replayed).
"""

from __future__ import annotations

import math
from collections import deque

from danlu.train.config import SpikeConfig


class SpikeDetector:
    """Judges each step's loss against the history of good (non-spike) losses."""

    def __init__(self, cfg: SpikeConfig):
        self.cfg = cfg
        self.history: deque[float] = deque(maxlen=cfg.window)
        self.ema: float | None = None
        self.seen = 0

    def is_spike(self, loss: float) -> bool:
        if not math.isfinite(loss):
            return True
        if not self.cfg.enabled or self.seen < self.cfg.min_history:
            return False
        if self.cfg.rule == "ema_ratio":
            return self.ema is not None and loss > self.cfg.threshold * self.ema
        mean = sum(self.history) / len(self.history)
        std = math.sqrt(sum((x - mean) ** 2 for x in self.history) / len(self.history))
        return loss > mean + self.cfg.threshold * max(std, 1e-3 * abs(mean))

    def update(self, loss: float) -> None:
        """Record a good loss."""
        self.history.append(loss)
        decay = 1 - 1 / self.cfg.window
        self.ema = loss if self.ema is None else decay * self.ema + (1 - decay) * loss
        self.seen += 1

    def state_dict(self) -> dict:
        return {"history": list(self.history), "ema": self.ema, "seen": self.seen}

    def load_state_dict(self, state: dict) -> None:
        self.history = deque(state["history"], maxlen=self.cfg.window)
        self.ema, self.seen = state["ema"], state["seen"]
