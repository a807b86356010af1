"""Benchmark `danlu data ingest` on the real Debian Chinese corpus.

    python benchmarks/bench_ingest.py [CORPUS] [--workers N] [--ocr-pages N]

Prints: throughput per format (files/s and MB/s of one reader process, and wall-clock for the whole run);
how closely the text imported from the Debian Reference HTML and PDF matches its TXT edition; the same for
a naive peer (BeautifulSoup get_text / raw pdfium text, no chrome or furniture removal) measured in the same
run; OCR character error rate and pages/s on image-only PDFs rendered from known text.

Similarity: Dice coefficient between the multisets of Han characters of the two texts (unigram), and of
adjacent Han character pairs (bigram: also sensitive to local order). Layout (spaces, line breaks, Markdown
marks) does not count; missing, extra or reordered Chinese text does. CER: edit distance / reference
length after NFKC and whitespace removal.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from pathlib import Path

from danlu.data.ingest import ingest
from danlu.data.ingest.similarity import cer, cjk_similarity
from danlu.data.ingest.synthetic import find_cjk_font, image_pdf, latin_font


def _records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "documents.jsonl").read_text(encoding="utf-8").splitlines()]


def throughput(corpus: Path, workers: int, tmp: Path) -> list[dict]:
    t0 = time.perf_counter()
    report = ingest([corpus], tmp / "all", workers=workers, progress=False)
    wall = time.perf_counter() - t0
    files = report["counts"]
    print(f"\n== import {corpus} ({workers} workers) ==")
    print(f"files in={files['in']} written={files['kept']} skipped={sum(files['filtered'].values())} "
          f"failed={sum(files['rejected'].values())} records={report['records']} chars={report['characters']:,} "
          f"pages={report['pages']} ocr_pages={report['ocr_pages']}")
    for f in report["failed"]:
        print(f"  FAILED {f['path']}: {f['reason']}")
    print(f"wall: {wall:.1f}s  {files['in'] / wall:.1f} files/s  {report['bytes'] / wall / 1e6:.2f} MB/s")
    print(f"{'format':8} {'files':>6} {'MB':>7} {'reader s':>9} {'files/s':>8} {'MB/s':>7}   (one reader process)")
    for fmt, s in report["by_format"].items():
        secs = max(s["seconds"], 1e-9)
        print(f"{fmt:8} {s['files']:6d} {s['bytes'] / 1e6:7.2f} {secs:9.2f} {s['files'] / secs:8.1f} "
              f"{s['bytes'] / 1e6 / secs:7.2f}")
    return _records(tmp / "all")


def _naive_html(path: Path) -> str:
    import warnings

    from bs4 import BeautifulSoup, XMLParsedAsHTMLWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", XMLParsedAsHTMLWarning)
        return BeautifulSoup(path.read_bytes(), "lxml").get_text("\n")


def _naive_pdf(path: Path) -> str:
    import pypdfium2 as pdfium

    doc = pdfium.PdfDocument(str(path))
    return "\n".join(doc[i].get_textpage().get_text_range() for i in range(len(doc)))


def similarity(corpus: Path, records: list[dict]) -> None:
    ref_dir = corpus / "ops" / "debian-reference"
    if not ref_dir.is_dir():
        print(f"\n(no {ref_dir}: similarity skipped)")
        return
    prefix = "ops/debian-reference/"
    mine = {fmt: "\n".join(r["text"] for r in records if r["path"].startswith(prefix) and r["format"] == fmt)
            for fmt in ("txt", "html", "pdf")}
    t0 = time.perf_counter()
    naive_html = "\n".join(_naive_html(p) for p in sorted(ref_dir.glob("*.html")))
    t_html = time.perf_counter() - t0
    t0 = time.perf_counter()
    naive_pdf = "\n".join(_naive_pdf(p) for p in sorted(ref_dir.glob("*.pdf")))
    t_pdf = time.perf_counter() - t0
    print("\n== Debian Reference: imported text vs the TXT edition (Han-character Dice, see docstring) ==")
    print(f"{'':22} {'unigram':>8} {'bigram':>8}  target")
    for name, text, target in (("danlu HTML->Markdown", mine["html"], 0.95), ("peer bs4 get_text", naive_html, None),
                               ("danlu PDF", mine["pdf"], 0.90), ("peer raw pdfium", naive_pdf, None)):
        s = cjk_similarity(mine["txt"], text)
        note = f">= {target} {'OK' if s['bigram'] >= target else 'MISSED'}" if target else ""
        print(f"{name:22} {s['unigram']:8.4f} {s['bigram']:8.4f}  {note}")
    print(f"peer extraction time: bs4 {t_html:.2f}s, pdfium {t_pdf:.2f}s (danlu per-format times above)")


def ocr_bench(corpus: Path, pages: int, tmp: Path) -> None:
    try:
        import rapidocr_onnxruntime  # noqa: F401
    except ImportError:
        print("\n(OCR extra not installed: pip install 'danlu[ocr]'; OCR benchmark skipped)")
        return
    import numpy as np

    from danlu.data.ingest.ocr import get_engine

    t0 = time.perf_counter()
    get_engine()(np.full((64, 256, 3), 255, dtype=np.uint8))  # load the models once, outside the timings
    print(f"\n(OCR model load: {time.perf_counter() - t0:.1f}s, once per process)")
    font = find_cjk_font()
    txt = corpus / "ops" / "debian-reference" / "debian-reference.zh-cn.txt"
    print("\n== OCR: image-only PDFs rendered from known text (rapidocr, CPU) ==")
    cases = []
    if font and txt.exists():
        paras = [re.sub(r"\s+", "", p) for p in re.split(r"\n\s*\n", txt.read_text(encoding="utf-8"))]
        text = "".join(p for p in paras if len(re.findall(r"[\u4e00-\u9fff]", p)) > 60)[5000:]
        per_line, per_page = 28, 22
        chunk = [text[i:i + per_line] for i in range(0, per_line * per_page * pages, per_line)]
        cases.append(("Chinese (wqy/noto)", [chunk[i:i + per_page] for i in range(0, len(chunk), per_page)], font))
    else:
        print("(no CJK font or corpus TXT: Chinese OCR skipped; apt-get install fonts-wqy-zenhei)")
    latin = [f"Line {i}: restart nginx.service on host web-{i:02d} at 0{i % 10}:30 UTC" for i in range(1, 21)]
    cases.append(("English/digits (DejaVuSans)", [latin] * pages, latin_font()))
    for name, page_lines, face in cases:
        d = tmp / re.sub(r"\W+", "_", name)
        d.mkdir()
        image_pdf(page_lines, d / "scan.pdf", face)
        t0 = time.perf_counter()
        report = ingest([d], tmp / (d.name + "_out"), workers=1, progress=False)
        secs = time.perf_counter() - t0
        got = "\n".join(r["text"] for r in _records(tmp / (d.name + "_out")))
        ref = "\n".join("\n".join(p) for p in page_lines)
        print(f"{name:28} pages={report['ocr_pages']} CER={cer(ref, got):.4f} (target <= 0.05) "
              f"{report['ocr_pages'] / secs:.2f} pages/s (one process)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("corpus", nargs="?", default=os.environ.get("DANLU_DEBIAN_CORPUS", "/work/debian-zh"))
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--ocr-pages", type=int, default=2)
    args = ap.parse_args()
    corpus = Path(args.corpus)
    if not corpus.is_dir():
        sys.exit(f"{corpus}: corpus folder not found (build it with ../shared/scripts/debian-zh-corpus.sh)")
    with tempfile.TemporaryDirectory() as tmp:
        records = throughput(corpus, args.workers, Path(tmp))
        similarity(corpus, records)
        ocr_bench(corpus, args.ocr_pages, Path(tmp))


if __name__ == "__main__":
    main()
