"""Extend a base byte-level BPE tokenizer with a domain tokenizer's new tokens, keeping every existing id's meaning.

New tokens get ids after every existing id, and their merges are appended after every base merge. BPE always
applies the highest-priority merge available, so on any text the base merges all run first, exactly as before,
and reach the base tokenization; only then can new merges fire, and they only join adjacent tokens into new ids.
Hence the guarantee tested in tests/test_tokenizer_expand.py:

    the expanded tokenization is the base tokenization with some neighbours joined into new tokens; text whose
    expanded encoding holds no new id encodes to exactly the base ids.

For that, a new token must never be one half of a split of a base token (a merge (new, x) -> old would
let old ids appear where the base never produced them); such candidates are skipped. The same rule keeps the
result runnable by tiktoken exactly when the base was (merges stay "every split, ordered by id").
Candidates are taken in the domain tokenizer's id order (for BPE: merge order, i.e. most frequent first).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path

from pydantic import Field
from tokenizers import Tokenizer

from danlu.config import StrictModel, validate
from danlu.runs import atomic_path, atomic_write_json, start_run
from danlu.tokenizer.bytelevel import token_bytes

COPIED_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


class ExpandConfig(StrictModel):
    base: str
    domain: str
    out: str
    max_new: int | None = Field(default=None, ge=0)
    model: str | None = None
    model_out: str | None = None


def expand_tokenizer(
    base: str | Path,
    domain: str | Path,
    out: str | Path,
    max_new: int | None = None,
    model: str | Path | None = None,
    model_out: str | Path | None = None,
) -> dict:
    """Write `base` + up to `max_new` of `domain`'s tokens to `out`; with `model`, also resize it into `model_out`."""
    cfg = validate(
        dict(base=str(base), domain=str(domain), out=str(out), max_new=max_new,
             model=str(model) if model else None, model_out=str(model_out) if model_out else None),
        ExpandConfig, "tokenizer expand",
    )
    if (cfg.model is None) != (cfg.model_out is None):
        raise ValueError("--model and --model-out go together")
    t0 = time.perf_counter()
    base_spec = _read_spec(cfg.base)
    spec, added, skipped = expand_spec(base_spec, _read_spec(cfg.domain), cfg.max_new)
    run = start_run(out, "tokenizer-expand", cfg)
    out_dir = Path(out)
    with atomic_path(out_dir / "tokenizer.json") as tmp:
        tmp.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    Tokenizer.from_file(str(out_dir / "tokenizer.json"))  # fail here, not in a later stage, if it does not load
    for name in COPIED_FILES:
        src = Path(cfg.base) / name
        if src.exists():
            with atomic_path(out_dir / name) as tmp:
                tmp.write_bytes(src.read_bytes())
    atomic_write_json(
        out_dir / "new_tokens.json",
        [{"id": i, "text": token_bytes(s).decode("utf-8", "replace"), "token": s} for s, i in added],
    )
    report = {
        "counts": {"domain_candidates": sum(skipped.values()) + len(added), "added": len(added), "skipped": skipped},
        "base_vocab_size": _size(base_spec),
        "vocab_size": _size(spec),
        "examples": [token_bytes(s).decode("utf-8", "replace") for s, _ in added[:30]],
    }
    if cfg.model:
        from danlu.model.resize import resize_for_tokenizer

        report["model"] = resize_for_tokenizer(cfg.model, cfg.base, out_dir, cfg.model_out)
    report["timings"] = {"total_s": round(time.perf_counter() - t0, 3)}
    run.log.info("added %d tokens (%s skipped)", len(added), skipped)
    return run.finish(report)


def expand_spec(base: dict, domain: dict, max_new: int | None = None) -> tuple[dict, list[tuple[str, int]], dict]:
    """The expanded tokenizer.json (as a dict), the (token, id) pairs added, and skip counts by reason."""
    bmodel = base.get("model") or {}
    if bmodel.get("type") != "BPE":
        raise ValueError(f"base tokenizer model is {bmodel.get('type')}; expand needs a byte-level BPE base")
    if any(token_bytes(s) is None for s in bmodel["vocab"]):
        raise ValueError("base tokenizer is not byte-level (vocabulary strings outside the ByteLevel alphabet)")
    # Added (special) tokens live outside BPE; they keep their ids by being listed in the model vocabulary too,
    # because tokenizers renumbers added tokens missing from it as "model size + position" when loading.
    reserved = {t["content"]: t["id"] for t in base.get("added_tokens", [])}
    vocab: dict[str, int] = {s: i for s, i in bmodel["vocab"].items() if s not in reserved}
    special = set(reserved) | {t["content"] for t in domain.get("added_tokens", [])}
    next_id = 1 + max([*bmodel["vocab"].values(), *reserved.values()])

    # half -> the other halves of base-token splits it appears in: a new token may not be half of a base split
    # (splits of new tokens into new halves are fine: they make new ids, which the guarantee allows)
    by_left: dict[str, list[str]] = defaultdict(list)
    by_right: dict[str, list[str]] = defaultdict(list)

    for tok in vocab:
        for i in range(1, len(tok)):
            by_left[tok[:i]].append(tok[i:])
            by_right[tok[i:]].append(tok[:i])

    added: list[tuple[str, int]] = []
    skipped = {"in_base": 0, "special": 0, "not_byte_level": 0, "unreachable": 0, "half_of_existing": 0, "over_limit": 0}
    for tok in _candidates(domain):
        if tok in special:
            skipped["special"] += 1
        elif tok in vocab:
            skipped["in_base"] += 1
        elif token_bytes(tok) is None:
            skipped["not_byte_level"] += 1
        elif max_new is not None and len(added) >= max_new:
            skipped["over_limit"] += 1
        elif not any(tok[:i] in vocab and tok[i:] in vocab for i in range(1, len(tok))):
            skipped["unreachable"] += 1
        elif any(r in vocab for r in by_left.get(tok, ())) or any(l in vocab for l in by_right.get(tok, ())):
            skipped["half_of_existing"] += 1
        else:
            vocab[tok] = next_id
            added.append((tok, next_id))
            next_id += 1

    new_merges = []
    for tok, _ in added:  # every split of each new token, in id order, after all base merges (as merges_from_ranks)
        halves = [(tok[:i], tok[i:]) for i in range(1, len(tok)) if tok[:i] in vocab and tok[i:] in vocab]
        new_merges.extend([l, r] for l, r in sorted(halves, key=lambda h: (vocab[h[0]], vocab[h[1]])))
    spec = json.loads(json.dumps(base))
    spec["model"]["vocab"] = dict(sorted({**vocab, **reserved}.items(), key=lambda kv: kv[1]))
    spec["model"]["merges"] = [_as_pair(m) for m in bmodel.get("merges", [])] + new_merges
    return spec, added, skipped


def _candidates(domain: dict) -> list[str]:
    model = domain.get("model") or {}
    if model.get("type") == "BPE":
        return [s for s, _ in sorted(model["vocab"].items(), key=lambda kv: kv[1])]
    if model.get("type") == "Unigram":
        return [s for s, _ in sorted(model["vocab"], key=lambda ps: -ps[1])]
    raise ValueError(f"domain tokenizer model is {model.get('type')}; expected BPE or Unigram")


def _as_pair(m: str | list) -> list[str]:
    return m.split(" ", 1) if isinstance(m, str) else list(m)


def _size(spec: dict) -> int:
    return 1 + max([*spec["model"]["vocab"].values(), *(t["id"] for t in spec.get("added_tokens", []))])


def _read_spec(tokenizer_dir: str) -> dict:
    p = Path(tokenizer_dir) / "tokenizer.json"
    if not p.exists():
        raise FileNotFoundError(f"{p}: not a Hugging Face tokenizer folder (no tokenizer.json)")
    return json.loads(p.read_text(encoding="utf-8"))

