"""Text sources for tokenizer training and comparison: danlu Document JSONL and plain UTF-8 text files."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from danlu.jsonl import BadLine, jsonl_files, read_jsonl

TEXT_SUFFIXES = (".txt", ".md", ".u8")


@dataclass
class CorpusStats:
    """What was read: documents used, records rejected (with where and why), characters."""

    files: int = 0
    documents: int = 0
    characters: int = 0
    rejected: list[dict] = field(default_factory=list)


def corpus_files(inputs: Iterable[str | Path]) -> list[Path]:
    """Expand files and folders: folders give their .jsonl and plain-text files (see danlu.jsonl.jsonl_files)."""
    return jsonl_files(inputs, suffixes=(".jsonl", *TEXT_SUFFIXES))


def iter_documents(
    inputs: Iterable[str | Path], stats: CorpusStats | None = None
) -> Iterator[tuple[str, str]]:
    """Yield (source, text) per document. JSONL lines are Documents (field "text", source from "source");
    any other file is one UTF-8 document whose source is its parent folder's name."""
    stats = stats if stats is not None else CorpusStats()
    for path in corpus_files(inputs):
        stats.files += 1
        if path.suffix == ".jsonl":
            for _, rec in read_jsonl(path, require={"text": str}):
                if isinstance(rec, BadLine):
                    stats.rejected.append(rec.as_reject("tokenizer"))
                    continue
                stats.documents += 1
                stats.characters += len(rec["text"])
                yield str(rec.get("source") or path.stem), rec["text"]
        else:
            try:
                text = path.read_text(encoding="utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}: not UTF-8 text (byte {e.start}); convert it or ingest it first") from None
            stats.documents += 1
            stats.characters += len(text)
            yield path.parent.name, text


def chunks(text: str, size: int = 1 << 14) -> Iterator[str]:
    """Split long text at line ends into pieces of about `size` characters (parallelises BPE training)."""
    if len(text) <= size:
        yield text
        return
    start = 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end
