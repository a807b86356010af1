"""The SFT batch stream: rendered samples -> epochs (re-weighted, shuffled) -> rows (packed or one per sample).

    stream = SFTBatches(store, samples, repeats, seq_len=2048, batch_size=4, packing=True, loss_norm="sample",
                        epochs=3.0, seed=0)
    batch = next(stream)  # input_ids, labels, position_ids, weights, loss_count, task

- Epochs: each epoch lists sample i floor(repeats[i]) times plus once more with probability frac(repeats[i])
  (drawn from (seed, epoch)), shuffled by a permutation from (seed, epoch); a fractional last epoch takes the
  first part of its permutation (1.1 epochs: the first 10% of the second pass).
- Rows: best-fit packing (danlu.train.packing.Packer) over a buffer of samples, or one sample per row. A sample
  is never cut (samples over seq_len were filtered when rendering). Positions restart at every sample, and the
  objective masks attention across samples, so a packed row trains exactly like its samples trained alone.
- Loss normalisation: "token" gives every target token its weight w; "sample" gives it w / (the sample's weight
  sum), so each sample's mean loss weighs the same. "loss_count" is what the loop divides the step's loss by
  (the weights' sum, or the number of samples), so packed and unpacked batches give the same loss (tested).
- The whole plan of rows is computed up front from the sample lengths (cheap), so the number of steps is known
  before training and the state is the step number: resume is exact under any number of processes.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from danlu.train.packing import pack_pieces
from danlu.train.sft_data import SFTStore

STATE_VERSION = 1


def epoch_order(samples: np.ndarray, repeats: np.ndarray, epochs: float, seed: int) -> np.ndarray:
    """Sample numbers in training order over all (fractional) epochs."""
    out = []
    whole = math.floor(epochs)
    for epoch in range(math.ceil(epochs)):
        rng = np.random.default_rng([seed, epoch])
        extra = rng.random(len(samples)) < (repeats - np.floor(repeats))
        listed = np.repeat(samples, (np.floor(repeats) + extra).astype(np.int64))
        order = listed[rng.permutation(len(listed))]
        if epoch == whole:  # the fractional part of the last epoch
            order = order[: int(round((epochs - whole) * len(order)))]
        out.append(order)
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def plan_rows(order: np.ndarray, lengths: np.ndarray, seq_len: int, packing: bool, buffer_size: int) -> list[list[int]]:
    """Rows of sample numbers: best fit over a buffer of `buffer_size` samples, or one sample per row."""
    if not packing:
        return [[int(i)] for i in order]
    rows = pack_pieces(((0, i, 0, int(lengths[i])) for i in order.tolist()), seq_len, "best_fit", buffer_size)
    return [[p[1] for p in row] for row in rows]


def rows_to_batch(rows: list[list[int]], store: SFTStore, loss_norm: str, pad_id: int, multiple: int = 8) -> dict:
    """Tensors for rows of samples, padded to the longest row (rounded up to `multiple`)."""
    n = max(len(rows), 1)
    width = max([sum(int(store.lengths[i]) for i in row) for row in rows] + [1])
    width = -(-width // multiple) * multiple
    ids = np.full((n, width), pad_id, dtype=np.int64)
    labels = np.full((n, width), -100, dtype=np.int64)
    weights = np.zeros((n, width), dtype=np.float32)
    task = np.full((n, width), -1, dtype=np.int64)
    pos = np.zeros((n, width), dtype=np.int64)
    ramp = np.arange(width, dtype=np.int64)
    count = 0.0
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            toks, w = store.doc(i).astype(np.int64), np.asarray(store.weights(i), dtype=np.float32)
            k = len(toks)
            total = float(w.sum())
            if total > 0:
                scale = 1.0 / total if loss_norm == "sample" else 1.0
                count += 1.0 if loss_norm == "sample" else total
                weights[r, at : at + k] = w * scale
            ids[r, at : at + k] = toks
            labels[r, at : at + k] = np.where(w > 0, toks, -100)
            task[r, at : at + k] = store.task_codes[i]
            pos[r, at : at + k] = ramp[:k]
            at += k
        pos[r, at:] = ramp[: width - at]  # padding is its own segment
    return {"input_ids": torch.from_numpy(ids), "labels": torch.from_numpy(labels),
            "position_ids": torch.from_numpy(pos), "weights": torch.from_numpy(weights),
            "task": torch.from_numpy(task), "loss_count": torch.tensor([count], dtype=torch.float64)}


class SFTBatches:
    """An exact, resumable stream of SFT batches over a planned sequence of rows (see the module docstring)."""

    def __init__(self, store: SFTStore, samples: np.ndarray, repeats: np.ndarray, seq_len: int, batch_size: int,
                 packing: bool = True, loss_norm: str = "sample", epochs: float = 1.0, seed: int = 0,
                 rank: int = 0, world_size: int = 1, buffer_size: int = 256):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..world_size-1 (world_size {world_size})")
        self.store, self.loss_norm = store, loss_norm
        self.batch_size, self.rank, self.world_size = batch_size, rank, world_size
        self.pad_id = store.pad_id
        self.order = epoch_order(np.asarray(samples, dtype=np.int64), np.asarray(repeats, dtype=np.float64),
                                 epochs, seed)
        self.rows = plan_rows(self.order, store.lengths, seq_len, packing, buffer_size)
        self._config = {"seq_len": seq_len, "packing": packing, "loss_norm": loss_norm, "epochs": epochs,
                        "seed": seed, "buffer_size": buffer_size, "samples": int(len(samples)),
                        "rows": len(self.rows)}
        self.step = 0

    def steps(self) -> int:
        """Optimizer steps that cover every planned row once (the last step may hold fewer rows)."""
        return math.ceil(len(self.rows) / (self.batch_size * self.world_size))

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "config": dict(self._config), "step": self.step}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"SFT stream state version {state.get('version')}, expected {STATE_VERSION}")
        diff = [k for k in self._config if state["config"].get(k) != self._config[k]]
        if diff:
            raise ValueError(f"cannot resume the SFT stream: settings changed since the state was saved: {diff}")
        self.step = state["step"]

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        g = self.batch_size * self.world_size
        start = self.step * g + self.rank * self.batch_size
        mine = self.rows[start : start + self.batch_size]  # past the end: empty rows, which count for nothing
        self.step += 1
        return rows_to_batch(mine or [[]], self.store, self.loss_norm, self.pad_id)

    def stats(self) -> dict:
        """Rows, samples and tokens of the plan; pad_fraction = padded positions / all positions of the
        micro-batches the rows are served in (rows_to_batch pads every row of one to its longest row, rounded
        up to a multiple of 8). Micro-batches are consecutive runs of batch_size rows, on every rank."""
        sizes = [sum(int(self.store.lengths[i]) for i in row) for row in self.rows]
        used = sum(sizes)
        width = sum(len(group) * (-(-max(group) // 8) * 8)
                    for group in (sizes[k : k + self.batch_size] for k in range(0, len(sizes), self.batch_size)))
        return {"rows": len(self.rows), "samples_seen": int(len(self.order)), "tokens": used,
                "pad_fraction": 1 - used / width if width else 0.0}


def weight_shares(store: SFTStore, samples: np.ndarray, repeats: np.ndarray, loss_norm: str) -> dict[str, dict]:
    """Per task_type: its share of the samples and its share of the loss weight under `loss_norm` (what packing
    with per-token loss silently changes)."""
    out: dict[str, dict] = {}
    totals = np.zeros(2)
    for i, r in zip(samples.tolist(), repeats.tolist()):
        w = float(np.asarray(store.weights(i)).sum())
        task = store.task_names[int(store.task_codes[i])]
        row = out.setdefault(task, {"samples": 0.0, "weight": 0.0})
        row["samples"] += r
        row["weight"] += r * (1.0 if loss_norm == "sample" else w)
    totals = np.array([sum(v["samples"] for v in out.values()), sum(v["weight"] for v in out.values())])
    return {t: {"sample_share": v["samples"] / totals[0], "weight_share": v["weight"] / totals[1]}
            for t, v in sorted(out.items())}
