"""tbl(1) tables of man pages -> Markdown pipe tables (used by roff.py).

Why hand-written: groff's tbl preprocessor is a C program and no Python library parses tbl. A table is
`.TS`, an optional options line ending in ";", one or more format lines (the last ending in "."), data rows to
`.TE`, with `.T&` starting new format lines and `T{`..`T}` text blocks. Formatting is layout only, so only what
decides the cells is read: the tab character (`tab(x)`), the column keys (spanned columns `s` get an empty cell)
and where the table ends. A table whose format lines are not tbl format lines (zstd.1's SYNOPSIS has an options
line and then data) is not a table: groff gives up on it and drops its text; here its rows are kept as text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

# One column key (tbl(1) "column classifiers") with its modifiers: fonts (b, i, f with a name), point size,
# vertical spacing, width, column separation, and the one-letter ones.
_KEY = re.compile(r"[LRCNASlrcnas^_=-](?:[BIbi]|[Ff](?:\([^)]*\)|[A-Z]{1,2}|[A-Za-z0-9])|[Mm]\([^)]*\)|"
                  r"[PpVv][+-]?\d+|[Ww](?:\([^)]*\)|\d+[a-z]?)|[EeTtUuXxZzDd]|\d+|\(\d+\))*")
_SPACE = re.compile(r"[\s|]*")
_END = re.compile(r"[.']\s*TE\b")
_FORMAT_AGAIN = re.compile(r"[.']\s*T&")


@dataclass
class Table:
    rows: list[list[str]] = field(default_factory=list)  # cells, text already resolved
    text: list[str] = field(default_factory=list)  # the roff lines of a table that was not one (no valid format)


def format_rows(line: str) -> list[list[str]] | None:
    """The column keys of a format line (rows split at ","; a trailing "." ends the format), None if the line
    is not a format line."""
    body = line.strip()
    body = body[:-1] if body.endswith(".") else body
    rows = []
    for part in body.split(","):
        keys, pos = [], _SPACE.match(part).end()
        while pos < len(part):
            m = _KEY.match(part, pos)
            if m is None:
                return None
            keys.append(m.group(0)[0].lower())
            pos = _SPACE.match(part, m.end()).end()
        if keys:
            rows.append(keys)
    return rows or None


def _options_tab(line: str) -> str:
    m = re.search(r"\btab\s*\(\s*(.)\s*\)", line)
    return m.group(1) if m else "\t"


def read_table(lines: list[str], i: int, inline: Callable[[str], str]) -> tuple[Table, int]:
    """Parse the table starting at lines[i] (the line after `.TS`); return it and the index after `.TE`."""
    table = Table()
    tab = "\t"
    if i < len(lines) and lines[i].rstrip().endswith(";"):
        tab = _options_tab(lines[i])
        i += 1
    formats, i = _formats(lines, i)
    if formats is None:  # not a tbl format: keep the body as text lines
        while i < len(lines) and not _END.match(lines[i]):
            if not lines[i].startswith((".", "'")):
                table.text.append(lines[i].replace(tab, " "))
            i += 1
        return table, i + 1
    row_no = 0
    while i < len(lines) and not _END.match(lines[i]):
        ln = lines[i]
        i += 1
        if _FORMAT_AGAIN.match(ln):
            more, i = _formats(lines, i)
            formats, row_no = more or formats, 0
            continue
        if ln.startswith((".", "'")) or ln.strip() in ("_", "=", ""):
            continue
        cells, i = _cells(ln, lines, i, tab, inline)
        keys = formats[min(row_no, len(formats) - 1)]
        row_no += 1
        if keys and all(k in "_=-" for k in keys):
            continue  # a format row of rules: a horizontal line
        table.rows.append(_place(cells, keys))
    return table, i + 1


def _formats(lines: list[str], i: int) -> tuple[list[list[str]] | None, int]:
    """The format rows from lines[i] through the line that ends with "."; None (and i unchanged) if lines[i] is
    not a format line."""
    rows: list[list[str]] = []
    j = i
    while j < len(lines) and not _END.match(lines[j]):
        got = format_rows(lines[j])
        if got is None:
            return None, i
        rows += got
        j += 1
        if lines[j - 1].rstrip().endswith("."):
            return rows, j
    return None, i


def _cells(line: str, lines: list[str], i: int, tab: str, inline: Callable[[str], str]) -> tuple[list[str], int]:
    """A data row's cells; a cell that is a `T{` text block runs on to its `T}` line."""
    out = []
    parts = line.split(tab)
    k = 0
    while k < len(parts):
        part = parts[k]
        k += 1
        if part.strip() != "T{":
            out.append(inline(part))
            continue
        block = []
        while i < len(lines) and not lines[i].startswith("T}"):
            if not lines[i].startswith((".", "'")):
                block.append(inline(lines[i]).strip())
            i += 1
        if i < len(lines):  # the T} line may go on with the row's next cells
            parts[k:] = lines[i][2:].split(tab)[1:] + parts[k:]
            i += 1
        out.append(" ".join(b for b in block if b))
    return out, i


def _place(cells: list[str], keys: list[str]) -> list[str]:
    """Data cells into the row's columns: a spanned (`s`) column takes no data and is left empty."""
    if not keys or "s" not in keys:
        return cells
    out, it = [], iter(cells)
    for key in keys:
        out.append("" if key == "s" else next(it, ""))
    return out + list(it)


def pipe_table(rows: list[list[str]]) -> str:
    """A Markdown pipe table; the first row is the header."""
    rows = [[c.strip().replace("|", "\\|") for c in r] for r in rows]
    width = max(len(r) for r in rows)
    rows = [r + [""] * (width - len(r)) for r in rows]
    md = ["| " + " | ".join(rows[0]) + " |", "|" + " --- |" * width]
    md += ["| " + " | ".join(r) + " |" for r in rows[1:]]
    return "\n".join(md)
