"""Preference data for training: pairs (or KTO records) rendered with the model's chat template into token
stores, split into train / validation, plus the reference model's log-probs of every sequence.

    OUT/data/train/, OUT/data/val/   token stores (danlu.train.sft_data layout: ids, a loss weight per token,
                                     task_type), one document per SEQUENCE (prompt + one answer):
        pairs: documents 2k and 2k+1 are pair k's chosen and rejected answer
        kto:   document k is record k's answer; index array `desirable` says which were judged good
    OUT/data/ref/{train,val}.npy     the reference log-prob (sum over the answer's tokens) of every document,
    OUT/data/ref/ref.json            fingerprinted on the data and the reference model (precision included)

A sequence is render_sample(prompt + [answer], assistant="last"): the answer and its end-of-turn token are the
targets (weights > 0); tokens after the last target are cut (nothing scores them). Every record ends in one
place: kept, the validation split, filtered (another kind of record, too long, nothing to train) or rejected
(breaks its contract, the template cannot render it); the counts add up, the reasons are in rejects.jsonl.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np

from danlu.jsonl import BadLine, JsonlWriter, jsonl_files
from danlu.records import read_records, record_id
from danlu.runs import atomic_path, atomic_write_json, counts, read_report, reason_key, start_run
from danlu.train.sft_data import (NOTHING, SPLITS, VAL, Rendered, SFTStore, _val_split, fingerprint, render_fitting,
                                  write_splits)
from danlu.train.store import sample_hash

PAIRS, KTO = "pairs", "kto"


class PrefStore(SFTStore):
    """Rendered preference sequences grouped in units: a pair (chosen, rejected) or one KTO record."""

    def __init__(self, path: str | Path):
        super().__init__(path)
        self.kind: str = self.meta.get("pref_kind", PAIRS)
        self.desirable = self._index_array("desirable", bool)
        self.prompt_len = self._index_array("prompt_len", np.int64)  # tokens before the answer's first target
        self.shares_prompt = self._index_array("shares_prompt", bool)  # a pair whose two sequences start alike
        self.width = 2 if self.kind == PAIRS else 1  # sequences per unit
        self.unit_lengths: np.ndarray = self.lengths.reshape(-1, self.width).sum(axis=1)
        # the tokens of a unit laid out with its prompt once (share_prompt)
        saved = (self.prompt_len * self.shares_prompt).reshape(-1, self.width)[:, 0] if self.width == 2 else 0
        self.shared_lengths: np.ndarray = self.unit_lengths - saved

    def _index_array(self, name: str, dtype) -> np.ndarray:
        parts = []
        for shard in self.shard_names:
            with np.load(self.path / "shards" / f"{shard}.index.npz", allow_pickle=False) as z:
                parts.append(z[name].astype(dtype))
        return np.concatenate(parts) if parts else np.zeros(0, dtype)

    @property
    def n_units(self) -> int:
        return len(self.unit_lengths)

    def unit_docs(self, unit: int) -> range:
        return range(unit * self.width, (unit + 1) * self.width)

    def sequence(self, doc: int) -> tuple[np.ndarray, np.ndarray]:
        return self.doc(doc), self.weights(doc)


def _answers(rec: dict, kind: str, mode: str) -> list[tuple[dict, bool]] | str:
    """The (answer, desirable) sequences a record gives in `mode`, or why it is not used."""
    if kind == "preference":
        return [(rec["chosen"], True), (rec["rejected"], False)]
    if kind == "kto":
        if mode == PAIRS:
            return "a KTO record (one answer judged good or bad): train it with dpo.loss: kto"
        return [(rec["completion"], rec["desirable"])]
    return f"not preference data ({'an SFT record' if kind == 'sft' else 'a document'})"


def _rendered_sequence(tokenizer, prompt: list[dict], answer: dict, tools, template):
    """prompt + answer as ids and weights, cut after the answer's last target token."""
    from danlu.tokenizer.chat import render_sample

    s = render_sample(tokenizer, prompt + [answer], tools, template, assistant="last")
    last = max((i for i, w in enumerate(s.weights) if w > 0), default=-1)
    return s.ids[: last + 1], s.weights[: last + 1]


def render_records(files: list[Path], tokenizer, template: str | None, cfg, mode: str, rejects: JsonlWriter,
                   val_files: list[Path] = ()) -> tuple[Rendered, dict[str, dict[str, list]]]:
    """Render preference / KTO records into sequences (see the module docstring); every record is accounted for.
    Also returns per split and sequence: desirable, prompt_len (tokens before the first target) and
    shares_prompt (a pair whose two sequences begin with the same prompt tokens)."""
    out = Rendered()
    extra = {s: {"desirable": [], "prompt_len": [], "shares_prompt": []} for s in SPLITS}
    records: list[tuple[str, Path, int, dict, str]] = []
    for split, group in (("train", files), ("val", list(val_files))):
        for path, lineno, rec, kind in read_records(group, "auto", strict=True):
            out.records_in += 1
            if isinstance(rec, BadLine):
                out.rejected[reason_key(rec.error.split(":")[0])] += 1
                rejects.write({**rec.as_reject("train-pref"), "op": "read"})
                continue
            records.append((split, path, lineno, rec, kind))
    held = _val_split([record_id(r, p, ln) for s, p, ln, r, _ in records if s == "train"], cfg.val_size)
    for split, path, lineno, rec, kind in records:
        rid = record_id(rec, path, lineno)
        split = "val" if split == "train" and rid in held else split
        where = {"path": str(path), "line": lineno, "id": rid, "stage": "train-pref"}
        answers = _answers(rec, kind, mode)
        if isinstance(answers, str):
            out.filtered[answers] += 1
            rejects.write({**where, "op": "select", "reason": answers})
            continue
        fit = render_fitting(rec["messages"], lambda prompt: [
            _rendered_sequence(tokenizer, prompt, a, rec.get("tools"), template) for a, _ in answers],
            lambda seqs: [len(ids) for ids, _ in seqs], cfg, where, out, rejects)
        if fit is None:
            continue
        attempt, seqs = fit
        if not all(ids for ids, _ in seqs):
            out.filtered[NOTHING] += 1
            rejects.write({**where, "op": "render", "reason": f"{NOTHING} (an answer has loss_weight 0)"})
            continue
        out.truncated += attempt > 0
        firsts = [next(i for i, w in enumerate(weights) if w > 0) for _, weights in seqs]
        same = len(seqs) == 2 and firsts[0] == firsts[1] and seqs[0][0][: firsts[0]] == seqs[1][0][: firsts[1]]
        for (ids, weights), (_, good), first in zip(seqs, answers, firsts):
            out.add(split, rid, str(rec.get("source") or "unknown"), rec["task_type"], ids, weights)
            extra[split]["desirable"].append(bool(good))
            extra[split]["prompt_len"].append(first)
            extra[split]["shares_prompt"].append(same)
        out.kept[split] += 1
    return out, extra


def prepare(out: Path, tokenizer, tokenizer_dir: Path, template: str, data_cfg, mode: str) -> dict:
    """Render (or reuse) OUT/data/{train,val} as `mode` (pairs or kto) units; returns the data report (also
    OUT/data/report.json)."""
    train_files, val_files = jsonl_files(data_cfg.train), jsonl_files(data_cfg.val) if data_cfg.val else []
    options = {**data_cfg.model_dump(mode="json", include={"seq_len", "val_size", "overlong"}), "mode": mode,
               "layout": 2}
    fp = fingerprint(train_files + val_files, tokenizer_dir, template, options)
    folder = out / "data"
    done = read_report(folder)
    if done is not None and done.get("fingerprint") == fp:
        return done
    run = start_run(folder, "pref-render", {"train": [str(p) for p in train_files],
                                            "val": [str(p) for p in val_files], **options})
    with JsonlWriter(folder / "rejects.jsonl") as rejects:
        rendered, extra = render_records(train_files, tokenizer, template, data_cfg, mode, rejects, val_files)
    if not rendered.ids["train"]:
        raise ValueError(f"no training {'pairs' if mode == PAIRS else 'records'} in "
                         f"{', '.join(map(str, train_files))}: {dict(rendered.filtered)} filtered, "
                         f"{dict(rendered.rejected)} rejected (see {folder / 'rejects.jsonl'})")
    write_splits(folder, rendered, tokenizer, tokenizer_dir, fp, "pref-sequences",
                 extra_index=lambda split: {"desirable": np.array(extra[split]["desirable"], dtype=np.uint8),
                                            "prompt_len": np.array(extra[split]["prompt_len"], dtype=np.uint32),
                                            "shares_prompt": np.array(extra[split]["shares_prompt"], dtype=np.uint8)},
                 extra_meta={"pref_kind": mode})
    filtered = {**rendered.filtered, VAL: rendered.kept["val"]}
    unit = "pairs" if mode == PAIRS else "records"
    report = {"counts": counts(rendered.records_in, rendered.kept["train"], filtered, rendered.rejected),
              "fingerprint": fp, "mode": mode, unit: {s: rendered.kept[s] for s in SPLITS},
              "sequences": {s: len(rendered.ids[s]) for s in SPLITS}, "truncated_history": rendered.truncated,
              "headline": [f"{unit}.train", f"{unit}.val", "truncated_history"]}
    return run.finish(report)


# --- reference log-probs ---------------------------------------------------------------------------------------


def model_identity(folder: Path) -> dict:
    """What a model folder's outputs depend on, cheaply: config and a sampled hash of every weight file (an
    adapter folder also names its base's)."""
    from danlu.model.adapters import adapter_base, is_adapter

    folder = Path(folder).resolve()
    files = sorted(p for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".json") and p.is_file()
                   and p.name not in ("lineage.json", "report.json"))
    out = {"path": str(folder), "files": {p.name: sample_hash(path=p) for p in files}}
    if is_adapter(folder):
        out["base"] = model_identity(adapter_base(folder))
    return out


def reference_fingerprint(data_fp: str, model: dict, precision: str, options: dict) -> str:
    from danlu.records import stable_id

    return stable_id(json.dumps({"data": data_fp, "model": model, "precision": precision, **options},
                                sort_keys=True), length=32)


def read_reference(out: Path, fp: str) -> dict[str, np.ndarray] | None:
    folder = out / "data" / "ref"
    try:
        if json.loads((folder / "ref.json").read_text(encoding="utf-8")).get("fingerprint") != fp:
            return None
        return {s: np.load(folder / f"{s}.npy") for s in SPLITS}
    except (OSError, ValueError):
        return None


def write_reference(out: Path, fp: str, values: dict[str, np.ndarray], info: dict) -> None:
    folder = out / "data" / "ref"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ref.json").unlink(missing_ok=True)  # the arrays are valid once ref.json names their fingerprint
    for split, v in values.items():
        with atomic_path(folder / f"{split}.npy") as tmp:
            with open(tmp, "wb") as f:
                np.save(f, v)
    atomic_write_json(folder / "ref.json", {"fingerprint": fp, **info})


def summary(store: PrefStore) -> Counter:
    """Units per task_type (for the start-of-run line)."""
    return Counter(store.task_names[int(store.task_codes[d])] for d in range(0, len(store), store.width))
