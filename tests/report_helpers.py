"""Reading the report contract's counts block in tests."""

from __future__ import annotations


def file_counts(report: dict) -> dict:
    """An ingest report's counts as {in, written, skipped, failed} (files kept, filtered, rejected)."""
    c = report["counts"]
    return {"in": c["in"], "written": c["kept"], "skipped": sum(c["filtered"].values()),
            "failed": sum(c["rejected"].values())}
