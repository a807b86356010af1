"""Per-sequence answer log-probs from one packed forward (danlu.train.pref_batches), for the policy, a live
reference, or once before training for every stored sequence (the precomputed reference)."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from danlu.train.objectives import head_at, lm_logits, token_cross_entropy


def sequence_logps(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """[S] float32: each sequence's answer log-prob, the sum of log p(token) over its target tokens."""
    with head_at(model, batch["pred"]):
        logits = lm_logits(model, batch, doc_mask=True)
    token = -token_cross_entropy(logits.flatten(0, 1).float(), batch["targets"])
    return token.new_zeros(len(batch["seq_tokens"])).index_add(0, batch["target_seq"], token)


@contextlib.contextmanager
def evaluating(model: torch.nn.Module):
    """No gradients and eval mode (no dropout) for a reference forward; the training mode comes back after."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was)


def reference_live(mode: str, model: torch.nn.Module, ref_model: torch.nn.Module | None, batch: dict) -> torch.Tensor:
    """The reference log-probs of a batch, computed now: a frozen copy ("copy") or the policy with its LoRA
    adapter switched off ("disable_adapter")."""
    from danlu.train.distributed import unwrap

    if mode == "copy":
        with evaluating(ref_model):
            return sequence_logps(ref_model, batch)
    net = unwrap(model)  # no gradient here, so the DDP wrapper is not needed
    with evaluating(net), net.disable_adapter():
        return sequence_logps(net, batch)


def precompute(model: torch.nn.Module, store, micro_batch_size: int, seq_len: int, packing: bool, precision: str,
               info, desc: str = "reference", share_prompt: bool = False) -> np.ndarray:
    """The log-prob of every sequence of `store` under `model` (float64 [len(store)]). Each process scores every
    world_size-th micro-batch; a sum over processes completes the array everywhere."""
    from tqdm.auto import tqdm

    from danlu.train.distributed import all_reduce_sum, autocast
    from danlu.train.pref_batches import units_batch

    units = np.arange(store.n_units)
    chunks = [units[i : i + micro_batch_size].tolist() for i in range(0, len(units), micro_batch_size)]
    out = torch.zeros(len(store), dtype=torch.float64, device=info.device)
    with evaluating(model):
        for chunk in tqdm(chunks[info.rank :: info.world_size], desc=desc, unit="batch", disable=not info.is_main,
                          dynamic_ncols=True):
            batch = {k: v.to(info.device) for k, v in units_batch(chunk, store, seq_len, packing, None,
                                                                   share_prompt).items()}
            with autocast(precision, info.device):
                logp = sequence_logps(model, batch)
            out[batch["seq_doc"]] = logp.double()
    return all_reduce_sum(out).cpu().numpy()
