"""`mcq`: C-Eval / CMMLU / MMLU-style multiple choice, k-shot, in the benchmarks' published prompt formats.

Two scores per question:
- letter (the C-Eval authors' method): the prompt lists the options and ends with the answer prefix
  ("答案："); the next-token probabilities of the letters A-D, softmaxed over the four letters, pick the
  answer. With one-token letters this is exactly lm-eval's `acc` on the same prompt with choices A-D.
- cloze (lm-eval's continuation method): the prompt shows the question without options; each option's text
  is scored as a continuation (summed log-probability) and the best one is the answer; `acc_norm` divides
  by the option's length in characters, as lm-eval does.

Answer delimiter: what goes between the answer prefix and the letter (or option text). danlu uses the
published formats' own: none for C-Eval and CMMLU ("答案：A", as their authors' prompts), a space for MMLU
("Answer: A"); lm-eval's stock ceval/cmmlu tasks put a space there ("答案： A"). `delimiter` sets it.

The k-shot prefix is shared by all of a subject's questions, so its KV cache is computed once per subject
and method (danlu.eval.scoring).
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from danlu.eval.config import McqConfig, Runtime
from danlu.eval.mcq_data import LETTERS, Question, Subject, load_mcq


@dataclass(frozen=True)
class PromptFormat:
    instruction: str  # the first line, with {name} (the subject's display name)
    question_prefix: str  # before the question text
    answer_prefix: str  # after the options (letter) or the question (cloze)
    delimiter: str  # between the answer prefix and the answer


FORMATS = {
    # C-Eval's evaluator: "以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。", the question,
    # the options, "答案："
    "ceval": PromptFormat("以下是中国关于{name}考试的单项选择题，请选出其中的正确答案。\n\n", "", "答案：", ""),
    # CMMLU's: "以下是关于{subject}的单项选择题，请直接给出正确答案的选项。", each question after "题目：", "答案是："
    "cmmlu": PromptFormat("以下是关于{name}的单项选择题，请直接给出正确答案的选项。\n\n", "题目：", "答案是：", ""),
    # Hendrycks et al.'s MMLU: "The following are multiple choice questions (with answers) about {subject}."
    "mmlu": PromptFormat("The following are multiple choice questions (with answers) about {name}.\n\n", "",
                         "Answer:", " "),
}


def prompt_format(fmt: str, delimiter: str | None = None) -> PromptFormat:
    base = FORMATS[fmt]
    return base if delimiter is None else PromptFormat(base.instruction, base.question_prefix,
                                                       base.answer_prefix, delimiter)


def letter_body(q: Question, f: PromptFormat) -> str:
    opts = "".join(f"\n{letter}. {text}" for letter, text in zip(LETTERS, q.options))
    return f"{f.question_prefix}{q.question.strip()}{opts}\n{f.answer_prefix}"


def cloze_body(q: Question, f: PromptFormat) -> str:
    return f"{f.question_prefix}{q.question.strip()}\n{f.answer_prefix}"


def option_text(q: Question, letter: str) -> str:
    return q.options[LETTERS.index(letter)].strip()


def text_prompt(sub: Subject, q: Question, f: PromptFormat, method: str) -> str:
    """instruction + k solved examples + the question, ending in the answer prefix (no delimiter: it is the
    continuation's, as lm-eval splits it)."""
    body = letter_body if method == "letter" else cloze_body
    answer = (lambda ex: ex.answer) if method == "letter" else (lambda ex: option_text(ex, ex.answer))
    shots = "".join(f"{body(ex, f)}{f.delimiter}{answer(ex)}\n\n" for ex in sub.dev)
    return f.instruction.format(name=sub.name) + shots + body(q, f)


def chat_messages(sub: Subject, q: Question, f: PromptFormat, method: str) -> list[dict]:
    """The same prompt as a conversation: each example a user turn answered by an assistant turn (lm-eval's
    fewshot_as_multiturn), the instruction line opening the first user turn."""
    body = letter_body if method == "letter" else cloze_body
    msgs = []
    for ex in sub.dev:
        msgs += [{"role": "user", "content": body(ex, f)},
                 {"role": "assistant", "content": ex.answer if method == "letter" else option_text(ex, ex.answer)}]
    msgs.append({"role": "user", "content": body(q, f)})
    msgs[0] = {"role": "user", "content": f.instruction.format(name=sub.name) + msgs[0]["content"]}
    return msgs


def subject_requests(tokenizer, sub: Subject, f: PromptFormat, method: str, chat: bool) -> list:
    """One Request per (question, option) of a subject, in question order, A-D."""
    from danlu.eval.scoring import Request, encode_pairs
    from danlu.tokenizer.chat import render_prompt

    def cont(q: Question, letter: str) -> str:
        return letter if method == "letter" else option_text(q, letter)

    if not chat:
        return encode_pairs(tokenizer, [(text_prompt(sub, q, f, method), f.delimiter + cont(q, letter))
                                        for q in sub.questions for letter in LETTERS])
    out = []
    for q in sub.questions:
        ctx = tuple(render_prompt(tokenizer, chat_messages(sub, q, f, method)))
        for letter in LETTERS:
            ids = tuple(tokenizer.encode(cont(q, letter), add_special_tokens=False))
            if not ids:
                raise ValueError(f"{q.path}:{q.line}: option {letter} encodes to no tokens")
            out.append(Request(ctx, ids))
    return out


def _argmax(xs: list[float]) -> int:
    return max(range(len(xs)), key=lambda i: (xs[i], -i))  # first of equals, as numpy's argmax


def score_subject(model, tokenizer, sub: Subject, cfg: McqConfig, fmt: str) -> list[dict]:
    """Per-question results for one subject: the choice, probabilities and correctness of each method."""
    from danlu.eval.scoring import score_requests

    f = prompt_format(fmt, cfg.delimiter)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    results = [{"id": q.id, "subject": sub.key, "answer": q.answer, "path": q.path, "line": q.line}
               for q in sub.questions]
    for method in cfg.methods:
        reqs = subject_requests(tokenizer, sub, f, method, cfg.chat)
        scores = score_requests(model, reqs, batch_size=cfg.batch_size, pad_id=pad)
        for i, q in enumerate(sub.questions):
            lps = [s.logprob for s in scores[4 * i: 4 * i + 4]]
            if method == "letter":
                m = max(lps)
                z = sum(math.exp(x - m) for x in lps)
                probs = {letter: math.exp(x - m) / z for letter, x in zip(LETTERS, lps)}
                choice = LETTERS[_argmax(lps)]
                results[i]["letter"] = {"choice": choice, "correct": choice == q.answer, "probs": probs,
                                        "logprobs": dict(zip(LETTERS, lps)),
                                        "tokens": [s.tokens for s in scores[4 * i: 4 * i + 4]]}
            else:
                norm = [x / max(1, len(option_text(q, letter))) for x, letter in zip(lps, LETTERS)]
                choice, choice_norm = LETTERS[_argmax(lps)], LETTERS[_argmax(norm)]
                results[i]["cloze"] = {"choice": choice, "correct": choice == q.answer, "choice_norm": choice_norm,
                                       "correct_norm": choice_norm == q.answer, "logprobs": dict(zip(LETTERS, lps))}
    return results


def summarize(results: list[dict], subjects: list[Subject], methods: list[str]) -> dict:
    """Accuracy per subject, per category and overall (overall weighted by subject size; subject_mean is the
    plain mean over subjects, as C-Eval's leaderboard averages)."""
    by_subject: dict[str, list[dict]] = defaultdict(list)
    for r in results:
        by_subject[r["subject"]].append(r)
    metrics = [m for m in (("letter", "correct"), ("cloze", "correct"), ("cloze", "correct_norm"))
               if m[0] in methods]

    def name(m):
        return {"letter": "acc", "cloze": "acc_cloze"}[m[0]] + ("_norm" if m[1] == "correct_norm" else "")

    def accs(rows: list[dict]) -> dict:
        return {name(m): sum(r[m[0]][m[1]] for r in rows) / len(rows) for m in metrics} if rows else {}

    per_subject, per_category = {}, {}
    cats: dict[str, list[dict]] = defaultdict(list)
    for sub in subjects:
        rows = by_subject.get(sub.key, [])
        if not rows:
            continue
        per_subject[sub.key] = {"name": sub.name, "categories": sub.categories, "questions": len(rows),
                                "shots": len(sub.dev), **accs(rows)}
        for c in sub.categories:
            cats[c] += rows
    for c in sorted(cats):
        per_category[c] = {"questions": len(cats[c]), **accs(cats[c])}
    overall = {"questions": len(results), "subjects": len(per_subject), **accs(results)}
    for m in metrics:
        vals = [s[name(m)] for s in per_subject.values()]
        overall[f"{name(m)}_subject_mean"] = sum(vals) / len(vals) if vals else 0.0
    return {"overall": overall, "categories": per_category, "subjects": per_subject}


def run_mcq(model_dir: str | Path, out: str | Path, cfg: McqConfig, runtime: Runtime = Runtime(),
            progress: bool = True, loaded=None) -> dict:
    """Score a benchmark into the run folder `out`: results.json (accuracies), questions.jsonl (every
    question's choices and probabilities), rejects.jsonl, index.html; returns the report."""
    from tqdm import tqdm

    from danlu.eval.fingerprint import data_fingerprint, eval_fingerprint, model_fingerprint
    from danlu.eval.model import load_model
    from danlu.jsonl import write_jsonl
    from danlu.runs import atomic_write_json, counts, start_run

    run = start_run(out, "eval-mcq", cfg)
    data = load_mcq(cfg.data, cfg.format, cfg.split, cfg.k_shot, cfg.subjects, cfg.subject_map, cfg.max_questions)
    fp = eval_fingerprint(model_fingerprint(model_dir), data_fingerprint(cfg.data, (".csv",)),
                          {"mcq": cfg.model_dump(mode="json", exclude={"batch_size"})})
    lm = loaded or load_model(model_dir, runtime)
    warnings = []
    short = [s.key for s in data.subjects if len(s.dev) < cfg.k_shot]
    if short:
        warnings.append(f"{len(short)} subject(s) have fewer than {cfg.k_shot} dev examples (used what there is): "
                        + ", ".join(short[:10]))
    results: list[dict] = []
    for sub in tqdm(data.subjects, desc="mcq subjects", disable=not progress):
        if sub.questions:
            results += score_subject(lm.model, lm.tokenizer, sub, cfg, data.format)
    summary = summarize(results, data.subjects, cfg.methods)
    write_jsonl(run.path("questions.jsonl"), results)
    write_jsonl(run.path("rejects.jsonl"), ({**r, "stage": "eval-mcq"} for r in
                                            data.rejected + [{**r, "split": "dev"} for r in data.rejected_dev]))
    if data.rejected_dev:
        warnings.append(f"{len(data.rejected_dev)} malformed dev row(s) skipped (see rejects.jsonl)")
    tokens_per_letter = Counter(t for r in results if "letter" in r for t in r["letter"]["tokens"])
    if "letter" in cfg.methods and set(tokens_per_letter) != {1}:
        warnings.append(f"some letter continuations are several tokens ({dict(tokens_per_letter)}): the letter "
                        "score sums their log-probabilities (lm-eval's method), not one next-token softmax")
    f = prompt_format(data.format, cfg.delimiter)
    results_doc = {"suite": "mcq", "format": data.format, "split": data.split, "k_shot": cfg.k_shot,
                   "delimiter": f.delimiter, "chat": cfg.chat, "methods": cfg.methods, **summary}
    atomic_write_json(run.path("results.json"), results_doc)
    n_in = len(results) + len(data.rejected) + data.beyond_max
    head = {k: round(v, 4) for k, v in summary["overall"].items() if k.startswith("acc") and "subject" not in k}
    report = run.finish({
        "suite": "mcq", "model": str(model_dir), "fingerprint": fp,
        "counts": counts(n_in, len(results), filtered={"max_questions": data.beyond_max},
                         rejected=Counter(r["kind"] for r in data.rejected), unit="questions"),
        "summary": (head := {**head, "subjects": summary["overall"]["subjects"]}),
        "headline": [f"summary.{k}" for k in head],
        "results": summary["overall"], "warnings": warnings})
    _write_html(run.path("index.html"), report, results_doc)
    return report


def _write_html(path, report: dict, doc: dict) -> None:
    from danlu.eval.html import bars, table, write_page

    metrics = [k for k in ("acc", "acc_cloze", "acc_cloze_norm") if k in doc["overall"]]
    sections = [
        ("Setup", table(["format", "split", "k-shot", "answer delimiter", "chat template", "methods"],
                        [[doc["format"], doc["split"], doc["k_shot"], repr(doc["delimiter"]), doc["chat"],
                          ", ".join(doc["methods"])]])),
        ("Overall", table(["questions", "subjects", *metrics, *(f"{m} (subject mean)" for m in metrics)],
                          [[doc["overall"]["questions"], doc["overall"]["subjects"],
                            *(doc["overall"][m] for m in metrics),
                            *(doc["overall"][f"{m}_subject_mean"] for m in metrics)]])),
        ("Per category", table(["category", "questions", *metrics],
                               [[c, v["questions"], *(v[m] for m in metrics)] for c, v in doc["categories"].items()])),
        (f"Per subject ({metrics[0]})", bars({f"{v['name']}": v[metrics[0]] for v in doc["subjects"].values()}, 1.0)),
        ("Per subject", table(["subject", "name", "categories", "questions", "shots", *metrics],
                              [[k, v["name"], ", ".join(v["categories"]), v["questions"], v["shots"],
                                *(v[m] for m in metrics)] for k, v in doc["subjects"].items()])),
    ]
    write_page(path, f"mcq: {report['model']}", report, sections)
