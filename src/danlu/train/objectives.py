"""Training objectives: what the loop minimises. Pretraining is next-token prediction; SFT is the same loss
with prompt tokens labelled -100 and a weight per target token (weighted_lm); DPO adds its own objective.

An objective returns the loss SUMMED over a batch's items and says how many items a batch has, so the loop can
normalise by the item count of the whole optimizer step across accumulation micro-batches and processes (the
same gradient however the step is split). For causal LM losses the items are target tokens: the step loss is
token-weighted, i.e. sum of all target-token losses / number of target tokens. Over documents this equals the
mean of per-document mean losses weighted by each document's number of target tokens (not a plain per-document
mean, which would over-weight short documents).
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from danlu.model.attention import DOCUMENT_ATTENTION, document_causal_mask, document_spans, shared_prefix_mask

IGNORE = -100


class MetricSums:
    """Extra figures an objective reports per step (DPO's reward margin and accuracy, a reward model's scores):
    `loss_sum` adds (sum, count) per name; the loop takes them after each step, sums them over the steps of a
    logging window and over processes, and logs sum / count. Every process must add the same names (a count
    may be 0), as the loop all-reduces them together."""

    def __init__(self) -> None:
        self._sums: dict[str, list[torch.Tensor]] = {}

    def add(self, name: str, total: torch.Tensor | float, count: torch.Tensor | float) -> None:
        t = torch.as_tensor(total).detach().to(torch.float64).sum()
        c = torch.as_tensor(count).detach().to(torch.float64).sum()
        if name in self._sums:
            self._sums[name][0] += t.to(self._sums[name][0].device)
            self._sums[name][1] += c.to(self._sums[name][1].device)
        else:
            self._sums[name] = [t, c.to(t.device)]

    def take(self) -> dict[str, list[torch.Tensor]]:
        """What was added since the last take ({name: [sum, count]}), and start again."""
        out, self._sums = self._sums, {}
        return out


@dataclass
class Objective:
    name: str
    count: Callable[[dict], int]  # items the loss is normalised by (target tokens for LM losses)
    loss_sum: Callable[[torch.nn.Module, dict], torch.Tensor]  # summed loss over the batch's items
    metrics: MetricSums | None = None  # extra per-step figures loss_sum reports (None: the loss only)


def _attn_impl(model: torch.nn.Module) -> str:
    from danlu.train.distributed import unwrap

    return getattr(unwrap(model).config, "_attn_implementation", "sdpa") or "sdpa"


def lm_logits(model: torch.nn.Module, batch: dict, doc_mask: bool) -> torch.Tensor:
    """Forward a packed batch. With doc_mask, positions restart per document (as the batch's position_ids
    say) and a block-diagonal causal mask stops attention across documents; without, plain causal attention
    (SDPA's is_causal fast path) over the whole row. A batch with "block"/"branch" rows (preference pairs whose
    answers share their prompt: danlu.train.pref_batches) gets the shared-prefix mask instead."""
    kwargs = {"input_ids": batch["input_ids"]}
    if doc_mask:
        kwargs["position_ids"] = batch["position_ids"]
        impl = _attn_impl(model)
        if "branch" in batch:
            if "flash" in impl:
                raise ValueError("a shared-prompt batch needs a 4D attention mask, which flash-attention kernels do "
                                 "not take: set data.share_prompt: false, or attn_implementation: sdpa")
            kwargs["attention_mask"] = shared_prefix_mask(batch["block"], batch["branch"], impl)
        elif impl == DOCUMENT_ATTENTION:  # one attention call per document (danlu.model.attention)
            kwargs["document_spans"] = document_spans(batch["position_ids"])
        # flash-attention kernels take no 4D mask; transformers runs them varlen from position_ids instead
        elif "flash" not in impl:
            kwargs["attention_mask"] = document_causal_mask(batch["position_ids"], impl)
    return model(**kwargs, use_cache=False).logits


class _TokenCrossEntropy(torch.autograd.Function):
    """Per-token next-token cross-entropy (logsumexp - target logit) with a hand-fused backward (softmax -
    one-hot, written once).

    Hand-written because torch's cross_entropy backward zero-fills a [tokens, vocab] buffer, scatters into it
    and then runs log_softmax's backward: two more full passes over the largest tensor of a small model's step
    (measured ~4% of a whole training step for a d=128 Llama with a 4k vocabulary on CPU). Liger-Kernel fuses
    this on GPUs (Triton) but not on CPU. Results equal F.cross_entropy(reduction="none") (tested)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        safe = labels.clamp(min=0)
        lse = torch.logsumexp(logits, dim=-1)
        target = logits.gather(1, safe[:, None]).squeeze(1)
        ctx.save_for_backward(logits, safe)
        return lse - target

    @staticmethod
    def backward(ctx, grad_out: torch.Tensor):
        logits, safe = ctx.saved_tensors
        grad = torch.softmax(logits, dim=-1)
        grad[torch.arange(len(safe), device=grad.device), safe] -= 1
        grad.mul_(grad_out.to(grad.dtype)[:, None])
        return grad, None


def token_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """[N, V] float logits, [N] labels -> [N] cross-entropies (-log p(label)); a label of -100 gives a
    meaningless value there, for the caller to mask (its gradient is whatever the caller multiplies it by)."""
    return _TokenCrossEntropy.apply(logits, labels)


def cross_entropy_sum(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """[N, V] float logits, [N] labels (-100 = ignore), optional [N] weights -> sum of weight x loss over the
    labelled positions (weight 1 without `weights`)."""
    valid = (labels != IGNORE).to(logits.dtype)
    w = valid if weights is None else valid * weights.to(logits.dtype)
    return (token_cross_entropy(logits, labels) * w).sum()


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


@contextmanager
def head_at(model: torch.nn.Module, pred: torch.Tensor):
    """Within this block the model's LM head runs only on the hidden states at `pred` ([n] flat indices into the
    [R x W] positions; one may repeat: a shared prompt's last token predicts both answers' first token) and the
    forward returns [1, n, vocab] logits for those n positions. A preference loss needs the log-prob of the answer
    tokens only, SFT's loss the target tokens only; prompts, padding and the other positions never meet the
    [hidden x vocab] projection (with a 150k vocabulary that head is most of a small model's compute). A forward
    pre-hook, so the forward still goes through the DDP/FSDP wrapper (gradient sync) and works for any
    *ForCausalLM that applies its head once to the final hidden states."""
    from danlu.train.distributed import unwrap

    head = unwrap(model).get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda module, args: (args[0].flatten(0, 1)[pred][None], *args[1:]))
    try:
        yield
    finally:
        handle.remove()


def weighted_lm() -> Objective:
    """SFT's loss: next-token cross-entropy over the target tokens, each times its weight; the loop normalises
    by the batches' "loss_count" (the weights' sum for token normalisation, the number of samples for sample
    normalisation: see danlu.train.sft_batches). Always document-masked: samples packed in a row never see
    each other. The LM head runs at the target positions only (head_at): the prompts (system prompt, question)
    are a large share of SFT tokens, and the [hidden x vocab] projection is a small model's largest matmul
    (benchmarks/bench_sft.py: an unpacked epoch 1.5x faster on a d=256 Llama with an 8k vocabulary)."""

    def loss_sum(model: torch.nn.Module, batch: dict) -> torch.Tensor:
        labels = F.pad(batch["labels"][:, 1:], (0, 1), value=IGNORE).flatten()
        weights = F.pad(batch["weights"][:, 1:], (0, 1), value=0.0).flatten()
        keep = (labels != IGNORE).nonzero().squeeze(1)  # the LM head runs at the target positions only
        with head_at(model, keep):
            logits = lm_logits(model, batch, doc_mask=True)
        return cross_entropy_sum(logits.flatten(0, 1).float(), labels[keep], weights[keep])

    return Objective(name="weighted_lm", count=lambda b: float(b["loss_count"].sum()), loss_sum=loss_sum)
