"""Sampling parameters of one request, and the sampler that turns a batch of next-token logits into tokens.

Each row of the batch carries its own settings (temperature, top-k, top-p, penalties, seed), so requests with
different settings share one forward pass. The order follows vLLM and HF `generate`: penalties on the raw
logits, then temperature, then top-k and top-p, then a draw from the row's own generator (a seeded request
gives the same tokens whatever else is in the batch). Logprobs are those of the model's raw distribution
(before penalties and temperature), as vLLM and the OpenAI API report them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

MAX_LOGPROBS = 20  # the OpenAI API's limit on top_logprobs


@dataclass
class SamplingParams:
    """How one request generates. temperature 0 is greedy; top_k 0 (or -1) and top_p 1 switch those off."""

    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0  # HF/CTRL style over prompt and output: >1 discourages repeats
    presence_penalty: float = 0.0  # OpenAI style over the output tokens: subtracted once a token appeared
    frequency_penalty: float = 0.0  # OpenAI style: subtracted per occurrence in the output
    seed: int | None = None
    logit_bias: dict[int, float] = field(default_factory=dict)  # added to the logits (OpenAI: -100..100)
    n: int = 1
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False
    logprobs: int | None = None  # None: no logprobs; k: the chosen token's and the k most likely
    prompt_logprobs: int | None = None  # the same for every prompt token (the first has none)
    skip_special_tokens: bool = True

    def __post_init__(self) -> None:
        if self.top_k == -1:
            self.top_k = 0
        checks = [
            ("max_tokens", self.max_tokens >= 0, "must be >= 0"),
            ("temperature", self.temperature >= 0, "must be >= 0"),
            ("top_p", 0 < self.top_p <= 1, "must be in (0, 1]"),
            ("top_k", self.top_k >= 0, "must be >= 0 (0 or -1: off)"),
            ("repetition_penalty", self.repetition_penalty > 0, "must be > 0"),
            ("presence_penalty", -2 <= self.presence_penalty <= 2, "must be in [-2, 2]"),
            ("frequency_penalty", -2 <= self.frequency_penalty <= 2, "must be in [-2, 2]"),
            ("n", self.n >= 1, "must be >= 1"),
            ("logprobs", self.logprobs is None or 0 <= self.logprobs <= MAX_LOGPROBS, f"must be in 0..{MAX_LOGPROBS}"),
            ("prompt_logprobs", self.prompt_logprobs is None or 0 <= self.prompt_logprobs <= MAX_LOGPROBS,
             f"must be in 0..{MAX_LOGPROBS}"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ValueError(f"{name} {why}, got {getattr(self, name)!r}")
        bad_bias = next((v for v in self.logit_bias.values() if not -100 <= v <= 100), None)
        if bad_bias is not None:
            raise ValueError(f"logit_bias values must be in [-100, 100], got {bad_bias}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop must be non-empty strings, got {self.stop!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1

    @property
    def adjusts_logits(self) -> bool:
        return (self.repetition_penalty != 1 or self.presence_penalty != 0 or self.frequency_penalty != 0
                or bool(self.logit_bias))


@dataclass
class TokenLogprob:
    """A token and its logprob, with the most likely alternatives at that position (id, logprob)."""

    token_id: int
    logprob: float
    top: list[tuple[int, float]] = field(default_factory=list)


class RowState:
    """What the sampler keeps per generated sequence: its generator and what its penalties need."""

    def __init__(self, params: SamplingParams, prompt_ids: list[int], vocab_size: int, device: torch.device,
                 seed_offset: int = 0):
        self.params = params
        self.generator = None
        if params.seed is not None and not params.greedy:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed(params.seed + seed_offset)
        self.seen = self.counts = None
        if params.repetition_penalty != 1:
            self.seen = torch.zeros(vocab_size, dtype=torch.bool, device=device)
            self.seen[torch.tensor(prompt_ids, dtype=torch.long, device=device)] = True
        if params.presence_penalty or params.frequency_penalty:
            self.counts = torch.zeros(vocab_size, dtype=torch.float32, device=device)
        self.bias = None
        if params.logit_bias:
            bad = [t for t in params.logit_bias if not 0 <= t < vocab_size]
            if bad:
                raise ValueError(f"logit_bias: token id {bad[0]} is outside the vocabulary (0..{vocab_size - 1})")
            self.bias = torch.zeros(vocab_size, dtype=torch.float32, device=device)
            self.bias[torch.tensor(list(params.logit_bias), device=device)] = torch.tensor(
                list(params.logit_bias.values()), dtype=torch.float32, device=device)

    def observe(self, token_id: int) -> None:
        if self.seen is not None:
            self.seen[token_id] = True
        if self.counts is not None:
            self.counts[token_id] += 1


def _apply_penalties(logits: torch.Tensor, rows: list[RowState]) -> None:
    """In place, row by row (only rows that asked for a penalty or a bias pay for it)."""
    for i, row in enumerate(rows):
        p = row.params
        if row.bias is not None:
            logits[i] += row.bias
        if row.seen is not None:
            x = logits[i]
            logits[i] = torch.where(row.seen, torch.where(x > 0, x / p.repetition_penalty,
                                                          x * p.repetition_penalty), x)
        if row.counts is not None:
            logits[i] -= p.frequency_penalty * row.counts + p.presence_penalty * (row.counts > 0)


def _filtered_probs(logits: torch.Tensor, rows: list[RowState]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Probabilities after temperature, top-k and top-p for the sampled rows, batched: (probs, order) where
    `order` maps positions in probs back to token ids when sorting was needed (None otherwise)."""
    temps = torch.tensor([r.params.temperature for r in rows], dtype=logits.dtype, device=logits.device)
    x = logits / temps[:, None]
    vocab = x.shape[-1]
    top_k = [r.params.top_k if 0 < r.params.top_k < vocab else vocab for r in rows]
    top_p = [r.params.top_p for r in rows]
    if all(k == vocab for k in top_k) and all(p >= 1 for p in top_p):
        return torch.softmax(x, dim=-1), None
    x, order = x.sort(dim=-1, descending=True)
    rank = torch.arange(vocab, device=x.device)
    drop = rank[None, :] >= torch.tensor(top_k, device=x.device)[:, None]
    probs = torch.softmax(x.masked_fill(drop, float("-inf")), dim=-1)
    before = probs.cumsum(dim=-1) - probs  # mass of the more likely tokens
    drop |= before > torch.tensor(top_p, dtype=probs.dtype, device=x.device)[:, None]
    drop[:, 0] = False  # the most likely token always stays
    return torch.softmax(x.masked_fill(drop, float("-inf")), dim=-1), order


def sample(logits: torch.Tensor, rows: list[RowState], default_generator: torch.Generator | None = None,
           ) -> tuple[list[int], list[TokenLogprob | None]]:
    """Next token of every row of `logits` [B, V] (float32), and its logprob entry where the row asked."""
    want_lp = [r.params.logprobs is not None for r in rows]
    raw_lp = torch.log_softmax(logits[[i for i, w in enumerate(want_lp) if w]], dim=-1) if any(want_lp) else None
    if any(r.params.adjusts_logits for r in rows):
        logits = logits.clone()
        _apply_penalties(logits, rows)
    tokens = logits.argmax(dim=-1)
    sampled = [i for i, r in enumerate(rows) if not r.params.greedy]
    if sampled:
        probs, order = _filtered_probs(logits[sampled], [rows[i] for i in sampled])
        for j, i in enumerate(sampled):
            pick = torch.multinomial(probs[j], 1, generator=rows[i].generator or default_generator)
            tokens[i] = order[j, pick[0]] if order is not None else pick[0]
    token_list = tokens.tolist()
    entries: list[TokenLogprob | None] = [None] * len(rows)
    if raw_lp is not None:
        for j, i in enumerate(i for i, w in enumerate(want_lp) if w):
            entries[i] = logprob_entry(raw_lp[j], token_list[i], rows[i].params.logprobs)
    return token_list, entries


def logprob_entry(logprobs: torch.Tensor, token_id: int, k: int) -> TokenLogprob:
    """The entry of `token_id` in one position's log-distribution [V], with its k most likely tokens."""
    top = []
    if k:
        values, ids = logprobs.topk(k)
        top = list(zip(ids.tolist(), values.tolist()))
    return TokenLogprob(token_id, float(logprobs[token_id]), top)


def prompt_logprob_entries(logits: torch.Tensor, prompt_ids: list[int], k: int,
                           chunk: int = 512) -> list[TokenLogprob | None]:
    """Logprobs of every prompt token given the ones before it; `logits` [T, V] are the prompt's own logits.
    The first token has no context, so its entry is None (as in the OpenAI API's echo). Positions go through
    log_softmax `chunk` at a time, so a long prompt over a large vocabulary needs no second [T, V] copy."""
    out: list[TokenLogprob | None] = [None]
    targets = torch.tensor(prompt_ids[1:], dtype=torch.long, device=logits.device)
    for start in range(0, len(prompt_ids) - 1, chunk):
        lp = torch.log_softmax(logits[start:start + chunk].float(), dim=-1)[: len(targets) - start]
        ids = targets[start:start + lp.shape[0]]
        chosen = lp.gather(1, ids[:, None])[:, 0].tolist()
        tops = lp.topk(k, dim=-1) if k else None
        for t, tok in enumerate(ids.tolist()):
            top = list(zip(tops.indices[t].tolist(), tops.values[t].tolist())) if tops is not None else []
            out.append(TokenLogprob(tok, chosen[t], top))
    return out
