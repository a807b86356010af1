"""The running batch's KV cache: one transformers DynamicCache whose rows are left-padded to a common length,
with the 2D attention mask that says which columns are real.

Continuous batching needs three operations transformers' DynamicCache does not offer: merge the cache of newly
prefilled requests into the running one (left-padding the shorter side), drop finished rows, and trim columns
that only padding uses any more. All three work on the layers' key/value tensors [B, heads, T, head_dim]
directly. Padding costs attention work on those columns (no paged attention here); finished rows leaving and
the trim keep that bounded by the longest live request.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from transformers import DynamicCache


class BatchCache:
    def __init__(self, cache: DynamicCache, mask: torch.Tensor):
        self.cache = cache  # layers' keys/values [B, H, T, D]
        self.mask = mask  # [B, T] long, 1 = a real token

    @property
    def rows(self) -> int:
        return self.mask.shape[0]

    def _layers(self):
        return self.cache.layers

    def select(self, keep: list[int]) -> None:
        """Keep these rows (in this order; an index may repeat, e.g. n choices sharing one prompt)."""
        idx = torch.tensor(keep, dtype=torch.long, device=self.mask.device)
        for layer in self._layers():
            layer.keys = layer.keys.index_select(0, idx)
            layer.values = layer.values.index_select(0, idx)
        self.mask = self.mask.index_select(0, idx)
        self.trim()

    def trim(self) -> None:
        """Drop leading columns that are padding in every row."""
        if self.rows == 0:
            return
        used = self.mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else self.mask.shape[1]
        if start:
            for layer in self._layers():
                layer.keys = layer.keys[:, :, start:]
                layer.values = layer.values[:, :, start:]
            self.mask = self.mask[:, start:]

    def left_pad(self, length: int) -> None:
        extra = length - self.mask.shape[1]
        if extra <= 0:
            return
        for layer in self._layers():
            layer.keys = F.pad(layer.keys, (0, 0, extra, 0))
            layer.values = F.pad(layer.values, (0, 0, extra, 0))
        self.mask = F.pad(self.mask, (extra, 0))

    def merge(self, other: "BatchCache") -> None:
        """Append `other`'s rows after ours."""
        length = max(self.mask.shape[1], other.mask.shape[1])
        self.left_pad(length)
        other.left_pad(length)
        for mine, theirs in zip(self._layers(), other._layers()):
            mine.keys = torch.cat([mine.keys, theirs.keys])
            mine.values = torch.cat([mine.values, theirs.values])
        self.mask = torch.cat([self.mask, other.mask])

    def extend_mask(self) -> torch.Tensor:
        """The mask for one more (real) column, which the next forward appends to every row."""
        self.mask = F.pad(self.mask, (0, 1), value=1)
        return self.mask
