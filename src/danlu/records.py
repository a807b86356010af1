"""The record contracts between stages (see DESIGN.md). Plain dicts on disk; these helpers build and check them.

- Document: {"id", "text", "source", "path", "format", "meta": {...}}
- SFT:      {"id", "messages": [{"role", "content"}], "task_type", "tags": [...], "source"}
- Preference: {"id", "messages", "chosen", "rejected", "task_type", "source"}
"""

from __future__ import annotations

import hashlib
from pathlib import Path

DOC_FIELDS = ("id", "text", "source", "path", "format", "meta")
ROLES = ("system", "user", "assistant", "tool")


def stable_id(*parts: object, length: int = 16) -> str:
    """An id derived only from its parts (e.g. relative path + position), so reruns give the same ids."""
    h = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode("utf-8"), digest_size=length // 2)
    return h.hexdigest()


def record_id(record: dict, path: str | Path, line: int) -> str:
    """The record's own "id", or one derived from where it was read: the file's absolute path (two x.jsonl in
    different folders must not collide; a relative spelling must not change it) and its line number."""
    rid = record.get("id")
    if isinstance(rid, int) and not isinstance(rid, bool):
        return str(rid)  # other tools number their records
    return rid if isinstance(rid, str) and rid else stable_id(str(Path(path).resolve()), line)


def document(text: str, source: str, path: str, fmt: str, position: int | str = 0, meta: dict | None = None) -> dict:
    """`meta` is a dict, not keyword arguments: an input record's own fields (a JSONL "source" or "path") land
    there and must not collide with the parameters."""
    return {
        "id": stable_id(source, path, position),
        "text": text,
        "source": source,
        "path": path,
        "format": fmt,
        "meta": dict(meta or {}),
    }
