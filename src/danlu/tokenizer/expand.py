"""Extend a base byte-level BPE tokenizer with a domain tokenizer's new tokens, keeping every existing id's meaning.

New tokens get ids after every existing id, and their merges are appended after every base merge. BPE always
applies the highest-priority merge available, so on any text the base merges all run first, exactly as before,
and reach the base tokenization; only then can new merges fire, and they only join adjacent tokens into new ids.
Hence the guarantee tested in tests/test_tokenizer_expand.py:

    the expanded tokenization is the base tokenization with some neighbours joined into new tokens; text whose
    expanded encoding holds no new id encodes to exactly the base ids.

Two kinds of base are supported:
- byte-level BPE (GPT-2/Llama 3/Qwen and danlu's own): token strings are bytes in the ByteLevel alphabet. A new
  token must never be one half of a split of a base token (tiktoken joins any adjacent pair whose concatenation
  is a token, so a merge (new, x) -> old would let old ids appear where the base never produced them); such
  candidates are skipped. This keeps the result runnable by tiktoken (merges stay "every split, ordered by id").
- SentencePiece-style BPE with byte fallback (Llama 2, Mistral, Baichuan, Chinese-LLaMA): pieces are text with
  spaces as "▁", unknown characters fall back to <0xXX> byte pieces. HF runs only the listed merges, so no
  base id can reappear; a new single character needs no merge at all (it is looked up directly), which is how
  Chinese characters missing from such a base get added, as Chinese-LLaMA did. A new piece must be whole
  characters: a domain token that ends inside a character cannot be written as a piece and is skipped.
The domain tokenizer may be either kind too. Candidates are taken in the domain tokenizer's id order (for
BPE: merge order, i.e. most frequent first).
"""

from __future__ import annotations

import json
import time
from collections import defaultdict
from pathlib import Path
from typing import Iterable

from pydantic import Field
from tokenizers import Tokenizer

from danlu.config import StrictModel, build_config
from danlu.runs import atomic_path, atomic_write_json, counts, start_run
from danlu.tokenizer.bytelevel import token_bytes, token_str

SP_SPACE = "\u2581"  # "▁", SentencePiece's visible space

COPIED_FILES = ("tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


class ExpandConfig(StrictModel):
    base: str
    domain: str
    out: str
    max_new: int | None = Field(default=None, ge=0)
    model: str | None = None
    model_out: str | None = None


def expand_tokenizer(base: str | Path, domain: str | Path, out: str | Path, *, sets: Iterable[str] = (),
                     **options) -> dict:
    """Write `base` + up to `max_new` of `domain`'s tokens to `out`; with `model`, also resize it into `model_out`.
    `options` are ExpandConfig's fields (max_new, model, model_out)."""
    options = {k: str(v) if isinstance(v, Path) else v for k, v in options.items()}
    cfg = build_config(ExpandConfig, fields=dict(options, base=str(base), domain=str(domain), out=str(out)),
                       sets=sets, source="tokenizer expand")
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
    atomic_write_json(out_dir / "new_tokens.json", [{"id": i, "text": t, "token": s} for s, i, t in added])
    report = {
        # candidates: the domain tokenizer's tokens (and, for SentencePiece bases, their characters)
        "counts": counts(sum(skipped.values()) + len(added), len(added), skipped, unit="candidate tokens"),
        "headline": ["base_vocab_size", "vocab_size"],
        "base_vocab_size": _size(base_spec),
        "vocab_size": _size(spec),
        "examples": [t for _, _, t in added[:30]],
    }
    if cfg.model:
        from danlu.model.resize import resize_for_tokenizer

        report["model"] = resize_for_tokenizer(cfg.model, cfg.base, out_dir, cfg.model_out)
    report["timings"] = {"total_s": round(time.perf_counter() - t0, 3)}
    run.log.info("added %d tokens (%s skipped)", len(added), skipped)
    return run.finish(report)


def piece_style(spec: dict) -> str:
    """"byte_level" or "sentencepiece" (BPE/Unigram pieces of text with ▁ for spaces), else ValueError."""
    model = spec.get("model") or {}
    if model.get("byte_fallback") or _uses_metaspace(spec):
        return "sentencepiece"
    reserved = {t["content"] for t in spec.get("added_tokens", [])}
    vocab = model.get("vocab") or {}
    strings = vocab if isinstance(vocab, dict) else (p for p, _ in vocab)  # BPE: {piece: id}; Unigram: [[piece, score]]
    if all(token_bytes(s) is not None for s in strings if s not in reserved):
        return "byte_level"
    raise ValueError("tokenizer is neither byte-level nor SentencePiece-style (pieces with ▁ and byte fallback)")


def _uses_metaspace(spec: dict) -> bool:
    text = json.dumps([spec.get("normalizer"), spec.get("pre_tokenizer")], ensure_ascii=False)
    return '"Metaspace"' in text or SP_SPACE in text


def _piece_bytes(piece: str, style: str) -> bytes | None:
    """The text bytes a piece stands for; None for byte-fallback pieces (<0xE4>) and unreadable strings."""
    if style == "byte_level":
        return token_bytes(piece)
    if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
        return None
    return piece.replace(SP_SPACE, " ").encode("utf-8")


def _as_piece(text: bytes, style: str) -> str | None:
    """Bytes as a piece of `style`; None if a SentencePiece piece cannot hold them (not whole characters)."""
    if style == "byte_level":
        return token_str(text)
    try:
        return text.decode("utf-8").replace(" ", SP_SPACE)
    except UnicodeDecodeError:
        return None


def expand_spec(base: dict, domain: dict, max_new: int | None = None) -> tuple[dict, list[tuple[str, int, str]], dict]:
    """The expanded tokenizer.json (as a dict), the (piece, id, text) of each token added, and skip counts by
    reason."""
    bmodel = base.get("model") or {}
    if bmodel.get("type") != "BPE":
        raise ValueError(f"base tokenizer model is {bmodel.get('type')}; expand needs a BPE base "
                         "(byte-level, or SentencePiece-style with byte fallback)")
    base_style, domain_style = piece_style(base), piece_style(domain)
    # Added (special) tokens live outside BPE; they keep their ids by being listed in the model vocabulary too,
    # because tokenizers renumbers added tokens missing from it as "model size + position" when loading.
    reserved = {t["content"]: t["id"] for t in base.get("added_tokens", [])}
    vocab: dict[str, int] = {s: i for s, i in bmodel["vocab"].items() if s not in reserved}
    special = set(reserved) | {t["content"] for t in domain.get("added_tokens", [])}
    first_new = 1 + max([*bmodel["vocab"].values(), *reserved.values()])

    # half -> the other halves of base-token splits it appears in: a new token may not be half of a base split
    # (splits of new tokens into new halves are fine: they make new ids, which the guarantee allows)
    by_left: dict[str, list[str]] = defaultdict(list)
    by_right: dict[str, list[str]] = defaultdict(list)

    for tok in vocab if base_style == "byte_level" else ():
        for i in range(1, len(tok)):
            by_left[tok[:i]].append(tok[i:])
            by_right[tok[i:]].append(tok[:i])

    added: list[tuple[str, int, str]] = []
    skipped = {"in_base": 0, "special": 0, "byte_piece": 0, "partial_character": 0, "unreachable": 0,
               "half_of_existing": 0, "over_limit": 0}
    considered: set[str] = set()

    def consider(tok: str) -> None:
        considered.add(tok)
        if tok in vocab or tok in special:
            skipped["in_base"] += 1
        elif max_new is not None and len(added) >= max_new:
            skipped["over_limit"] += 1
        elif not (base_style == "sentencepiece" and len(tok) == 1) and not any(
            tok[:i] in vocab and tok[i:] in vocab for i in range(1, len(tok))
        ):  # a SentencePiece base looks a single character up directly; anything longer needs a merge
            skipped["unreachable"] += 1
        elif base_style == "byte_level" and (
            any(r in vocab for r in by_left.get(tok, ())) or any(l in vocab for l in by_right.get(tok, ()))
        ):
            skipped["half_of_existing"] += 1
        else:
            vocab[tok] = len(added) + first_new
            added.append((tok, vocab[tok], _piece_bytes(tok, base_style).decode("utf-8", "replace")))

    for candidate in _candidates(domain):
        text = None if candidate in special else _piece_bytes(candidate, domain_style)
        tok = _as_piece(text, base_style) if text else None
        if candidate in special:
            skipped["special"] += 1
        elif text is None:
            skipped["byte_piece"] += 1
        elif tok is None:
            skipped["partial_character"] += 1
        elif tok not in considered:
            if base_style == "sentencepiece":  # its characters first: SentencePiece lists pieces before them
                for ch in dict.fromkeys(tok):
                    if ch not in vocab and ch not in considered and ch != tok:
                        consider(ch)
            consider(tok)

    new_merges = []
    for tok, _, _ in added:  # every split of each new token, in id order, after all base merges (as merges_from_ranks)
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

