"""Corpora for tokenizer tests and benchmarks/bench_tokenizer.py: small synthetic ones, and plain text from the
real Debian Chinese corpus.

Reads the files directly (so these checks do not depend on `danlu data ingest`): .txt/.u8 as they are, HTML via
lxml's text content, man pages with roff requests and font escapes stripped (crudely: enough for token
statistics, not a roff renderer).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

_ROFF_REQUEST = re.compile(r"^[.'][^\n]*\n?", re.M)
_ROFF_ESCAPE = re.compile(r"\\f[BIRP]|\\f\(..|\\\*\(..|\\[&\-e,/]|\\s[-+]?\d")

# domain training parts, held-out domain parts, general parts (relative to the corpus root)
DOMAIN_TRAIN = ["ops/debian-reference", "ops/debian-handbook", "ops/manpages-zh"]
DOMAIN_HELDOUT = ["ops/maint-guide", "ops/debian-faq"]
GENERAL = ["general/fortunes-zh"]


def file_text(path: Path) -> str | None:
    """The readable text of one corpus file, or None for formats skipped here (PDF)."""
    if path.suffix == ".pdf":
        return None
    if path.suffix == ".html":
        import lxml.html

        doc = lxml.html.fromstring(path.read_bytes())
        for bad in doc.xpath("//script|//style"):
            bad.drop_tree()
        return doc.text_content()
    raw = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix in (".txt", ".u8"):
        return raw
    return _ROFF_ESCAPE.sub("", _ROFF_REQUEST.sub("", raw))  # man pages (.1, .3tcl, ...)


def part_texts(root: Path, parts: list[str], skip_txt_if_html: bool = True) -> list[str]:
    """Texts of every file under the given parts (a folder with both .txt and .html uses only the .txt)."""
    out = []
    for part in parts:
        files = sorted(p for p in (root / part).iterdir() if p.is_file())
        if skip_txt_if_html and any(p.suffix == ".txt" for p in files):
            files = [p for p in files if p.suffix == ".txt"]
        for p in files:
            text = file_text(p)
            if text and text.strip():
                out.append(text)
    return out


def write_txt(texts: list[str], folder: Path, name: str) -> Path:
    """Write texts as one .txt file per text (a CORPUS folder `danlu tokenizer train` reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    for i, t in enumerate(texts):
        (folder / f"{name}-{i:05d}.txt").write_text(t, encoding="utf-8")
    return folder


# small synthetic corpora: a "general" (poetry) and an "ops" vocabulary
GENERAL_WORDS = "床前 明月 光 疑是 地上 霜 举头 望 低头 思 故乡 the moon light over river 春眠 不觉 晓 处处 闻 啼鸟".split()
OPS_WORDS = "软件包 安装 配置 文件 系统 内核 apt-get install dpkg -i /etc/apt/sources.list 服务 sudo systemctl restart".split()


def make_corpus(words: list[str], n: int, seed: int) -> list[str]:
    """`n` texts of 40 random words with random separators (deterministic for a seed)."""
    rng = random.Random(seed)
    return ["".join(rng.choice(words) + rng.choice(["", " ", "，", "。\n"]) for _ in range(40)) for _ in range(n)]


def write_jsonl(path: Path, texts: list[str], bad_lines: int = 0) -> Path:
    """Texts as danlu Document JSONL, plus `bad_lines` records lacking "text"."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps({"id": str(i), "text": t, "source": "s", "path": "p", "format": "txt", "meta": {}}) + "\n")
        for _ in range(bad_lines):
            f.write('{"id": "x", "no_text": 1}\n')
    return path
