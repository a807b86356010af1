"""roff man pages (man(7), with mdoc(7), pod2man and tbl) -> Markdown.

Why hand-written: no maintained Python library converts man pages to Markdown, and shelling out to
groff/mandoc would add a system dependency. Real pages use a small core of macros; this covers that core
(.TH .SH .SS .PP .TP .IP .B .I .BR... .nf/.fi .EX/.EE, pod2man .Vb/.Ve, the mdoc blocks .Sh .Bl/.It/.El .Bd/.Ed
.Rs/.Re, with mdoc.py rendering mdoc's words and tbl.py the .TS/.TE tables) and drops what only affects layout
(.nr .ds .de blocks, spacing, font size). Of the conditionals (.if .ie .el) only tests of a number register the
page sets are evaluated (sudo.8's `.nr SL 1` ... `.if \n(SL`); any other is skipped with its block.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from danlu.data.ingest.base import Extracted, ReadResult
from danlu.data.ingest.encoding import decode
from danlu.data.ingest.errors import IngestFailure, SkipFile
from danlu.data.ingest.mdoc import CALLABLE, Mdoc, references, split_args
from danlu.data.ingest.tbl import pipe_table, read_table
from danlu.text import join_separator

_SPECIAL = {
    "bu": "•", "em": "—", "en": "–", "hy": "-", "mi": "-", "aq": "'", "dq": '"', "lq": "“", "rq": "”",
    "oq": "‘", "cq": "’", "co": "©", "rg": "®", "tm": "™", "mu": "×", "di": "÷", "<=": "≤", ">=": "≥",
    "!=": "≠", "->": "→", "<-": "←", "de": "°", "+-": "±", "bv": "|", "ba": "|", "ul": "_", "rs": "\\",
    "ti": "~", "ha": "^", "sl": "/", "at": "@", "sh": "#", "Do": "$", "ga": "`", "ci": "○", "sq": "□",
}
_STRINGS = {"lq": "“", "rq": "”", 'L"': "“", 'R"': "”", "C`": "'", "C'": "'", "R": "®", "Tm": "™",
            "Aq": "'",  # DocBook's and pod2man's `.ds Aq \(aq` (their .ds lines sit in conditionals not read here)
            # mdoc's predefined strings
            "Lq": "“", "Rq": "”", "q": '"', "Ne": "≠", "Le": "≤", "Ge": "≥", "Lt": "<", "Gt": ">", "Pm": "±",
            "Na": "NaN", "Ba": "|", "Am": "&", "Pi": "π", "If": "∞"}
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
    (re.compile(r"\\(.)"), lambda m: m.group(1)),  # any other escaped character stands for itself
]
_IGNORED = {"PD", "ad", "na", "hy", "nh", "ne", "ft", "ps", "vs", "ta", "in", "ti", "ll", "ns",
            "rs", "ev", "mk", "rt", "nr", "ds", "so", "ig", "de", "am", "IX", "UC", "DT", "Os",
            "Dd", "ce", "cs", "tr", "hw", "lf", "pc", "ss", "fam", "ec", "eo", "bp", "pl", "wh", "tm",
            "rm", "TE", "Tg", "AS", "BS", "BE", "VS", "VE", "SO", "SE"}
_PARA = {"PP", "LP", "P", "sp", "Sp", "Pp", "Lp", "HP"}
_CODE_START = {"nf": "fi", "EX": "EE", "Vb": "Ve", "CS": "CE", "DS": "DE"}
_MARK = {"B": "**", "I": "*", "R": ""}
_BULLETS = {"•", "-", "*", "○", "◦", "·", "□", "■"}  # .IP tags that mark a bullet item, not a term
_BACKSLASH = "\x00"  # stands for a printed backslash while escapes are resolved


def inline(text: str, fonts: bool = True) -> str:
    """Resolve escapes in a text line; \\fB/\\fI become Markdown bold/italic (closed at the end of the line)."""
    # A printed backslash (`\\\\`, `\\e`) is set aside first, so that what follows it is not read as an escape.
    text = _strip_comment(text.replace("\\\\", _BACKSLASH).replace("\\e", _BACKSLASH))
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
    s = "".join(out).replace(_BACKSLASH, "\\")
    return s.replace("****", "") if fonts else s  # an empty bold run


def _escapes(text: str) -> str:
    for pattern, repl in _ESCAPES:
        text = pattern.sub(repl, text)
    return text


def _split_args(rest: str) -> list[str]:
    """Macro arguments: space separated (an escaped space `\\ ` stays inside its argument), double quotes group."""
    return [a.text for a in split_args(rest)]


def _strip_comment(line: str) -> str:
    """A request line without its `\\"` (or groff `\\#`) comment; an escaped backslash does not start one."""
    k = 0
    while (k := line.find("\\", k)) >= 0 and k + 1 < len(line):
        if line[k + 1] in '"#':
            return line[:k]
        k += 2
    return line


class _Writer:
    """Collects Markdown blocks; running text lines join into paragraphs (CJK without a space)."""

    def __init__(self) -> None:
        self.blocks: list[str] = []
        self.para: list[str] = []
        self.indent = ""
        self.then_indent: str | None = None  # the indent after this paragraph (a list item's body)

    def text(self, s: str, glue: bool = False) -> None:
        """Add a line of running text; `glue`: no space before it (mdoc Ns, Oc, ...)."""
        s = s.strip()
        if not s:
            self.flush()
            return
        if self.para and not glue and self.para[-1][-1:] not in (" ", "\n"):  # not after "- " or a line break
            self.para.append(join_separator(self.para[-1], s))
        self.para.append(s)

    def line_break(self) -> None:
        if self.para:
            self.para.append("\n" + self.indent)

    def flush(self) -> None:
        if self.para:
            self.blocks.append(self.indent + "".join(self.para).strip())
            self.para = []
            if self.then_indent is not None:
                self.indent, self.then_indent = self.then_indent, None

    def block(self, s: str, indent: str = "") -> None:
        self.flush()
        self.indent = indent
        if s:
            self.blocks.append(s)

    def item(self, marker: str, indent: str, body_indent: str) -> None:
        """Start a list item paragraph with `marker` ("- tag", "- ", "1. "); later paragraphs get body_indent."""
        self.flush()
        self.indent, self.then_indent = indent, body_indent
        self.para = [marker]

    def code(self, code: list[str], indent: str = "") -> None:
        """A fenced code block (nothing if it is blank); `indent` keeps it inside a list item."""
        self.flush()
        if any(c.strip() for c in code):
            body = "\n".join(code).strip("\n").split("\n")
            self.blocks.append("\n".join(indent + c if c else c for c in ["```", *body, "```"]))

    def markdown(self) -> str:
        self.flush()
        return "\n\n".join(b for b in self.blocks if b.strip())


@dataclass
class _List:
    kind: str  # tag, bullet, dash, enum, column, ... (the mdoc .Bl type)
    count: int = 0
    rows: list[list[str]] = field(default_factory=list)  # a -column list's rows


class _MdocBlocks:
    """mdoc(7) block structure: lists (.Bl/.It/.El, .Xo/.Xc heads), displays (.Bd/.Ed, .Dl, .D1), references
    (.Rs/.Re), paragraphs inside list items, and the SYNOPSIS line per .Nm; mdoc.py renders the words."""

    def __init__(self, w: _Writer) -> None:
        self.w = w
        self.words = Mdoc(escape=lambda s: inline(s, False))
        self.lists: list[_List] = []
        self.open_head = False  # an .It ... Xo head that runs until .Xc
        self.refs: list[tuple[str, str]] | None = None

    def indent(self, extra: int = 0) -> str:
        return "  " * (len(self.lists) + extra)

    def section(self, title: str) -> None:
        self.lists, self.open_head, self.refs = [], False, None
        self.words.section = title.strip().upper()
        self.words.break_scope()

    def paragraph(self, rs_indent: str) -> None:
        self.words.break_scope()
        self.w.block("", indent=self.indent() if self.lists else rs_indent)

    def text_line(self, s: str) -> None:
        glue = self.words.text_line()
        if self.lists and self.lists[-1].kind == "column" and self.lists[-1].rows:
            self.lists[-1].rows[-1][-1] += " " + s.strip()  # a column list's cell goes on
        else:
            self.w.text(s, glue=glue)

    def line(self, name: str, rest: str, lines: list[str], i: int) -> int:
        """Handle the mdoc macro line `.name rest`; return the index of the next line to read."""
        w, rest = self.w, _strip_comment(rest)
        if name == "Bl":
            kind = next((a[1:] for a in _split_args(rest) if a[1:] in _LIST_KINDS), "tag")
            self.lists.append(_List(kind))
            self.words.break_scope()
            w.block("", indent=self.indent())
        elif name == "El":
            done = self.lists.pop() if self.lists else None
            if done and done.kind == "column" and done.rows:
                w.block(pipe_table(done.rows))
            self.words.break_scope()
            w.block("", indent=self.indent())
        elif name == "It":
            self._item(rest)
        elif name == "Bd":
            if re.search(r"-(literal|unfilled)\b", rest):
                return self._display(lines, i)
            self.paragraph(self.indent())
        elif name == "Ed":
            self.paragraph(self.indent())
        elif name == "Dl":
            w.code([self.words.line(name, rest).text], indent=self.indent() if self.lists else "")
        elif name == "D1":
            w.block("", indent=w.indent)
            w.text(self.words.line(name, rest).text)
            w.block("", indent=w.indent)
        elif name == "Rs":
            self.refs = []
        elif name.startswith("%") and self.refs is not None:
            self.refs.append((name, self.words.words(rest).text))
        elif name == "Re":  # a reference is a paragraph of its own
            if self.refs:
                w.block("", indent=w.indent)
                w.text(references(self.refs))
                w.block("", indent=w.indent)
            self.refs = None
        elif name == "Nd":
            w.text("— " + self.words.words(rest).text)
        else:
            self._words(name, rest)
        return i

    def _words(self, name: str, rest: str) -> None:
        r = self.words.line(name, rest)
        if self.lists and self.lists[-1].kind == "column" and self.lists[-1].rows and not self.open_head:
            row = self.lists[-1].rows[-1]
            row[-1] = (row[-1] + ("" if r.glue_before else " ") + r.cells[0]).strip()
            row += r.cells[1:]
            return
        if r.new_line and self.w.para:
            self.w.line_break()
        if r.text:
            self.w.text(r.text, glue=r.glue_before)
        if self.open_head and (name == "Xc" or _XC.search(rest)):
            self._end_head()

    def _item(self, rest: str) -> None:
        w = self.w
        if not self.lists:  # an .It outside any .Bl: read it as a tag list
            self.lists.append(_List("tag"))
        lst = self.lists[-1]
        lst.count += 1
        self.words.break_scope()
        if lst.kind == "column":  # cells are separated by Ta or by tabs
            lst.rows.append([c.strip() for part in rest.split("\t") for c in self.words.words(part).cells])
            return
        head = self.words.words(rest)
        item_indent, body_indent = self.indent(-1), self.indent()
        if lst.kind in ("bullet", "dash", "hyphen", "item", "enum"):
            w.item(f"{lst.count}. " if lst.kind == "enum" else "- ", item_indent, body_indent)
            if head.text:  # usually the item's text follows on its own lines
                w.text(head.text)
            return
        w.item("- " + head.text if head.text else "- ", item_indent, body_indent)
        self.open_head = bool(_XO.search(rest)) and not _XC.search(rest)
        if head.text and not self.open_head:
            self._end_head()

    def _end_head(self) -> None:
        self.open_head = False
        self.words.break_scope()
        self.w.flush()

    def _display(self, lines: list[str], i: int) -> int:
        """A literal .Bd display to its .Ed: text lines as written, macro lines rendered."""
        code = []
        while i < len(lines) and not re.match(r"[.']\s*Ed\b", lines[i]):
            ln = lines[i]
            i += 1
            m = re.match(r"[.']\s*([A-Z%][A-Za-z]*)\s*(.*)$", ln)
            if not ln.startswith((".", "'")):
                code.append(inline(ln, fonts=False))
            elif m and m.group(1) in CALLABLE:
                code.append(self.words.line(m.group(1), _strip_comment(m.group(2))).text)
        self.w.code(code, indent=self.indent() if self.lists else "")
        self.words.break_scope()
        return i + 1


_XO, _XC = re.compile(r"(?:^|\s)Xo(?:\s|$)"), re.compile(r"(?:^|\s)Xc(?:\s|$)")
_LIST_KINDS = {"tag", "bullet", "dash", "hyphen", "enum", "item", "column", "hang", "ohang", "inset", "diag"}
# mdoc macros read by _MdocBlocks (those not in mdoc.CALLABLE are line-only)
_MDOC = CALLABLE | {"Bl", "El", "It", "Bd", "Ed", "Dl", "D1", "Rs", "Re", "Nd", "Ex", "Rv", "Sm", "Bk", "Ek", "Fd",
                    "Lb", "Bf", "Ef"}


def roff_to_markdown(src: str) -> str:
    w = _Writer()
    mdoc = _MdocBlocks(w)
    lines = src.split("\n")
    i = 0
    skip_depth = 0
    registers: dict[str, int] = {".g": 1}  # .g: groff's own register, set in groff
    last_ie: bool | None = None  # the outcome of the last .ie, for its .el
    rs_depth = 0
    pending_tag = False
    while i < len(lines):
        raw = lines[i]
        i += 1
        while raw.endswith("\\") and not raw.endswith("\\\\") and i < len(lines):  # an escaped newline
            raw, i = raw[:-1] + lines[i], i + 1
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
                mdoc.text_line(s)
            continue
        m = re.match(r"[.'][ \t]*([^\s\\]*)[ \t]*(.*)$", raw)
        name, rest = (m.group(1), m.group(2)) if m else ("", "")
        if not name or name.startswith('\\"') or raw.startswith(('.\\"', "'\\\"")):
            continue
        if name == "nr":  # a number register, for the conditions below
            a = rest.split()
            if len(a) >= 2 and re.fullmatch(r"-?\d+", a[1]):
                registers[a[0]] = int(a[1])
            continue
        if name in ("if", "ie", "el", "while"):
            taken, body = _condition(name, rest, registers, last_ie)
            last_ie = taken if name == "ie" else last_ie
            if name == "el":
                last_ie = None
            if not taken:
                skip_depth = rest.count("\\{") - rest.count("\\}")
            elif body.strip():  # the request's body (after a "\\{" it is the lines up to "\\}")
                lines[i:i] = [body]
            continue
        if _BLOCK_END.fullmatch(raw):  # the end of a conditional block that was read
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
            title = inline(" ".join(_split_args(_strip_comment(title))), False)
            if level == "##":
                mdoc.section(title)
            w.block(f"{level} {title}")
        elif name in _PARA:  # a new paragraph ends a .TP/.IP item, but stays inside an .RS block or an mdoc list
            mdoc.paragraph("  " if rs_depth else "")
        elif name == "RS":  # an indented block (DocBook-made pages put option descriptions in one)
            rs_depth += 1
            w.block("", indent="  ")
        elif name == "RE":
            rs_depth = max(0, rs_depth - 1)
            w.block("", indent="  " if rs_depth else "")
        elif name == "br":
            w.line_break()
        elif name in ("TP", "TQ"):  # .TQ (man-db): one more tag line for the same item, read as its own head
            w.block("", indent="")
            pending_tag = True
        elif name == "IP":
            a = _split_args(rest)
            tag = inline(a[0]) if a else ""
            bullet = not tag or tag in _BULLETS
            w.block("" if bullet else "- " + tag, indent="  ")
            if bullet:
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
            w.code(code)
            w.indent = ""
        elif name == "TS":
            i = _table(lines, i, w)
        elif name in ("SM", "UR", "UE", "MT", "ME"):
            w.text(inline(" ".join(_split_args(_strip_comment(rest)))))
        elif name in _MDOC or name.startswith("%"):
            i = mdoc.line(name, rest, lines, i)
        elif name in _IGNORED or not name[:1].isupper():
            continue  # layout-only request or an unknown lower-case request
        else:  # another macro package's macro (.OP .SY .MR ...): keep its words
            words = " ".join(inline(a, False) for a in _split_args(_strip_comment(rest)))
            if words.strip():
                w.text(words)
    return w.markdown()


_BLOCK_END = re.compile(r"[.'](?:\s*br)?\s*\\}\s*")
_REGISTER_CONDITION = re.compile(r"(!?)\\n(?:\((..)|\[([^\]]+)\]|([^(\[]))(?=\s|$)\s*(.*)$")


def _condition(name: str, rest: str, registers: dict[str, int], last_ie: bool | None) -> tuple[bool | None, str]:
    """(taken, body) for .if/.ie/.el/.while. Only conditions on a number register (`\\n(XX`, `!\\n[XX]`) are
    evaluated, with the values the page's .nr set (an unset register is 0, as in groff); for any other condition
    (output device, string comparison, expression) `taken` is None: neither branch is read, and .while never is."""
    if name == "el":
        return (None if last_ie is None else not last_ie), rest
    m = _REGISTER_CONDITION.match(rest)
    if name == "while" or m is None:
        return None, ""
    value = registers.get(m.group(2) or m.group(3) or m.group(4), 0) > 0
    body = re.sub(r"^\\\{\\?", "", m.group(5)).strip()
    return value != bool(m.group(1)), body


def _font_macro(raw: str) -> str | None:
    """Markdown for a font macro line (.B .I .SB and the alternating .BR .IR .RB ...), else None."""
    m = re.match(r"[.']\s*(B|I|SB|BR|RB|BI|IB|IR|RI)(?:\s+(.*))?$", raw)
    if m is None:
        return None
    name, parts = m.group(1), _split_args(_strip_comment(m.group(2) or ""))
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


def _table(lines: list[str], i: int, w: _Writer) -> int:
    table, i = read_table(lines, i, lambda s: inline(s, False).strip())
    for line in table.text:  # not a table after all (no format lines): its lines are text
        w.text(inline(line))
    if table.rows:
        w.block(pipe_table(table.rows))
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
