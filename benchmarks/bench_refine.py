"""Corpus refinement on the real Debian corpus: what the clean stage removes (per operator: records and
characters removed, share of the corpus), the acceptance checks of section-level filtering, throughput of
clean + dedup + chunk, and danlu's near-duplicate step against datasketch's MinHash + MinHashLSH at the same
settings, in the same run.

    .venv/bin/python benchmarks/bench_refine.py [--corpus /work/debian-zh/ops | --docs documents.jsonl]
        [--heldout DIR | --build-heldout DIR] [--tokenizer TOKENIZER_DIR] [--max-tokens 1024]

Acceptance (pretrain preset): no record over 100K characters dropped whole, under 1% of the characters
removed by the quality filters (dedup aside), the Debian Reference text edition kept. `--heldout` runs the
same preset over a second set of clean technical documentation (ingested from DIR); `--build-heldout DIR`
first fills DIR from this machine's /usr/share (see build_heldout: Traditional Chinese and English man pages,
package READMEs/FAQs, none of them in the Debian corpus).

Peer: datasketch's usual recipe - one MinHash per document, update_batch over its UTF-8 shingles (sha1_hash32),
insert into MinHashLSH(threshold, num_perm), query every document, join candidates into clusters. danlu uses
the same shingles, permutation scheme, seeds and (bands, rows), but its own vectorised shingle hash, so the
clusters are compared (pair agreement); signature identity is checked separately by feeding datasketch
danlu's shingle hashes.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
import time
from itertools import combinations
from pathlib import Path

import numpy as np


def _mb(texts: list[str]) -> float:
    return sum(len(t.encode("utf-8")) for t in texts) / 1e6


def _pairs(rep: np.ndarray) -> set[tuple[int, int]]:
    groups: dict[int, list[int]] = {}
    for i, r in enumerate(rep.tolist()):
        groups.setdefault(r, []).append(i)
    return {p for g in groups.values() if len(g) > 1 for p in combinations(g, 2)}


def datasketch_clusters(texts: list[str], threshold: float, num_perm: int, ngram: int,
                        same_hashes: bool = False) -> np.ndarray:
    """datasketch's clusters; with `same_hashes` it is fed danlu's shingle hashes instead of sha1 of shingles."""
    from datasketch import MinHash, MinHashLSH

    from danlu.data.dedup import _UnionFind, normalise, shingle_hashes

    lsh = MinHashLSH(threshold=threshold, num_perm=num_perm)
    sketches = []
    for i, t in enumerate(texts):
        norm = normalise(t)
        m = MinHash(num_perm=num_perm, hashfunc=int if same_hashes else None)
        if norm and same_hashes:
            m.update_batch(shingle_hashes(norm, ngram).tolist())
            lsh.insert(i, m)
        elif norm:
            shingles = [norm[k : k + ngram] for k in range(max(len(norm) - ngram + 1, 1))]
            m.update_batch([s.encode("utf-8") for s in shingles])
            lsh.insert(i, m)
        sketches.append(m if norm else None)
    uf = _UnionFind(len(texts))
    for i, m in enumerate(sketches):
        if m is not None:
            for j in lsh.query(m):
                uf.union(i, j)
    return np.array([uf.find(i) for i in range(len(texts))])


def signature_identity(texts: list[str], num_perm: int, ngram: int, sample: int = 200) -> float:
    from datasketch import MinHash

    from danlu.data.dedup import normalise, shingle_hashes, signatures

    texts = [t for t in texts if t.strip()][:sample]
    ours = signatures(texts, num_perm=num_perm, ngram=ngram)
    same = 0
    for t, sig in zip(texts, ours):
        m = MinHash(num_perm=num_perm, hashfunc=int)
        m.update_batch(shingle_hashes(normalise(t), ngram).tolist())
        same += bool(np.array_equal(m.hashvalues, sig))
    return same / max(len(texts), 1)


def train_tokenizer(texts: list[str], folder: Path) -> Path:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=8000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    folder.mkdir(parents=True, exist_ok=True)
    tok.save(str(folder / "tokenizer.json"))
    return folder


# Held-out documentation from this machine: none of it is in the Debian corpus (which takes zh_CN man pages and
# the Debian books). Data tables that are not documentation (fonts-dejavu's glyph status lists) and the docs of
# the corpus's own packages are left out.
HELDOUT_SKIP = ("fonts-dejavu", "maint-guide", "debian-reference", "debian-handbook", "manpages-zh", "debian")


def build_heldout(out: Path) -> Path:
    """Copy a held-out set of clean technical documentation into `out` (deterministic: sorted, every k-th)."""
    def copy(src: Path, dst: Path) -> None:
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(src, dst)

    for p in sorted(Path("/usr/share/man/zh_TW").rglob("*.gz")):
        copy(p, out / "man-zh_TW" / p.name)
    for sec, step in (("man1", 40), ("man5", 4), ("man8", 4)):
        for p in sorted(Path("/usr/share/man", sec).glob("*.gz"))[::step]:
            copy(p, out / "man-en" / p.name)
    patterns = ("README*", "FAQ*", "*.md", "*.md.gz", "*.txt", "*.txt.gz", "*.rst", "*.rst.gz")
    for d in sorted(Path("/usr/share/doc").iterdir()):
        if d.is_dir() and not d.name.startswith(HELDOUT_SKIP):
            for pat in patterns:
                for p in sorted(d.glob(pat)):
                    if p.is_file():
                        copy(p, out / "doc" / d.name / p.name)
    tutor = Path("/usr/share/vim/vim90/tutor/tutor.zh_cn.utf-8")
    if tutor.exists():
        copy(tutor, out / "vim" / "tutor.zh_cn.txt")
    return out


def print_operators(report: dict) -> None:
    """Per operator: records and characters in/removed and the share of the corpus (report.json's figures)."""
    total = report["chars"]["in"]
    print(f"  {'operator':<12} {'unit':<8} {'records in':>10} {'removed':>8} {'trimmed':>8} {'sections':>8} "
          f"{'chars in':>11} {'chars removed':>14} {'share':>7}")
    for o in report["operators"]:
        if o["kind"] == "read" and not o["removed"]:
            continue
        print(f"  {o['op']:<12} {o.get('granularity', o['kind']):<8} {o['in']:>10,} {o['removed']:>8,} "
              f"{o.get('trimmed', 0):>8,} {o.get('sections_removed', 0):>8,} {o['chars_in']:>11,} "
              f"{o['chars_removed']:>14,} {o['chars_removed'] / max(total, 1):>7.2%}")
    for w in report.get("warnings") or []:
        print(f"  warning: {w}")


def acceptance(report: dict, docs: Path, out: Path, big: int = 100_000) -> None:
    """The issue's checks, from the run's own files: whole drops of big records, the filters' share, the book."""
    filters = sum(o["chars_removed"] for o in report["operators"] if o["kind"] == "filter")
    total = report["chars"]["in"]
    dropped = {}
    for line in open(out / "rejects.jsonl", encoding="utf-8"):
        r = json.loads(line)
        if "record" in r and "span" not in r and "dedup" not in r["op"]:
            dropped[r["id"]] = (len(r["record"].get("text", "")), r["record"].get("path"), r["op"], r["reason"])
    big_drops = [v for v in dropped.values() if v[0] > big]
    print(f"  records over {big:,} characters dropped whole by a filter: {len(big_drops)}"
          + "".join(f"\n    {p} ({n:,} chars, {op}: {why})" for n, p, op, why in big_drops))
    print(f"  characters removed by the quality filters (dedup aside): {filters:,} = {filters / max(total, 1):.3%} "
          f"of {total:,}")
    kept = {}
    for line in open(out / "clean.jsonl", encoding="utf-8"):
        r = json.loads(line)
        kept[r["id"]] = r
    for line in open(docs, encoding="utf-8"):
        r = json.loads(line)
        if r["path"].endswith("debian-reference.zh-cn.txt"):
            k = kept.get(r["id"])
            cut = [json.loads(x) for x in open(out / "rejects.jsonl", encoding="utf-8")]
            spans = [(c["op"], c["span"], c["reason"]) for c in cut if c.get("id") == r["id"] and "span" in c]
            print(f"  Debian Reference text edition ({len(r['text']):,} chars): "
                  + (f"kept, {len(k['text']):,} chars out; {len(spans)} section(s) removed"
                     + "".join(f"\n    {op} {sp}: {why}" for op, sp, why in spans) if k else "NOT KEPT"))


def run_clean(docs: Path, out: Path, label: str) -> dict:
    from danlu.data.clean import clean, load_clean_config

    t = time.perf_counter()
    report = clean(docs, out, config=load_clean_config(preset="pretrain"), progress=False)
    print(f"{label}: pretrain preset, {time.perf_counter() - t:.1f}s, records in={report['counts']['in']:,} "
          f"kept={report['counts']['kept']:,}; chars in={report['chars']['in']:,} kept={report['chars']['kept']:,}")
    print_operators(report)
    return report


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default_corpus = os.environ.get("DANLU_DEBIAN_CORPUS", "/work/debian-zh")
    ap.add_argument("--corpus", default=str(Path(default_corpus) / "ops"), help="raw corpus folder (ingested first)")
    ap.add_argument("--docs", help="already-ingested documents.jsonl (skips ingest)")
    ap.add_argument("--heldout", help="raw folder of held-out clean documentation (ingested, cleaned the same way)")
    ap.add_argument("--build-heldout", help="fill this folder with held-out documentation first (see build_heldout)")
    ap.add_argument("--tokenizer", help="HF tokenizer folder for chunking (default: train an 8k BPE here)")
    ap.add_argument("--max-tokens", type=int, default=1024)
    ap.add_argument("--threshold", type=float, default=0.8)
    ap.add_argument("--num-perm", type=int, default=128)
    ap.add_argument("--ngram", type=int, default=5)
    args = ap.parse_args()

    from danlu.data.chunk import chunk
    from danlu.data.clean import clean, load_clean_config
    from danlu.data.dedup import near_clusters

    work = Path(tempfile.mkdtemp(prefix="bench-refine-"))
    if args.docs:
        docs = Path(args.docs)
    else:
        from danlu.data.ingest import ingest

        t = time.perf_counter()
        ingest([args.corpus], work / "ingest", progress=False)
        print(f"ingest: {time.perf_counter() - t:.1f}s (not part of this benchmark)")
        docs = work / "ingest" / "documents.jsonl"
    texts = [json.loads(line)["text"] for line in open(docs, encoding="utf-8") if line.strip()]
    mb = _mb(texts)
    print(f"corpus: {len(texts)} documents, {mb:.2f} MB of text ({docs})")

    cfg = load_clean_config(preset="pretrain")
    t = time.perf_counter()
    report = clean(docs, work / "clean", config=cfg, progress=False)
    clean_s = time.perf_counter() - t
    print("what the pretrain preset removes, per operator (report.json):")
    print_operators(report)
    print("acceptance:")
    acceptance(report, docs, work / "clean")
    if args.build_heldout:
        args.heldout = str(build_heldout(Path(args.build_heldout)))
    if args.heldout:
        from danlu.data.ingest import ingest

        ingest([args.heldout], work / "heldout-ingest", progress=False)
        run_clean(work / "heldout-ingest" / "documents.jsonl", work / "heldout-clean", f"held-out ({args.heldout})")
    ops = {o["op"]: o for o in report["operators"]}
    record_s = sum(o["seconds"] for o in report["operators"] if o["kind"] in ("transform", "filter"))
    dedup_s = sum(o["seconds"] for o in report["operators"] if o["kind"] == "dedup")
    print(f"clean (whole stage): {clean_s:.2f}s  {mb / clean_s:.2f} MB/s  in={report['counts']['in']} kept={report['counts']['kept']}")
    print(f"  per-record operators: {record_s:.2f}s  {mb / record_s:.2f} MB/s")
    for o in report["operators"][1:]:
        print(f"    {o['op']:<12} {o['seconds']:7.2f}s  removed={o['removed']}"
              + (f" chars_changed={o['chars_changed']}" if "chars_changed" in o else ""))
    print(f"  dedup (exact + near): {dedup_s:.2f}s  {mb / max(dedup_s, 1e-9):.2f} MB/s  "
          f"exact removed={ops['exact_dedup']['removed']} near removed={ops['near_dedup']['removed']}")

    clean_texts = [json.loads(line)["text"] for line in open(work / "clean" / "clean.jsonl", encoding="utf-8")]
    tokenizer = Path(args.tokenizer) if args.tokenizer else train_tokenizer(clean_texts, work / "tok")
    t = time.perf_counter()
    creport = chunk(work / "clean", work / "chunk", tokenizer=tokenizer, max_tokens=args.max_tokens, progress=False)
    chunk_s = time.perf_counter() - t
    cmb = _mb(clean_texts)
    print(f"chunk (max {args.max_tokens} tokens): {chunk_s:.2f}s  {cmb / chunk_s:.2f} MB/s  docs={creport['counts']['kept']} "
          f"chunks={creport['chunks']} max_chunk_tokens={creport['max_chunk_tokens']} "
          f"over_budget={creport['over_budget_chunks']}")

    # near-duplicate step, danlu vs datasketch, on the ingested texts (before exact dedup: more clusters)
    t = time.perf_counter()
    ours = near_clusters(texts, threshold=args.threshold, num_perm=args.num_perm, ngram=args.ngram)
    ours_s = time.perf_counter() - t
    print(f"near-dup (threshold {args.threshold}, {args.num_perm} perms, {args.ngram}-char shingles, "
          f"{ours.bands} bands x {ours.rows} rows):")
    n_ours = int((ours.representative != np.arange(len(texts))).sum())
    print(f"  danlu                           {ours_s:7.2f}s  {mb / ours_s:7.2f} MB/s  duplicates={n_ours}")
    for label, same in (("datasketch (sha1 shingles)", False), ("datasketch (danlu shingle hashes)", True)):
        t = time.perf_counter()
        theirs = datasketch_clusters(texts, args.threshold, args.num_perm, args.ngram, same_hashes=same)
        theirs_s = time.perf_counter() - t
        p_ours, p_theirs = _pairs(ours.representative), _pairs(theirs)
        both = len(p_ours & p_theirs)
        n_theirs = int((theirs != np.arange(len(texts))).sum())
        print(f"  {label:<33}{theirs_s:7.2f}s  {mb / theirs_s:7.2f} MB/s  duplicates={n_theirs}  "
              f"danlu speed-up {theirs_s / ours_s:.1f}x")
        print(f"    agreement: identical clusters for {np.mean(ours.representative == theirs):.2%} of documents; "
              f"duplicate pairs danlu={len(p_ours)} datasketch={len(p_theirs)} shared={both} "
              f"(recall {both / max(len(p_theirs), 1):.2%}, precision {both / max(len(p_ours), 1):.2%})")
    ident = signature_identity(texts, args.num_perm, args.ngram)
    print(f"  signature identity (datasketch fed danlu's shingle hashes): {ident:.2%} of 200 documents")


if __name__ == "__main__":
    main()
