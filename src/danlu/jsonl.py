"""JSONL reading and writing that never loses a record.

Reading yields every line's fate: a parsed record, or the line number and the reason it could not be used,
so stages can account for each input (kept + filtered + rejected = read). Writing goes to a temporary file
that replaces the target only when the writer closes cleanly.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

from danlu.runs import atomic_path


@dataclass
class BadLine:
    """A line that is not a usable record: where it is and why."""

    path: str
    line: int
    error: str
    raw: str = ""

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
                yield lineno, BadLine(str(path), lineno, f"invalid JSON: {e.msg} at column {e.colno}", raw)
                continue
            if not isinstance(obj, dict):
                yield lineno, BadLine(str(path), lineno, f"expected a JSON object, got {type(obj).__name__}", raw)
                continue
            problem = _check_fields(obj, require or {})
            yield lineno, (BadLine(str(path), lineno, problem, raw) if problem else obj)


def _check_fields(obj: dict, require: dict[str, type]) -> str | None:
    for name, typ in require.items():
        if name not in obj:
            return f"missing field '{name}'"
        if not isinstance(obj[name], typ):
            return f"field '{name}' must be {typ.__name__}, got {type(obj[name]).__name__}"
    return None


SIDE_FILES = {"rejects.jsonl", "duplicates.jsonl"}  # what stages write beside their records, in the same folder


def jsonl_files(inputs: Iterable[str | Path], suffixes: tuple[str, ...] = (".jsonl",)) -> list[Path]:
    """Expand files and folders into a list of input files. A folder gives its files with these suffixes, sorted,
    but not a stage's side files (rejects, duplicates) nor hidden files and folders (resume caches, temporaries),
    so a stage's output folder can be the next stage's input. Files named directly are taken as given."""
    out: list[Path] = []
    for p in map(Path, inputs):
        if p.is_dir():
            out.extend(sorted(q for q in p.rglob("*") if q.is_file() and q.suffix in suffixes
                              and q.name not in SIDE_FILES
                              and not any(part.startswith(".") for part in q.relative_to(p).parts)))
        elif p.exists():
            out.append(p)
        else:
            raise FileNotFoundError(f"{p}: no such file or folder")
    if not out:
        raise FileNotFoundError(f"no {'/'.join(suffixes)} files in {', '.join(map(str, inputs))}")
    return out


class JsonlWriter:
    """Write records to `path` atomically: nothing appears at `path` unless the writer closes without error."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.count = 0
        self._ctx = atomic_path(self.path)
        self._tmp = self._ctx.__enter__()
        self._f = open(self._tmp, "w", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        self._f.write(json.dumps(record, ensure_ascii=False) + "\n")
        self.count += 1

    def close(self, ok: bool = True) -> None:
        if self._f.closed:
            return
        self._f.flush()
        os.fsync(self._f.fileno())
        self._f.close()
        if ok:
            self._ctx.__exit__(None, None, None)
        else:
            self._ctx.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self) -> "JsonlWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.close(ok=True)
        else:
            self._f.close()
            self._ctx.__exit__(exc_type, exc, tb)
