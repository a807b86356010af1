"""The preference batch stream: units (a pair's chosen + rejected sequences, or one KTO record) -> epochs ->
micro-batches of `micro_batch_size` units -> rows.

    stream = PrefBatches(store, units, repeats, seq_len=2048, micro_batch_size=4, packing=True, epochs=1, seed=0)
    batch = next(stream)

- Epochs and up-sampling as for SFT (danlu.train.sft_batches.epoch_order). Micro-batch i of process r is the
  (i x world_size + r)-th run of `micro_batch_size` units in that order, so an optimizer step of `batch_size`
  units is the same units however it is split over accumulation and processes, and the state (micro-batches
  drawn) resumes exactly.
- Rows: the units of a micro-batch go into as many rows of 2 x seq_len tokens as best-fit packing needs
  (plan_rows), spread so the rows come out about equally long (the batch pads every row to the longest), or
  one unit per row. A pair's sequences always sit in one row, so chosen and rejected go through the model in the
  same forward. Positions restart at every sequence and attention never crosses one (document mask), so each
  sequence is scored exactly as if it were alone.
- share_prompt: a pair's prompt is laid out once and both answers follow it, each attending to the prompt and
  to itself only, with positions continuing from the prompt's end (the shared-prefix mask): the prompt's
  tokens go through the model once instead of twice, with the same result (tested against each sequence alone).
- Per-sequence log-probs come from one packed forward: `pred` lists the flat [R x W] position of the hidden
  state that predicts each answer token, `targets` / `target_seq` the tokens and their sequence, so the LM head
  runs only there and index_add sums each sequence.

A batch: input_ids, position_ids [R, W] (+ block, branch with shared prompts); pred, targets, target_seq [n]; per
sequence seq_tokens, seq_ref (reference log-prob, NaN if not precomputed), seq_task, seq_desirable (pairs: the
chosen), seq_doc, seq_last (flat index of its last target token in [R x W]); loss_count [1] = the units it holds.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from danlu.train.sft_batches import epoch_order, plan_rows

STATE_VERSION = 1
Sequence = Callable[[int], tuple[np.ndarray, np.ndarray]]  # doc -> (ids, weights)
Group = tuple[list[int], int]  # documents laid out together and the length of the prefix they share (0: none)


def sequences_batch(rows: list[list[Group]], sequence: Sequence, pad_id: int, *, n_units: int,
                    ref: np.ndarray | None = None, task=None, desirable=None, multiple: int = 8) -> dict:
    """Tensors for rows of groups, padded to the longest row (rounded up to `multiple`). A group of one document
    is laid out as it is; a group of documents sharing a prefix of p tokens as the prefix once, then each
    document's tail with positions continuing from p (the batch then carries "block" and "branch" for
    objectives.lm_logits' shared-prefix mask)."""
    n = max(len(rows), 1)
    data = {d: sequence(d) for row in rows for docs, _ in row for d in docs}
    sizes = [sum(p + sum(len(data[d][0]) - p for d in docs) for docs, p in row) for row in rows]
    width = -(-max(sizes + [1]) // multiple) * multiple
    ids = np.full((n, width), pad_id, dtype=np.int64)
    pos = np.zeros((n, width), dtype=np.int64)
    block = np.zeros((n, width), dtype=np.int64)
    branch = np.zeros((n, width), dtype=np.int64)
    ramp = np.arange(width, dtype=np.int64)
    pred, targets, target_seq, tokens, last, docs_out = [], [], [], [], [], []
    shared = False
    for r, row in enumerate(rows):
        at = 0
        for g, (docs, p) in enumerate(row):
            shared |= p > 0
            head = data[docs[0]][0][:p]
            ids[r, at : at + p], pos[r, at : at + p], block[r, at : at + p] = head, ramp[:p], g + 1
            tail = at + p
            for j, d in enumerate(docs):
                toks, w = data[d]
                k = len(toks) - p
                ids[r, tail : tail + k], pos[r, tail : tail + k] = toks[p:], ramp[p : p + k]
                block[r, tail : tail + k], branch[r, tail : tail + k] = g + 1, (j + 1 if p else 0)
                where = np.concatenate([at + ramp[:p], tail + ramp[:k]])  # row position of each token
                hit = np.flatnonzero(np.asarray(w) > 0)
                hit = hit[hit > 0]  # the first token is never predicted
                pred.append(r * width + where[hit - 1])
                targets.append(np.asarray(toks, dtype=np.int64)[hit])
                target_seq.append(np.full(len(hit), len(docs_out), dtype=np.int64))
                tokens.append(len(hit))
                last.append(r * width + int(where[hit[-1] if len(hit) else len(toks) - 1]))
                docs_out.append(d)
                tail += k
            at = tail
        pos[r, at:] = ramp[: width - at]  # padding is its own segment
        block[r, at:] = len(row) + 1
    docs = np.array(docs_out, dtype=np.int64)
    cat = (lambda xs: torch.from_numpy(np.concatenate(xs)) if xs else torch.zeros(0, dtype=torch.int64))
    out = {"input_ids": torch.from_numpy(ids), "position_ids": torch.from_numpy(pos), "pred": cat(pred),
           "targets": cat(targets), "target_seq": cat(target_seq),
           "seq_tokens": torch.tensor(tokens, dtype=torch.float64),
           "seq_ref": torch.from_numpy(ref[docs].astype(np.float64)) if ref is not None
           else torch.full((len(docs),), float("nan"), dtype=torch.float64),
           "seq_task": torch.from_numpy(np.asarray(task)[docs].astype(np.int64)) if task is not None
           else torch.zeros(len(docs), dtype=torch.int64),
           "seq_desirable": torch.from_numpy(np.asarray(desirable)[docs].astype(bool)) if desirable is not None
           else torch.zeros(len(docs), dtype=torch.bool),
           "seq_doc": torch.from_numpy(docs), "seq_last": torch.tensor(last, dtype=torch.int64),
           "loss_count": torch.tensor([float(n_units)], dtype=torch.float64)}
    if shared:
        out["block"], out["branch"] = torch.from_numpy(block), torch.from_numpy(branch)
    return out


def balanced_rows(units: np.ndarray, lengths: np.ndarray, capacity: int, packing: bool) -> list[list[int]]:
    """Rows of units for one micro-batch: as many rows as best-fit packing needs (plan_rows), the units then
    spread over them longest first onto the least-filled row. A batch is padded to its longest row, so rows of
    even length waste the least; if the spread overfills a row, best fit's rows are kept."""
    rows = plan_rows(units, lengths, capacity, packing, max(1, len(units)))
    if not packing or len(rows) < 2:
        return rows
    spread: list[list[int]] = [[] for _ in rows]
    load = [0] * len(rows)
    for u in sorted(units.tolist(), key=lambda u: -int(lengths[u])):
        k = load.index(min(load))
        spread[k].append(u)
        load[k] += int(lengths[u])
    return spread if max(load) <= capacity else rows


def units_batch(units: list[int], store, seq_len: int, packing: bool, ref: np.ndarray | None = None,
                share_prompt: bool = False) -> dict:
    """A micro-batch of units of a PrefStore: rows of up to 2 x seq_len tokens (balanced_rows), each unit's
    sequences side by side; with `share_prompt`, a pair whose answers share the prompt tokens lays it out once."""
    share = share_prompt and store.width == 2
    lengths = store.shared_lengths if share else store.unit_lengths
    rows = balanced_rows(np.asarray(units, dtype=np.int64), lengths, 2 * seq_len, packing) if units else [[]]

    def groups(u: int) -> list[Group]:
        docs = list(store.unit_docs(u))
        if share and store.shares_prompt[docs[0]]:
            return [(docs, int(store.prompt_len[docs[0]]))]
        return [([d], 0) for d in docs]

    return sequences_batch([[g for u in row for g in groups(u)] for row in rows], store.sequence, store.pad_id,
                           n_units=len(units), ref=ref, task=store.task_codes, desirable=store.desirable)


class PrefBatches:
    """An exact, resumable stream of preference micro-batches (see the module docstring)."""

    def __init__(self, store, units: np.ndarray, repeats: np.ndarray, seq_len: int, micro_batch_size: int,
                 packing: bool = True, epochs: float = 1.0, seed: int = 0, rank: int = 0, world_size: int = 1,
                 ref: np.ndarray | None = None, share_prompt: bool = False):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in 0..world_size-1 (world_size {world_size})")
        self.store, self.seq_len, self.packing, self.ref, self.share = store, seq_len, packing, ref, share_prompt
        self.micro, self.rank, self.world_size = micro_batch_size, rank, world_size
        self.order = epoch_order(np.asarray(units, dtype=np.int64), np.asarray(repeats, dtype=np.float64), epochs,
                                 seed)
        self._config = {"seq_len": seq_len, "packing": packing, "share_prompt": share_prompt, "epochs": epochs,
                        "seed": seed,
                        "micro_batch_size": micro_batch_size, "units": int(len(units)), "order": int(len(self.order))}
        self.pos = 0  # micro-batches this process has drawn

    def steps(self, batch_size: int) -> int:
        """Optimizer steps of `batch_size` units that cover the planned order once (the last may hold fewer)."""
        return math.ceil(len(self.order) / batch_size)

    def units_at(self, i: int) -> list[int]:
        """The units of global micro-batch i (empty past the end: a batch that counts for nothing)."""
        return self.order[i * self.micro : (i + 1) * self.micro].tolist()

    def state_dict(self) -> dict:
        return {"version": STATE_VERSION, "config": dict(self._config), "pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        if state.get("version") != STATE_VERSION:
            raise ValueError(f"preference stream state version {state.get('version')}, expected {STATE_VERSION}")
        diff = [k for k in self._config if state["config"].get(k) != self._config[k]]
        if diff:
            raise ValueError(f"cannot resume the preference stream: settings changed since the state was saved: {diff}")
        self.pos = state["pos"]

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        units = self.units_at(self.pos * self.world_size + self.rank)
        self.pos += 1
        return units_batch(units, self.store, self.seq_len, self.packing, self.ref, self.share)

    def stats(self) -> dict:
        """Rows, tokens and padding over every micro-batch of the plan (each padded to its longest row)."""
        lengths = self.store.shared_lengths if self.share and self.store.width == 2 else self.store.unit_lengths
        n = math.ceil(len(self.order) / self.micro)
        used = width = rows = 0
        for i in range(n):
            plan = balanced_rows(np.asarray(self.units_at(i), dtype=np.int64), lengths, 2 * self.seq_len, self.packing)
            lens = [int(sum(lengths[u] for u in row)) for row in plan]
            used += sum(lens)
            width += len(lens) * (-(-max(lens) // 8) * 8)
            rows += len(lens)
        return {"units_seen": int(len(self.order)), "micro_batches": n, "rows": rows, "tokens": used,
                "pad_fraction": 1 - used / width if width else 0.0}
