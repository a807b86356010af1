"""Run a clean config over JSONL records: per-record operators in order, then dedup over the survivors.

Accounting: every input line ends up in exactly one place - clean.jsonl (kept) or rejects.jsonl (with the
operator and reason; bad lines with their file and line number). report.json has, per operator, in = kept +
removed, characters changed and time, so a user can see what each step did.
"""

from __future__ import annotations

import json
import re
import time
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator

from tqdm import tqdm

from danlu.data.clean.base import changed_chars
from danlu.data.clean.config import CleanConfig, ExactDedup, NearDedup, load_clean_config
from danlu.data.dedup import exact_clusters, near_clusters
from danlu.jsonl import BadLine, JsonlWriter, jsonl_files, read_jsonl
from danlu.records import record_id
from danlu.runs import start_run

OUTPUT = "clean.jsonl"
REJECTS = "rejects.jsonl"
DUPLICATES = "duplicates.jsonl"


def _sft_problem(record: dict) -> str | None:
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return "field 'messages' must be a non-empty list"
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            return f"messages[{i}] must be an object"
        if not isinstance(m.get("role"), str):
            return f"messages[{i}].role missing or not a string"
        if not isinstance(m.get("content"), str):
            return f"messages[{i}].content missing or not a string"
    return None


def read_records(files: list[Path], fmt: str) -> Iterator[tuple[Path, int, dict | BadLine, bool]]:
    """(file, line, record or BadLine, is_sft) for every input line."""
    for path in files:
        for lineno, rec in read_jsonl(path):
            if isinstance(rec, BadLine):
                yield path, lineno, rec, False
                continue
            sft = fmt == "sft" or (fmt == "auto" and "messages" in rec)
            if sft:
                problem = _sft_problem(rec)
            elif "text" not in rec:
                problem = "missing field 'text'"
            elif not isinstance(rec["text"], str):
                problem = f"field 'text' must be str, got {type(rec['text']).__name__}"
            else:
                problem = None
            if problem:
                yield path, lineno, BadLine(str(path), lineno, problem, json.dumps(rec, ensure_ascii=False)), sft
            else:
                yield path, lineno, rec, sft


def record_text(record: dict, sft: bool) -> str:
    """The text filters judge: a document's text, or an SFT record's message contents joined by blank lines."""
    if sft:
        return "\n\n".join(m["content"] for m in record["messages"])
    return record["text"]


def _dedup_text(record: dict, sft: bool) -> str:
    if sft:
        return "\n".join(f"{m['role']}: {m['content']}" for m in record["messages"])
    return record["text"]


def _reason_key(reason: str) -> str:
    """Group reasons that differ only in measured numbers ("too short: 12 chars < 50" -> "too short: # chars < #")."""
    return re.sub(r"\d+(?:\.\d+)?", "#", reason)


class _StepStats:
    def __init__(self, name: str, kind: str):
        self.name, self.kind = name, kind
        self.n_in = self.removed = self.records_changed = self.chars_changed = 0
        self.seconds = 0.0
        self.reasons: Counter[str] = Counter()

    def as_dict(self) -> dict:
        d = {"op": self.name, "kind": self.kind, "in": self.n_in, "kept": self.n_in - self.removed,
             "removed": self.removed}
        if self.kind == "transform":
            d |= {"records_changed": self.records_changed, "chars_changed": self.chars_changed}
        if self.reasons:
            d["reasons"] = dict(self.reasons.most_common(20))
        d["seconds"] = round(self.seconds, 3)
        return d


def clean(
    inputs: str | Path | Iterable[str | Path],
    out: str | Path,
    *,
    config: CleanConfig | str | Path | None = None,
    preset: str | None = None,
    progress: bool = True,
) -> dict:
    """Clean (and dedup) JSONL records into `out`/clean.jsonl; returns the report (also in report.json).

    `config` is a CleanConfig or a YAML path; without one, `preset` ("pretrain" or "sft") is used, and without
    that the preset follows the first record's kind (SFT if it has "messages").
    """
    files = jsonl_files([inputs] if isinstance(inputs, (str, Path)) else inputs)
    if isinstance(config, CleanConfig):
        cfg = config
    elif config is not None:
        cfg = load_clean_config(config)
    else:
        cfg = load_clean_config(preset=preset or _guess_preset(files))
    run = start_run(out, "clean", {"inputs": [str(f) for f in files], **cfg.model_dump(mode="json")})
    t0 = time.time()
    record_steps = [s for s in cfg.steps if s.kind != "dedup"]
    dedup_steps = [s for s in cfg.steps if s.kind == "dedup"]
    read_stats = _StepStats("read", "read")
    stats = [_StepStats(s.op, s.kind) for s in cfg.steps]
    chars_in = chars_out = 0
    out_dir = Path(out)
    survivors_path = out_dir / ".clean.survivors.jsonl"
    survivors: list[tuple[str, str, bool, str | None]] = []  # (id, dedup text, sft, path) of filter survivors

    with JsonlWriter(out_dir / REJECTS) as rejects:
        target = survivors_path if dedup_steps else out_dir / OUTPUT
        with JsonlWriter(target) as kept:
            for path, lineno, rec, sft in tqdm(read_records(files, cfg.format), desc="clean", unit="rec",
                                               disable=not progress or None):
                read_stats.n_in += 1
                if isinstance(rec, BadLine):
                    read_stats.removed += 1
                    read_stats.reasons[_reason_key(rec.error)] += 1
                    rejects.write({**rec.as_reject("clean"), "op": "read"})
                    continue
                rec["id"] = record_id(rec, path, lineno)
                chars_in += len(record_text(rec, sft))
                original = rec
                rec = _apply_record_steps(rec, sft, record_steps, stats)
                if isinstance(rec, tuple):
                    step_name, reason = rec
                    rejects.write({"stage": "clean", "op": step_name, "reason": reason, "id": original["id"],
                                   "path": str(path), "line": lineno, "record": original})
                    continue
                kept.write(rec)
                if dedup_steps:
                    survivors.append((rec["id"], _dedup_text(rec, sft), sft, rec.get("path")))
                else:
                    chars_out += len(record_text(rec, sft))

        if dedup_steps:
            chars_out = _run_dedup(survivors, survivors_path, out_dir, dedup_steps,
                                   stats[len(record_steps):], rejects, run)
            survivors_path.unlink(missing_ok=True)

    operators = [read_stats.as_dict()] + [s.as_dict() for s in stats]
    kept_n = read_stats.n_in - read_stats.removed - sum(s.removed for s in stats)
    report = {
        "inputs": [str(f) for f in files],
        "in": read_stats.n_in,
        "kept": kept_n,
        "removed": read_stats.n_in - kept_n,
        "bad_records": read_stats.removed,
        "removed_by": {o["op"]: o["removed"] for o in operators if o["removed"]},
        "chars_in": chars_in,
        "chars_out": chars_out,
        "operators": operators,
        "outputs": {"records": OUTPUT, "rejects": REJECTS, **({"duplicates": DUPLICATES} if dedup_steps else {})},
        "seconds": round(time.time() - t0, 3),
    }
    for o in operators:
        run.log.info("%-14s in=%d kept=%d removed=%d %s", o["op"], o["in"], o["kept"], o["removed"],
                     f"chars_changed={o['chars_changed']}" if "chars_changed" in o else "")
    return run.finish(report)


def _guess_preset(files: list[Path]) -> str:
    for _, _, rec, sft in read_records(files[:1], "auto"):
        if not isinstance(rec, BadLine):
            return "sft" if sft else "pretrain"
    return "pretrain"


def _apply_record_steps(rec: dict, sft: bool, steps: list, stats: list[_StepStats]) -> dict | tuple[str, str]:
    """The record after every transform, or (op, reason) of the filter that removed it."""
    for step, st in zip(steps, stats):
        t = time.perf_counter()
        st.n_in += 1
        if step.kind == "transform":
            changed = 0
            if sft:
                messages = []
                for m in rec["messages"]:
                    new = step.apply(m["content"])
                    changed += changed_chars(m["content"], new)
                    messages.append({**m, "content": new})
                rec = {**rec, "messages": messages}
            else:
                new = step.apply(rec["text"])
                changed = changed_chars(rec["text"], new)
                rec = {**rec, "text": new}
            st.chars_changed += changed
            st.records_changed += changed > 0
        else:
            reason = step.judge_record(rec, record_text(rec, sft))
            if reason:
                st.removed += 1
                st.reasons[_reason_key(reason)] += 1
                st.seconds += time.perf_counter() - t
                return step.op, reason
        st.seconds += time.perf_counter() - t
    return rec


def _run_dedup(survivors, survivors_path: Path, out_dir: Path, steps: list, stats: list[_StepStats],
               rejects: JsonlWriter, run) -> int:
    """Apply the dedup steps in order to the survivors; write kept records, rejects and the duplicate clusters."""
    alive = list(range(len(survivors)))
    duplicate_of: dict[int, tuple[int, str]] = {}  # removed index -> (kept index, op)
    for step, st in zip(steps, stats):
        t = time.perf_counter()
        texts = [survivors[i][1] for i in alive]
        st.n_in = len(alive)
        if isinstance(step, ExactDedup):
            rep = exact_clusters(texts)
        else:
            assert isinstance(step, NearDedup)
            res = near_clusters(texts, threshold=step.threshold, num_perm=step.num_perm, ngram=step.ngram,
                                seed=step.seed)
            rep = res.representative
            run.log.info("near_dedup: %d bands x %d rows", res.bands, res.rows)
        next_alive = []
        for pos, r in enumerate(rep.tolist()):
            if r == pos:
                next_alive.append(alive[pos])
            else:
                duplicate_of[alive[pos]] = (alive[r], step.op)
                st.removed += 1
                st.reasons["duplicate"] += 1
        alive = next_alive
        st.seconds += time.perf_counter() - t

    def root(i: int) -> int:  # a record removed by exact dedup may point at one later removed by near dedup
        while i in duplicate_of:
            i = duplicate_of[i][0]
        return i

    replaced: dict[int, list[dict]] = {}
    for i, (kept_i, op) in sorted(duplicate_of.items()):
        replaced.setdefault(root(i), []).append({"id": survivors[i][0], "path": survivors[i][3], "op": op})
    chars_out = 0
    with JsonlWriter(out_dir / OUTPUT) as kept, JsonlWriter(out_dir / DUPLICATES) as dups:
        for i, (_, rec) in enumerate(read_jsonl(survivors_path)):
            assert isinstance(rec, dict)
            if i in duplicate_of:
                kept_i, op = duplicate_of[i]
                rejects.write({"stage": "clean", "op": op, "reason": f"duplicate of {survivors[root(i)][0]}",
                               "id": rec["id"], "duplicate_of": survivors[root(i)][0], "record": rec})
                continue
            if i in replaced:
                dups.write({"kept": rec["id"], "path": rec.get("path"), "replaced": replaced[i]})
            chars_out += len(record_text(rec, survivors[i][2]))
            kept.write(rec)
    return chars_out
