"""`danlu eval compare RUN_A RUN_B [...]`: eval runs side by side, each against the first (the baseline).

Per suite, per group (source / subject and category / task_type / check) and per metric: the baseline's value,
the other run's, the delta, and a significance hint computed on the items both runs scored (matched by id):
a paired bootstrap interval of the delta, and for right/wrong metrics McNemar's exact p. The cases whose scores
moved most in each direction go to cases.jsonl and the page, since those are what one studies.

A RUN is an eval output folder (with ppl/ mcq/ gen/ judge/ diagnostics/ run folders in it) or one suite's run
folder. Warnings say when two runs of a suite scored different data, or when per-token loss is compared across
different tokenizers (bits per byte is the comparable figure then).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from danlu.eval.config import CompareConfig

LN2 = 0.6931471805599453


@dataclass
class Item:
    groups: list[str]
    values: dict[str, float | tuple[float, float]]  # metric -> value, or (numerator, denominator) for ratios
    show: dict = field(default_factory=dict)  # what a case shows (question, answer, reference...)


@dataclass
class SuiteView:
    suite: str
    table: dict[str, dict[str, float]]  # group -> metric -> value, as the suite reported it
    items: dict[str, Item]
    paired: dict[str, str]  # table metric -> item metric with the same aggregate (paired statistics)
    binary: set[str]  # item metrics that are 0/1 (McNemar)
    case_metric: str | None  # the item metric that ranks cases
    report: dict


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def _results(folder: Path) -> dict:
    return json.loads((folder / "results.json").read_text(encoding="utf-8"))


def view_ppl(folder: Path, report: dict) -> SuiteView:
    res = _results(folder)
    items = {}
    for d in _jsonl(folder / "documents.jsonl"):
        items[d["id"]] = Item([d["source"], "(all)"], {"bits_per_byte": (d["nats"] / LN2, d["bytes"]),
                                                        "loss": (d["nats"], d["tokens"])},
                              {"source": d["source"], "tokens": d["tokens"], "bytes": d["bytes"]})
    table = {s: {k: m[k] for k in ("bits_per_byte", "bits_per_char", "loss", "ppl")} for s, m in res["sources"].items()}
    return SuiteView("ppl", table, items, {"bits_per_byte": "bits_per_byte", "loss": "loss"}, set(),
                     "bits_per_byte", report)


def view_mcq(folder: Path, report: dict) -> SuiteView:
    res = _results(folder)
    metrics = [m for m in ("acc", "acc_cloze", "acc_cloze_norm") if m in res["overall"]]
    table = {"(all)": {m: res["overall"][m] for m in metrics}}
    table.update({f"category: {c}": {m: v[m] for m in metrics} for c, v in res["categories"].items()})
    table.update({s: {m: v[m] for m in metrics} for s, v in res["subjects"].items()})
    cats = {s: v["categories"] for s, v in res["subjects"].items()}
    items = {}
    for q in _jsonl(folder / "questions.jsonl"):
        vals = {}
        if "letter" in q:
            vals["acc"] = float(q["letter"]["correct"])
            vals["gold_prob"] = q["letter"]["probs"][q["answer"]]
        if "cloze" in q:
            vals["acc_cloze"] = float(q["cloze"]["correct"])
            vals["acc_cloze_norm"] = float(q["cloze"]["correct_norm"])
        items[q["id"]] = Item([q["subject"], "(all)", *(f"category: {c}" for c in cats.get(q["subject"], []))], vals,
                              {"answer": q["answer"], "choice": q.get("letter", q.get("cloze", {})).get("choice"),
                               "where": f"{q['path']}:{q['line']}"})
    return SuiteView("mcq", table, items, {m: m for m in metrics}, set(metrics),
                     "gold_prob" if "acc" in metrics else metrics[0], report)


GEN_ITEM = {"bleu": "bleu", "rouge1": "rouge1", "rouge2": "rouge2", "rougeL": "rougeL",
            "exact_match": "exact_match", "label_accuracy": "label_correct"}


def view_gen(folder: Path, report: dict) -> SuiteView:
    res = _results(folder)
    table = {tt: {k: v for k, v in row.items() if k in GEN_ITEM} for tt, row in res["by_task_type"].items()}
    items = {}
    for a in _jsonl(folder / "answers.jsonl"):
        items[a["id"]] = Item([a["task_type"], "(all)"], {k: float(v) for k, v in a["scores"].items()
                                                          if isinstance(v, (int, float)) and not isinstance(v, bool)},
                              {"prompt": a["messages"][-1]["content"] if a.get("messages") else "",
                               "reference": a["reference"], "answer": a["answer"]})
    # corpus BLEU is not a mean of sentence BLEU: it gets no paired interval
    paired = {k: v for k, v in GEN_ITEM.items() if k != "bleu"}
    return SuiteView("gen", table, items, paired, {"exact_match", "label_correct"}, "rougeL", report)


def view_judge(folder: Path, report: dict) -> SuiteView:
    res = _results(folder)
    if res["mode"] == "pairwise":  # already a comparison of two models: shown, not paired again
        return SuiteView("judge", {tt: {k: v for k, v in row.items() if isinstance(v, (int, float))}
                                   for tt, row in res["by_task_type"].items()}, {}, {}, set(), None, report)
    dims = [d["name"] for d in res["dimensions"]]
    table = {tt: {k: row[k] for k in ("usability", *dims)} for tt, row in res["by_task_type"].items()}
    items = {}
    for j in _jsonl(folder / "judgments.jsonl"):
        if "usability" in j:
            items[j["id"]] = Item([j["task_type"], "(all)"], {"usability": j["usability"], **j["scores"]},
                                  {"reply": next((s["reply"] for s in j["samples"] if s.get("reply")), "")})
    return SuiteView("judge", table, items, {k: k for k in ("usability", *dims)}, set(), "usability", report)


def view_diagnostics(folder: Path, report: dict) -> SuiteView:
    res = _results(folder)
    table = {f"{check}: {g}": {k: v for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
             for check, groups in res["checks"].items() for g, row in groups.items()}
    items = {}
    for it in _jsonl(folder / "items.jsonl"):
        items[f"{it['check']}/{it['id']}"] = Item(
            [f"{it['check']}: {it.get('task_type', '(all)')}", f"{it['check']}: (all)"],
            {k: float(v) for k, v in it["scores"].items() if isinstance(v, (int, float))},
            {k: it[k] for k in ("prompt", "answer", "reference") if k in it})
    # mean-of-items metrics only: corpus BLEU is not one, and the hallucination check is itself a before/after
    paired = {m: m for m in ("rouge1", "rouge2", "rougeL", "exact_match", "answer_logprob",
                             "answer_logprob_per_token", "answer_prob")}
    return SuiteView("diagnostics", table, items, paired, {"known", "lost", "exact_match"}, "answer_logprob"
                     if any("answer_logprob" in i.values for i in items.values()) else "rougeL", report)


VIEWS = {"ppl": view_ppl, "mcq": view_mcq, "gen": view_gen, "judge": view_judge, "diagnostics": view_diagnostics}


def find_suites(run: str | Path) -> dict[str, Path]:
    """{suite: its run folder} in an eval output folder, or the one suite a run folder holds."""
    from danlu.runs import read_report

    run = Path(run)
    if not run.is_dir():
        raise FileNotFoundError(f"{run}: no such run folder")
    found = {}
    own = read_report(run)
    if own and own.get("suite") in VIEWS:
        found[own["suite"]] = run
    for sub in sorted(p for p in run.iterdir() if p.is_dir()):
        rep = read_report(sub)
        if rep and rep.get("suite") in VIEWS:
            found.setdefault(rep["suite"], sub)
    if not found:
        raise FileNotFoundError(f"{run}: no finished eval suite (a report.json with a 'suite') in it or below it")
    return found


def compare_views(a: SuiteView, b: SuiteView, cfg: CompareConfig) -> dict:
    """Rows (group, metric, a, b, delta, paired n/interval/McNemar) and cases of b against a."""
    from danlu.eval.stats import bootstrap_delta, mcnemar_exact

    common = sorted(set(a.items) & set(b.items))
    rows = []
    for group in [g for g in a.table if g in b.table]:
        for metric in [m for m in a.table[group] if m in b.table[group]]:
            va, vb = a.table[group][metric], b.table[group][metric]
            row = {"group": group, "metric": metric, "a": va, "b": vb,
                   "delta": vb - va if isinstance(va, (int, float)) and isinstance(vb, (int, float)) else None}
            im = a.paired.get(metric)
            ids = [i for i in common if group in a.items[i].groups and im in a.items[i].values
                   and im in b.items[i].values] if im else []
            if ids:
                xa = [a.items[i].values[im] for i in ids]
                xb = [b.items[i].values[im] for i in ids]
                row["paired"] = len(ids)
                if isinstance(xa[0], tuple):
                    lo, hi = bootstrap_delta(np.array([x[0] for x in xa]), np.array([x[0] for x in xb]),
                                             cfg.bootstrap, cfg.confidence, cfg.seed,
                                             np.array([x[1] for x in xa], float), np.array([x[1] for x in xb], float))
                else:
                    lo, hi = bootstrap_delta(np.array(xa, float), np.array(xb, float), cfg.bootstrap,
                                             cfg.confidence, cfg.seed)
                row["ci"] = [lo, hi] if cfg.bootstrap else None
                if im in a.binary:
                    worse = sum(1 for x, y in zip(xa, xb) if x > y)
                    better = sum(1 for x, y in zip(xa, xb) if y > x)
                    row.update(better=better, worse=worse, mcnemar_p=mcnemar_exact(worse, better))
                row["significant"] = (row["ci"] is not None and (lo > 0 or hi < 0)) or \
                    row.get("mcnemar_p", 1.0) < 1 - cfg.confidence
            rows.append(row)
    cases = []
    m = a.case_metric
    if m and common:
        moved = []
        for i in common:
            va, vb = a.items[i].values.get(m), b.items[i].values.get(m)
            if va is None or vb is None:
                continue
            if isinstance(va, tuple):
                va, vb = va[0] / max(va[1], 1e-12), vb[0] / max(vb[1], 1e-12)
            moved.append((vb - va, i, va, vb))
        moved.sort()
        lower_is_better = a.suite == "ppl"
        ups = moved[::-1][: cfg.top_cases] if not lower_is_better else moved[: cfg.top_cases]
        downs = moved[: cfg.top_cases] if not lower_is_better else moved[::-1][: cfg.top_cases]
        for direction, chosen in (("better", ups), ("worse", downs)):
            for d, i, va, vb in chosen:
                if d == 0 or (direction == "better") != ((d < 0) if lower_is_better else (d > 0)):
                    continue
                cases.append({"suite": a.suite, "direction": direction, "id": i, "metric": m, "a": va, "b": vb,
                              "delta": d, "groups": a.items[i].groups[:1], "a_show": a.items[i].show,
                              "b_show": b.items[i].show})
    return {"rows": rows, "cases": cases, "paired_items": len(common),
            "only_a": len(set(a.items) - set(b.items)), "only_b": len(set(b.items) - set(a.items))}


def _name(report: dict, folder: Path) -> str:
    return Path(str(report.get("model") or folder)).name


def compare_runs(runs: list[str | Path], out: str | Path, cfg: CompareConfig = CompareConfig(),
                 names: list[str] | None = None) -> dict:
    """Compare eval runs (the first is the baseline) into the run folder `out`: results.json, cases.jsonl,
    index.html; returns the report."""
    from danlu.jsonl import write_jsonl
    from danlu.runs import atomic_write_json, counts, read_report, start_run

    if len(runs) < 2:
        raise ValueError("compare needs at least two runs (the first is the baseline)")
    run = start_run(out, "eval-compare", {"runs": [str(r) for r in runs], **cfg.model_dump()})
    suites = [find_suites(r) for r in runs]
    labels = names or []
    if not labels:
        for r, s in zip(runs, suites):
            rep = read_report(next(iter(s.values())))
            labels.append(_name(rep, Path(r)))
        if len(set(labels)) != len(labels):
            labels = [Path(r).name for r in runs]
    doc: dict = {"runs": [{"path": str(r), "name": n} for r, n in zip(runs, labels)], "suites": {}}
    warnings: list[str] = []
    n_in, kept, not_in_base = 0, 0, 0
    all_cases = []
    for j in range(1, len(runs)):
        for suite, folder_b in suites[j].items():
            n_in += 1
            if suite not in suites[0]:
                not_in_base += 1
                warnings.append(f"{labels[j]}: suite {suite} has no baseline run in {runs[0]}")
                continue
            folder_a = suites[0][suite]
            rep_a, rep_b = read_report(folder_a), read_report(folder_b)
            va, vb = VIEWS[suite](folder_a, rep_a), VIEWS[suite](folder_b, rep_b)
            fa, fb = rep_a.get("fingerprint") or {}, rep_b.get("fingerprint") or {}
            if (fa.get("data") or {}).get("key") != (fb.get("data") or {}).get("key"):
                warnings.append(f"{suite}: {labels[0]} and {labels[j]} scored different data; only items with "
                                "the same id are paired")
            if suite == "ppl" and _tokenizer_key(fa) != _tokenizer_key(fb):
                warnings.append(f"ppl: {labels[0]} and {labels[j]} have different tokenizers: per-token loss and "
                                "ppl are not comparable, bits per byte is")
            result = compare_views(va, vb, cfg)
            result.update(a=labels[0], b=labels[j], a_path=str(folder_a), b_path=str(folder_b),
                          same_model=(fa.get("model") or {}).get("key") == (fb.get("model") or {}).get("key"))
            doc["suites"].setdefault(suite, []).append(result)
            all_cases += [{**c, "a_run": labels[0], "b_run": labels[j]} for c in result["cases"]]
            kept += 1
    atomic_write_json(run.path("results.json"), doc)
    write_jsonl(run.path("cases.jsonl"), all_cases)
    headline = {}
    for suite, key in (("mcq", ("(all)", "acc")), ("ppl", ("(all)", "bits_per_byte")), ("gen", ("(all)", "rougeL")),
                       ("judge", ("(all)", "usability"))):
        for res in doc["suites"].get(suite, [])[:1]:
            row = next((r for r in res["rows"] if (r["group"], r["metric"]) == key), None)
            if row and row["delta"] is not None:
                headline[f"{suite}_{key[1]}_delta"] = round(row["delta"], 4)
    report = run.finish({"suite": "compare", "runs": doc["runs"],
                         "counts": counts(n_in, kept, filtered={"no baseline": not_in_base}, unit="suites"),
                         "summary": headline, "headline": [f"summary.{k}" for k in headline],
                         "warnings": warnings})
    _write_html(run.path("index.html"), report, doc)
    return report


def _tokenizer_key(fp: dict) -> str | None:
    files = ((fp.get("model") or {}).get("files") or {})
    tok = files.get("tokenizer.json") or files.get("tokenizer.model")
    return tok and tok.get("xxh3")


def _write_html(path, report: dict, doc: dict) -> None:
    from danlu.eval.html import Raw, esc, pre, table, write_page

    sections = [("Runs", table(["", "name", "path"], [["baseline" if i == 0 else f"run {i}", r["name"], r["path"]]
                                                     for i, r in enumerate(doc["runs"])]))]
    lower_better = {"bits_per_byte", "bits_per_char", "loss", "ppl"}
    for suite, results in doc["suites"].items():
        for res in results:
            rows = []
            for r in res["rows"]:
                d = r["delta"]
                good = d is not None and d != 0 and ((d < 0) == (r["metric"] in lower_better))
                cls = "" if not d else ("up" if good else "down")
                ci = r.get("ci")
                hint = []
                if ci:
                    hint.append(f"[{ci[0]:+.4f}, {ci[1]:+.4f}]")
                if "mcnemar_p" in r:
                    hint.append(f"McNemar p={r['mcnemar_p']:.3g} (+{r['better']}/-{r['worse']})")
                rows.append([r["group"], r["metric"], r["a"], r["b"], (d, cls) if d is not None else "",
                             " ".join(hint), "yes" if r.get("significant") else ""])
            sections.append((f"{suite}: {res['b']} vs {res['a']}",
                             f"<p class='muted'>{res['paired_items']} items paired; {res['only_a']} only in "
                             f"{esc(res['a'])}, {res['only_b']} only in {esc(res['b'])}</p>"
                             + table(["group", "metric", res["a"], res["b"], "delta", "interval / test",
                                      "significant"], rows)))
            for direction in ("better", "worse"):
                cs = [c for c in res["cases"] if c["direction"] == direction][:20]
                if cs:
                    sections.append((f"{suite}: cases that got {direction} ({cs[0]['metric']})", table(
                        ["id", "group", res["a"], res["b"], "delta", f"{res['a']} shows", f"{res['b']} shows"],
                        [[c["id"], ", ".join(c["groups"]), c["a"], c["b"], c["delta"],
                          Raw(pre(json.dumps(c["a_show"], ensure_ascii=False, indent=1), 600)),
                          Raw(pre(json.dumps(c["b_show"], ensure_ascii=False, indent=1), 600))] for c in cs])))
    write_page(path, "eval compare", report, sections)
