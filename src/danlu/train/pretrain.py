"""`danlu train pt`: pretrain (or continue pretraining) a causal LM on token stores.

    OUT/
      config.yaml, run.log, report.json, metrics.jsonl   (danlu.runs conventions)
      tb/                          TensorBoard curves
      checkpoints/step-NNNNNNNN/   resumable checkpoints (keep-last-K), each a loadable HF folder too
      model/                       the final model: HF folder + tokenizer + lineage.json

The shared work (processes, precision, estimate, optimizer, loop, final model) is danlu.train.harness; this
stage chooses the model (new or local), the packed token-store stream, next-token loss and held-out evaluation.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import torch

from danlu.runs import counts
from danlu.train.config import PretrainConfig


def _store_fingerprint(store: str) -> dict:
    """How a token store is identified in the lineage: the tokenize run's input fingerprint + tokenizer hash."""
    out = {}
    for name in ("report.json", "store.json"):
        try:
            meta = json.loads(Path(store, name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for k in ("fingerprint", "tokenizer_sha"):
            if meta.get(k):
                out[k] = meta[k]
    try:
        out["store_json_sha256"] = hashlib.sha256(Path(store, "store.json").read_bytes()).hexdigest()
    except OSError:
        pass
    return out


def base_model_info(cfg: PretrainConfig) -> dict:
    if cfg.model.path:
        cfg_file = Path(cfg.model.path, "config.json")
        return {"path": str(Path(cfg.model.path).resolve()),
                "config_sha256": hashlib.sha256(cfg_file.read_bytes()).hexdigest() if cfg_file.exists() else None}
    return {"new": "llama", "preset": cfg.model.preset, "dims": cfg.model.dims()}


def _heldout(source, d, micro: int) -> list[dict]:
    """The source's first `d.heldout_rows` held-out rows, evaluated `micro` rows at a time."""
    from danlu.train.batches import heldout_batches

    rows = heldout_batches(source, d.seq_len, 1, d.heldout_rows, d.doc_mask)
    return [{k: torch.cat([r[k] for r in rows[i : i + micro]]) for k in rows[0]} for i in range(0, len(rows), micro)]


def document_counts(sources) -> dict:
    """The report's counts: every document of every store is trained on, held out, or too short to train."""
    n_in = sum(len(s.store) for s in sources)
    kept = sum(len(s.train_docs) for s in sources)
    held = sum(len(s.split.heldout) for s in sources)
    return counts(n_in, kept, {"held out for evaluation": held, "shorter than 2 tokens": n_in - kept - held},
                  unit="documents")


def pretrain(cfg: PretrainConfig, out: str | Path | None = None, resume: bool = False) -> dict:
    """Train per `cfg` into `out` (default cfg.out); with `resume`, continue from the newest checkpoint.
    Returns the report (also written to OUT/report.json on rank 0)."""
    from danlu.model.create import create_model
    from danlu.train.batches import PackedBatches
    from danlu.train.evaluate import heldout_metrics
    from danlu.train.harness import finish, fit, lineage, open_session, steps_for
    from danlu.train.mixing import plan
    from danlu.train.objectives import causal_lm
    from danlu.train.sources import open_sources

    session = open_session("train-pt", cfg, out, resume)
    d, t, info = cfg.data, cfg.train, session.info
    tokens_per_step = t.batch_size * d.seq_len
    steps = steps_for(cfg, tokens_per_step)
    sources = open_sources(d.sources, tokenizer_dir=cfg.model.tokenizer_dir())
    mix = plan(sources, steps * tokens_per_step, d.max_domain_ratio)
    session.say("data mix:\n" + mix.table())

    model = create_model(cfg.model, seed=t.seed)
    stream = PackedBatches(sources, seq_len=d.seq_len, batch_size=t.micro_batch_size, doc_mask=d.doc_mask,
                           seed=d.seed, rank=info.rank, world_size=info.world_size)
    store_vocab = sources[0].store.vocab_size
    if store_vocab > model.config.vocab_size:
        raise ValueError(f"data.sources: tokens go up to vocab {store_vocab} but the model's vocabulary is "
                         f"{model.config.vocab_size}: tokenize with the model's tokenizer")
    objective = causal_lm(d.doc_mask)
    heldout = {s.name: _heldout(s, d, t.micro_batch_size) for s in sources} if d.heldout_rows else {}
    for name in [n for n, batches in heldout.items() if not batches]:
        session.say(f"warning: source '{name}' has too few documents for a held-out split (it takes at most a "
                    "tenth of a store's documents): its held-out loss is not measured; add data or chunk it finer")
    session.say(f"doc_mask {d.doc_mask}")

    fitted = fit(session, model, stream, objective, steps, tokens_per_step, d.seq_len,
                 evaluate=(lambda m, precision: heldout_metrics(m, heldout, objective, precision, info))
                 if heldout else None)
    data = [{"name": s.name, "store": str(Path(s.store).resolve()) if s.store else None, "weight": s.weight,
             "domain": s.domain, **(_store_fingerprint(s.store) if s.store else {})} for s in d.sources]
    info_ = lineage(session, base_model_info(cfg), cfg.model.tokenizer_dir(), data, fitted)
    stats = stream.stats()
    report = {"counts": document_counts(sources), "headline": ["steps", "final_loss", "tokens_per_s", "model"],
              "mix": mix.as_dict(), "stream": stats, "warnings": mix.warnings}
    session.say(f"padding {stats['pad_fraction']:.1%} of tokens")
    return finish(session, fitted, cfg.model.tokenizer_dir(), info_, report)
