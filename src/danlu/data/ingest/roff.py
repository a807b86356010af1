"""roff man pages (man(7), with the common mdoc(7), pod2man and tbl bits) -> Markdown.

Why hand-written: no maintained Python library converts man pages to Markdown, and shelling out to
groff/mandoc would add a system dependency. Real pages use a small core of macros; this covers that core
(.TH .SH .SS .PP .TP .IP .B .I .BR... .nf/.fi .EX/.EE .TS/.TE, mdoc .Sh .It .Fl .Xr ..., pod2man .Vb/.Ve)
and drops what only affects layout (.if .nr .ds .de blocks, spacing, font size).
"""

from __future__ import annotations

import re

from danlu.data.ingest.base import Extracted, ReadResult
from danlu.data.ingest.encoding import decode
from danlu.data.ingest.errors import IngestFailure, SkipFile
from danlu.text import join_separator

_SPECIAL = {
    "bu": "•", "em": "—", "en": "–", "hy": "-", "mi": "-", "aq": "'", "dq": '"', "lq": "“", "rq": "”",
    "oq": "‘", "cq": "’", "co": "©", "rg": "®", "tm": "™", "mu": "×", "di": "÷", "<=": "≤", ">=": "≥",
    "!=": "≠", "->": "→", "<-": "←", "de": "°", "+-": "±", "bv": "|", "ba": "|", "ul": "_", "rs": "\\",
    "ti": "~", "ha": "^", "sl": "/", "at": "@", "sh": "#", "Do": "$", "ga": "`", "ci": "○", "sq": "□",
}
_STRINGS = {"lq": "“", "rq": "”", 'L"': "“", 'R"': "”", "C`": "'", "C'": "'", "R": "®", "Tm": "™"}
_FONT = re.compile(r"\\f(?:\[([A-Za-z0-9]*)\]|\(([A-Za-z0-9]{2})|([A-Za-z0-9]))")
_ESCAPES = [
    (re.compile(r"\\\(([^\s]{2})"), lambda m: _SPECIAL.get(m.group(1), "")),
    (re.compile(r"\\\[([^\]]*)\]"), lambda m: _SPECIAL.get(m.group(1), "")),
    (re.compile(r"\\\*(?:\(([^\s]{2})|\[([^\]]*)\]|(.))"),
     lambda m: _STRINGS.get(m.group(1) or m.group(2) or m.group(3), "")),
    (re.compile(r"\\[hvwlLDbXoSxZNR]'[^']*'"), lambda m: ""),  # motions, widths, lines, drawing
    (re.compile(r"\\s[+-]?(?:\d|\(\d\d|\[\d+\])"), lambda m: ""),  # point size
    (re.compile(r"\\n(?:\(..|\[[^\]]*\]|.)"), lambda m: ""),  # number registers
    (re.compile(r"\\[kmgMV](?:\(..|\[[^\]]*\]|.)"), lambda m: ""),
    (re.compile(r"\\[&|^%c:{}\n,/)]"), lambda m: ""),  # zero-width escapes
    (re.compile(r"\\[~0 ]"), lambda m: " "),
    (re.compile(r"\\[-]"), lambda m: "-"),
    (re.compile(r"\\[e\\]"), lambda m: "\\"),
    (re.compile(r"\\(.)"), lambda m: m.group(1)),  # any other escaped character stands for itself
]
_IGNORED = {"PD", "ad", "na", "hy", "nh", "ne", "ft", "ps", "vs", "ta", "in", "ti", "ll", "ns",
            "rs", "ev", "mk", "rt", "nr", "ds", "so", "ig", "de", "am", "IX", "UC", "DT", "Bl", "El", "Os",
            "Dd", "ce", "cs", "tr", "hw", "lf", "pc", "ss", "fam", "ec", "eo", "bp", "pl", "wh", "tm",
            "Ed", "Ek", "Bk", "rm", "TE", "Sm", "AS", "BS", "BE", "VS", "VE", "SO", "SE"}
_PARA = {"PP", "LP", "P", "sp", "Sp", "Pp", "Lp", "HP"}
_CODE_START = {"nf": "fi", "EX": "EE", "Vb": "Ve", "CS": "CE", "Bd": "Ed", "DS": "DE"}
_MARK = {"B": "**", "I": "*", "R": ""}


def inline(text: str, fonts: bool = True) -> str:
    """Resolve escapes in a text line; \\fB/\\fI become Markdown bold/italic (closed at the end of the line)."""
    text = re.sub(r'\\".*$', "", text)
    out, open_mark = [], ""
    pos = 0
    for m in _FONT.finditer(text):
        out.append(_escapes(text[pos:m.start()]))
        pos = m.end()
        font = (m.group(1) or m.group(2) or m.group(3) or "R").upper()
        mark = "**" if font in ("B", "CB") else "*" if font in ("I", "CI") else ""
        if not fonts:
            continue
        if open_mark:
            out.append(open_mark)
        out.append(mark)
        open_mark = mark
    out.append(_escapes(text[pos:]))
    if open_mark:
        out.append(open_mark)
    s = "".join(out)
    return s.replace("****", "") if fonts else s  # an empty bold run


def _escapes(text: str) -> str:
    for pattern, repl in _ESCAPES:
        text = pattern.sub(repl, text)
    return text


def _split_args(rest: str) -> list[str]:
    """Macro arguments: space separated, double quotes group."""
    return [m.group(1) if m.group(1) is not None else m.group(2) for m in re.finditer(r'"((?:[^"]|"")*)"|(\S+)', rest)]


class _Writer:
    """Collects Markdown blocks; running text lines join into paragraphs (CJK without a space)."""

    def __init__(self) -> None:
        self.blocks: list[str] = []
        self.para: list[str] = []
        self.indent = ""

    def text(self, s: str) -> None:
        s = s.strip()
        if not s:
            self.flush()
            return
        if self.para:
            self.para.append(join_separator(self.para[-1], s))
        self.para.append(s)

    def line_break(self) -> None:
        if self.para:
            self.para.append("\n" + self.indent)

    def flush(self) -> None:
        if self.para:
            self.blocks.append(self.indent + "".join(self.para).strip())
            self.para = []

    def block(self, s: str, indent: str = "") -> None:
        self.flush()
        self.indent = indent
        if s:
            self.blocks.append(s)

    def markdown(self) -> str:
        self.flush()
        return "\n\n".join(b for b in self.blocks if b.strip())


def roff_to_markdown(src: str) -> str:
    w = _Writer()
    lines = src.split("\n")
    i = 0
    skip_depth = 0
    rs_depth = 0
    pending_tag = False
    while i < len(lines):
        raw = lines[i]
        i += 1
        if skip_depth:  # inside an .if/.ie/.el \{ ... \} block
            skip_depth += raw.count("\\{") - raw.count("\\}")
            continue
        styled = _font_macro(raw)
        if styled is not None or not raw.startswith((".", "'")):
            s = inline(raw) if styled is None else styled
            if pending_tag:
                w.block("- " + s.strip(), indent="  ")
                pending_tag = False
            else:
                w.text(s)
            continue
        m = re.match(r"[.'][ \t]*([^\s\\]*)[ \t]*(.*)$", raw)
        name, rest = (m.group(1), m.group(2)) if m else ("", "")
        if not name or name.startswith('\\"') or raw.startswith(('.\\"', "'\\\"")):
            continue
        if name in ("if", "ie", "el", "while"):
            skip_depth = rest.count("\\{") - rest.count("\\}")
            continue
        if name in ("de", "ig", "am"):  # macro definitions and ignored blocks run to a line of ".."
            while i < len(lines) and not lines[i].startswith(".."):
                i += 1
            i += 1
            continue
        if name in ("TH", "Dt"):
            a = _split_args(rest)
            w.block(f"# {inline(a[0], False)}({a[1]})" if len(a) > 1 else f"# {inline(rest, False)}")
        elif name in ("SH", "Sh", "SS", "Ss"):
            title = rest.strip()
            if not title and i < len(lines):
                title, i = lines[i], i + 1
            level = "##" if name in ("SH", "Sh") else "###"
            w.block(f"{level} {inline(' '.join(_split_args(title)), False)}")
        elif name in _PARA:  # a new paragraph ends a .TP/.IP item, but stays inside an .RS block
            w.block("", indent="  " if rs_depth else "")
        elif name == "RS":  # an indented block (DocBook-made pages put option descriptions in one)
            rs_depth += 1
            w.block("", indent="  ")
        elif name == "RE":
            rs_depth = max(0, rs_depth - 1)
            w.block("", indent="  " if rs_depth else "")
        elif name == "br":
            w.line_break()
        elif name == "TP":
            w.block("", indent="")
            pending_tag = True
        elif name in ("IP", "It"):
            a = _split_args(rest)
            tag = inline(a[0]) if a else ""
            if name == "It":
                tag = _mdoc(rest)
            w.block("- " + tag if tag and tag not in ("•", "-", "*") else "", indent="  ")
            if not tag or tag in ("•", "-", "*"):
                w.para.append("- ")
        elif name in _CODE_START:
            end = _CODE_START[name]
            code = []
            while i < len(lines) and not re.match(rf"[.']\s*{end}\b", lines[i]):
                ln = lines[i]
                if not ln.startswith((".", "'")):
                    code.append(inline(ln, fonts=False))
                elif ln.startswith((".B ", ".I ")):
                    code.append(inline(ln[3:], fonts=False))
                i += 1
            i += 1
            w.block("```\n" + "\n".join(code).strip("\n") + "\n```" if any(c.strip() for c in code) else "")
            w.indent = ""
        elif name == "TS":
            i = _table(lines, i, w)
        elif name in ("SM", "UR", "UE", "MT", "ME", "Nd", "Dl", "Ql"):
            text = inline(" ".join(_split_args(rest)))
            w.text(("— " if name == "Nd" else "") + text)
        elif name in _IGNORED or not name[:1].isupper():
            continue  # layout-only request or an unknown lower-case request
        else:  # other mdoc macros (.Nm .Fl .Ar .Op .Xr ...): keep their words
            w.text(_mdoc(raw[1:]))
    return w.markdown()


def _font_macro(raw: str) -> str | None:
    """Markdown for a font macro line (.B .I .SB and the alternating .BR .IR .RB ...), else None."""
    m = re.match(r"[.']\s*(B|I|SB|BR|RB|BI|IB|IR|RI)(?:\s+(.*))?$", raw)
    if m is None:
        return None
    name, parts = m.group(1), _split_args(m.group(2) or "")
    if name in ("B", "SB", "I"):
        mark = "*" if name == "I" else "**"
        text = inline(" ".join(parts), False)
        return f"{mark}{text}{mark}" if text else ""
    out = []
    for k, part in enumerate(parts):  # .BR: bold, roman, bold, ...; .IB: italic, bold, ...
        part = inline(part, False)
        mark = _MARK[name[k % 2]] if part.strip() else ""
        core = part.strip()
        out.append(part[: len(part) - len(part.lstrip())] + f"{mark}{core}{mark}" + part[len(part.rstrip()):])
    return "".join(out)


def _mdoc(call: str) -> str:
    """Render an mdoc macro line's words: flags get their dash, cross references become name(section)."""
    words = _split_args(call)
    out = []
    k = 0
    while k < len(words):
        word = words[k]
        if word == "Fl" and k + 1 < len(words):
            out.append("-" + words[k + 1])
            k += 2
            continue
        if word == "Xr" and k + 2 < len(words):
            out.append(f"{words[k + 1]}({words[k + 2]})")
            k += 3
            continue
        if not (len(word) == 2 and word[0].isupper() and word[1].islower()):  # macro names are dropped
            out.append(inline(word, False))
        k += 1
    return " ".join(out)


def _table(lines: list[str], i: int, w: _Writer) -> int:
    """tbl(1) table -> pipe table: skip the options and format lines, split rows on tabs."""
    tab = "\t"
    if i < len(lines) and lines[i].rstrip().endswith(";"):
        m = re.search(r"tab\s*\((.)\)", lines[i])
        tab = m.group(1) if m else tab
        i += 1
    while i < len(lines) and not lines[i].rstrip().endswith("."):
        i += 1
    i += 1
    rows = []
    while i < len(lines) and not re.match(r"[.']\s*TE\b", lines[i]):
        ln = lines[i]
        i += 1
        if ln.startswith((".", "'")) or ln.strip() in ("_", "=", ""):
            continue
        rows.append([inline(c, False).strip().replace("|", "\\|") for c in ln.split(tab)])
    i += 1
    if rows:
        width = max(len(r) for r in rows)
        rows = [r + [""] * (width - len(r)) for r in rows]
        md = ["| " + " | ".join(rows[0]) + " |", "|" + " --- |" * width]
        md += ["| " + " | ".join(r) + " |" for r in rows[1:]]
        w.block("\n".join(md))
    return i


def read_roff(data: bytes, path, opts) -> ReadResult:
    text, enc = decode(data)
    body = [ln for ln in text.split("\n") if ln.strip() and not ln.startswith(('.\\"', "'\\\""))]
    if len(body) == 1 and body[0].startswith(".so "):
        raise SkipFile(f"man page alias (.so {body[0][4:].strip()}): the target page is imported itself")
    md = roff_to_markdown(text)
    if not md.strip():
        raise IngestFailure("no text in the man page after removing roff requests")
    m = re.search(r"^[.']\s*(?:TH|Dt)\s+(\S+)\s+(\S+)", text, re.M)
    meta = {"encoding": enc}
    if m:
        meta["title"] = f"{m.group(1).strip(chr(34))}({m.group(2).strip(chr(34))})"
    return ReadResult([Extracted(md)], meta)
