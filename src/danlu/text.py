"""Character classes shared by every stage that treats Chinese text differently from Latin text."""

from __future__ import annotations

import re

# Han ideographs: the URO, extension A, compatibility ideographs and the supplementary planes (ext. B-H).
HAN = "\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f"
HAN_CHAR = re.compile(f"[{HAN}]")

# Wide CJK text incl. kana, hangul and full-width punctuation: a line break between two such characters joins
# without a space (a space is the line break's meaning only between Latin words).
WIDE = "\u2e80-\u9fff\uf900-\ufaff\uff00-\uffef\u3000-\u303f"
ENDS_WIDE = re.compile(f"[{WIDE}]$")
STARTS_WIDE = re.compile(f"^[{WIDE}]")


def join_separator(prev: str, nxt: str) -> str:
    """What goes between two pieces of running text joined across a line break: nothing beside CJK text, else
    a space."""
    return "" if ENDS_WIDE.search(prev) or STARTS_WIDE.search(nxt) else " "


def count_han(text: str) -> int:
    return len(HAN_CHAR.findall(text))
