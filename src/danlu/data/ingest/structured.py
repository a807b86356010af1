"""JSONL / JSON / CSV: one document per record, text taken from the chosen field; bad records are reported
with their line (or row) and the rest of the file is still imported."""

from __future__ import annotations

import csv
import io
import json

from danlu.data.ingest.base import Extracted, ReadResult
from danlu.data.ingest.encoding import decode, has_bom
from danlu.data.ingest.errors import IngestFailure

META_MAX_CHARS = 2000  # other scalar fields are kept in meta, unless they are large (they would bloat records)


def _record(obj: dict, field: str) -> tuple[str | None, dict, str]:
    """(text, meta, problem) for one parsed record."""
    if field not in obj:
        return None, {}, f"missing field '{field}' (fields: {', '.join(sorted(obj)[:10])})"
    text = obj[field]
    if not isinstance(text, str):
        return None, {}, f"field '{field}' must be a string, got {type(text).__name__}"
    if not text.strip():
        return None, {}, f"field '{field}' is empty"
    meta = {
        k: v for k, v in obj.items()
        if k != field and isinstance(v, (str, int, float, bool)) and len(str(v)) <= META_MAX_CHARS
    }
    return text, meta, ""


def _finish(docs: list[Extracted], bad: list[tuple[int, str]], enc: str, unit: str) -> ReadResult:
    if not docs:
        reasons = "; ".join(f"{unit} {n}: {r}" for n, r in bad[:3])
        raise IngestFailure(f"no usable records ({len(bad)} bad {unit}s; first: {reasons or 'none'})")
    return ReadResult(docs, {"encoding": enc}, bad_lines=bad)


def _collect(items, text_field: str) -> tuple[list[Extracted], list[tuple[int, str]]]:
    """(position, parsed value) pairs -> documents, and (position, reason) for values that are not records."""
    docs, bad = [], []
    for pos, obj in items:
        if not isinstance(obj, dict):
            bad.append((pos, f"expected a JSON object, got {type(obj).__name__}"))
            continue
        body, meta, problem = _record(obj, text_field)
        if problem:
            bad.append((pos, problem))
        else:
            docs.append(Extracted(body, pos, meta))
    return docs, bad


def _jsonl_lines(data: bytes) -> tuple[list[tuple[int, str]], list[tuple[int, str]], str]:
    """(line number, text) pairs, undecodable lines with reasons, and the encoding. JSON Lines are UTF-8 by
    standard: a file that is UTF-8 but for a few bad lines (at most 10%) loses only those lines, rather than
    failing whole or being mis-detected as another encoding; anything else (valid UTF-8, a BOM, a legacy GBK
    dump) is decoded as a whole."""
    if not has_bom(data):
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            lines, bad = [], []
            for lineno, raw in enumerate(data.split(b"\n"), start=1):
                try:
                    lines.append((lineno, raw.decode("utf-8").rstrip("\r")))
                except UnicodeDecodeError as e:
                    bad.append((lineno, f"not UTF-8 at byte {e.start} of the line"))
            if len(bad) <= 0.1 * sum(1 for _, line in lines if line.strip()):
                return lines, bad, "utf-8"
    text, enc = decode(data)
    return list(enumerate(text.split("\n"), start=1)), [], enc


def read_jsonl(data: bytes, path, opts) -> ReadResult:
    lines, bad, enc = _jsonl_lines(data)
    parsed = []
    for lineno, line in lines:
        if not line.strip():
            continue
        try:
            parsed.append((lineno, json.loads(line)))
        except json.JSONDecodeError as e:
            bad.append((lineno, f"invalid JSON at column {e.colno}: {e.msg}"))
    docs, not_records = _collect(parsed, opts.text_field)
    return _finish(docs, sorted(bad + not_records), enc, "line")


def read_json(data: bytes, path, opts) -> ReadResult:
    text, enc = decode(data)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise IngestFailure(f"invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    docs, bad = _collect(enumerate(obj if isinstance(obj, list) else [obj]), opts.text_field)
    return _finish(docs, bad, enc, "item")


def read_csv(data: bytes, path, opts) -> ReadResult:
    text, enc = decode(data)
    csv.field_size_limit(2**31 - 1)  # documents are longer than the module's 128 KB default cell limit
    reader = csv.DictReader(io.StringIO(text))  # RFC 4180 / Excel CSV: quoted cells may hold commas and newlines
    columns = reader.fieldnames or []
    if opts.text_field not in columns:
        raise IngestFailure(f"no column '{opts.text_field}' (columns: {', '.join(columns[:10]) or 'none'})")
    docs, bad = [], []
    try:
        for row in reader:
            lineno = reader.line_num
            body, meta, problem = _record({k: v for k, v in row.items() if k is not None}, opts.text_field)
            if problem:
                bad.append((lineno, problem))
            else:
                docs.append(Extracted(body, lineno, meta))
    except csv.Error as e:
        bad.append((reader.line_num, f"malformed CSV: {e}"))
    return _finish(docs, bad, enc, "row")
