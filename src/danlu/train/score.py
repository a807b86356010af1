"""`danlu score`: a reward model (`danlu train rm`) scores answers, and the report says how the scores go with
answer length, so reward hacking toward long answers is measured, not guessed.

Inputs (JSONL, files or folders; each record's kind from its fields):
    SFT records          the final assistant turn is scored (the prompt: the turns before it)
    eval gen answers     `danlu eval gen`'s answers.jsonl: "answer" is scored, and "reference" too when present
    preference pairs     chosen and rejected are scored (the report adds the pair accuracy)
    KTO records          the completion is scored

    OUT/scores.jsonl     per record: id, task_type, source, and per scored answer NAME_score, NAME_tokens
                         (NAME: answer, reference, chosen, rejected)
    OUT/report.json      counts; by_task_type: n, mean / std score, Spearman and Pearson correlation of score with
                         answer tokens; pair accuracy; a warning when the scores follow length (|Spearman| >= 0.5)

Each answer is rendered as in training (prompt + answer with the model's chat template) and scored at its last
answer token, packed several per row with document masking (the same forward as training and validation).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from danlu.train.config import ScoreConfig

LENGTH_WARNING = 0.5  # |Spearman(score, answer tokens)| from which the report warns


def answers_of(rec: dict, kind: str) -> list[tuple[str, list[dict], dict]] | str:
    """(name, prompt turns, answer message) for each answer a record holds, or why there is none."""
    if kind == "preference":
        return [("chosen", rec["messages"], rec["chosen"]), ("rejected", rec["messages"], rec["rejected"])]
    if kind == "kto":
        return [("answer", rec["messages"], rec["completion"])]
    if kind != "sft":
        return "not a chat record (no messages)"
    if isinstance(rec.get("answer"), str):  # a generation output: the prompt turns and the generated answer
        out = [("answer", rec["messages"], {"role": "assistant", "content": rec["answer"]})]
        if isinstance(rec.get("reference"), str):
            out.append(("reference", rec["messages"], {"role": "assistant", "content": rec["reference"]}))
        return out
    if rec["messages"][-1]["role"] == "assistant":
        return [("answer", rec["messages"][:-1], rec["messages"][-1])]
    return "no answer to score: the record must end with an assistant turn or carry an 'answer'"


def _correlations(scores: np.ndarray, lengths: np.ndarray) -> dict:
    from scipy import stats

    if len(scores) < 3 or np.ptp(scores) == 0 or np.ptp(lengths) == 0:
        return {}
    return {"spearman_length": float(stats.spearmanr(scores, lengths).statistic),
            "pearson_length": float(stats.pearsonr(scores, lengths).statistic)}


def _table(rows: list[dict]) -> dict:
    """Per task_type (and "(all)"): scored answers, mean / std score, correlation with length, pair accuracy."""
    groups: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        groups[r["task_type"]].append(r)
        groups["(all)"].append(r)
    out = {}
    for task, group in sorted(groups.items()):
        s = np.array([r[f"{n}_score"] for r in group for n in r["_names"]], dtype=np.float64)
        n = np.array([r[f"{n}_tokens"] for r in group for n in r["_names"]], dtype=np.float64)
        row = {"answers": len(s), "mean_score": float(s.mean()), "std_score": float(s.std()), **_correlations(s, n)}
        pairs = [r for r in group if "chosen_score" in r]
        if pairs:
            row["pair_accuracy"] = float(np.mean([r["chosen_score"] > r["rejected_score"] for r in pairs]))
        out[task] = row
    return out


def score(model_dir: str | Path, out: str | Path, cfg: ScoreConfig, progress: bool = True) -> dict:
    """Score every answer in cfg.data with the reward model `model_dir` (a folder or a `train rm` run) into `out`."""
    from tqdm.auto import tqdm
    from transformers import AutoTokenizer

    from danlu.jsonl import BadLine, JsonlWriter, jsonl_files
    from danlu.model.adapters import model_folder
    from danlu.records import read_records, record_id
    from danlu.runs import counts, reason_key, start_run
    from danlu.tokenizer.chat import TemplateError
    from danlu.train.distributed import autocast
    from danlu.train.estimate import resolve_precision
    from danlu.train.pref_batches import sequences_batch
    from danlu.train.pref_data import _rendered_sequence
    from danlu.train.rm import load_reward_model, sequence_scores
    from danlu.train.sft_batches import plan_rows

    run = start_run(out, "score", {"model": str(model_dir), **cfg.model_dump(mode="json")})
    folder = model_folder(model_dir)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    given = cfg.template
    template = Path(given).read_text(encoding="utf-8") if given and len(given) < 4096 and Path(given).is_file() \
        else given
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = load_reward_model(folder, pad_token_id=pad).to(device).eval()
    precision = resolve_precision(cfg.precision, device)[0]

    files = jsonl_files(cfg.data)
    rows, seqs, owner = [], [], []  # owner[i]: (row number, answer name) of sequence i
    n_in, filtered, rejected = 0, defaultdict(int), defaultdict(int)
    with JsonlWriter(run.path("rejects.jsonl")) as rejects:
        for path, line, rec, kind in read_records(files, "auto"):
            n_in += 1
            if isinstance(rec, BadLine):
                rejected[reason_key(rec.error.split(":")[0])] += 1
                rejects.write({**rec.as_reject("score"), "op": "read"})
                continue
            where = {"path": str(path), "line": line, "id": record_id(rec, path, line), "stage": "score"}
            answers = answers_of(rec, kind)
            if isinstance(answers, str):
                rejected[answers] += 1
                rejects.write({**where, "reason": answers})
                continue
            try:
                rendered = [_rendered_sequence(tokenizer, p, a, rec.get("tools"), template) for _, p, a in answers]
            except TemplateError as e:
                rejected[f"template: {reason_key(str(e))[:80]}"] += 1
                rejects.write({**where, "reason": f"the chat template cannot render it: {e}"})
                continue
            longest = max(len(ids) for ids, _ in rendered)
            if longest > cfg.seq_len:
                filtered["longer than seq_len"] += 1
                rejects.write({**where, "reason": f"longer than seq_len: {longest} tokens > {cfg.seq_len}"})
                continue
            rows.append({"id": where["id"], "task_type": str(rec.get("task_type") or "(none)"),
                         "source": rec.get("source"), "_names": [n for n, _, _ in answers]})
            for (name, _, _), (ids, weights) in zip(answers, rendered):
                seqs.append((np.asarray(ids, dtype=np.int64), np.asarray(weights, dtype=np.float32)))
                owner.append((len(rows) - 1, name))

    lengths = np.array([len(ids) for ids, _ in seqs], dtype=np.int64)
    chunks = [np.arange(i, min(i + cfg.batch_size, len(seqs))) for i in range(0, len(seqs), cfg.batch_size)]
    with torch.no_grad():
        for chunk in tqdm(chunks, desc="score", unit="batch", disable=not progress, dynamic_ncols=True):
            plan = plan_rows(chunk, lengths, max(cfg.seq_len, int(lengths[chunk].max())), True, len(chunk))
            groups = [[([i], 0) for i in row] for row in plan]
            batch = {k: v.to(device) for k, v in sequences_batch(groups, seqs.__getitem__, pad, n_units=0).items()}
            with autocast(precision, device):
                values = sequence_scores(model, batch).double().cpu().numpy()
            for i, v, n in zip(batch["seq_doc"].tolist(), values, batch["seq_tokens"].tolist()):
                r, name = owner[i]
                rows[r][f"{name}_score"], rows[r][f"{name}_tokens"] = float(v), int(n)

    table = _table(rows) if rows else {}
    with JsonlWriter(run.path("scores.jsonl")) as w:
        for r in rows:
            w.write({k: v for k, v in r.items() if k != "_names"})
    overall = table.get("(all)", {})
    warnings = []
    rho = overall.get("spearman_length")
    if rho is not None and abs(rho) >= LENGTH_WARNING:
        warnings.append(f"the scores follow answer length (Spearman {rho:+.2f} over {overall['answers']} answers): "
                        f"the reward model may reward {'length' if rho > 0 else 'brevity'} rather than quality; "
                        "check by_task_type in report.json and the pairs whose chosen answer is the shorter one")
    rounded = (lambda v: None if v is None else round(v, 4))
    report = {"counts": counts(n_in, len(rows), dict(filtered), dict(rejected)), "model": str(folder),
              "precision": precision, "by_task_type": table, "mean_score": rounded(overall.get("mean_score")),
              "spearman_length": rho, "pair_accuracy": rounded(overall.get("pair_accuracy")), "warnings": warnings,
              "headline": ["mean_score", "spearman_length", "pair_accuracy"]}
    return run.finish(report)
