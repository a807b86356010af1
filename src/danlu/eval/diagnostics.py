"""`diagnostics`: the checks practitioners run by hand after SFT.

- recall: the model answers a sample of its own training prompts, scored against the training answers (the
  gen metrics). Low recall = under-fitting (it cannot answer even what it was taught); high recall but low
  test scores (gen) = a failure to generalise.
- hallucination: for knowledge probes {"id", "prefix", "question", "answer"[, "aliases"]}, the base model
  continues the fact's prefix ("Debian 12 的代号是") and the SFT model answers the same fact as a question
  (through its chat template); a fact is known when the normalised answer (or an alias) appears in the output.
  The facts the base model knew and the SFT model lost are listed: narrow SFT data teaches answering in a
  style the knowledge does not back, which shows here before it shows in a benchmark.
- answer_prob: sum log P(answer | question) of each SFT record's reference answer (its text tokens after the
  rendered prompt), which moves before accuracy does; reported per task_type.
"""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter, defaultdict
from pathlib import Path

from danlu.eval.config import DiagnosticsConfig, GenerationOptions, Runtime

RECALL_UNDERFIT = 30.0  # ROUGE-L (0-100) on training prompts below which the advice calls it under-fitting


def stratified_sample(samples: list[dict], n: int, seed: int) -> list[dict]:
    """Up to n samples, shuffled with `seed`, taken round-robin over task_types (small types are not crowded
    out by big ones), returned in their original order."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(samples):
        groups[s["task_type"]].append(i)
    rng = random.Random(seed)
    for g in groups.values():
        rng.shuffle(g)
    chosen: list[int] = []
    queues = [groups[k] for k in sorted(groups)]
    while len(chosen) < n and any(queues):
        for q in queues:
            if q and len(chosen) < n:
                chosen.append(q.pop())
    return [samples[i] for i in sorted(chosen)]


def _generate_texts(lm, prompts: list[list[int]], options: GenerationOptions, progress: bool, desc: str) -> list[str]:
    from danlu.eval.generate import decode, generate

    return [decode(lm.tokenizer, a) for a in generate(lm, prompts, options, progress, desc)]


def check_recall(lm, cfg: DiagnosticsConfig, progress: bool) -> tuple[dict, list[dict], dict]:
    from danlu.eval.gen import render_prompts, sft_prompts
    from danlu.eval.metrics import score_samples
    from danlu.jsonl import jsonl_files

    rc = cfg.recall
    samples, rejects, filtered, rejected = sft_prompts(jsonl_files(rc.data))
    picked = stratified_sample(samples, rc.max_samples, rc.seed)
    filtered["not sampled"] = len(samples) - len(picked)
    prompts = render_prompts(lm.tokenizer, picked, None, lm.max_length, cfg.generation.max_new_tokens)
    filtered["prompt longer than the model's context"] = sum(p is None for p in prompts)
    kept = [(s, p) for s, p in zip(picked, prompts) if p is not None]
    texts = _generate_texts(lm, [p for _, p in kept], cfg.generation, progress, "recall")
    scored = [{**s, "answer": t} for (s, _), t in zip(kept, texts)]
    table, per = score_samples(scored, [], [])
    items = [{"check": "recall", "id": s["id"], "task_type": s["task_type"], "prompt": s["messages"][-1]["content"],
              "reference": s["reference"], "answer": s["answer"], "scores": sc} for s, sc in zip(scored, per)]
    table = {k: {m: v[m] for m in ("samples", "bleu", "rouge1", "rouge2", "rougeL", "exact_match")}
             for k, v in table.items()}
    acct = {"in": len(samples) + len(rejects), "kept": len(items), "filtered": filtered, "rejected": rejected,
            "rejects": rejects}
    return table, items, acct


def known(text: str, answers: list[str]) -> bool:
    from danlu.eval.metrics import normalize_answer

    t = normalize_answer(text)
    return any(normalize_answer(a) and normalize_answer(a) in t for a in answers)


def read_probes(files: list[Path]) -> tuple[list[dict], list[dict]]:
    from danlu.jsonl import BadLine, read_jsonl

    probes, rejects = [], []
    for path in files:
        for line, rec in read_jsonl(path):
            if isinstance(rec, BadLine):
                rejects.append(rec.as_reject("eval-diagnostics"))
                continue
            bad = [k for k in ("prefix", "question", "answer") if not isinstance(rec.get(k), str) or not rec[k].strip()]
            aliases = rec.get("aliases", [])
            if bad or not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
                why = f"missing or empty {', '.join(bad)}" if bad else "'aliases' must be a list of strings"
                rejects.append({"path": str(path), "line": line, "stage": "eval-diagnostics", "reason": why})
                continue
            probes.append({"id": str(rec.get("id") or f"{path.name}:{line}"), "prefix": rec["prefix"],
                           "question": rec["question"], "answers": [rec["answer"], *aliases]})
    return probes, rejects


def check_hallucination(lm, cfg: DiagnosticsConfig, runtime: Runtime, progress: bool) -> tuple[dict, list, dict]:
    import gc

    from danlu.eval.model import load_model
    from danlu.jsonl import jsonl_files
    from danlu.runs import reason_key
    from danlu.tokenizer.chat import render_prompt

    hc = cfg.hallucination
    probes, rejects = read_probes(jsonl_files(hc.probes))
    opts = cfg.generation.model_copy(update={"max_new_tokens": hc.max_new_tokens, "do_sample": False})
    base = load_model(hc.base_model, runtime)
    base_prompts = [list(base.tokenizer(p["prefix"], add_special_tokens=True)["input_ids"]) for p in probes]
    base_out = _generate_texts(base, base_prompts, opts, progress, "probes (base)")
    del base
    gc.collect()
    sft_prompts = [render_prompt(lm.tokenizer, [{"role": "user", "content": p["question"]}]) for p in probes]
    sft_out = _generate_texts(lm, sft_prompts, opts, progress, "probes (sft)")
    items = []
    for p, b, s in zip(probes, base_out, sft_out):
        kb, ks = known(b, p["answers"]), known(s, p["answers"])
        items.append({"check": "hallucination", "id": p["id"], "task_type": "(all)", "prompt": p["question"],
                      "prefix": p["prefix"], "reference": p["answers"][0], "base_output": b, "answer": s,
                      "scores": {"base_known": float(kb), "known": float(ks), "lost": float(kb and not ks),
                                 "gained": float(ks and not kb)}})
    n = len(items)
    row = {"probes": n, "base_known": sum(i["scores"]["base_known"] for i in items),
           "sft_known": sum(i["scores"]["known"] for i in items), "lost": sum(i["scores"]["lost"] for i in items),
           "gained": sum(i["scores"]["gained"] for i in items)}
    row = {**{k: int(v) for k, v in row.items()},
           "lost_share_of_base_known": row["lost"] / row["base_known"] if row["base_known"] else 0.0}
    acct = {"in": n + len(rejects), "kept": n, "filtered": {},
            "rejected": Counter(reason_key(r["reason"]) for r in rejects), "rejects": rejects}
    return {"(all)": row}, items, acct


def check_answer_prob(lm, cfg: DiagnosticsConfig, progress: bool) -> tuple[dict, list, dict]:
    from danlu.eval.gen import sft_prompts
    from danlu.eval.scoring import Request, score_requests
    from danlu.jsonl import jsonl_files
    from danlu.tokenizer.chat import render_prompt

    ac = cfg.answer_prob
    samples, rejects, filtered, rejected = sft_prompts(jsonl_files(ac.data), ac.max_samples)
    reqs, kept = [], []
    for s in samples:
        ctx = render_prompt(lm.tokenizer, s["messages"], tools=s.get("tools"))
        ans = lm.tokenizer.encode(s["reference"], add_special_tokens=False)
        if not ans or len(ctx) + len(ans) > lm.max_length:
            filtered["empty answer or longer than the model's context"] += 1
            continue
        reqs.append(Request(tuple(ctx), tuple(ans)))
        kept.append(s)
    pad = lm.tokenizer.pad_token_id if lm.tokenizer.pad_token_id is not None else 0
    scores = score_requests(lm.model, reqs, batch_size=cfg.batch_size, pad_id=pad)
    items = []
    for s, sc in zip(kept, scores):
        items.append({"check": "answer_prob", "id": s["id"], "task_type": s["task_type"],
                      "prompt": s["messages"][-1]["content"], "reference": s["reference"],
                      "scores": {"answer_logprob": sc.logprob, "answer_logprob_per_token": sc.logprob / sc.tokens,
                                 "answer_prob": math.exp(sc.logprob), "tokens": sc.tokens}})
    groups: dict[str, list[dict]] = defaultdict(list)
    for it in items:
        groups[it["task_type"]].append(it)
        groups["(all)"].append(it)
    table = {g: {"samples": len(v),
                 "answer_logprob": statistics.fmean(i["scores"]["answer_logprob"] for i in v),
                 "answer_logprob_per_token": statistics.fmean(i["scores"]["answer_logprob_per_token"] for i in v),
                 "answer_prob": statistics.fmean(i["scores"]["answer_prob"] for i in v)}
             for g, v in sorted(groups.items(), key=lambda kv: (kv[0] == "(all)", kv[0]))}
    acct = {"in": len(samples) + filtered["max_samples"] + len(rejects), "kept": len(items), "filtered": filtered,
            "rejected": rejected, "rejects": rejects}
    return table, items, acct


def run_diagnostics(model_dir: str | Path, out: str | Path, cfg: DiagnosticsConfig, runtime: Runtime = Runtime(),
                    progress: bool = True, loaded=None) -> dict:
    """Run the configured checks into the run folder `out`: results.json ({"checks": {check: {group: metrics}}}),
    items.jsonl (every probe/sample with its outputs and scores), rejects.jsonl, index.html."""
    from danlu.eval.fingerprint import data_fingerprint, eval_fingerprint, model_fingerprint
    from danlu.eval.model import load_model
    from danlu.jsonl import write_jsonl
    from danlu.runs import atomic_write_json, counts, start_run

    run = start_run(out, "eval-diagnostics", cfg)
    data = [p for c in (cfg.recall, cfg.answer_prob) if c for p in c.data] + \
        (list(cfg.hallucination.probes) if cfg.hallucination else [])
    base_fp = model_fingerprint(cfg.hallucination.base_model)["key"] if cfg.hallucination else None
    fp = eval_fingerprint(model_fingerprint(model_dir), data_fingerprint(data),
                          {"diagnostics": cfg.model_dump(mode="json"), "base_model": base_fp})
    lm = loaded or load_model(model_dir, runtime)
    checks, items = {}, []
    n_in = kept = 0
    filtered: Counter = Counter()
    rejected: Counter = Counter()
    rejects: list[dict] = []
    for name, fn in (("recall", lambda: check_recall(lm, cfg, progress)),
                     ("hallucination", lambda: check_hallucination(lm, cfg, runtime, progress)),
                     ("answer_prob", lambda: check_answer_prob(lm, cfg, progress))):
        if getattr(cfg, name) is None:
            continue
        table, its, acct = fn()
        checks[name] = table
        items += its
        n_in += acct["in"]
        kept += acct["kept"]
        filtered.update({f"{name}: {k}": v for k, v in acct["filtered"].items()})
        rejected.update({f"{name}: {k}": v for k, v in acct["rejected"].items()})
        rejects += acct["rejects"]
    write_jsonl(run.path("items.jsonl"), items)
    write_jsonl(run.path("rejects.jsonl"), rejects)
    atomic_write_json(run.path("results.json"), {"suite": "diagnostics", "checks": checks})
    head, warnings, advice = {}, [], []
    if "recall" in checks and "(all)" in checks["recall"]:
        head["recall_rougeL"] = round(checks["recall"]["(all)"]["rougeL"], 2)
        if head["recall_rougeL"] < RECALL_UNDERFIT:
            advice.append(f"recall on its own training prompts is low (ROUGE-L {head['recall_rougeL']}): the model "
                          "has not learned its training data (under-fitting: more epochs, a higher learning rate, "
                          "or check the loss mask); if recall is high but gen scores are low, it fails to generalise")
    if "hallucination" in checks:
        h = checks["hallucination"]["(all)"]
        head["facts_lost"] = h["lost"]
        if h["lost"]:
            warnings.append(f"the SFT model lost {h['lost']} of the {h['base_known']} facts the base model knew "
                            "(items.jsonl, check 'hallucination', lost = 1)")
    if "answer_prob" in checks and "(all)" in checks["answer_prob"]:
        head["answer_logprob_per_token"] = round(checks["answer_prob"]["(all)"]["answer_logprob_per_token"], 4)
    report = run.finish({"suite": "diagnostics", "model": str(model_dir), "fingerprint": fp,
                         "counts": counts(n_in, kept, filtered=filtered, rejected=rejected, unit="samples"),
                         "summary": head, "headline": [f"summary.{k}" for k in head], "results": checks,
                         "warnings": warnings, "advice": advice})
    _write_html(run.path("index.html"), report, checks, items)
    return report


def _write_html(path, report: dict, checks: dict, items: list[dict]) -> None:
    from danlu.eval.html import Raw, pre, table, write_page

    sections = []
    for name, groups in checks.items():
        cols = sorted({k for row in groups.values() for k in row}, key=lambda k: (k != "samples", k))
        sections.append((name, table(["group", *cols], [[g, *(row.get(c) for c in cols)] for g, row in groups.items()])))
    lost = [i for i in items if i["check"] == "hallucination" and i["scores"]["lost"]]
    if lost:
        sections.append(("Facts the SFT model lost", table(["id", "question", "answer", "base continued", "SFT said"], [
            [i["id"], i["prompt"], i["reference"], Raw(pre(i["base_output"], 300)), Raw(pre(i["answer"], 300))]
            for i in lost])))
    write_page(path, f"diagnostics: {report['model']}", report, sections)
