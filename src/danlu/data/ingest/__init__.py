"""Document import: files and folders in many formats -> document records (JSONL) + report.

    from danlu.data.ingest import ingest
    report = ingest(["docs/"], "out/ingest", source="ops", ocr="auto")
"""

from __future__ import annotations

from danlu.data.ingest.importer import DOCUMENTS, REJECTS, IngestConfig, discover, ingest, process_file

__all__ = ["DOCUMENTS", "REJECTS", "IngestConfig", "discover", "ingest", "process_file"]
