"""Document masking: a block-diagonal causal attention mask built from position_ids.

Packed rows hold several documents; with document masking a token attends only to earlier tokens of its own
document. A document starts wherever position_ids == 0. We build the full 4D mask ourselves and hand it to
the Hugging Face model: transformers 5.x passes a 4D mask through unchanged ("already prepared or custom",
masking_utils._preprocess_mask_arguments) to SDPA (boolean, True = attend) or eager (additive float), so
the same masking works on every backend, CPU included, and for any HF causal LM, not only those whose mask
code happens to infer packing from position_ids.
"""

from __future__ import annotations

import torch


def document_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] -> [B, T] index of the document each token belongs to (a new one wherever position_ids == 0)."""
    starts = (position_ids == 0).to(torch.int32)
    starts[:, 0] = 1  # a row that begins mid-document still starts a block
    return starts.cumsum(dim=1)


def document_causal_mask(position_ids: torch.Tensor, attn_implementation: str = "sdpa",
                         dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[B, 1, T, T] mask: causal and block-diagonal over documents.

    Boolean (True = may attend) for SDPA and other kernels that accept boolean masks; an additive float mask
    (0 or the dtype's minimum) for the eager implementation, which adds the mask to the scores.
    """
    doc = document_ids(position_ids)
    T = position_ids.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=position_ids.device).tril()
    allowed = (doc[:, :, None] == doc[:, None, :]) & causal  # [B, T, T]
    allowed = allowed[:, None]
    if attn_implementation == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min)
    return allowed


def shared_prefix_mask(block: torch.Tensor, branch: torch.Tensor, attn_implementation: str = "sdpa",
                       dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """[B, 1, T, T] mask for rows of token groups in which several sequences share a prefix (a preference pair's
    prompt, laid out once, then the chosen and the rejected answer): a token attends to earlier tokens of its own
    group (`block`) that are either the shared prefix (`branch` 0) or on its own branch, never another branch.
    Positions continue from the prefix on every branch, so each sequence computes exactly what it would alone.
    Boolean for SDPA-like kernels, additive float for eager, as document_causal_mask."""
    T = block.shape[1]
    causal = torch.ones(T, T, dtype=torch.bool, device=block.device).tril()
    same = block[:, :, None] == block[:, None, :]
    visible = (branch[:, None, :] == 0) | (branch[:, :, None] == branch[:, None, :])
    allowed = (same & visible & causal)[:, None]
    if attn_implementation == "eager":
        return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(
            ~allowed, torch.finfo(dtype).min)
    return allowed
