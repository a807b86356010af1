"""`judge`: an LLM judge through any OpenAI-compatible endpoint.

- pointwise: each answer is scored against its reference answer on the configured dimensions (1..scale);
  the weighted mean of the dimensions is the usability score.
- pairwise: two models' answers to the same question, judged twice with the positions swapped; a model wins
  only when both orders pick it; orders that disagree are "inconsistent" (counted as a tie). The position-bias
  rate is the share of pairs where the judge picked the same position both times (whatever was there), and
  the length-bias share is how often the decisive winner was the longer answer.
- samples > 1 asks each question that many times; the spread (mean per-item standard deviation, share of items
  whose samples disagree) is reported, since a judge can score one answer 3, 4 and 5 on three tries.

The prompts are Jinja files (prompts/pointwise.zh.jinja ...; `prompt:` replaces them), AlignBench-style: the
judge writes its reasons, then one JSON object. Calls, retries, cache and costs: danlu.eval.judge_client.
"""

from __future__ import annotations

import asyncio
import math
import statistics
from collections import Counter, defaultdict
from pathlib import Path

from danlu.eval.config import JudgeConfig
from danlu.eval.judge_client import JudgeClient, last_json_object

PROMPTS = Path(__file__).parent / "prompts"


def answers_file(path: str | Path) -> Path:
    p = Path(path)
    if p.is_dir():
        p = p / "answers.jsonl"
    if not p.exists():
        raise FileNotFoundError(f"{path}: no answers (a gen run folder with answers.jsonl, or a JSONL file)")
    return p


def question_text(rec: dict) -> str:
    """The prompt an answer replies to: `question`, or the prompt turns (`messages`) as text."""
    if isinstance(rec.get("question"), str):
        return rec["question"]
    turns = [m for m in rec.get("messages") or [] if isinstance(m, dict)]
    if len(turns) == 1:
        return str(turns[0].get("content", ""))
    return "\n\n".join(f"[{m.get('role')}] {m.get('content', '')}" for m in turns)


def load_answers(path: str | Path) -> tuple[list[dict], list[dict]]:
    """(items, rejects): items {"id", "task_type", "question", "reference", "answer"} from a gen answers file."""
    from danlu.jsonl import BadLine, read_jsonl

    items, rejects = [], []
    file = answers_file(path)
    for line, rec in read_jsonl(file):
        if isinstance(rec, BadLine):
            rejects.append(rec.as_reject("eval-judge"))
            continue
        missing = [k for k in ("id", "answer") if not isinstance(rec.get(k), str)]
        if missing or not (isinstance(rec.get("question"), str) or isinstance(rec.get("messages"), list)):
            why = f"missing or non-string {', '.join(missing)}" if missing else "no 'question' or 'messages'"
            rejects.append({"path": str(file), "line": line, "stage": "eval-judge", "reason": why})
            continue
        items.append({"id": rec["id"], "task_type": str(rec.get("task_type") or "(none)"),
                      "question": question_text(rec), "reference": str(rec.get("reference") or ""),
                      "answer": rec["answer"]})
    return items, rejects


def prompt_source(cfg: JudgeConfig) -> tuple[Path, str]:
    path = Path(cfg.prompt) if cfg.prompt else PROMPTS / f"{cfg.mode}.{cfg.language}.jinja"
    try:
        return path, path.read_text(encoding="utf-8")
    except OSError as e:
        raise FileNotFoundError(f"judge prompt {path}: {e.strerror or e}") from None


def load_template(cfg: JudgeConfig):
    import jinja2

    path, source = prompt_source(cfg)
    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    try:
        return env.from_string(source)
    except jinja2.TemplateSyntaxError as e:
        raise ValueError(f"judge prompt {path}:{e.lineno}: {e.message}") from None


def pointwise_parser(cfg: JudgeConfig):
    names = [d.name for d in cfg.dimensions]

    def parse(text: str) -> dict[str, float]:
        obj = last_json_object(text)
        scores = {}
        for n in names:
            v = obj.get(n)
            if isinstance(v, str):
                try:
                    v = float(v)
                except ValueError:
                    pass
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not 1 <= v <= cfg.scale:
                raise ValueError(f"dimension {n!r}: expected a number 1..{cfg.scale}, got {obj.get(n)!r}")
            scores[n] = float(v)
        return scores

    return parse


def pairwise_parse(text: str) -> str:
    w = str(last_json_object(text).get("winner", "")).strip().lower()
    if w in ("1", "2", "tie"):
        return w
    raise ValueError(f"'winner' must be \"1\", \"2\" or \"tie\", got {w!r}")


def usability(scores: dict[str, float], cfg: JudgeConfig) -> float:
    weights = {d.name: d.weight for d in cfg.dimensions}
    return sum(weights[k] * v for k, v in scores.items()) / sum(weights.values())


def _spread(values: list[float]) -> float:
    return statistics.pstdev(values) if len(values) > 1 else 0.0


async def _pointwise(cfg: JudgeConfig, items: list[dict], client: JudgeClient, progress) -> list[dict]:
    tpl, parse = load_template(cfg), pointwise_parser(cfg)
    example = "{" + ", ".join(f'"{d.name}": {max(1, cfg.scale * 7 // 10)}' for d in cfg.dimensions) + "}"

    async def one(item: dict) -> dict:
        prompt = tpl.render(question=item["question"], reference=item["reference"], answer=item["answer"],
                            dimensions=cfg.dimensions, scale=cfg.scale, example=example)
        msgs = [{"role": "user", "content": prompt}]
        replies = await asyncio.gather(*(client.ask(msgs, parse, s) for s in range(cfg.samples)))
        progress()
        ok = [r.parsed for r in replies if r.parsed is not None]
        res = {**{k: item[k] for k in ("id", "task_type")}, "samples": [
            {"scores": r.parsed, "usability": usability(r.parsed, cfg) if r.parsed else None, "error": r.error,
             "cached": r.cached, "reply": r.text} for r in replies]}
        if ok:
            res["scores"] = {d.name: statistics.fmean(s[d.name] for s in ok) for d in cfg.dimensions}
            us = [usability(s, cfg) for s in ok]
            res["usability"] = statistics.fmean(us)
            res["spread"] = _spread(us)
        return res

    return await asyncio.gather(*(one(it) for it in items))


def _order_verdict(verdicts: list[str]) -> str | None:
    """The majority of one order's samples ("1", "2", "tie"); a split vote is a tie."""
    if not verdicts:
        return None
    top = Counter(verdicts).most_common()
    return top[0][0] if len(top) == 1 or top[0][1] > top[1][1] else "tie"


async def _pairwise(cfg: JudgeConfig, pairs: list[tuple[dict, dict]], client: JudgeClient, progress) -> list[dict]:
    tpl = load_template(cfg)

    async def order(item: dict, first: str, second: str) -> list:
        prompt = tpl.render(question=item["question"], reference=item["reference"], answer_1=first, answer_2=second)
        msgs = [{"role": "user", "content": prompt}]
        return await asyncio.gather(*(client.ask(msgs, pairwise_parse, s) for s in range(cfg.samples)))

    async def one(a: dict, b: dict) -> dict:
        ab, ba = await asyncio.gather(order(a, a["answer"], b["answer"]), order(a, b["answer"], a["answer"]))
        progress()
        v_ab = _order_verdict([r.parsed for r in ab if r.parsed is not None])
        v_ba = _order_verdict([r.parsed for r in ba if r.parsed is not None])
        res = {"id": a["id"], "task_type": a["task_type"], "order_ab": v_ab, "order_ba": v_ba,
               "len_a": len(a["answer"]), "len_b": len(b["answer"]),
               "samples": {"ab": [{"verdict": r.parsed, "error": r.error, "cached": r.cached, "reply": r.text}
                                  for r in ab],
                           "ba": [{"verdict": r.parsed, "error": r.error, "cached": r.cached, "reply": r.text}
                                  for r in ba]}}
        if v_ab is None or v_ba is None:
            return res
        as_model_ab = {"1": "A", "2": "B", "tie": "tie"}[v_ab]
        as_model_ba = {"1": "B", "2": "A", "tie": "tie"}[v_ba]  # in the swapped order position 1 holds B
        res["outcome"] = as_model_ab if as_model_ab == as_model_ba else "inconsistent"
        res["position_biased"] = v_ab == v_ba and v_ab != "tie"  # same position both times: not the content
        return res

    return await asyncio.gather(*(one(a, b) for a, b in pairs))


def _by_task_type(results: list[dict], judged: str) -> dict[str, list[dict]]:
    """The results that carry `judged` per task_type, then all of them as "(all)" (last)."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        if judged in r:
            groups[r["task_type"]].append(r)
            groups["(all)"].append(r)
    return {tt: groups[tt] for tt in sorted(groups, key=lambda k: (k == "(all)", k))}


def summarize_pointwise(results: list[dict], cfg: JudgeConfig) -> dict:
    out = {}
    for tt, rows in _by_task_type(results, "usability").items():
        multi = [r for r in rows if sum(s["scores"] is not None for s in r["samples"]) > 1]
        out[tt] = {"items": len(rows), "usability": statistics.fmean(r["usability"] for r in rows),
                   **{d.name: statistics.fmean(r["scores"][d.name] for r in rows) for d in cfg.dimensions},
                   "spread": statistics.fmean(r["spread"] for r in multi) if multi else None,
                   "disagreeing_share": (sum(r["spread"] > 0 for r in multi) / len(multi)) if multi else None}
    return out


def summarize_pairwise(results: list[dict]) -> dict:
    out = {}
    for tt, rows in _by_task_type(results, "outcome").items():
        c = Counter(r["outcome"] for r in rows)
        decisive = [r for r in rows if r["outcome"] in ("A", "B") and r["len_a"] != r["len_b"]]
        longer_won = sum((r["outcome"] == "A") == (r["len_a"] > r["len_b"]) for r in decisive)
        n = len(rows)
        out[tt] = {"pairs": n, "wins_a": c["A"], "wins_b": c["B"], "ties": c["tie"], "inconsistent": c["inconsistent"],
                   "win_rate_a": (c["A"] + 0.5 * (c["tie"] + c["inconsistent"])) / n,
                   "position_bias_rate": sum(r["position_biased"] for r in rows) / n,
                   "longer_answer_won_share": longer_won / len(decisive) if decisive else None}
    return out


def run_judge(out: str | Path, cfg: JudgeConfig, progress: bool = True) -> dict:
    """Judge a gen run's answers (pointwise) or two runs' answers (pairwise) into the run folder `out`:
    results.json, judgments.jsonl (every reply, parsed or not), rejects.jsonl, index.html."""
    from tqdm import tqdm

    from danlu.eval.fingerprint import data_fingerprint, eval_fingerprint
    from danlu.jsonl import JsonlWriter, write_jsonl
    from danlu.runs import atomic_write_json, counts, start_run

    run = start_run(out, "eval-judge", cfg)
    items, rejects = load_answers(cfg.answers)
    sources = [answers_file(cfg.answers)]
    filtered: Counter = Counter()
    pairs: list[tuple[dict, dict]] = []
    if cfg.mode == "pairwise":
        other, other_rejects = load_answers(cfg.against)
        sources.append(answers_file(cfg.against))
        rejects += other_rejects
        by_id = {b["id"]: b for b in other}
        pairs = [(a, by_id[a["id"]]) for a in items if a["id"] in by_id]
        filtered["no answer from the other model"] = len(items) - len(pairs)
    n_in = len(items) + sum(1 for r in rejects if r.get("path") == str(sources[0]))
    work = pairs if cfg.mode == "pairwise" else items
    if cfg.max_items and len(work) > cfg.max_items:
        filtered["max_items"] = len(work) - cfg.max_items
        work = work[: cfg.max_items]
    fp = eval_fingerprint(None, data_fingerprint(sources),
                          {"judge": cfg.model_dump(mode="json", exclude={"concurrency", "cache", "timeout_s",
                                                                          "answers", "against"}),
                           "prompt": prompt_source(cfg)[1]})

    bar = tqdm(total=len(work), desc=f"judge {cfg.mode}", disable=not progress)

    async def main() -> tuple[list[dict], object]:
        client = JudgeClient(cfg)
        try:
            if cfg.mode == "pairwise":
                res = await _pairwise(cfg, work, client, lambda: bar.update(1))
            else:
                res = await _pointwise(cfg, work, client, lambda: bar.update(1))
            return res, client.usage
        finally:
            await client.aclose()

    results, usage = asyncio.run(main())
    bar.close()
    judged = [r for r in results if ("outcome" in r if cfg.mode == "pairwise" else "usability" in r)]
    summary = summarize_pairwise(results) if cfg.mode == "pairwise" else summarize_pointwise(results, cfg)
    write_jsonl(run.path("judgments.jsonl"), results)
    with JsonlWriter(run.path("rejects.jsonl")) as w:
        for r in rejects:
            w.write(r)
        for r in results:
            if r not in judged:
                w.write({"id": r["id"], "stage": "eval-judge", "reason": "judge failed",
                         "errors": _errors(r)})
    u = usage.as_dict(cfg)
    doc = {"suite": "judge", "mode": cfg.mode, "judge_model": cfg.model, "scale": cfg.scale,
           "samples": cfg.samples, "dimensions": [d.model_dump() for d in cfg.dimensions],
           "by_task_type": summary, "usage": u}
    atomic_write_json(run.path("results.json"), doc)
    allrow = summary.get("(all)", {})
    if cfg.mode == "pairwise":
        head = {"win_rate_a": _r(allrow.get("win_rate_a")), "position_bias_rate": _r(allrow.get("position_bias_rate"))}
    else:
        head = {"usability": _r(allrow.get("usability"))}
    head.update({"calls": u["calls"], "cached": u["cached"], "failures": u["failures"], "cost": u["cost"]})
    warnings = []
    if usage.failures:
        warnings.append(f"{usage.failures} judge call(s) failed after retries ({usage.errors}); see judgments.jsonl")
    if cfg.samples > 1 and cfg.temperature == 0:
        warnings.append("samples > 1 at temperature 0: a deterministic judge gives the same reply each time")
    report = run.finish({
        "suite": "judge", "model": cfg.model, "fingerprint": fp,
        "counts": counts(n_in, len(judged), filtered=filtered,
                         rejected={"judge failed": len(work) - len(judged),
                                   **Counter(_reject_key(r) for r in rejects if r.get("path") == str(sources[0]))},
                         unit="samples"),
        "summary": head, "headline": [f"summary.{k}" for k in head], "results": allrow, "usage": u,
        "warnings": warnings})
    _write_html(run.path("index.html"), report, doc, results)
    return report


def _r(x):
    return None if x is None or (isinstance(x, float) and math.isnan(x)) else round(x, 4)


def _reject_key(r: dict) -> str:
    from danlu.runs import reason_key

    return reason_key(str(r.get("reason", "bad line")))


def _errors(r: dict) -> list[str]:
    s = r.get("samples")
    rows = s["ab"] + s["ba"] if isinstance(s, dict) else s
    return [x["error"] for x in rows if x.get("error")]


def _write_html(path, report: dict, doc: dict, results: list[dict]) -> None:
    from danlu.eval.html import Raw, esc, pre, table, write_page

    s = doc["by_task_type"]
    if doc["mode"] == "pairwise":
        cols = ["pairs", "wins_a", "wins_b", "ties", "inconsistent", "win_rate_a", "position_bias_rate",
                "longer_answer_won_share"]
    else:
        cols = ["items", "usability", *(d["name"] for d in doc["dimensions"]), "spread", "disagreeing_share"]
    sections = [("Per task_type", table(["task_type", *cols], [[k, *(v.get(c) for c in cols)] for k, v in s.items()])),
                ("Usage", table(list(doc["usage"]), [[str(v) if isinstance(v, dict) else v
                                                      for v in doc["usage"].values()]]))]
    if doc["mode"] == "pointwise":
        low = sorted((r for r in results if "usability" in r), key=lambda r: r["usability"])[:20]
        sections.append(("Lowest-scored answers", table(["id", "task_type", "usability", "judge's reply"], [
            [r["id"], r["task_type"], r["usability"],
             Raw(pre(next((x["reply"] for x in r["samples"] if x["reply"]), "") or ""))] for r in low])))
    sections.append(("Setup", f"<p>judge model {esc(doc['judge_model'])}, scale 1..{doc['scale']}, "
                              f"{doc['samples']} sample(s) per item</p>"))
    write_page(path, f"judge ({doc['mode']})", report, sections)
