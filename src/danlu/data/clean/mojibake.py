"""Mojibake: text decoded with the wrong codec. Detected by undoing the usual wrong decodings and seeing whether
valid UTF-8 comes out (the misread bytes of real UTF-8 decode cleanly; genuine text almost never does):

- UTF-8 read as cp1252 / Latin-1 ("ä¸­æ–‡" for 中文): runs of Latin-1 and cp1252 characters, encoded back
  to their bytes, decoded as UTF-8;
- UTF-8 read as GBK ("涓枃" for 中文, the usual accident with Chinese text): non-ASCII text encoded back to
  GBK, decoded as UTF-8. Genuine Chinese also gives valid UTF-8 for a good share of its bytes by chance (GBK's
  lead and trail bytes overlap UTF-8's ranges), but what comes out then is spread over all 20,000 ideographs;
  misread Chinese gives back real Chinese, mostly the 3,755 common characters of GB2312 level 1. Only those
  are counted;
- replacement characters (U+FFFD, and "锟斤拷", which is U+FFFD's UTF-8 bytes read as GBK) left by a lossy
  decode.

ftfy repairs the first kind well but does not handle CJK codecs (it only considers single-byte encodings), and
dropping needs a measure rather than a repair, so the check is written here; it is a few codec calls per text.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field

from danlu.data.clean.base import Filter
from danlu.data.clean.textstats import NONSPACE, class_counts

# Characters cp1252 / Latin-1 give for bytes 0x80-0xFF (what UTF-8 multi-byte sequences turn into).
_CP1252_HIGH = "€‚ƒ„…†‡ˆ‰Š‹ŒŽ‘’“”•–—˜™š›œžŸ"
_LATIN_RUN = re.compile(f"[\u0080-\u00ff{_CP1252_HIGH}]{{2,}}")
_GBK_REPLACEMENT = "锟斤拷"
# GB2312 level 1: the 3,755 most common hanzi (rows 0xB0-0xD7)
_COMMON_HAN = re.compile("[" + "".join(bytes([r, c]).decode("gb2312", errors="ignore")
                                       for r in range(0xB0, 0xD8) for c in range(0xA1, 0xFF)) + "]")


def _single_byte(run: str) -> bytes:
    out = bytearray()
    for ch in run:
        try:
            out += ch.encode("cp1252")
        except UnicodeEncodeError:
            out += ch.encode("latin-1")  # 0x80-0x9F: C1 controls, what Latin-1 gives for cp1252's holes
    return bytes(out)


def _misread_utf8(data: bytes) -> int:
    """Bytes of `data` in UTF-8 sequences: a lead byte (0xC2-0xF4) followed by continuation bytes (0x80-0xBF).
    A sequence missing some of its continuation bytes still counts: Latin-1 turns 0x80-0x9F into C1 control
    characters, which the `invisible` step removes before this filter sees the text."""
    n, i, count = len(data), 0, 0
    while i < n:
        b = data[i]
        if 0xC2 <= b <= 0xF4:
            need = 1 if b < 0xE0 else 2 if b < 0xF0 else 3
            j = i + 1
            while j < n and j - i <= need and 0x80 <= data[j] <= 0xBF:
                j += 1
            if j > i + 1:
                count += j - i
                i = j
                continue
        i += 1
    return count


def mojibake_chars(text: str) -> dict[str, int]:
    """Characters that look like each kind of mojibake: {"latin": n, "gbk": n, "replacement": n}."""
    latin = 0
    for m in _LATIN_RUN.finditer(text):
        latin += _misread_utf8(_single_byte(m.group()))  # one byte per misread character
    # each common character got back was 3 UTF-8 bytes, read as 1.5 GBK characters; ASCII stays ASCII both ways
    # and ends any UTF-8 sequence, so it can stay in
    back = text.encode("gbk", errors="ignore").decode("utf-8", errors="replace")
    gbk = 3 * len(_COMMON_HAN.findall(back)) // 2
    replacement = text.count("\ufffd") + len(_GBK_REPLACEMENT) * text.count(_GBK_REPLACEMENT)
    return {"latin": latin, "gbk": gbk, "replacement": replacement}


class Mojibake(Filter):
    """Reject text whose share of mojibake characters (of non-space characters) is over `max_share`, or whose
    share of replacement characters is over `max_replacement`."""

    op: Literal["mojibake"] = "mojibake"
    max_share: float = Field(0.1, ge=0, le=1)
    max_replacement: float = Field(0.01, ge=0, le=1)

    def measure(self, text: str) -> dict[str, float]:
        n = max(int(class_counts(text)[NONSPACE]), 1)
        return {k: v / n for k, v in mojibake_chars(text).items()}

    def judge(self, text: str) -> str | None:
        shares = self.measure(text)
        kind = max(("latin", "gbk"), key=lambda k: shares[k])
        if shares[kind] > self.max_share:
            label = "UTF-8 read as cp1252/Latin-1" if kind == "latin" else "UTF-8 read as GBK"
            return f"mojibake ({label}) {shares[kind]:.2f} of chars > {self.max_share}"
        if shares["replacement"] > self.max_replacement:
            return f"replacement characters {shares['replacement']:.3f} > {self.max_replacement}"
        return None
