"""How a single token id shows in logprobs: its exact bytes, and a text that names it uniquely.

A byte-level BPE token may be part of a character (Chinese takes 3 bytes); decoding it alone gives U+FFFD,
and many such tokens would then share one name, which breaks the `{token: logprob}` maps of the completions
API. Like the OpenAI API, such tokens are named "bytes:\\xe4\\xb8"; whole-character tokens by their text.
"""

from __future__ import annotations

import json
import re
from functools import lru_cache

from danlu.tokenizer import bytelevel

_BYTE_PIECE = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece byte fallback


class TokenNames:
    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.special = set(tokenizer.all_special_ids)
        self.byte_level = _decoder_is_byte_level(tokenizer)
        self._bytes = lru_cache(maxsize=65536)(self._token_bytes)
        self._text = lru_cache(maxsize=65536)(self._token_text)

    def bytes(self, token_id: int) -> bytes:
        return self._bytes(token_id)

    def text(self, token_id: int) -> str:
        return self._text(token_id)

    def _token_bytes(self, token_id: int) -> bytes:
        piece = self.tokenizer.convert_ids_to_tokens(token_id)
        if token_id in self.special or piece is None:
            return (piece or "").encode("utf-8")
        if self.byte_level:
            raw = bytelevel.token_bytes(piece)
            if raw is not None:
                return raw
        m = _BYTE_PIECE.fullmatch(piece)
        if m:
            return bytes([int(m.group(1), 16)])
        if "\u2581" in piece:  # SentencePiece's word-boundary mark is a space
            return piece.replace("\u2581", " ").encode("utf-8")
        return self.tokenizer.decode([token_id], clean_up_tokenization_spaces=False).encode("utf-8")

    def _token_text(self, token_id: int) -> str:
        raw = self._bytes(token_id)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return "bytes:" + "".join(f"\\x{b:02x}" for b in raw)


def _decoder_is_byte_level(tokenizer) -> bool:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return False
    decoder = json.loads(backend.to_str()).get("decoder") or {}
    parts = decoder.get("decoders", [decoder]) if decoder.get("type") == "Sequence" else [decoder]
    return any(p.get("type") == "ByteLevel" for p in parts)
