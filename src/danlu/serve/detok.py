"""Token ids -> text, one token at a time, without ever releasing half a character; stop strings.

A byte-level BPE splits a Chinese character (3 UTF-8 bytes) over several tokens, and decoding a prefix that
ends inside a character gives U+FFFD. The incremental decoder holds such tokens back until the character is
complete (the offsets method of TGI and vLLM: decode a short window of recent tokens twice, with and without
the new ones, and release the difference only when it does not end in U+FFFD). The window starts on the last
few prompt tokens, so tokenizers that drop a leading space on the first token (SentencePiece) space the first
generated word correctly.

`StopMatcher` cuts the text at the first stop string and, while streaming, holds back any tail that could
still become one, so a stop string never reaches a client even when it arrives split over tokens.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"
PROMPT_CONTEXT = 5  # prompt tokens that prime the decoding window


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_ids: list[int], skip_special_tokens: bool = True):
        self.tokenizer = tokenizer
        # a fast tokenizer's Rust decoder directly: what its decode() calls, without the per-call conversions
        self.backend = getattr(tokenizer, "backend_tokenizer", None)
        self.skip = skip_special_tokens
        self.ids = list(prompt_ids[-PROMPT_CONTEXT:])
        self.prefix_offset = 0
        self.read_offset = len(self.ids)

    def _decode(self, ids: list[int]) -> str:
        if self.backend is not None:
            return self.backend.decode(ids, skip_special_tokens=self.skip)
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip, clean_up_tokenization_spaces=False)

    def add(self, token_id: int) -> str:
        """Text that `token_id` completes (possibly empty while a character is still incomplete)."""
        self.ids.append(token_id)
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        if len(full) > len(prefix) and not full.endswith(REPLACEMENT):
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return full[len(prefix):]
        return ""

    def flush(self) -> str:
        """At the end: whatever is still held back (U+FFFD only if the model really produced broken bytes)."""
        prefix = self._decode(self.ids[self.prefix_offset:self.read_offset])
        full = self._decode(self.ids[self.prefix_offset:])
        self.prefix_offset = self.read_offset = len(self.ids)
        return full[len(prefix):]


class StopMatcher:
    """Accumulates text; `push` returns what may be released now and whether a stop string was hit."""

    def __init__(self, stops: list[str]):
        self.stops = [s for s in stops if s]
        self.longest = max((len(s) for s in self.stops), default=0)
        self.text = ""
        self.released = 0

    def push(self, delta: str) -> tuple[str, bool]:
        start = max(0, len(self.text) - self.longest + 1)
        self.text += delta
        if self.stops:
            hits = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
            if hits:
                self.text = self.text[:min(hits)]
                return self._release(len(self.text)), True
        return self._release(len(self.text) - self._held_tail()), False

    def finish(self) -> str:
        return self._release(len(self.text))

    def _held_tail(self) -> int:
        """Length of the longest tail of the text that is the beginning of some stop string."""
        for n in range(min(self.longest - 1, len(self.text) - self.released), 0, -1):
            tail = self.text[-n:]
            if any(s.startswith(tail) for s in self.stops):
                return n
        return 0

    def _release(self, upto: int) -> str:
        if upto <= self.released:
            return ""
        out, self.released = self.text[self.released:upto], upto
        return out
