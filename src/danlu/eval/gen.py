"""`gen`: answers for SFT-format test sets, scored per task_type (danlu.eval.metrics says how).

Each record's turns before its last assistant turn are the prompt, rendered with the chat template saved with
the model (danlu.tokenizer.chat; `template` overrides it); the last assistant turn is the reference. Answers
and per-sample scores go to answers.jsonl, so the cases that got better or worse can be read (compare).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from danlu.eval.config import GenConfig, Runtime


def sft_prompts(files: list[Path], max_samples: int | None = None):
    """(samples, rejects, filtered): samples {"id", "task_type", "source", "messages" (prompt turns),
    "reference", "tools"}; a record without a final assistant answer is rejected, naming file and line."""
    from danlu.records import read_records, record_id
    from danlu.runs import reason_key

    samples, rejects, filtered = [], [], Counter()
    for path, line, rec, _ in read_records(files, kind="sft"):
        if not isinstance(rec, dict):
            rejects.append(rec.as_reject("eval-gen"))
            continue
        msgs = rec["messages"]
        if msgs[-1]["role"] != "assistant" or not any(m["role"] == "user" for m in msgs[:-1]):
            rejects.append({"path": str(path), "line": line, "stage": "eval-gen",
                            "reason": "needs user turn(s) and a final assistant answer (the reference)"})
            continue
        if max_samples and len(samples) >= max_samples:
            filtered["max_samples"] += 1
            continue
        samples.append({"id": record_id(rec, path, line), "task_type": str(rec.get("task_type") or "(none)"),
                        "source": rec.get("source"), "messages": msgs[:-1], "reference": msgs[-1]["content"],
                        "tools": rec.get("tools")})
    return samples, rejects, filtered, Counter(reason_key(r["reason"]) for r in rejects)


def render_prompts(tokenizer, samples: list[dict], template: str | None, max_length: int, max_new: int):
    """Token ids of each prompt (None when prompt + answer budget exceed the model's context)."""
    from danlu.tokenizer.chat import render_prompt

    out = []
    for s in samples:
        ids = render_prompt(tokenizer, s["messages"], tools=s.get("tools"), template=template)
        out.append(ids if len(ids) + max_new <= max_length else None)
    return out


def read_template(path: str | None) -> str | None:
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as e:
        raise FileNotFoundError(f"chat template {path}: {e.strerror or e}") from None


def run_gen(model_dir: str | Path, out: str | Path, cfg: GenConfig, runtime: Runtime = Runtime(),
            progress: bool = True, loaded=None) -> dict:
    """Generate and score into the run folder `out`: answers.jsonl (prompt, reference, answer, scores),
    results.json (per task_type), rejects.jsonl, index.html; returns the report."""
    from danlu.eval.fingerprint import data_fingerprint, eval_fingerprint, model_fingerprint
    from danlu.eval.generate import decode, generate
    from danlu.eval.metrics import score_samples
    from danlu.eval.model import load_model
    from danlu.jsonl import JsonlWriter, jsonl_files, write_jsonl
    from danlu.runs import atomic_write_json, counts, start_run

    run = start_run(out, "eval-gen", cfg)
    files = jsonl_files(cfg.data)
    template = read_template(cfg.template)
    fp = eval_fingerprint(model_fingerprint(model_dir), data_fingerprint(files),
                          {"gen": cfg.model_dump(mode="json", exclude={"data"}), "template": template})
    samples, rejects, filtered, rejected = sft_prompts(files, cfg.max_samples)
    lm = loaded or load_model(model_dir, runtime)
    prompts = render_prompts(lm.tokenizer, samples, template, lm.max_length, cfg.generation.max_new_tokens)
    too_long = [s for s, p in zip(samples, prompts) if p is None]
    filtered["prompt longer than the model's context"] = len(too_long)
    kept = [(s, p) for s, p in zip(samples, prompts) if p is not None]
    answers = generate(lm, [p for _, p in kept], cfg.generation, progress, desc="gen")
    scored = [{**s, "answer": decode(lm.tokenizer, a), "answer_tokens": len(a), "prompt_tokens": len(p)}
              for (s, p), a in zip(kept, answers)]
    table, per_sample = score_samples(scored, cfg.label_task_types, cfg.label_markers, cfg.rouge_tokens)
    with JsonlWriter(run.path("answers.jsonl")) as w:
        for s, sc in zip(scored, per_sample):
            w.write({k: s[k] for k in ("id", "task_type", "source", "messages", "reference", "answer",
                                       "prompt_tokens", "answer_tokens")} | {"scores": sc})
    write_jsonl(run.path("rejects.jsonl"), rejects + [
        {"id": s["id"], "stage": "eval-gen", "reason": "prompt longer than the model's context"} for s in too_long])
    doc = {"suite": "gen", "generation": cfg.generation.model_dump(), "rouge_tokens": cfg.rouge_tokens,
           "template": "given" if template else "the model's own", "by_task_type": table}
    atomic_write_json(run.path("results.json"), doc)
    allrow = table.get("(all)", {})
    report = run.finish({
        "suite": "gen", "model": str(model_dir), "fingerprint": fp,
        "counts": counts(len(samples) + filtered["max_samples"] + len(rejects), len(scored), filtered=filtered,
                         rejected=rejected, unit="samples"),
        "summary": (head := {k: round(allrow[k], 3) for k in ("bleu", "rougeL", "exact_match") if k in allrow}),
        "headline": [f"summary.{k}" for k in head],
        "results": table})
    write_gen_html(run.path("index.html"), report, doc, scored, per_sample)
    return report


def write_gen_html(path, report: dict, doc: dict, scored: list[dict], per_sample: list[dict]) -> None:
    from danlu.eval.html import Raw, pre, table, write_page

    cols = ["samples", "bleu", "bleu_tokenize", "rouge1", "rouge2", "rougeL", "exact_match", "label_accuracy"]
    worst = sorted(range(len(scored)), key=lambda i: per_sample[i]["rougeL"])[:20]
    sections = [
        ("Per task_type", table(["task_type", *cols], [[k, *(v.get(c) for c in cols)]
                                                      for k, v in doc["by_task_type"].items()])
         + "<p class='muted'>BLEU: sacrebleu corpus BLEU (zh tokenisation when references contain Chinese); "
           "ROUGE F1 x 100 on " + doc["rouge_tokens"] + " segmentation; exact match and labels after "
           "normalisation (NFKC, lower case, spaces collapsed, surrounding punctuation stripped).</p>"),
        ("Lowest ROUGE-L samples", table(["id", "task_type", "rougeL", "reference", "answer"], [
            [scored[i]["id"], scored[i]["task_type"], per_sample[i]["rougeL"], Raw(pre(scored[i]["reference"], 500)),
             Raw(pre(scored[i]["answer"], 500))] for i in worst])),
    ]
    write_page(path, f"gen: {report['model']}", report, sections)
