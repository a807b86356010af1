"""Training objectives: what the loop minimises. Pretraining is next-token prediction; SFT is the same loss
with prompt tokens labelled -100; DPO will add its own objective here.

An objective returns the loss SUMMED over a batch's items and says how many items a batch has, so the loop can
normalise by the item count of the whole optimizer step across accumulation micro-batches and processes (the
same gradient however the step is split). For causal LM losses the items are target tokens: the step loss is
token-weighted, i.e. sum of all target-token losses / number of target tokens. Over documents this equals the
mean of per-document mean losses weighted by each document's number of target tokens (not a plain per-document
mean, which would over-weight short documents).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from danlu.model.attention import document_causal_mask

IGNORE = -100


@dataclass
class Objective:
    name: str
    count: Callable[[dict], int]  # items the loss is normalised by (target tokens for LM losses)
    loss_sum: Callable[[torch.nn.Module, dict], torch.Tensor]  # summed loss over the batch's items


def _attn_impl(model: torch.nn.Module) -> str:
    from danlu.train.distributed import unwrap

    return getattr(unwrap(model).config, "_attn_implementation", "sdpa") or "sdpa"


def lm_logits(model: torch.nn.Module, batch: dict, doc_mask: bool) -> torch.Tensor:
    """Forward a packed batch. With doc_mask, positions restart per document (as the batch's position_ids
    say) and a block-diagonal causal mask stops attention across documents; without, plain causal attention
    (SDPA's is_causal fast path) over the whole row."""
    kwargs = {"input_ids": batch["input_ids"]}
    if doc_mask:
        kwargs["position_ids"] = batch["position_ids"]
        impl = _attn_impl(model)
        # flash-attention kernels take no 4D mask; transformers runs them varlen from position_ids instead
        if "flash" not in impl:
            kwargs["attention_mask"] = document_causal_mask(batch["position_ids"], impl)
    return model(**kwargs, use_cache=False).logits


class _CrossEntropySum(torch.autograd.Function):
    """Summed next-token cross-entropy with a hand-fused backward (softmax - one-hot, written once).

    Hand-written because torch's cross_entropy backward zero-fills a [tokens, vocab] buffer, scatters into it
    and then runs log_softmax's backward: two more full passes over the largest tensor of a small model's step
    (measured ~4% of a whole training step for a d=128 Llama with a 4k vocabulary on CPU). Liger-Kernel fuses
    this on GPUs (Triton) but not on CPU. Results equal F.cross_entropy(reduction="sum") (tested)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        valid = labels != IGNORE
        safe = labels.clamp(min=0)
        lse = torch.logsumexp(logits, dim=-1)
        target = logits.gather(1, safe[:, None]).squeeze(1)
        ctx.save_for_backward(logits, safe, valid)
        return ((lse - target) * valid).sum()

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, safe, valid = ctx.saved_tensors
        grad = torch.softmax(logits, dim=-1)
        grad[torch.arange(len(safe), device=grad.device), safe] -= 1
        grad.mul_((valid.to(grad.dtype) * grad_out)[:, None])
        return grad, None


def cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[N, V] float logits, [N] labels (-100 = ignore) -> summed loss over the labelled positions."""
    return _CrossEntropySum.apply(logits, labels)


def target_count(batch: dict) -> int:
    return int((batch["labels"][:, 1:] != IGNORE).sum())


def causal_lm(doc_mask: bool) -> Objective:
    """Next-token cross-entropy; labels follow the HF convention (aligned with input_ids, shifted here)."""

    def loss_sum(model: torch.nn.Module, batch: dict) -> torch.Tensor:
        logits = lm_logits(model, batch, doc_mask)
        # shift the labels, not the logits: slicing [B, T, V] logits would copy them (and their gradient)
        labels = F.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE)
        return cross_entropy_sum(logits.flatten(0, 1).float(), labels.flatten())

    return Objective(name="causal_lm", count=target_count, loss_sum=loss_sum)
