"""mdoc(7) macro lines -> words with mdoc's spacing, for the man-page reader (roff.py handles the blocks).

Why hand-written: no maintained Python library renders mdoc (see roff.py). The rules followed, from mdoc(7) and
checked against groff's mdoc package (tests/test_ingest_roff.py compares whole pages with groff where it is
installed):

- a macro line's arguments are words or the names of callable macros; a macro's words run to the next macro
  name, and `.Fl a b` gives each word its dash ("-a -b"), `.Fl` alone a lone "-";
- a bare delimiter argument is punctuation, not a word: closing `. , : ; ? ! ) ]` attach to what precedes,
  opening `( [` to what follows, `|` stands between spaces. A quoted or `\\&`-escaped one is an ordinary word;
- `Ns` removes the space before what follows (no effect at the start of a line), `Pf` prints its prefix with no
  space after it, `Ap` an apostrophe without spaces, and between `Sm off` and `Sm on` macro words get no spaces;
- enclosures (`Op` [..], `Pq` (..), `Dq` “..”, ... and `Oo`..`Oc` over several lines) keep trailing
  punctuation outside;
- `Nm` without words prints the name given to the first `Nm` that has one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

OPEN = frozenset("([")
CLOSE = frozenset(".,:;?!)]")
MIDDLE = frozenset("|")

# Macros that may be called from another macro's line (mdoc(7) "callable"); any other word is text.
CALLABLE = frozenset(
    "Ac Ad An Ao Ap Aq Ar At Bc Bo Bq Brc Bro Brq Bsx Bx Cd Cm Dc Do Dq Dv Dx Ec Em En Eo Er Es Ev Fa Fc Fl Fn "
    "Fo Fr Fx Ic In Li Lk Ms Mt Nm No Ns Nx Oc Oo Op Ot Ox Pa Pc Pf Po Pq Qc Ql Qo Qq Sc So Sq St Sx Sy Ta Tn Ux "
    "Va Vt Xc Xo Xr".split())
# Line-scoped enclosures: their words (and nested macros) to the end of the line, less trailing punctuation.
ENCLOSURES = {"Op": ("[", "]"), "Pq": ("(", ")"), "Bq": ("[", "]"), "Brq": ("{", "}"), "Aq": ("<", ">"),
              "Dq": ("“", "”"), "Qq": ('"', '"'), "Sq": ("‘", "’"), "Ql": ("‘", "’"), "En": ("", ""),
              "D1": ("", ""), "Dl": ("", "")}
OPENERS = {"Oo": "[", "Po": "(", "Bo": "[", "Bro": "{", "Ao": "<", "Do": "“", "Qo": '"', "So": "‘"}
CLOSERS = {"Oc": "]", "Pc": ")", "Bc": "]", "Brc": "}", "Ac": ">", "Dc": "”", "Qc": '"', "Sc": "’"}
DEFAULTS = {"Ar": "file ...", "Fl": "-"}  # what these print when called without words
SYSTEMS = {"Ox": "OpenBSD", "Nx": "NetBSD", "Fx": "FreeBSD", "Dx": "DragonFly", "Bsx": "BSD/OS"}
ATT = {"32v": "Version 32V AT&T UNIX", "III": "AT&T System III UNIX", "V": "AT&T System V UNIX",
       **{f"v{n}": f"Version {n} AT&T UNIX" for n in range(1, 8)},
       **{f"V.{n}": f"AT&T System V Release {n} UNIX" for n in range(1, 5)}}
STANDARDS = {  # the common ones of mdoc(7)'s St list; any other prints as written
    "-ansiC": "ANSI X3.159-1989 (“ANSI C89”)", "-ansiC-89": "ANSI X3.159-1989 (“ANSI C89”)",
    "-isoC": "ISO/IEC 9899:1990 (“ISO C90”)", "-isoC-90": "ISO/IEC 9899:1990 (“ISO C90”)",
    "-isoC-99": "ISO/IEC 9899:1999 (“ISO C99”)", "-isoC-2011": "ISO/IEC 9899:2011 (“ISO C11”)",
    "-p1003.1": "IEEE Std 1003.1 (“POSIX.1”)", "-p1003.1-88": "IEEE Std 1003.1-1988 (“POSIX.1”)",
    "-p1003.1-90": "IEEE Std 1003.1-1990 (“POSIX.1”)", "-p1003.1-96": "ISO/IEC 9945-1:1996 (“POSIX.1”)",
    "-p1003.1-2001": "IEEE Std 1003.1-2001 (“POSIX.1”)", "-p1003.1-2004": "IEEE Std 1003.1-2004 (“POSIX.1”)",
    "-p1003.1-2008": "IEEE Std 1003.1-2008 (“POSIX.1”)", "-p1003.2": "IEEE Std 1003.2 (“POSIX.2”)",
    "-p1003.2-92": "IEEE Std 1003.2-1992 (“POSIX.2”)",
    "-susv2": "Version 2 of the Single UNIX Specification (“SUSv2”)",
    "-susv3": "Version 3 of the Single UNIX Specification (“SUSv3”)",
    "-xpg4": "X/Open Portability Guide Issue 4 (“XPG4”)",
    "-svid4": "System V Interface Definition, Fourth Edition (“SVID4”)",
}
_ARG = re.compile(r'"((?:[^"]|"")*)(?:"|$)|((?:\\.|\\$|[^\s\\])+)')


@dataclass(frozen=True)
class Arg:
    text: str  # as written (escapes not yet resolved)
    quoted: bool = False


def split_args(rest: str) -> list[Arg]:
    """roff macro arguments: blanks separate them, except an escaped blank (`\\ `); double quotes group, and
    `""` inside quotes is a quote character."""
    return [Arg(m.group(1).replace('""', '"'), True) if m.group(1) is not None else Arg(m.group(2))
            for m in _ARG.finditer(rest)]


def delimiter(arg: Arg) -> str | None:
    """'open', 'close' or 'middle' for a bare delimiter argument, else None."""
    if arg.quoted or len(arg.text) != 1:
        return None
    return "open" if arg.text in OPEN else "close" if arg.text in CLOSE else "middle" if arg.text in MIDDLE else None


@dataclass
class Rendered:
    """One mdoc line's output: `cells` is the text split at `Ta` (one cell unless the line has a Ta)."""

    cells: list[str]
    glue_before: bool = False  # attaches to what precedes (after an `Ns` or `Oo`; an `Oc`; a word while `Sm off`)
    new_line: bool = False  # an `Nm` starting a line in SYNOPSIS: a new synopsis line

    @property
    def text(self) -> str:
        return " ".join(c for c in self.cells if c)


_CELL = object()  # marks a `Ta` among the pieces of a line


@dataclass
class Mdoc:
    """The state one page's mdoc lines share: the page name, spacing mode, pending no-space, function scope."""

    escape: Callable[[str], str]  # resolves roff escapes in a word (no fonts)
    name: str = ""
    section: str = ""
    spacing: bool = True
    _pending: bool = False  # no space before the next piece (Ns, Pf, an opening delimiter, Oo ...)
    _off_words: int = 0  # pieces printed since `Sm off`
    _fn_args: int | None = None  # inside .Fo: how many .Fa so far
    _pieces: list = field(default_factory=list)

    # --- the line-level entry points ---------------------------------------------------------------------------

    def line(self, macro: str, rest: str) -> Rendered:
        """Render one macro line `.macro rest`."""
        args = split_args(rest)
        self._pieces = []
        if macro in ("Ex", "Rv"):
            self._add(self._ex_rv(macro, args))
        elif macro == "Sm":
            self._sm(args, 0)
        elif macro in ("Bk", "Ek", "Bf", "Ef", "Xo", "Xc"):
            pass  # keeps (Bk), font (Bf) and head (Xo) blocks: layout, or read by roff.py
        else:
            i = self._call(macro, args, 0, len(args))
            self._run(args, i, len(args))
        return self._rendered(new_line=macro == "Nm" and self.section == "SYNOPSIS")

    def words(self, rest: str) -> Rendered:
        """Render a line of arguments without a macro of its own (an `.It` head, a reference field)."""
        args = split_args(rest)
        self._pieces = []
        self._run(args, 0, len(args))
        return self._rendered()

    def text_line(self) -> bool:
        """A text line comes: whether it attaches to what precedes (a pending Ns). Text lines keep normal spacing
        even under `Sm off`."""
        glue, self._pending, self._off_words = self._pending, False, 0
        return glue

    def break_scope(self) -> None:
        """A paragraph or block boundary: nothing attaches across it."""
        self._pending = False
        self._off_words = 0

    # --- pieces ----------------------------------------------------------------------------------------------------

    def _add(self, text: str, no_space_before: bool = False, no_space_after: bool = False) -> None:
        if not text:
            return
        glue = no_space_before or self._pending
        if not self.spacing:
            glue = glue or self._off_words > 0
            self._off_words += 1
        self._pieces.append((text, glue))
        self._pending = no_space_after

    def _arg(self, arg: Arg, word: Callable[[str], str] = lambda w: w) -> None:
        kind = delimiter(arg)
        if kind == "close":  # attaches to the word before it on this line, not across lines
            self._add(arg.text, no_space_before=bool(self._pieces))
        elif kind == "open":
            self._add(arg.text, no_space_after=True)
        elif kind == "middle":
            self._add(arg.text)
        else:
            self._add(word(self.escape(arg.text)))

    def _rendered(self, new_line: bool = False) -> Rendered:
        cells, glue_before = [""], False
        for k, piece in enumerate(self._pieces):
            if piece is _CELL:
                cells.append("")
                continue
            text, glue = piece
            if k == 0:
                glue_before = glue
            cells[-1] += text if glue or not cells[-1] else " " + text
        return Rendered(cells, glue_before, new_line)

    # --- macros ----------------------------------------------------------------------------------------------------

    def _is_macro(self, arg: Arg) -> bool:
        return not arg.quoted and arg.text in CALLABLE

    def _run(self, args: list[Arg], i: int, end: int) -> None:
        while i < end:
            if self._is_macro(args[i]):
                i = self._call(args[i].text, args, i + 1, end)
            else:
                self._arg(args[i])
                i += 1

    def _group_end(self, args: list[Arg], i: int, end: int) -> int:
        while i < end and not self._is_macro(args[i]):
            i += 1
        return i

    def _trailing(self, args: list[Arg], i: int, end: int) -> int:
        """Where the trailing closing punctuation of args[i:end] begins (end if there is none)."""
        k = end
        while k > i and delimiter(args[k - 1]) == "close":
            k -= 1
        return k if k > i else end

    def _call(self, name: str, args: list[Arg], i: int, end: int) -> int:
        """Render macro `name` whose arguments start at args[i]; return where the rest of the line resumes."""
        if name in ENCLOSURES:
            opening, closing = ENCLOSURES[name]
            k = self._trailing(args, i, end)
            self._add(opening, no_space_after=True)
            self._run(args, i, k)
            self._add(closing, no_space_before=True)
            return k
        if name in OPENERS:
            self._add(OPENERS[name], no_space_after=True)
            return i
        if name in CLOSERS:
            self._add(CLOSERS[name], no_space_before=True)
            return i
        if name == "Ns":
            if self._pieces:
                self._pending = True
            return i
        if name == "Ap":
            self._add("'", no_space_before=True, no_space_after=True)
            return i
        if name == "Pf":
            if i < end and not self._is_macro(args[i]):
                self._add(self.escape(args[i].text), no_space_after=True)
                return i + 1
            return i
        if name in ("Eo", "Ec"):
            if i < end and not self._is_macro(args[i]):
                text = self.escape(args[i].text)
                self._add(text, no_space_after=True) if name == "Eo" else self._add(text, no_space_before=True)
                return i + 1
            return i
        if name == "Ta":
            self._pieces.append(_CELL)
            self._pending = False
            return i
        if name == "Sm":
            return self._sm(args, i)
        if name in ("Xo", "Xc", "Bk", "Ek"):
            return i + 1 if name == "Bk" and i < end and args[i].text.startswith("-") else i
        if name == "Xr":
            return self._xr(args, i, end)
        if name in ("Fn", "Fo", "Fa", "Fc"):
            return self._function(name, args, i, end)
        if name == "Lk":
            return self._link(args, i, end)
        if name in ("Ux", "Bx", "At", "St", *SYSTEMS):
            return self._system(name, args, i, end)
        if name == "An" and i < end and args[i].text in ("-split", "-nosplit"):
            return i + 1  # author-line splitting control, not text
        if name == "In":
            j = self._group_end(args, i, end)
            k = self._trailing(args, i, j)
            include = " ".join(self.escape(a.text) for a in args[i:k])
            self._add(("#include <%s>" if self.section == "SYNOPSIS" else "<%s>") % include)
            self._run(args, k, j)
            return j
        return self._in_line(name, args, i, end)

    def _in_line(self, name: str, args: list[Arg], i: int, end: int) -> int:
        """An in-line macro (Ar Fl Nm Cm Pa Em ...): its words up to the next macro, punctuation kept apart."""
        j = self._group_end(args, i, end)
        group = args[i:j]
        if name == "Nm":
            words = [a for a in group if delimiter(a) is None]
            if words and not self.name:
                self.name = " ".join(self.escape(a.text) for a in words)
            if not words and self.name:
                group = self._with_default(group, self.name)
        elif name in DEFAULTS and not any(delimiter(a) is None for a in group):
            if name == "Fl" and not group and j < end:  # `.Fl Ns Ar x`, `.Fl Ar x`: the dash joins the next word
                self._add("-", no_space_after=True)
                return j
            group = self._with_default(group, DEFAULTS[name])
        dash = (lambda w: "-" + w) if name == "Fl" else (lambda w: w)
        for arg in group:
            if isinstance(arg, str):
                self._add(arg)
            else:
                self._arg(arg, dash)
        return j

    @staticmethod
    def _with_default(group: list[Arg], text: str) -> list:
        """The group with a macro's default text before its first closing delimiter (`.Ar ,` -> "file ...,")."""
        k = next((n for n, a in enumerate(group) if delimiter(a) in ("close", "middle")), len(group))
        return [*group[:k], text, *group[k:]]

    def _sm(self, args: list[Arg], i: int) -> int:
        if i < len(args) and args[i].text in ("on", "off"):
            self.spacing, i = args[i].text == "on", i + 1
        else:
            self.spacing = not self.spacing
        self._off_words = 0
        return i

    def _xr(self, args: list[Arg], i: int, end: int) -> int:
        plain = [a for a in args[i:min(i + 2, end)] if not self._is_macro(a) and delimiter(a) is None]
        if len(plain) == 2 and args[i + 1] is plain[1]:
            self._add(f"{self.escape(plain[0].text)}({self.escape(plain[1].text)})")
            return i + 2
        if plain and args[i] is plain[0]:
            self._add(self.escape(plain[0].text))
            return i + 1
        return i

    def _function(self, name: str, args: list[Arg], i: int, end: int) -> int:
        j = self._group_end(args, i, end)
        k = self._trailing(args, i, j)
        words = [self.escape(a.text) for a in args[i:k]]
        if name == "Fn" and words:
            self._add(f"{words[0]}({', '.join(words[1:])})")
        elif name == "Fo" and words:
            self._add(words[0] + "(", no_space_after=True)
            self._fn_args = 0
        elif name == "Fc":
            self._add(")", no_space_before=True)
            self._fn_args = None
        elif name == "Fa" and words:
            for w in words:
                if self._fn_args is not None:
                    if self._fn_args:
                        self._add(",", no_space_before=True)
                    self._fn_args += 1
                self._add(w)
        else:
            k = i
        self._run(args, k, j)
        return j

    def _link(self, args: list[Arg], i: int, end: int) -> int:
        j = self._group_end(args, i, end)
        k = self._trailing(args, i, j)
        if k > i:
            url, text = self.escape(args[i].text), " ".join(self.escape(a.text) for a in args[i + 1:k])
            if text:
                self._add(text + ":")
            self._add(url)
        self._run(args, k, j)
        return j

    def _system(self, name: str, args: list[Arg], i: int, end: int) -> int:
        version = args[i] if i < end and not self._is_macro(args[i]) and delimiter(args[i]) is None else None
        v = self.escape(version.text) if version else ""
        if name == "Ux":
            self._add("UNIX")
            return i
        if name == "Bx":
            self._add(v + "BSD" if v else "BSD")
        elif name == "At":
            self._add(ATT.get(v, "AT&T UNIX"))
        elif name == "St":
            self._add(STANDARDS.get(v, v))
        else:
            self._add(f"{SYSTEMS[name]} {v}".strip())
        return i + 1 if version else i

    def _ex_rv(self, macro: str, args: list[Arg]) -> str:
        names = [self.escape(a.text) for a in args if a.text != "-std"] or ([self.name] if self.name else [])
        if macro == "Ex":
            if len(names) > 1:
                return f"The {_series(names)} utilities exit 0 on success, and >0 if an error occurs."
            return f"The {names[0] if names else 'utility'} utility exits 0 on success, and >0 if an error occurs."
        fns = [n + "()" for n in names]
        subject = (f"The {_series(fns)} functions return" if len(fns) > 1
                   else f"The {fns[0]} function returns" if fns else "The function returns")
        return (f"{subject} the value 0 if successful; otherwise the value -1 is returned and the global variable "
                "errno is set to indicate the error.")


def _series(items: list[str]) -> str:
    """a; a and b; a, b, and c."""
    if len(items) < 3:
        return " and ".join(items)
    return ", ".join(items[:-1]) + ", and " + items[-1]


# The order groff's mdoc prints a reference's fields in, whatever order the page gives them.
_REFERENCE_ORDER = ["%A", "%T", "%B", "%I", "%J", "%R", "%N", "%V", "%U", "%P", "%Q", "%C", "%D", "%O"]


def references(fields: list[tuple[str, str]]) -> str:
    """A `.Rs`..`.Re` reference from its (%X, text) fields: authors joined ("A and B", "A, B, and C"), then the
    other fields in groff's order, comma separated, ending with a full stop; the title is quoted when the work
    is part of a book or journal."""
    by_key: dict[str, list[str]] = {}
    for key, text in fields:
        if text:
            by_key.setdefault(key, []).append(text)
    parts = []
    for key in _REFERENCE_ORDER + sorted(set(by_key) - set(_REFERENCE_ORDER)):
        values = by_key.get(key, [])
        if key == "%A" and values:
            parts.append(_series(values))
        elif key == "%T" and ("%B" in by_key or "%J" in by_key):
            parts += [f"“{v}”" for v in values]
        else:
            parts += values
    out = ", ".join(parts)
    return out + "." if out and not out.endswith(".") else out
