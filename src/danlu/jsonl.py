"""JSONL reading and writing that never loses a record.

Reading yields every line's fate: a parsed record, or the line number and the reason it could not be used,
so stages can account for each input (kept + filtered + rejected = read). Writing goes to a temporary file
that replaces the target only when the writer closes cleanly.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from danlu.names import display, displayable
from danlu.runs import atomic_path, naming_path

# A JSON string escape of a UTF-16 surrogate (\ud800-\udfff): harmless in a pair (an emoji), not valid text alone.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


@dataclass
class BadLine:
    """A line that is not a usable record: where it is and why."""

    path: str
    line: int
    error: str
    raw: str = ""

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.error}"

    def as_reject(self, stage: str) -> dict:
        return {"path": self.path, "line": self.line, "stage": stage, "reason": self.error, "raw": self.raw[:500]}


def read_jsonl(path: str | Path, require: dict[str, type] | None = None) -> Iterator[tuple[int, dict | BadLine]]:
    """Yield (line number, record or BadLine) for every non-blank line of `path`.

    `require` maps field names to the type each must have (e.g. {"text": str}); a record missing one, or with
    the wrong type, comes back as a BadLine naming the field.
    """
    path = Path(path)
    with open(path, "rb") as f:
        for lineno, raw_bytes in enumerate(f, start=1):
            try:
                raw = raw_bytes.decode("utf-8")
            except UnicodeDecodeError as e:
                yield lineno, BadLine(str(path), lineno, f"not UTF-8 at byte {e.start}")
                continue
            if not raw.strip():
                continue
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as e:
                yield lineno, BadLine(str(path), lineno, f"invalid JSON at column {e.colno}: {e.msg}", raw)
                continue
            if not isinstance(obj, dict):
                yield lineno, BadLine(str(path), lineno, f"expected a JSON object, got {type(obj).__name__}", raw)
                continue
            if _SURROGATE_ESCAPE.search(raw) and _has_lone_surrogate(obj):
                yield lineno, BadLine(str(path), lineno, "a string holds a lone UTF-16 surrogate escape (\\ud800-"
                                      "\\udfff without its pair): not valid Unicode text", raw)
                continue
            problem = _check_fields(obj, require or {})
            yield lineno, (BadLine(str(path), lineno, problem, raw) if problem else obj)


def _has_lone_surrogate(obj: Any) -> bool:
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _check_fields(obj: dict, require: dict[str, type]) -> str | None:
    for name, typ in require.items():
        if name not in obj:
            return f"missing field '{name}'"
        if not isinstance(obj[name], typ):
            return f"field '{name}' must be {typ.__name__}, got {type(obj[name]).__name__}"
    return None


SIDE_FILES = {"rejects.jsonl", "duplicates.jsonl"}  # what stages write beside their records, in the same folder


@dataclass
class Found:
    """A file under an input folder (`problem` None), or an entry that was not followed and why."""

    path: Path
    problem: str | None = None


def walk_files(root: str | Path, exclude: str | Path | None = None, hidden_files: bool = False) -> Iterator[Found]:
    """Every file under `root` (sorted by relative path, symlinked folders followed), and every entry NOT
    followed with the reason, so callers can account for it: a symlink loop, a link to a folder read anyway
    (inside `root`, or reached through an earlier link). Hidden folders and `exclude` (an output folder inside
    the input) are not entered; hidden files are left out unless `hidden_files`."""
    root = Path(root)
    root_real = Path(os.path.realpath(root))
    skip = Path(os.path.realpath(exclude)) if exclude else None
    followed: dict[Path, Path] = {}  # target -> the link that led there
    found: list[Found] = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        keep = []
        for d in sorted(dirnames):
            p = Path(dirpath, d)
            if d.startswith(".") or (skip is not None and Path(os.path.realpath(p)) == skip):
                continue
            if p.is_symlink():
                target = Path(os.path.realpath(p))
                why = _link_problem(target, root_real, followed)
                if why:
                    found.append(Found(p, f"symlinked folder not followed: {why}"))
                    continue
                followed[target] = p
            keep.append(d)
        dirnames[:] = keep
        found.extend(Found(Path(dirpath, f)) for f in filenames if hidden_files or not f.startswith("."))
    found.sort(key=lambda f: f.path.relative_to(root).as_posix())
    yield from found


def _link_problem(target: Path, root_real: Path, followed: dict[Path, Path]) -> str | None:
    if root_real == target or root_real.is_relative_to(target):
        return f"it points to {display(target)}, which contains the input folder (a loop)"
    if target.is_relative_to(root_real):
        return f"it points to {display(target)}, inside the input folder, which is read there"
    for seen, link in followed.items():
        if target.is_relative_to(seen):
            return f"it points to {display(target)}, already read through {display(link)}"
    return None


def jsonl_files(inputs: Iterable[str | Path], suffixes: tuple[str, ...] = (".jsonl",)) -> list[Path]:
    """Expand files and folders into a list of input files. A folder gives its files with these suffixes, sorted,
    but not a stage's side files (rejects, duplicates) nor hidden files and folders (resume caches, temporaries),
    so a stage's output folder can be the next stage's input. Symlinked folders are followed (a link whose
    folder is read anyway is not: see `walk_files`); a broken link with one of the suffixes is an error. Files
    named directly are taken as given."""
    out: list[Path] = []
    inputs = list(inputs)
    for p in map(Path, inputs):
        if p.is_dir():
            found = []
            for f in walk_files(p):
                if f.problem or f.path.suffix not in suffixes or f.path.name in SIDE_FILES:
                    continue
                if not f.path.exists():
                    raise FileNotFoundError(f"{display(f.path)}: broken symbolic link (to "
                                            f"{display(os.readlink(f.path))}); fix or remove it")
                if f.path.is_file():
                    found.append(f.path)
            out.extend(sorted(found))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"{display(p)}: no such file or folder")
    if not out:
        raise FileNotFoundError(f"no {'/'.join(suffixes)} files in {', '.join(display(p) for p in inputs)}")
    return out


def write_jsonl(path: str | Path, records: Iterable[dict[str, Any]]) -> int:
    """Write `records` to `path` atomically (JsonlWriter); returns how many."""
    with JsonlWriter(path) as w:
        for record in records:
            w.write(record)
    return w.count


class JsonlWriter:
    """Write records to `path` atomically: nothing appears at `path` unless the writer closes without error."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.count = 0
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        self._f = open(self._tmp, "w", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        try:
            self.write_line(json.dumps(record, ensure_ascii=False) + "\n")
        except UnicodeEncodeError:  # a file name that is not UTF-8 (nothing was written): see danlu.names
            self.write_line(json.dumps(displayable(record), ensure_ascii=False) + "\n")

    def write_line(self, line: str) -> None:
        """Write a line as it is: a record serialised as write() does (clean copies its spill file's lines)."""
        try:
            self._f.write(line)
        except OSError as e:  # a full disk: name the file being written, not its temporary
            raise naming_path(e, self.path) from e
        self.count += 1

    def close(self, ok: bool = True) -> None:
        if self._f.closed:
            return
        try:
            self._f.flush()
            os.fsync(self._f.fileno())
            self._f.close()
        except OSError as e:
            self._abandon(e)
            raise naming_path(e, self.path) from e
        if ok:
            self._ctx.__exit__(None, None, None)
        else:
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def _abandon(self, exc: BaseException) -> None:
        """Close without keeping anything (the temporary file is removed); a second failure is not news."""
        try:
            self._f.close()
        except OSError:
            pass
        try:
            self._ctx.__exit__(type(exc), exc, exc.__traceback__)
        except BaseException:  # noqa: BLE001  (atomic_path re-raises what it was given)
            pass

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close(ok=True)
        else:
            self._abandon(exc)
