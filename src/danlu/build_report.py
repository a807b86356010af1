"""`OUT/report.html`: one self-contained page that reviews a whole build, read from its run folders only.

Sections: the steps (ran / skipped), data per source (files, records, what cleaning removed and why, in
records and characters, tokens), the SFT task_type mix, the pretraining mix plan with its warnings, loss and
held-out curves of every training stage, evaluation results per task_type / subject / source side by side for
every model evaluated, the comparison with the previous build with the cases that changed most, and a model
card (lineage chain, configuration, versions).

Plots are inline SVG written by matplotlib; the page has no scripts and loads nothing from anywhere (tested in
a headless browser: it renders, the plots are drawn, no request leaves the page).
"""

from __future__ import annotations

import html
import io
import json
from pathlib import Path

from danlu.runs import atomic_write_text, read_report

esc = html.escape


def _json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _metrics(folder: Path) -> list[dict]:
    rows = []
    try:
        lines = (folder / "metrics.jsonl").read_text(encoding="utf-8").splitlines()
    except OSError:
        return rows
    for line in lines:
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def _svg(fig) -> str:
    buf = io.StringIO()
    fig.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg"):]  # inline: drop the XML prolog and doctype


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return esc(str(v))


def _cell(v) -> str:
    """A table cell: numbers right-aligned (class n), text left-aligned."""
    number = isinstance(v, (int, float)) and not isinstance(v, bool)
    return f"<td class='n'>{_fmt(v)}</td>" if number else f"<td>{_fmt(v)}</td>"


def _table(head: list[str], rows: list[list]) -> str:
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(_cell(c) for c in r) + "</tr>" for r in rows)
    return f"<table><tr>{th}</tr>{body}</table>"


def _counts_row(name: str, report: dict) -> list:
    c = report["counts"]
    row = [name, c["unit"], c["in"], c["kept"], sum(c["filtered"].values()), sum(c["rejected"].values())]
    ch = report.get("chars")
    if ch:
        removed = ch["in"] - ch["kept"]
        row += [ch["in"], f"{removed:,} ({removed / ch['in']:.2%})" if ch["in"] else "0"]
    else:
        row += ["", ""]
    return row


def _reasons(report: dict) -> str:
    c = report["counts"]
    parts = [f"{k}: {v:,}" for k, v in sorted({**c["filtered"], **c["rejected"]}.items(), key=lambda kv: -kv[1])]
    return "; ".join(parts[:8])


# --- sections -----------------------------------------------------------------------------------------------


def _steps_section(steps: list[dict]) -> str:
    rows = [[s["step"], s["status"], s.get("elapsed_s", ""), s["out"]] for s in steps]
    return "<h2>Steps</h2>" + _table(["step", "status", "seconds", "folder"], rows)


def _data_section(reports: dict[str, dict]) -> str:
    rows, reasons = [], []
    for name, r in reports.items():
        if r.get("stage") in ("ingest", "clean", "chunk", "tokenize", "sft-data", "pref-data", "stats"):
            rows.append(_counts_row(name, r))
            if _reasons(r):
                reasons.append([name, _reasons(r)])
    out = ["<h2>Data</h2>", _table(["step", "unit", "in", "kept", "filtered", "rejected", "characters in",
                                    "characters removed"], rows)]
    if reasons:
        out.append("<h3>Why records were filtered or rejected</h3>" + _table(["step", "reasons"], reasons))
    tokens = [[n, r.get("tokens", 0), r.get("vocab_size", ""), r.get("bytes_per_token", "")]
              for n, r in reports.items() if r.get("stage") == "tokenize"]
    if tokens:
        out.append("<h3>Token stores</h3>" + _table(["step", "tokens", "vocabulary", "bytes per token"], tokens))
    for n, r in reports.items():
        if r.get("stage") == "sft-data" and r.get("per_task_type"):
            rows = [[t, s["records"], f"{s['share']:.1%}", s["answers"].get("p50", ""),
                     s.get("short_answers", {}).get("count", 0)] for t, s in r["per_task_type"].items()]
            out.append(f"<h3>task_type mix ({esc(n)})</h3>" + _table(
                ["task_type", "records", "share", "median answer length", "very short answers"], rows))
    return "\n".join(out)


def _mix_section(reports: dict[str, dict]) -> str:
    out = []
    for n, r in reports.items():
        if r.get("stage") == "train-pt" and r.get("mix"):
            mix = r["mix"]
            rows = [[x["name"], x["tokens"], f"{x['weight']:.1%}", x["train_tokens"], round(x["epochs"], 2),
                     "yes" if x["domain"] else ""] for x in mix["rows"]]
            out.append(f"<h2>Pretraining data mix ({esc(n)})</h2>"
                       + _table(["source", "tokens", "weight", "train tokens", "epochs", "domain"], rows)
                       + "".join(f"<p class='warn'>warning: {esc(w)}</p>" for w in mix.get("warnings", [])))
    return "\n".join(out)


def _curves(name: str, folder: Path) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _metrics(folder)
    train = [(m["step"], m["loss"]) for m in rows if "loss" in m and "event" not in m]
    evals = [m for m in rows if m.get("event") == "eval"]
    if not train:
        return ""
    fig, axes = plt.subplots(1, 2 if evals else 1, figsize=(11 if evals else 6, 3.2), squeeze=False)
    ax = axes[0][0]
    ax.plot([s for s, _ in train], [v for _, v in train], lw=1.2)
    ax.set_title(f"{name}: training loss")
    ax.set_xlabel("step")
    if evals:
        ax = axes[0][1]
        keys = sorted({k for m in evals for k in m if k.endswith("/loss")})
        for k in keys:
            pts = [(m["step"], m[k]) for m in evals if k in m]
            ax.plot([s for s, _ in pts], [v for _, v in pts], marker="o", ms=3, lw=1.2, label=k[len("eval/"):])
        ax.set_title(f"{name}: held-out loss")
        ax.set_xlabel("step")
        ax.legend(fontsize=7)
    svg = _svg(fig)
    plt.close(fig)
    return f"<div class='plot'>{svg}</div>"


def _training_section(reports: dict[str, dict], folders: dict[str, Path]) -> str:
    out = []
    for n, r in reports.items():
        if str(r.get("stage", "")).startswith("train-"):
            held = r.get("heldout") or {}
            out.append(f"<h3>{esc(n)} ({esc(r['stage'])})</h3><p>{r.get('steps', 0):,} steps, final loss "
                       f"{_fmt(r.get('final_loss'))}, {_fmt(r.get('tokens_per_s'))} tokens/s, precision "
                       f"{esc(str(r.get('precision')))}; held-out: "
                       + ", ".join(f"{esc(k)} {_fmt(v)}" for k, v in held.items() if k.endswith("loss")) + "</p>"
                       + "".join(f"<p class='warn'>warning: {esc(w)}</p>" for w in r.get("warnings", []))
                       + _curves(n, folders[n]))
    return ("<h2>Training</h2>" + "\n".join(out)) if out else ""


def _eval_section(reports: dict[str, dict]) -> str:
    """Per suite, one table with a column per evaluated model (groups x metrics)."""
    by_suite: dict[str, dict[str, dict]] = {}
    for n, r in reports.items():
        if str(r.get("stage", "")).startswith("eval-") and r.get("suite") != "compare" and r.get("results"):
            by_suite.setdefault(r["suite"], {})[n.split("/")[0]] = r["results"]
    out = []
    for suite, runs in by_suite.items():
        names = list(runs)
        keys = []
        for res in runs.values():
            for group, metrics in res.items():
                if isinstance(metrics, dict):
                    for metric, v in metrics.items():
                        if isinstance(v, (int, float)) and not isinstance(v, bool) and (group, metric) not in keys:
                            keys.append((group, metric))
        rows = [[g, m] + [runs[n].get(g, {}).get(m, "") if isinstance(runs[n].get(g), dict) else "" for n in names]
                for g, m in keys]
        out.append(f"<h3>{esc(suite)}</h3>" + _table(["group", "metric", *names], rows))
    return ("<h2>Evaluation</h2>" + "\n".join(out)) if out else ""


def _interval(row: dict) -> str:
    ci = row.get("ci")
    return f"[{ci[0]:+.3g}, {ci[1]:+.3g}]" if ci else ""


def _compare_section(reports: dict[str, dict], folders: dict[str, Path], max_cases: int = 10) -> str:
    """Each comparison (a model vs the one it was trained from, a model vs the previous build): its table of
    deltas with paired bootstrap intervals and McNemar's p, and the cases that moved most, with their texts."""
    out = []
    for n, r in reports.items():
        if r.get("suite") != "compare":
            continue
        doc = _json(folders[n] / "results.json") or {}
        names = " vs ".join(x["name"] for x in doc.get("runs", []))
        for suite, results in doc.get("suites", {}).items():
            for res in results:
                rows = [[x["group"], x["metric"], x.get("a"), x.get("b"), x.get("delta"), _interval(x),
                         x.get("mcnemar_p", ""), "yes" if x.get("significant") else ""] for x in res.get("rows", [])]
                out.append(f"<h3>{esc(n)}: {esc(suite)} ({esc(names)})</h3>"
                           + _table(["group", "metric", "before", "after", "delta", "95% interval", "McNemar p",
                                     "significant"], rows))
        cases = []
        try:
            cases = [json.loads(x) for x in (folders[n] / "cases.jsonl").read_text(encoding="utf-8").splitlines()]
        except OSError:
            pass
        if cases:
            def shown(c: dict, side: str, key: str) -> str:
                return str((c.get(f"{side}_show") or {}).get(key) or "")[:160]

            rows = [[c.get("suite", ""), c.get("metric", ""), c.get("a", ""), c.get("b", ""),
                     shown(c, "b", "prompt") or shown(c, "a", "prompt"), shown(c, "b", "reference"),
                     shown(c, "a", "answer"), shown(c, "b", "answer")] for c in cases[:max_cases]]
            out.append(f"<h3>{esc(n)}: the cases that changed most</h3>"
                       + _table(["suite", "metric", "before", "after", "prompt", "reference", "before: answer",
                                 "after: answer"], rows))
        out += [f"<p class='warn'>warning: {esc(w)}</p>" for w in r.get("warnings", [])]
    return ("<h2>Comparisons</h2>" + "\n".join(out)) if out else ""


def _answers_section(reports: dict[str, dict], folders: dict[str, Path], per_task: int = 2) -> str:
    """What each evaluated model answered to the same test prompts (a few per task_type): the chat format
    a fine-tuned model learned shows here, next to the reference."""
    runs = {n.split("/")[0]: folders[n] / "answers.jsonl" for n, r in reports.items()
            if r.get("stage") == "eval-gen" and (folders[n] / "answers.jsonl").is_file()}
    if not runs:
        return ""
    answers = {name: {a["id"]: a for a in map(json.loads, path.read_text(encoding="utf-8").splitlines())}
               for name, path in runs.items()}
    first = next(iter(answers.values()))
    picked, seen = [], {}
    for rid, a in first.items():
        if seen.get(a["task_type"], 0) < per_task and all(rid in other for other in answers.values()):
            seen[a["task_type"]] = seen.get(a["task_type"], 0) + 1
            picked.append(rid)
    rows = [[first[rid]["task_type"], first[rid]["messages"][-1]["content"][:160], first[rid]["reference"][:160],
             *[answers[name][rid]["answer"][:160] for name in answers]] for rid in picked]
    return ("<h2>Sample answers</h2>"
            + _table(["task_type", "prompt", "reference", *[f"{name}: answer" for name in answers]], rows))


def _model_card(reports: dict[str, dict], folders: dict[str, Path]) -> str:
    last = [n for n, r in reports.items() if str(r.get("stage", "")).startswith("train-")]
    if not last:
        return ""
    model_dir = Path(reports[last[-1]].get("model", ""))
    lineage = _json(model_dir / "lineage.json") or {}
    chain, node = [], lineage
    while node:
        chain.append([node.get("stage", ""), node.get("steps", ""), node.get("tokens", ""),
                      (node.get("base_model") or {}).get("path") or json.dumps((node.get("base_model") or {}).get("dims", ""))])
        node = (node.get("base_model") or {}).get("lineage")
    versions = reports[last[-1]].get("versions", {})
    return ("<h2>Model card</h2>"
            f"<p>model: <code>{esc(str(model_dir))}</code></p>"
            + _table(["stage", "steps", "tokens", "from"], chain)
            + "<h3>Versions</h3>" + _table(["package", "version"], [[k, v] for k, v in versions.items()])
            + "<h3>Configuration of the last stage</h3><pre>"
            + esc(json.dumps(lineage.get("config", {}), ensure_ascii=False, indent=1)) + "</pre>")


# system fonts only (no web fonts: the page makes no request); CJK families first where the machine has them
STYLE = ("body{font-family:'Noto Sans CJK SC','Source Han Sans SC','WenQuanYi Zen Hei','PingFang SC',"
         "'Microsoft YaHei',sans-serif;max-width:1200px;margin:2em auto;color:#222}"
         "table{border-collapse:collapse;margin:0.5em 0 1em}td,th{border:1px solid #ccc;padding:2px 8px;"
         "text-align:left;font-size:13px;vertical-align:top}td.n{text-align:right}"
         ".warn{color:#a50}.plot svg{max-width:100%;height:auto}pre{font-size:11px;background:#f6f6f6;"
         "padding:8px;overflow:auto;max-height:400px}")


def write_report(out: str | Path, steps: list[dict], title: str = "danlu build") -> Path:
    """Write OUT/report.html from the run folders of `steps` ([{"step", "status", "out", ...}])."""
    out = Path(out)
    reports, folders = {}, {}
    for s in steps:
        folder = Path(s["out"])
        r = read_report(folder)
        if r is None:
            continue
        reports[s["step"]] = r
        folders[s["step"]] = folder
        for suite, sub in (r.get("suites") or {}).items():  # an evaluation: its suites' run folders
            sr = read_report(Path(sub))
            if sr is not None:
                name = s["step"].removeprefix("eval ")
                reports[f"{name}/{suite}"], folders[f"{name}/{suite}"] = sr, Path(sub)
    body = [f"<h1>{esc(title)}</h1>", _steps_section(steps), _data_section(reports), _mix_section(reports),
            _training_section(reports, folders), _eval_section(reports), _answers_section(reports, folders),
            _compare_section(reports, folders),
            _model_card(reports, folders)]
    page = ("<!doctype html><html><head><meta charset='utf-8'><title>" + esc(title) + "</title><style>" + STYLE
            + "</style></head><body>" + "\n".join(b for b in body if b) + "</body></html>")
    atomic_write_text(out / "report.html", page)
    return out / "report.html"
