"""The rows of a data file, each with where it is: JSON arrays (by index, as LLaMA-Factory's `data/` files are),
JSON Lines (by line; a .json file of lines too), CSV (by line) and Parquet (by row, with pyarrow)."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Iterator

Located = tuple[str, int, "dict | str"]  # ("index" | "line" | "row", position, the row or why it is unusable)


class FileError(ValueError):
    """A file that cannot be read at all (not valid JSON, an unknown suffix): the stage stops and names it."""


def read_rows(path: Path) -> Iterator[Located]:
    suffix = path.suffix.lower()
    if suffix in (".json", ".jsonl"):
        yield from _json_rows(path)
    elif suffix in (".csv", ".tsv"):
        with open(path, encoding="utf-8-sig", newline="") as f:
            for i, row in enumerate(csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ","), start=2):
                yield "line", i, dict(row)
    elif suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise FileError(f"{path}: reading Parquet needs pyarrow (pip install pyarrow)") from None
        for i, row in enumerate(pq.read_table(path).to_pylist()):
            yield "row", i, row
    else:
        raise FileError(f"{path}: unknown data file type {suffix!r} (json, jsonl, csv, tsv, parquet)")


def _json_rows(path: Path) -> Iterator[Located]:
    if path.suffix.lower() == ".json":
        try:
            text = path.read_text(encoding="utf-8-sig")
        except UnicodeDecodeError as e:
            raise FileError(f"{path}: not UTF-8 (byte {e.start})") from None
        if text.lstrip()[:1] == "[":
            try:
                data = json.loads(text)
            except json.JSONDecodeError as e:
                raise FileError(f"{path}: not valid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
            for i, row in enumerate(data):
                yield "index", i, row if isinstance(row, dict) else f"expected an object, got {type(row).__name__}"
            return
        try:
            whole = json.loads(text)
        except json.JSONDecodeError:
            whole = None  # JSON Lines in a .json file (LLaMA-Factory reads those too)
        if isinstance(whole, dict) and text.count("\n") > 1:
            raise FileError(f"{path}: one JSON object; expected a JSON array of rows or JSON Lines")
        lines = text.splitlines()
    else:
        lines = _lines(path)
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if isinstance(line, bytes):
            try:
                line = line.decode("utf-8-sig" if n == 1 else "utf-8")
            except UnicodeDecodeError as e:
                yield "line", n, f"not UTF-8 at byte {e.start}"
                continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            yield "line", n, f"invalid JSON at column {e.colno}: {e.msg}"
            continue
        yield "line", n, row if isinstance(row, dict) else f"expected an object, got {type(row).__name__}"


def _lines(path: Path) -> Iterator[bytes]:
    """A JSON Lines file streamed line by line (SFT sets can be large)."""
    with open(path, "rb") as f:
        yield from f
