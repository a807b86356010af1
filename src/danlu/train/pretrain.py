"""`danlu train pt`: pretrain (or continue pretraining) a causal LM on token stores.

    OUT/
      config.yaml, run.log, report.json, metrics.jsonl   (danlu.runs conventions)
      tb/                          TensorBoard curves
      checkpoints/step-NNNNNNNN/   resumable checkpoints (keep-last-K), each a loadable HF folder too
      model/                       the final model: HF folder + tokenizer + lineage.json
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from danlu import __version__
from danlu.config import ConfigError
from danlu.runs import atomic_dir, atomic_write_json, start_run
from danlu.train.config import OptimConfig, PretrainConfig

LINEAGE = "lineage.json"


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW, weight decay on matrices only (not norms/biases); fused kernel where the backend has one."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    kwargs = dict(lr=cfg.lr, betas=cfg.betas, eps=cfg.eps)
    if cfg.fused is not False:
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, ValueError):
            if cfg.fused:
                raise
    return torch.optim.AdamW(groups, **kwargs)


def _say(run, text: str, main: bool) -> None:
    if main:
        print(text, file=sys.stderr, flush=True)
        if run is not None:
            for line in text.splitlines():
                run.log.info(line)


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


def lineage(cfg: PretrainConfig, steps: int, tokens: int) -> dict:
    base: dict
    if cfg.model.path:
        cfg_file = Path(cfg.model.path, "config.json")
        base = {"path": str(Path(cfg.model.path).resolve()),
                "config_sha256": hashlib.sha256(cfg_file.read_bytes()).hexdigest() if cfg_file.exists() else None}
    else:
        base = {"new": "llama", "preset": cfg.model.preset, "dims": cfg.model.dims()}
    return {
        "stage": "train-pt", "danlu": __version__, "created": datetime.now(timezone.utc).isoformat(),
        "base_model": base, "tokenizer": str(Path(cfg.model.tokenizer_dir()).resolve()),
        "data": [{"name": s.name, "store": str(Path(s.store).resolve()) if s.store else None, "weight": s.weight,
                  "domain": s.domain, **(_store_fingerprint(s.store) if s.store else {})} for s in cfg.data.sources],
        "steps": steps, "tokens": tokens, "config": cfg.model_dump(mode="json"),
    }


def save_final_model(out_dir: Path, model: torch.nn.Module, tokenizer_dir: str, lineage_info: dict, info,
                     checkpoint: Path | None = None) -> Path:
    """Write OUT/model atomically (temp folder, then rename): HF weights, tokenizer, lineage.json.
    `checkpoint`, the last step's checkpoint (already a full HF folder of these weights), lends its model
    files as hard links: no second gather of the full state and no second write of a large model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers import AutoTokenizer

    from danlu.train.checkpoint import link_model_files, save_hf
    from danlu.train.distributed import barrier, unwrap

    sd = None if checkpoint else get_model_state_dict(model, options=StateDictOptions(full_state_dict=True,
                                                                                      cpu_offload=True))
    final = out_dir / "model"
    if info.is_main:
        with atomic_dir(final) as tmp:
            if checkpoint:
                link_model_files(checkpoint, tmp)
            else:
                save_hf(unwrap(model), tmp, sd)
            if tokenizer_dir:
                AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(tmp)
            atomic_write_json(tmp / LINEAGE, lineage_info)
    barrier()
    return final


def _heldout(src, d, micro: int) -> list[dict]:
    """The source's first `d.heldout_rows` held-out rows, evaluated `micro` rows at a time."""
    from danlu.train.batches import heldout_batches

    rows = heldout_batches(src, d.seq_len, 1, d.heldout_rows, d.doc_mask)
    return [{k: torch.cat([r[k] for r in rows[i : i + micro]]) for k in rows[0]} for i in range(0, len(rows), micro)]


def _trim_metrics(path: Path, last_step: int) -> None:
    """Drop metric lines logged after `last_step` (they will be logged again)."""
    if not path.exists():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= last_step:
                keep.append(line)
        except ValueError:
            continue
    from danlu.runs import atomic_write_text

    atomic_write_text(path, "".join(x + "\n" for x in keep))


def pretrain(cfg: PretrainConfig, out: str | Path | None = None, resume: bool = False) -> dict:
    """Train per `cfg` into `out` (default cfg.out); with `resume`, continue from the newest checkpoint.
    Returns the report (also written to OUT/report.json on rank 0)."""
    from danlu.model.create import count_parameters, create_model
    from danlu.train import estimate as est
    from danlu.train.batches import PackedBatches
    from danlu.train.checkpoint import checkpoint_path, checkpoints
    from danlu.train.distributed import from_rank0, init_distributed, wrap_model
    from danlu.train.evaluate import heldout_metrics
    from danlu.train.loop import LoopConfig, train
    from danlu.train.mixing import plan
    from danlu.train.objectives import causal_lm
    from danlu.train.schedule import lr_multiplier

    if out is None and cfg.out is None:
        raise ConfigError("no output folder: set 'out' in the config or pass -o OUT")
    out = Path(out if out is not None else cfg.out)
    info = init_distributed()
    d, t = cfg.data, cfg.train
    world, micro = info.world_size, t.micro_batch_size
    if t.batch_size % (micro * world):
        raise ConfigError(f"train.batch_size {t.batch_size} must be a multiple of train.micro_batch_size {micro} "
                          f"x processes {world}")
    grad_accum = t.batch_size // (micro * world)
    tokens_per_step = t.batch_size * d.seq_len
    steps = t.max_steps or math.ceil(t.tokens / tokens_per_step)

    ckpt_dir = out / "checkpoints"
    found = checkpoints(ckpt_dir)
    start_step, resume_from = found[-1] if found else (0, None)
    if resume_from is not None and not resume:
        raise ValueError(f"{out} already holds checkpoints (newest {resume_from.name}): pass --resume to continue, "
                         "or choose another output folder")
    run = start_run(out, "train-pt", cfg) if info.is_main else None
    if resume and resume_from is None:
        _say(run, f"--resume: no checkpoint in {ckpt_dir}; starting from the beginning", info.is_main)
    if info.is_main:  # lines logged after the checkpoint (or, without one, by an earlier try) are logged again
        _trim_metrics(out / "metrics.jsonl", start_step)

    mix = plan(d.sources, steps * tokens_per_step, d.max_domain_ratio)
    _say(run, "data mix:\n" + mix.table(), info.is_main)

    model = create_model(cfg.model, seed=t.seed)
    stream = PackedBatches(d.sources, seq_len=d.seq_len, batch_size=micro, doc_mask=d.doc_mask, seed=d.seed,
                           rank=info.rank, world_size=world)
    store_vocab = stream.stores[0].vocab_size
    if store_vocab > model.config.vocab_size:
        raise ValueError(f"data.sources: tokens go up to vocab {store_vocab} but the model's vocabulary is "
                         f"{model.config.vocab_size}: tokenize with the model's tokenizer")
    model.to(info.device)
    if t.activation_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    precision, peaks = from_rank0(est.resolve_precision(t.precision, info.device))  # "auto" is measured: one verdict
    peak = peaks.get(precision, peaks["fp32"])
    n_params = count_parameters(model)
    fpt = est.flops_per_token(model, d.seq_len)
    memory = est.memory_estimate(model, micro, d.seq_len, precision, t.activation_checkpointing, world,
                                 fsdp=t.distributed == "fsdp")

    net = wrap_model(model, info, t.distributed)
    if t.compile:
        net = torch.compile(net)
    optimizer = build_optimizer(net, cfg.optim, info.device)
    s = cfg.schedule
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(s.kind, steps, s.warmup_steps, cfg.optim.min_lr_ratio, s.decay_fraction))
    objective = causal_lm(d.doc_mask)
    heldout = {src.name: _heldout(src, d, micro) for src in d.sources} if d.heldout_rows else {}
    for name in [n for n, batches in heldout.items() if not batches]:
        _say(run, f"warning: source '{name}' has too few documents for a held-out split (it takes at most a tenth "
                  "of a store's documents): its held-out loss is not measured; add data or chunk it finer", info.is_main)

    position = stream.state_dict()
    probe = next(stream)  # a batch to time a step with; the stream is put back where it was
    stream.load_state_dict(position)
    step_s = est.measure_step_seconds(net, objective, probe, precision, info.device) * grad_accum
    text, estimate = est.summary(n_params, steps * tokens_per_step, fpt, step_s, tokens_per_step, steps,
                                 memory, peak, world)
    _say(run, f"{text}\nprecision {precision} (matmul GFLOP/s: "
              + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in peaks.items())
              + f"); {world} process(es), grad_accum {grad_accum}, doc_mask {d.doc_mask}"
              + (f"; resuming from {resume_from}" if resume_from else ""), info.is_main)

    tb = None
    if info.is_main and cfg.log.tensorboard:
        from torch.utils.tensorboard import SummaryWriter

        tb = SummaryWriter(str(out / "tb"), purge_step=start_step + 1)

    def log(m: dict) -> None:
        run.log_metrics(m)
        if "event" in m and m["event"] != "eval":
            run.log.warning("%s", json.dumps(m, ensure_ascii=False))
        elif "loss" in m:
            run.log.info("step %d loss %.4f lr %.3g grad_norm %.3g tokens/s %.0f", m["step"], m["loss"], m["lr"],
                         m["grad_norm"], m["tokens_per_s"])

    loop_cfg = LoopConfig(max_steps=steps, grad_accum=grad_accum, grad_clip=cfg.optim.grad_clip,
                          precision=precision, log_every=cfg.log.every, eval_every=cfg.eval.every,
                          save_every=cfg.checkpoint.every, keep_last=cfg.checkpoint.keep_last, spikes=cfg.spikes,
                          progress=cfg.log.progress, flops_per_token=fpt, peak_flops=peak)
    result = train(net, optimizer, scheduler, stream, objective, loop_cfg, info, checkpoint_dir=ckpt_dir,
                   resume_from=resume_from, log=log if run is not None else None, tb=tb,
                   evaluate=(lambda m: heldout_metrics(m, heldout, objective, precision, info)) if heldout else None)
    if tb is not None:
        tb.close()
    # the loop always checkpoints its last step (and a run resumed at its end starts from that checkpoint)
    last_ckpt = checkpoint_path(ckpt_dir, result["steps"]) if result["steps"] else None
    final = save_final_model(out, net, cfg.model.tokenizer_dir(), lineage(cfg, result["steps"], result["tokens"]),
                             info, checkpoint=last_ckpt)
    stats = stream.stats()
    report = {
        "model": str(final), "steps": result["steps"], "tokens": result["tokens"],
        "final_loss": result["final_loss"], "heldout": result["eval"], "tokens_per_s": result["tokens_per_s"],
        "spikes": result["skipped"], "rollbacks": result["rollbacks"], "resumed_from": str(resume_from or ""),
        "mix": mix.as_dict(), "estimate": estimate, "precision": precision, "world_size": world,
        "grad_accum": grad_accum, "stream": {k: v for k, v in stats.items()},
    }
    if run is not None:
        report = run.finish(report)
        loss = "n/a (nothing left to train)" if result["final_loss"] is None else f"{result['final_loss']:.4f}"
        _say(run, f"done: {result['steps']} steps, final loss {loss}, {result['tokens_per_s']:,.0f} tokens/s, "
                  f"padding {stats['pad_fraction']:.1%} of tokens; model -> {final}", True)
    return report
