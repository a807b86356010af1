"""Packing documents into fixed-length rows: best-fit over a buffer, long documents cut into windows.

Concatenating documents and chopping the stream every `seq_len` tokens splits most documents across rows, so
a document's later tokens lose their context; padding one document per row wastes compute. Best-fit packing
(Ding et al. 2024, "Fewer Truncations Improve Language Modeling") keeps a buffer of documents and fills each row
with the ones that fit best, so few documents are cut and little is padded.

Here a row starts with the oldest piece in the buffer (so no piece waits longer than the buffer takes to turn
over) and the rest of the row is filled, again and again, with the longest buffered piece that still fits; what
is left is padding. A document longer than a row is cut into windows of `seq_len` tokens that overlap by one
token: a window's first token gets no label (its context is not in the row), and that token was already the
last target of the window before, so every next-token target of the document is trained exactly once and no
token is dropped.

Pieces are tuples (source, doc, start, length): tokens [start, start+length) of document `doc` of `source`.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict, deque
from typing import Iterable, Iterator, Literal

Piece = tuple[int, int, int, int]
Method = Literal["best_fit", "greedy"]


def windows(doc_len: int, seq_len: int) -> Iterator[tuple[int, int]]:
    """(start, length) of the pieces of a document of `doc_len` tokens: one piece, or windows overlapping by 1."""
    if seq_len < 2:
        raise ValueError(f"seq_len must be at least 2, got {seq_len}")
    start = 0
    while True:
        length = min(seq_len, doc_len - start)
        yield start, length
        if start + length >= doc_len:
            return
        start += seq_len - 1


class Packer:
    """A buffer of pieces that hands out rows: best-fit (default) or greedy (first come, pad when it does not fit)."""

    def __init__(self, seq_len: int, method: Method = "best_fit"):
        if method not in ("best_fit", "greedy"):
            raise ValueError(f"packing method must be 'best_fit' or 'greedy', got {method!r}")
        self.seq_len = seq_len
        self.method = method
        self._pieces: OrderedDict[int, Piece] = OrderedDict()  # arrival number -> piece, oldest first
        self._by_len: dict[int, deque[int]] = {}  # length -> arrival numbers, oldest first
        self._lens: list[int] = []  # sorted lengths that have pieces
        self._next = 0

    def __len__(self) -> int:
        return len(self._pieces)

    def add(self, piece: Piece) -> None:
        length = piece[3]
        if not 0 < length <= self.seq_len:
            raise ValueError(f"piece of {length} tokens cannot go into rows of {self.seq_len}")
        self._pieces[self._next] = piece
        q = self._by_len.get(length)
        if q is None:
            q = self._by_len[length] = deque()
            bisect.insort(self._lens, length)
        q.append(self._next)
        self._next += 1

    def _take(self, length: int) -> Piece:
        """Remove and return the oldest piece of this length."""
        q = self._by_len[length]
        key = q.popleft()
        if not q:
            del self._by_len[length]
            del self._lens[bisect.bisect_left(self._lens, length)]
        return self._pieces.pop(key)

    def next_row(self) -> list[Piece]:
        """The pieces of the next row (their lengths sum to at most seq_len); empty when the buffer is empty."""
        if not self._pieces:
            return []
        oldest = next(iter(self._pieces.values()))
        row = [self._take(oldest[3])]  # the oldest piece is also the oldest of its length
        room = self.seq_len - oldest[3]
        while room > 0 and self._pieces:
            if self.method == "greedy":
                nxt = next(iter(self._pieces.values()))
                if nxt[3] > room:
                    break
                length = nxt[3]
            else:
                i = bisect.bisect_right(self._lens, room) - 1
                if i < 0:
                    break
                length = self._lens[i]
            row.append(self._take(length))
            room -= length
        return row

    def state_dict(self) -> dict:
        return {"pieces": [list(p) for p in self._pieces.values()]}

    def load_state_dict(self, state: dict) -> None:
        self.__init__(self.seq_len, self.method)
        for p in state["pieces"]:
            self.add(tuple(p))


def pack_pieces(pieces: Iterable[Piece], seq_len: int, method: Method = "best_fit",
                buffer_size: int = 256) -> list[list[Piece]]:
    """Rows of `pieces` (in arrival order, each at most seq_len long), packed over a buffer of `buffer_size`."""
    packer = Packer(seq_len, method)
    pieces = iter(pieces)
    rows: list[list[Piece]] = []
    exhausted = False
    while True:
        while not exhausted and len(packer) < buffer_size:
            p = next(pieces, None)
            if p is None:
                exhausted = True
            else:
                packer.add(p)
        row = packer.next_row()
        if not row:
            return rows
        rows.append(row)


def pack(
    lengths: Iterable[int], seq_len: int, method: Method = "best_fit", buffer_size: int = 256
) -> list[list[Piece]]:
    """Pack documents of these lengths (windowed when too long) into rows; source 0, doc = position in `lengths`."""
    pieces = ((0, d, s, n) for d, length in enumerate(lengths) for s, n in windows(length, seq_len))
    return pack_pieces(pieces, seq_len, method, buffer_size)
