"""Helpers for the training tests: tiny Llama models, packed batches, made-up texts (stores: tokstore_helpers)."""

from __future__ import annotations

import random

import torch

WORDS = ("apt dpkg kernel module package install remove update upgrade mirror source debian system user "
         "root shell file path config network service daemon log boot grub disk mount").split()


def make_texts(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 40))) + "." for _ in range(n)]


def tiny_llama(vocab_size: int = 320, seed: int = 0, attn: str = "sdpa"):
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab_size, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    cfg._attn_implementation = attn
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def random_docs(n: int, vocab: int = 200, seed: int = 0, lo: int = 3, hi: int = 30) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(2, vocab, (int(torch.randint(lo, hi, (1,), generator=g)),), generator=g).tolist()
            for _ in range(n)]


def pack_rows(docs: list[list[int]], seq_len: int) -> list[dict]:
    """Greedy packing into rows of seq_len (a document that does not fit starts the next row; longer ones are
    cropped), following the stream contract: labels -100 at padding and at each document's first token,
    position_ids restarting per document."""
    rows, cur = [], []
    for d in docs:
        d = d[:seq_len]
        if sum(len(x) for x in cur) + len(d) > seq_len:
            rows.append(cur)
            cur = []
        cur.append(d)
    if cur:
        rows.append(cur)
    out = []
    for row in rows:
        ids, labels, pos = [], [], []
        for d in row:
            ids += d
            labels += [-100] + d[1:]
            pos += list(range(len(d)))
        pad = seq_len - len(ids)
        out.append({"input_ids": torch.tensor(ids + [1] * pad), "labels": torch.tensor(labels + [-100] * pad),
                    "position_ids": torch.tensor(pos + list(range(len(pos), len(pos) + pad)))})
    return out


class ListStream:
    """Stand-in batch stream over fixed rows with the PackedBatches contract: rank r of w gets its share of
    each global micro-batch of batch_size*w rows; state_dict/load_state_dict resume exactly."""

    def __init__(self, rows: list[dict], batch_size: int, rank: int = 0, world_size: int = 1):
        self.rows, self.bs, self.rank, self.world = rows, batch_size, rank, world_size
        self.pos = 0

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        g = self.bs * self.world
        start = (self.pos * g) % (len(self.rows) - g + 1)
        mine = self.rows[start + self.rank * self.bs: start + (self.rank + 1) * self.bs]
        self.pos += 1
        return {k: torch.stack([r[k] for r in mine]) for k in mine[0]}

    def state_dict(self) -> dict:
        return {"pos": self.pos}

    def load_state_dict(self, state: dict) -> None:
        self.pos = state["pos"]


def one_thread():
    """Generator for an autouse fixture: torch on one thread during these tests. Tiny models gain nothing from
    more, and on a machine whose cores are busy with other work, OpenMP threads waiting on each other made a
    64-wide matmul ~80x slower (measured 23 ms vs 0.3 ms)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def interrupted_after(monkeypatch, steps: int, run) -> None:
    """run() with training stopped (KeyboardInterrupt, as from kill) just after the checkpoint of `steps` is
    written; the real checkpoint writer is back afterwards."""
    import pytest

    from danlu.train import loop

    real = loop.save_checkpoint

    def save_then_die(root, step, *a, **kw):
        path = real(root, step, *a, **kw)
        if step == steps:
            raise KeyboardInterrupt("killed after the checkpoint")
        return path

    with monkeypatch.context() as m:
        m.setattr(loop, "save_checkpoint", save_then_die)
        with pytest.raises(KeyboardInterrupt):
            run()
