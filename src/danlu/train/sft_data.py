"""SFT samples for training: SFT records rendered with the model's chat template into token ids with a loss
weight per token (danlu.tokenizer.chat.render_samples), split into train / validation, kept as token stores.

    OUT/data/train/, OUT/data/val/   token stores (danlu.train.store layout) + per shard:
        NNNNN.weights        float32, one loss weight per token (0 = not a target)
        NNNNN.index.npz      also task_names / task_codes: each sample's task_type

Every record ends in one place: a training sample (one, or one per turn for templates that rewrite earlier
turns), the validation split, filtered (longer than seq_len, nothing to train) or rejected (breaks the SFT
contract, the template cannot render it), and the counts add up. A rendered store is reused while the data,
tokenizer, template and settings are unchanged (its fingerprint), so a resumed or repeated run renders nothing.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from danlu.jsonl import BadLine, JsonlWriter, jsonl_files
from danlu.records import read_records, record_id
from danlu.runs import atomic_path, atomic_write_json, counts, read_report, reason_key, start_run
from danlu.train.store import STORE_FORMAT, TokenStore, id_hash, token_dtype

SPLITS = ("train", "val")
TOO_LONG = "longer than seq_len"
NOTHING = "no trainable tokens"
VAL = "validation split"


class SFTStore(TokenStore):
    """A token store of rendered SFT samples: token ids, a loss weight per token, the sample's task_type."""

    def __init__(self, path: str | Path):
        super().__init__(path)
        names, codes = [], []
        for k, name in enumerate(self.shard_names):
            with np.load(self.path / "shards" / f"{name}.index.npz", allow_pickle=False) as z:
                local = [str(t) for t in z["task_names"]]
                for t in local:
                    if t not in names:
                        names.append(t)
                remap = np.array([names.index(t) for t in local] or [0], dtype=np.int32)
                codes.append(remap[z["task_codes"]])
        self.task_names: list[str] = names
        self.task_codes = np.concatenate(codes).astype(np.int32) if codes else np.zeros(0, np.int32)
        self._weights: dict[int, np.memmap] = {}

    def weights(self, i: int) -> np.ndarray:
        k = int(self.shard_of[i])
        m = self._weights.get(k)
        if m is None:
            f = self.path / "shards" / f"{self.shard_names[k]}.weights"
            m = np.memmap(f, dtype=np.float32, mode="r") if f.stat().st_size else np.zeros(0, np.float32)
            self._weights[k] = m
        off = int(self.offsets[i])
        return m[off : off + int(self.lengths[i])]


@dataclass
class Rendered:
    """What rendering a set of records produced, per split, before it is written."""

    ids: dict[str, list[list[int]]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    weights: dict[str, list[list[float]]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    record_ids: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    sources: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    tasks: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SPLITS})
    records_in: int = 0
    kept: Counter = field(default_factory=Counter)  # records with a sample, per split
    filtered: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    truncated: int = 0  # records whose earliest turns were dropped to fit

    def add(self, split: str, rid: str, source: str, task: str, ids: list[int], weights: list[float]) -> None:
        self.ids[split].append(ids)
        self.weights[split].append(weights)
        self.record_ids[split].append(rid)
        self.sources[split].append(source)
        self.tasks[split].append(task)


def _val_split(ids: list[str], val_size: float) -> set[str]:
    """Record ids held out for validation: a share (< 1) by id hash, or the `val_size` smallest hashes."""
    if val_size <= 0:
        return set()
    if val_size < 1:
        threshold = int(val_size * 2**64)
        return {r for r in ids if id_hash(r) < threshold}
    return set(sorted(ids, key=id_hash)[: int(val_size)])


def _truncate_history(messages: list[dict]) -> list[list[dict]]:
    """Ever shorter versions of a conversation: system turns kept, the earliest exchanges dropped one by one
    (an exchange: a user turn and what follows it up to the next user turn)."""
    system = [m for m in messages if m["role"] == "system"]
    rest = [m for m in messages if m["role"] != "system"]
    starts = [i for i, m in enumerate(rest) if m["role"] == "user"]
    return [system + rest[s:] for s in starts[1:]]


def render_fitting(messages: list[dict], render, lengths, cfg, where: dict, out: Rendered, rejects: JsonlWriter):
    """`render(messages)`, or with ever shorter histories when cfg.overlong is truncate_history, until every
    sequence (`lengths(rendered)`) fits cfg.seq_len: (attempt, rendered), attempt 0 being the whole record. A
    record that never fits, or that the template cannot render, is accounted in `out`, written to the rejects
    with its reason, and gives None."""
    from danlu.tokenizer.chat import TemplateError

    candidates = [messages] + (_truncate_history(messages) if cfg.overlong == "truncate_history" else [])
    try:
        for attempt, candidate in enumerate(candidates):
            rendered = render(candidate)
            if all(n <= cfg.seq_len for n in lengths(rendered)):
                return attempt, rendered
    except TemplateError as e:
        out.rejected[f"template: {reason_key(str(e))[:80]}"] += 1
        rejects.write({**where, "op": "render", "reason": f"the chat template cannot render it: {e}"})
        return None
    out.filtered[TOO_LONG] += 1
    rejects.write({**where, "op": "render", "reason": f"{TOO_LONG}: {max(lengths(rendered), default=0)} tokens > "
                   f"{cfg.seq_len} (overlong: {cfg.overlong})"})
    return None


def render_records(files: list[Path], tokenizer, template: str | None, cfg, rejects: JsonlWriter,
                   val_files: list[Path] = ()) -> Rendered:
    """Render SFT records into samples (see the module docstring); every record is accounted for."""
    from danlu.tokenizer.chat import render_samples

    out = Rendered()
    records: list[tuple[str, Path, int, dict]] = []  # (split, file, line, record)
    for split, group in (("train", files), ("val", list(val_files))):
        for path, lineno, rec, _ in read_records(group, "sft", strict=True):
            out.records_in += 1
            if isinstance(rec, BadLine):
                out.rejected[reason_key(rec.error.split(":")[0])] += 1
                rejects.write({**rec.as_reject("train-sft"), "op": "read"})
                continue
            records.append((split, path, lineno, rec))
    held = _val_split([record_id(r, p, ln) for s, p, ln, r in records if s == "train"], cfg.val_size)
    for split, path, lineno, rec in records:
        rid = record_id(rec, path, lineno)
        split = "val" if split == "train" and rid in held else split
        where = {"path": str(path), "line": lineno, "id": rid, "stage": "train-sft"}
        fit = render_fitting(rec["messages"], lambda m: render_samples(
            tokenizer, m, rec.get("tools"), template, assistant=cfg.assistant, train_on_prompt=cfg.train_on_prompt),
            lambda samples: [len(s.ids) for s in samples], cfg, where, out, rejects)
        if fit is None:
            continue
        attempt, samples = fit
        samples = [s for s in samples if any(w > 0 for w in s.weights)]
        if not samples:
            out.filtered[NOTHING] += 1
            rejects.write({**where, "op": "render", "reason": f"{NOTHING} (every assistant turn has loss_weight 0)"})
            continue
        out.truncated += attempt > 0
        for s in samples:
            out.add(split, rid, str(rec.get("source") or "unknown"), rec["task_type"], s.ids, s.weights)
        out.kept[split] += 1
    return out


def write_store(folder: Path, rendered: Rendered, split: str, vocab_size: int, pad_id: int, fingerprint: str,
                tokenizer_sha: str, extra_index: dict[str, np.ndarray] | None = None,
                extra_meta: dict | None = None) -> None:
    """One split's samples as a one-shard token store with a weights file (the TokenStore layout);
    `extra_index` arrays (one value per sample) go into the index, `extra_meta` into store.json."""
    ids, weights = rendered.ids[split], rendered.weights[split]
    lengths = np.array([len(x) for x in ids], dtype=np.int64)
    offsets = np.zeros(len(lengths), dtype=np.int64)
    if len(lengths):
        np.cumsum(lengths[:-1], out=offsets[1:])
    dtype = token_dtype(vocab_size)
    flat = np.fromiter((t for x in ids for t in x), dtype=dtype, count=int(lengths.sum()))
    flat_w = np.fromiter((w for x in weights for w in x), dtype=np.float32, count=int(lengths.sum()))
    shards = folder / "shards"
    shards.mkdir(parents=True, exist_ok=True)
    with atomic_path(shards / "00000.tokens") as tmp:
        flat.tofile(tmp)
    with atomic_path(shards / "00000.weights") as tmp:
        flat_w.tofile(tmp)
    sources = sorted(set(rendered.sources[split]))
    tasks = sorted(set(rendered.tasks[split]))
    with atomic_path(shards / "00000.index.npz") as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, offsets=offsets, lengths=lengths,
                     id_hash=np.array([id_hash(r) for r in rendered.record_ids[split]], dtype=np.uint64),
                     ids=np.array(rendered.record_ids[split], dtype=str), source_names=np.array(sources, dtype=str),
                     source_codes=np.array([sources.index(s) for s in rendered.sources[split]], dtype=np.uint16),
                     task_names=np.array(tasks, dtype=str),
                     task_codes=np.array([tasks.index(t) for t in rendered.tasks[split]], dtype=np.uint16),
                     **(extra_index or {}))
    atomic_write_json(shards / "00000.json", {"fingerprint": fingerprint, "docs": len(ids),
                                              "tokens": int(lengths.sum())})
    atomic_write_json(folder / "store.json", {"format": STORE_FORMAT, "dtype": dtype.str, "vocab_size": vocab_size,
                                              "bos_id": None, "eos_id": None, "pad_id": pad_id,
                                              "tokenizer_sha": tokenizer_sha, "shards": ["00000"],
                                              "weights": "float32", **(extra_meta or {})})


def _sha(path: Path) -> str:
    return hashlib.blake2b(path.read_bytes(), digest_size=16).hexdigest()


def fingerprint(files: list[Path], tokenizer_dir: Path, template: str, options: dict) -> str:
    """What a rendered store depends on: the records' contents, the tokenizer, the template, the settings."""
    parts = {"files": [[str(p.resolve()), _sha(p)] for p in files], "tokenizer": _sha(tokenizer_dir / "tokenizer.json"),
             "template": hashlib.blake2b(template.encode(), digest_size=16).hexdigest(), "options": options}
    return hashlib.blake2b(json.dumps(parts, sort_keys=True).encode(), digest_size=16).hexdigest()


def write_splits(folder: Path, rendered: Rendered, tokenizer, tokenizer_dir: Path, fp: str, stage: str,
                 extra_index=None, extra_meta: dict | None = None) -> None:
    """Write FOLDER/train and FOLDER/val (write_store, each a finished run folder of `stage`); `extra_index(split)`
    gives that split's extra index arrays."""
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (tokenizer.eos_token_id or 0)
    for split in SPLITS:
        sub = start_run(folder / split, stage, {"split": split})
        write_store(folder / split, rendered, split, len(tokenizer), pad_id, fp, _sha(tokenizer_dir / "tokenizer.json"),
                    extra_index(split) if extra_index else None, extra_meta)
        n = len(rendered.ids[split])
        sub.finish({"counts": counts(n, n, unit="samples"), "fingerprint": fp})


def prepare(out: Path, tokenizer, tokenizer_dir: Path, template: str, data_cfg) -> dict:
    """Render (or reuse) OUT/data/{train,val}; returns the data report (also OUT/data/report.json)."""
    train_files, val_files = jsonl_files(data_cfg.train), jsonl_files(data_cfg.val) if data_cfg.val else []
    options = data_cfg.model_dump(mode="json", include={"seq_len", "val_size", "assistant", "train_on_prompt",
                                                         "overlong"})
    fp = fingerprint(train_files + val_files, tokenizer_dir, template, options)
    folder = out / "data"
    done = read_report(folder)
    if done is not None and done.get("fingerprint") == fp:
        return done
    run = start_run(folder, "sft-render", {"train": [str(p) for p in train_files],
                                           "val": [str(p) for p in val_files], **options})
    with JsonlWriter(folder / "rejects.jsonl") as rejects:
        rendered = render_records(train_files, tokenizer, template, data_cfg, rejects, val_files)
    if not rendered.ids["train"]:
        raise ValueError(f"no training samples in {', '.join(map(str, train_files))}: "
                         f"{dict(rendered.filtered)} filtered, {dict(rendered.rejected)} rejected "
                         f"(see {folder / 'rejects.jsonl'})")
    write_splits(folder, rendered, tokenizer, tokenizer_dir, fp, "sft-samples")
    filtered = {**rendered.filtered, VAL: rendered.kept["val"]}
    report = {"counts": counts(rendered.records_in, rendered.kept["train"], filtered, rendered.rejected),
              "fingerprint": fp, "samples": {s: len(rendered.ids[s]) for s in SPLITS},
              "truncated_history": rendered.truncated,
              "headline": ["samples.train", "samples.val", "truncated_history"]}
    return run.finish(report)
