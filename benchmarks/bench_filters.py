"""Planted-defect benchmark for the clean stage's quality filters: precision and recall of each filter.

    .venv/bin/python benchmarks/bench_filters.py [--docs documents.jsonl ... | --corpus /work/debian-zh/ops]
        [--pages 20] [--sections 10] [--seed 0] [--config clean.yaml] [--set OP.param=value ...]

Known-bad text (danlu.data.clean.planted: boilerplate, keyword spam, repeated lines, mojibake, navigation, in
Chinese and English) is mixed into clean documents - as web-page-sized records of its own and as sections
inserted into long documents - and the preset's per-record steps run over the mix (dedup steps are left out:
they measure something else, and would merge planted pages made from the same templates). Printed: per
filter, characters removed, planted characters among them (precision) and the share of each kind's planted
characters it removed (recall); per kind, the recall of all filters together and the planted items caught;
and the clean characters removed, as a share of the clean corpus (what calibration must keep under 1%).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path


def load_docs(args, work: Path) -> list[dict]:
    paths = [Path(p) for p in args.docs or []]
    if args.corpus:
        from danlu.data.ingest import ingest

        ingest([args.corpus], work / "ingest", progress=False)
        paths.append(work / "ingest" / "documents.jsonl")
    return [json.loads(line) for p in paths for line in open(p, encoding="utf-8") if line.strip()]


def run(docs: list[dict], cfg, work: Path, pages: int, sections: int, seed: int) -> dict:
    from danlu.data.clean import clean
    from danlu.data.clean.planted import plant, score

    transforms = [s for s in cfg.steps if s.kind == "transform"]

    def normalize(text: str) -> str:
        for s in transforms:
            text = s.apply(text)
        return text

    cfg = cfg.model_copy(update={"steps": [s for s in cfg.steps if s.kind != "dedup"], "keep_rejected_text": True})
    planted = plant(docs, pages_per_kind=pages, sections_per_kind=sections,
                    long_doc_chars=cfg.sections.long_doc_chars, seed=seed, normalize=normalize)
    mixed = work / "mixed.jsonl"
    with open(mixed, "w", encoding="utf-8") as f:
        for rec in planted.records:
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    t = time.perf_counter()
    report = clean(mixed, work / "clean", config=cfg, progress=False)
    result = score(planted, work / "clean" / "rejects.jsonl")
    result["seconds"] = time.perf_counter() - t
    result["report"] = report
    return result


def print_result(res: dict, n_docs: int) -> None:
    from danlu.data.clean.planted import KINDS, TARGETS

    print(f"clean corpus: {n_docs} documents, {res['clean_chars']:,} characters; planted: "
          + ", ".join(f"{k} {v['items']} items / {v['planted_chars']:,} chars" for k, v in res["kinds"].items()))
    print(f"filters ran in {res['seconds']:.1f}s")
    head = "".join(f"{k:>12}" for k in KINDS)
    print(f"{'filter':<12}{'removed':>11}{'planted':>11}{'clean':>9}{'precision':>10}  recall:{head}   (its kinds)")
    for op, o in res["operators"].items():
        prec = f"{o['precision']:.3f}" if o["precision"] is not None else "-"
        rec = "".join(f"{o['recall'].get(k, 0):>12.3f}" for k in KINDS)
        target = f"{o['target_recall']:.3f} on {'+'.join(TARGETS[op])}" if o["target_recall"] is not None else ""
        print(f"{op:<12}{o['removed_chars']:>11,}{o['planted_chars']:>11,}{o['clean_chars']:>9,}{prec:>10}         {rec}   {target}")
    print(f"{'all filters':<12}{'':>39}  recall:" + "".join(
        f"{res['kinds'][k]['recall']:>12.3f}" for k in KINDS))
    print(f"{'items caught':<12}{'':>39}         " + "".join(
        f"{str(res['kinds'][k]['items_caught']) + '/' + str(res['kinds'][k]['items']):>12}" for k in KINDS))
    print(f"clean characters removed: {res['clean_removed']:,} = {res['clean_removed_share']:.3%} of the clean corpus")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", nargs="*", help="clean documents.jsonl files (ingested)")
    ap.add_argument("--corpus", help="raw corpus folder to ingest as the clean documents")
    ap.add_argument("--config", help="clean config YAML (default: the pretrain preset)")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="OP.param=value override")
    ap.add_argument("--pages", type=int, default=20, help="planted pages per kind")
    ap.add_argument("--sections", type=int, default=10, help="planted sections per kind (in long documents)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    if not args.docs and not args.corpus:
        ap.error("give --docs or --corpus")

    from danlu.data.clean import load_clean_config

    work = Path(tempfile.mkdtemp(prefix="bench-filters-"))
    docs = load_docs(args, work)
    cfg = load_clean_config(args.config, preset=None if args.config else "pretrain", sets=args.sets)
    print_result(run(docs, cfg, work, args.pages, args.sections, args.seed), len(docs))


if __name__ == "__main__":
    main()
