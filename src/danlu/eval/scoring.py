"""Log-probabilities of continuations given contexts, with the shared prompt prefix computed once.

The k-shot prefix of an MCQ subject (instruction line + examples) is the same for all its questions and is
most of every prompt; lm-eval recomputes it for each question. Here the longest token prefix that all of a
group's contexts share is run once, its KV cache (transformers' DynamicCache) is repeated over the batch, and
each row runs only its own tokens on top. Rows are right-padded: with causal attention a pad after a row's
last token cannot change that row's logits, so no attention mask is needed and positions continue from the
prefix as they would in one long sequence. Identical rows (the four one-token letter continuations of one
question share a context) are computed once.

Hand-written because no maintained library scores continuations on top of a shared prefix cache: lm-eval
batches whole prompts, vLLM's prefix caching needs vLLM and a GPU.
"""

from __future__ import annotations

import copy
import inspect
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Request:
    context: tuple[int, ...]  # token ids the continuation is conditioned on (non-empty)
    continuation: tuple[int, ...]  # token ids scored (non-empty)


@dataclass
class Score:
    logprob: float  # sum of log P(continuation token | everything before it)
    greedy: bool  # every continuation token was the argmax (lm-eval's is_greedy)
    tokens: int


def encode_pair(tokenizer, context: str, continuation: str) -> Request:
    """lm-eval's split of a (context, continuation) text pair into tokens, so both tools score the same ids:
    trailing whitespace of the context moves to the continuation, the whole string is encoded, and the
    continuation is what follows the separately encoded context."""
    return encode_pairs(tokenizer, [(context, continuation)])[0]


def encode_pairs(tokenizer, pairs: list[tuple[str, str]]) -> list[Request]:
    moved = []
    for ctx, cont in pairs:
        n = len(ctx) - len(ctx.rstrip())
        moved.append((ctx[: len(ctx) - n], ctx[len(ctx) - n:] + cont) if n else (ctx, cont))
    ctx_ids = _encode(tokenizer, [c for c, _ in moved])
    whole_ids = _encode(tokenizer, [c + k for c, k in moved])
    out = []
    for (ctx, cont), c, w in zip(pairs, ctx_ids, whole_ids):
        if not c:
            raise ValueError(f"empty context for continuation {cont!r}")
        cont_ids = w[len(c):]
        if not cont_ids:
            raise ValueError(f"continuation {cont!r} encodes to no tokens after its context")
        out.append(Request(tuple(c), tuple(cont_ids)))
    return out


def _encode(tokenizer, texts: list[str]) -> list[list[int]]:
    """Plain encode (the tokenizer's own special-token framing, as lm-eval's tok_encode), batched."""
    if not texts:
        return []
    return [list(x) for x in tokenizer(texts, add_special_tokens=True)["input_ids"]]


def common_prefix(seqs: list[tuple[int, ...]]) -> int:
    """Length of the longest token prefix all `seqs` share."""
    if not seqs:
        return 0
    first, n = seqs[0], min(len(s) for s in seqs)
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return n


def _forward_params(model) -> set[str]:
    try:
        return set(inspect.signature(model.forward).parameters)
    except (TypeError, ValueError):
        return set()


def cache_kwarg(model) -> str:
    """The forward argument that takes a KV cache: `cache` in transformers >= 5.2x, `past_key_values` before."""
    return "cache" if "cache" in _forward_params(model) else "past_key_values"


def output_cache(out):
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


@torch.no_grad()
def score_requests(model, requests: list[Request], batch_size: int = 16, shared_prefix: bool = True,
                   pad_id: int = 0) -> list[Score]:
    """Score every request; with `shared_prefix`, the group's common context prefix runs once (see above).
    Results equal scoring each request alone (tested against no-cache scoring and against lm-eval)."""
    if not requests:
        return []
    device = next(model.parameters()).device
    # the prefix stops one token short of the shortest context, so every row has a token of its own whose
    # logits predict its first continuation token
    p = min(common_prefix([r.context for r in requests]), min(len(r.context) for r in requests) - 1) \
        if shared_prefix else 0
    prefix_cache = None
    if p > 0:
        out = model(input_ids=torch.tensor([requests[0].context[:p]], device=device), use_cache=True)
        prefix_cache = output_cache(out)

    rows: dict[tuple[int, ...], int] = {}  # row tokens (after the prefix) -> row index
    row_of: list[int] = []
    for r in requests:
        tokens = (r.context + r.continuation[:-1])[p:]
        row_of.append(rows.setdefault(tokens, len(rows)))
    row_tokens = list(rows)
    # which positions of each row are needed: from the one predicting its requests' first continuation token
    need_from = [len(t) for t in row_tokens]
    for r, i in zip(requests, row_of):
        need_from[i] = min(need_from[i], len(r.context) - p - 1)

    requests_of: list[list[int]] = [[] for _ in row_tokens]
    for k, i in enumerate(row_of):
        requests_of[i].append(k)

    params = _forward_params(model)
    keep_ok, cache_arg = "logits_to_keep" in params, cache_kwarg(model)
    scores: list[Score | None] = [None] * len(requests)
    order = sorted(range(len(row_tokens)), key=lambda i: -len(row_tokens[i]))
    for start in range(0, len(order), batch_size):
        idx = order[start: start + batch_size]
        width = len(row_tokens[idx[0]])
        ids = torch.full((len(idx), width), pad_id, dtype=torch.long)
        for j, i in enumerate(idx):
            ids[j, : len(row_tokens[i])] = torch.tensor(row_tokens[i])
        kwargs = {"input_ids": ids.to(device), "use_cache": prefix_cache is not None}
        if prefix_cache is not None:
            cache = copy.deepcopy(prefix_cache)
            cache.batch_repeat_interleave(len(idx))
            kwargs[cache_arg] = cache
        first = min(need_from[i] for i in idx)
        if keep_ok:
            kwargs["logits_to_keep"] = width - first  # only the positions scored ([B, T, V] is the big tensor)
        logits = model(**kwargs).logits
        offset = width - logits.shape[1]  # the row position of logits[:, 0]
        for j, i in enumerate(idx):
            lp = logits[j, need_from[i] - offset: len(row_tokens[i]) - offset].float().log_softmax(-1)
            for k in requests_of[i]:
                r = requests[k]
                at = len(r.context) - p - 1 - need_from[i]
                cont = torch.tensor(r.continuation, device=lp.device)
                window = lp[at: at + len(r.continuation)]
                token_lp = window.gather(1, cont[:, None]).squeeze(1)
                scores[k] = Score(logprob=float(token_lp.double().sum()),
                                  greedy=bool((window.argmax(-1) == cont).all()), tokens=len(r.continuation))
        del logits, kwargs
    return scores  # type: ignore[return-value]
