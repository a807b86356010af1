"""Document masking: a block-diagonal causal attention mask built from position_ids.

Packed rows hold several documents; with document masking a token attends only to earlier tokens of its own
document. A document starts wherever position_ids == 0. We build the full 4D mask ourselves and hand it to
the Hugging Face model: transformers 5.x passes a 4D mask through unchanged ("already prepared or custom",
masking_utils._preprocess_mask_arguments) to SDPA (boolean, True = attend) or eager (additive float), so
the same masking works on every backend, CPU included, and for any HF causal LM, not only those whose mask
code happens to infer packing from position_ids.

On CPU, training runs attention per document instead (DOCUMENT_ATTENTION, below): a 4D mask makes SDPA compute
every row's full T x T scores and throw the cross-document ones away, while one causal SDPA call per document
computes only the sum of each document's own (causal) square. transformers' varlen path does the same for
flash-attention kernels, which CPUs lack.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn.functional as F


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


DOCUMENT_ATTENTION = "danlu_documents"  # an attention implementation name, registered with transformers below


def document_spans(position_ids: torch.Tensor) -> list[list[tuple[int, int]]]:
    """[B, T] position_ids -> per row, the (start, end) of each document (a new one wherever position_ids == 0)."""
    T = position_ids.shape[1]
    starts = (position_ids == 0).cpu()
    starts[:, 0] = True  # a row that begins mid-document still starts a span
    spans = []
    for row in starts:
        at = row.nonzero().squeeze(1).tolist()
        spans.append(list(zip(at, at[1:] + [T])))
    return spans


# torch's CPU flash-attention keeps a kernel for every sequence length it meets in bf16/fp16 and never frees it
# (measured: +2.7 MB per distinct length, 1.3 GB after 160 lengths; fp32 stays flat), so in reduced precision each
# document is padded at its end to a multiple of 64 (8 lengths up to 512, memory flat). Causal attention never lets
# a real token see the padding after it, and the padded positions' outputs are dropped.
_LENGTH_MULTIPLE = 64


def _causal_attention(module, query, key, value, pad_to: int, kwargs: dict) -> torch.Tensor:
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    n = query.shape[2]
    pad = -n % pad_to
    if pad:
        query, key, value = (F.pad(t, (0, 0, 0, pad)) for t in (query, key, value))
    return sdpa_attention_forward(module, query, key, value, None, is_causal=True, **kwargs)[0][:, :n]


def _document_attention(module, query, key, value, attention_mask, document_spans=None, **kwargs):
    """transformers attention function ([B, H, T, D] in, [B, T, H, D] out): with `document_spans` (a forward
    kwarg, which transformers hands down to every attention layer), one causal SDPA per document; without, plain
    SDPA with the mask it is given (generation, a shared-prefix 4D mask), so the model behaves as "sdpa" there."""
    if document_spans is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, **kwargs)
    kwargs.pop("is_causal", None)
    reduced = query.dtype != torch.float32 or torch.is_autocast_enabled(query.device.type)  # autocast casts SDPA
    pad_to = _LENGTH_MULTIPLE if reduced else 1
    # split, not slice: the backward of a split is one concatenation, that of each slice a zero-filled full copy
    rows = []
    for spans, q, k, v in zip(document_spans, query.split(1), key.split(1), value.split(1)):
        lengths = [e - s for s, e in spans]
        parts = [_causal_attention(module, qd, kd, vd, pad_to, kwargs)
                 for qd, kd, vd in zip(q.split(lengths, 2), k.split(lengths, 2), v.split(lengths, 2))]
        rows.append(torch.cat(parts, dim=1))
    return torch.cat(rows, dim=0), None


def _register() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(DOCUMENT_ATTENTION, _document_attention)
    AttentionMaskInterface.register(DOCUMENT_ATTENTION, sdpa_mask)  # masks built as for "sdpa" when one is needed


@contextmanager
def document_attention(model: torch.nn.Module, device: torch.device):
    """Within this block a model on CPU with "sdpa" attention runs DOCUMENT_ATTENTION (danlu.train.objectives.
    lm_logits then passes document spans instead of a 4D mask); elsewhere nothing changes. Held for a whole
    training run, not one forward, because activation checkpointing recomputes the forward during backward.
    Not on GPUs: one kernel launch per document and layer is unmeasured there, and flash-attention's varlen path
    (attn_implementation: flash_attention_2) is the way to skip cross-document work on them."""
    config = model.config
    if device.type != "cpu" or config._attn_implementation != "sdpa":
        yield
        return
    _register()
    model.set_attn_implementation(DOCUMENT_ATTENTION)
    try:
        yield
    finally:
        model.set_attn_implementation("sdpa")
