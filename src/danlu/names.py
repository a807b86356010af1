"""Names: the one rule for a name that becomes a folder, and the one way a file name is shown.

Safe names. A pipeline source, a training source or a shard is named by the user (or by a file the user can
edit), and those names become path components (OUT/ingest/NAME). `safe_name` admits any name a person would
choose (letters of any script, digits, spaces inside, `-`, `_`, `.`) and refuses what would leave the folder or
break on another system: empty names, `.`/`..` and hidden names, path separators, control characters, the
characters Windows forbids, and overlong names.

File names. On POSIX a file name is bytes; names that are not UTF-8 (GBK names from a Windows zip are common
in Chinese corpora) reach Python as lone surrogates (PEP 383 "surrogateescape"). danlu keeps such a name as it
is in memory (so the file can still be opened), hashes its original bytes (`name_bytes`, os.fsencode's) for
ids, and writes it with backslash escapes (`\\xcb\\xb5.txt`) wherever text is written: JSON (`displayable`, which
danlu's JSON writers apply when a value cannot be encoded), logs and messages (the codec error handler ESCAPE,
which danlu's text writers and the terminal use), so no stage has to think about it. YAML escapes such
characters itself (and reads them back losslessly).
"""

from __future__ import annotations

import codecs
import os
import re
from pathlib import Path

ESCAPE = "danlu.escape"
MAX_NAME_BYTES = 100


def _escape(err: UnicodeError) -> tuple[str, int]:
    if not isinstance(err, UnicodeEncodeError):
        raise err
    out = []
    for ch in err.object[err.start : err.end]:
        code = ord(ch)
        out.append(f"\\x{code - 0xDC00:02x}" if 0xDC80 <= code <= 0xDCFF else f"\\u{code:04x}")
    return "".join(out), err.end


codecs.register_error(ESCAPE, _escape)


def display(name: str | os.PathLike) -> str:
    """`name` as printable text: bytes that were not UTF-8 become `\\xNN` (lossless to the eye, never an error)."""
    return os.fspath(name).encode("utf-8", ESCAPE).decode("utf-8")


def displayable(obj):
    """`obj` (JSON-like) with every string that cannot be written as UTF-8 replaced by its `display` form."""
    if isinstance(obj, str):
        try:
            obj.encode("utf-8")
            return obj
        except UnicodeEncodeError:
            return display(obj)
    if isinstance(obj, dict):
        return {displayable(k): displayable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [displayable(v) for v in obj]
    return obj


def name_bytes(name: str | os.PathLike) -> bytes:
    """The original bytes of a file name (os.fsencode on a UTF-8 system): what ids of files are derived from."""
    text = os.fspath(name)
    try:
        return text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a surrogate that no file system produced (e.g. from JSON "\ud800")
        return text.encode("utf-8", "surrogatepass")


_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')


def safe_name(name: str, what: str = "name") -> str:
    """`name` if it may be used as a folder name (see the module docstring), else ValueError saying why."""
    if not isinstance(name, str) or not name:
        problem = "is empty"
    elif name.startswith("."):
        problem = "starts with '.' (a parent folder, or a hidden one)"
    elif m := _UNSAFE.search(name):
        problem = f"contains {m.group()!r} (path separators, control characters and :*?\"<>| are not allowed)"
    elif name != name.strip():
        problem = "starts or ends with white space"
    elif len(name_bytes(name)) > MAX_NAME_BYTES:
        problem = f"is longer than {MAX_NAME_BYTES} bytes"
    else:
        return name
    raise ValueError(f"{what} {display(repr(name))} cannot name a folder: it {problem}; use letters, digits, "
                     "'-', '_' and '.' (not first), e.g. 'ops-manuals'")


# --- file modes ------------------------------------------------------------------------------------------------

_FALLBACK_UMASK: int | None = None


def umask() -> int:
    """The process umask, read without changing it (Linux: /proc/self/status); elsewhere set-and-restore once."""
    global _FALLBACK_UMASK
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    if _FALLBACK_UMASK is None:
        _FALLBACK_UMASK = os.umask(0o022)
        os.umask(_FALLBACK_UMASK)
    return _FALLBACK_UMASK


def honour_umask(path: str | Path, directory: bool = False) -> None:
    """Give a file made by tempfile (always 0600/0700) the mode any other tool would: 0666/0777 minus umask."""
    os.chmod(path, (0o777 if directory else 0o666) & ~umask())
