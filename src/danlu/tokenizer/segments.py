"""Encode a rendered chat with token boundaries forced at given character positions, and with given spans
encoded as plain text even where they spell a special token.

Why by hand: a loss mask is exact only if no token straddles the boundary between a prompt and an answer, and a
user who types "<|im_end|>" must not hand the model a control token. Hugging Face tokenizers offer neither:
`apply_chat_template` tokenizes the whole string (special tokens recognised everywhere) and offsets only tell where
a token lies, not how to split it. So the whole text is encoded once (exactly what `apply_chat_template` would
give), and only the few tokens that straddle a cut, or that are a protected span's special token, are encoded
again piece by piece. Everywhere else the ids are the tokenizer's own.
"""

from __future__ import annotations

import bisect


def encode_with_cuts(tokenizer, text: str, cuts: list[int],
                     plain: list[tuple[int, int]] = ()) -> tuple[list[int], list[int]]:
    """(ids, starts): the token ids of `text` (no special tokens added) such that every position in `cuts` is a
    token boundary and every (start, end) span in `plain` is encoded as text (split_special_tokens), and for
    each token the character offset where it starts (what a mask looks up)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise TypeError(f"{type(tokenizer).__name__} is a slow (Python) tokenizer without offsets: load the fast one "
                        "(tokenizer.json)")
    # what tokenizer(text) gives, without its wrapping cost; transformers leaves encode_special_tokens as the last
    # call set it (split_special_tokens), so it is set here, for this call only
    before, backend.encode_special_tokens = backend.encode_special_tokens, False
    try:
        enc = backend.encode(text, add_special_tokens=False)
    finally:
        backend.encode_special_tokens = before
    ids, offsets = enc.ids, enc.offsets
    special = {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special} if plain else None
    windows = _windows(offsets, [i in special for i in ids] if plain else None, len(text), cuts, plain)
    if not windows:
        return ids, [s for s, _ in offsets]
    if special is None:
        special = {i for i, t in getattr(tokenizer, "added_tokens_decoder", {}).items() if t.special}
    inner = sorted({c for c in cuts if 0 < c < len(text)} | {p for span in plain for p in span})
    out_ids: list[int] = []
    out_starts: list[int] = []
    k = 0
    for ws, we in windows:
        while k < len(ids) and offsets[k][0] < ws:  # the tokenizer's own tokens up to the window
            out_ids.append(ids[k])
            out_starts.append(offsets[k][0])
            k += 1
        # the window's first piece begins the input, or follows a special token (encoded after that token, as the
        # tokenizer treats text there); later pieces continue text
        after = k - 1 if k > 0 and ids[k - 1] in special and offsets[k - 1][1] == ws else None
        points = [ws] + [p for p in inner if ws < p < we] + [we]
        for a, b in zip(points, points[1:]):
            is_plain = any(s <= a and b <= e for s, e in plain)
            if a == 0:
                piece = _ids(tokenizer, text[a:b], is_plain)
            elif a == ws and after is not None:
                piece = _ids_after(tokenizer, text[offsets[after][0]:ws], text[a:b], is_plain)
            else:
                piece = continuation_ids(tokenizer, text[a:b], split_special=is_plain)
            out_ids += piece
            out_starts += [a] * len(piece)
        while k < len(ids) and offsets[k][0] < we:  # skip the tokens the window replaced
            k += 1
    out_ids += ids[k:]
    out_starts += [s for s, _ in offsets[k:]]
    return out_ids, out_starts


def _windows(offsets: list[tuple[int, int]], is_special: list[bool] | None, n: int, cuts: list[int],
             plain) -> list[tuple[int, int]]:
    """Character windows [start, end) to encode again: each token that straddles a cut; and around each plain
    span the text between the special tokens on either side (SentencePiece-style tokenizers encode the text after
    a special token as if it began the input, so once the span is text, its neighbours must be encoded again)."""
    ends = [e for _, e in offsets]
    found = []
    for c in cuts:
        if 0 < c < n:
            k = bisect.bisect_right(ends, c)  # the first token that ends after c
            if k < len(offsets) and offsets[k][0] < c:
                found.append((offsets[k][0], offsets[k][1]))
    for s, e in plain:
        first = bisect.bisect_right(ends, s)  # the first token ending after s
        last = first
        while last + 1 < len(offsets) and offsets[last + 1][0] < e:
            last += 1
        while first > 0 and not is_special[first - 1]:
            first -= 1
        while last + 1 < len(offsets) and not is_special[last + 1]:
            last += 1
        if first < len(offsets):
            found.append((min(s, offsets[first][0]), max(e, offsets[last][1])))
    merged: list[tuple[int, int]] = []
    for s, e in sorted(found):
        if merged and s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


_PROBE = ("a b", "a", " b")  # text, its left part, its right part: a boundary every tokenizer keeps


def continuation_ids(tokenizer, piece: str, split_special: bool = False) -> list[int]:
    """Ids of `piece` as it would be encoded in the middle of a text. Byte-level tokenizers (GPT-2, Llama 3, Qwen)
    encode a piece the same anywhere, but SentencePiece-style ones (Llama 2, Mistral) prepend a "▁" at the start
    of the input; for those the piece is encoded after a "\\n" whose ids are then dropped (a probe checks which
    way reproduces the tokenizer's own split of "a b")."""
    kw = {"add_special_tokens": False, "split_special_tokens": split_special}
    if _plain_continues(tokenizer):
        return list(tokenizer(piece, **kw)["input_ids"])
    anchor = list(tokenizer("\n", add_special_tokens=False)["input_ids"])
    both = list(tokenizer("\n" + piece, **kw)["input_ids"])
    if both[: len(anchor)] == anchor:
        return both[len(anchor):]
    return list(tokenizer(piece, **kw)["input_ids"])


def _ids(tokenizer, piece: str, split_special: bool) -> list[int]:
    return list(tokenizer(piece, add_special_tokens=False, split_special_tokens=split_special)["input_ids"])


def _ids_after(tokenizer, before: str, piece: str, split_special: bool) -> list[int]:
    """Ids of `piece` right after the special token `before`: encoded behind it, its ids dropped."""
    head = _ids(tokenizer, before, split_special)
    both = _ids(tokenizer, before + piece, split_special)
    if both[: len(head)] == head:
        return both[len(head):]
    return continuation_ids(tokenizer, piece, split_special=split_special)


def _plain_continues(tokenizer) -> bool:
    full, left, right = (list(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in _PROBE)
    return full == left + right
