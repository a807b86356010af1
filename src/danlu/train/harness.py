"""The training harness: everything a training stage (pretraining, SFT, preference tuning, reward models) shares
around the loop, so that a stage function only chooses its model, batch stream, objective and evaluation:

    session = open_session("train-sft", cfg, out, resume)           # processes, run folder, checkpoints found
    model = ...                                                       # create or load (+ LoRA / freezing)
    fitted = fit(session, model, stream, objective, steps, rows_per_step, seq_len, evaluate=...)
    return finish(session, fitted, tokenizer_dir, lineage, report)    # final model + lineage + report.json

`fit` moves the model to its device, resolves the precision, prints the estimate (parameters, FLOPs, measured
step time, memory), wraps the model for DDP/FSDP, builds the optimizer and schedule and runs danlu.train.loop
with one metrics sink (metrics.jsonl, TensorBoard and run.log).
"""

from __future__ import annotations

import contextlib
import json
import math
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Optional

import torch
from pydantic import BaseModel

from danlu import __version__
from danlu.config import ConfigError
from danlu.model.attention import document_attention
from danlu.runs import Run, atomic_dir, atomic_write_json, atomic_write_text, start_run
from danlu.train.config import OptimConfig, TrainingRunConfig
from danlu.train.distributed import DistInfo, barrier, from_rank0, init_distributed, unwrap, wrap_model
from danlu.train.objectives import Objective

LINEAGE = "lineage.json"


@dataclass
class Session:
    """An open training run: where it writes, which process this is, where it resumes from."""

    stage: str
    cfg: TrainingRunConfig
    out: Path
    info: DistInfo
    run: Run | None  # rank 0 only
    grad_accum: int
    start_step: int
    resume_from: Path | None
    resumed_meta: dict  # the settings the checkpoint resumed from was written with ({} when not resuming)
    changes: list[dict]  # settings changed since that checkpoint, applied from start_step (each logged)
    resolved_precision: tuple[str, dict] | None = None  # (precision, matmul peaks) once run_precision decided

    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoints"

    def say(self, text: str) -> None:
        """Print on rank 0 (stderr, so stdout stays for results) and keep it in run.log."""
        if self.info.is_main:
            print(text, file=sys.stderr, flush=True)
            if self.run is not None:
                for line in text.splitlines():
                    self.run.log.info(line)


def open_session(stage: str, cfg: TrainingRunConfig, out: str | Path | None = None, resume: bool = False) -> Session:
    """Join the process group (under torchrun), check the batch arithmetic, find checkpoints, open the run folder."""
    from danlu.train.checkpoint import checkpoint_meta, checkpoints

    if out is None and cfg.out is None:
        raise ConfigError("no output folder: set 'out' in the config or pass -o OUT")
    out = Path(out if out is not None else cfg.out)
    info = init_distributed()
    t = cfg.train
    if t.batch_size % (t.micro_batch_size * info.world_size):
        raise ConfigError(f"train.batch_size {t.batch_size} must be a multiple of train.micro_batch_size "
                          f"{t.micro_batch_size} x processes {info.world_size}")
    found = checkpoints(out / "checkpoints")
    start_step, resume_from = found[-1] if found else (0, None)
    if resume_from is not None and not resume:
        raise ValueError(f"{out} already holds checkpoints (newest {resume_from.name}): pass --resume to continue, "
                         "or choose another output folder")
    meta = checkpoint_meta(resume_from) if resume_from is not None else {}
    changes = resume_changes(meta.get("config"), cfg.model_dump(mode="json"), resume_from) if meta else []
    run = start_run(out, stage, cfg) if info.is_main else None
    session = Session(stage, cfg, out, info, run, t.batch_size // (t.micro_batch_size * info.world_size),
                      start_step, resume_from, meta, changes)
    if resume and resume_from is None:
        session.say(f"--resume: no checkpoint in {session.ckpt_dir}; starting from the beginning")
    for c in changes:
        session.say(f"resume: {c['key']} changed from {c['from']!r} to {c['to']!r}: applied from step {start_step}")
    if info.is_main:  # lines logged after the checkpoint (or, without one, by an earlier try) are logged again
        _trim_metrics(out / "metrics.jsonl", start_step)
    return session


# Settings a resumed run may change: each is applied from the resume step and logged. Any other change (model,
# data, batch size, schedule shape, seed...) would silently mix two runs in one, so it is refused.
RESUMABLE_CHANGES = ("out", "optim.lr", "optim.min_lr_ratio", "optim.weight_decay", "optim.grad_clip",
                     "train.max_steps", "train.tokens", "train.epochs", "train.precision", "train.compile",
                     "train.activation_checkpointing", "train.micro_batch_size", "train.distributed", "log.",
                     "eval.", "checkpoint.", "spikes.")


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        out.update(_flatten(v, key + ".") if isinstance(v, dict) else {key: v})
    return out


def resume_changes(saved: dict | None, current: dict, checkpoint: Path) -> list[dict]:
    """The settings that differ between a checkpoint's run and this one; refuses those that cannot change."""
    if saved is None:
        return []
    old, new = _flatten(saved), _flatten(current)
    changed = [{"key": k, "from": old.get(k), "to": new.get(k)} for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k)]
    refused = [c for c in changed if not any(c["key"] == a or (a.endswith(".") and c["key"].startswith(a))
                                             for a in RESUMABLE_CHANGES)]
    if refused:
        listed = "; ".join(f"{c['key']}: {c['from']!r} -> {c['to']!r}" for c in refused)
        raise ConfigError(f"--resume from {checkpoint}: these settings differ from the run being resumed and "
                          f"cannot change mid-run: {listed}. Start a new run (another output folder) instead; a "
                          f"resume may change only {', '.join(a.rstrip('.') for a in RESUMABLE_CHANGES)}")
    return [c for c in changed if c["key"] != "out"]


def run_precision(session: Session) -> tuple[str, dict[str, float]]:
    """The run's precision and the measured matmul peaks, decided once per session: "auto" is measured on rank 0
    (one verdict for every process) and a resumed run keeps the precision it started with. A stage that
    computes something before `fit` in the training precision (DPO's reference log-probs) asks here first."""
    from danlu.train import estimate as est

    if session.resolved_precision is None:
        t, device = session.cfg.train, session.info.device
        saved = session.resumed_meta.get("precision")
        if t.precision == "auto" and saved:  # decided when the run started: a resume never flips it
            session.resolved_precision = saved, from_rank0(est.resolve_precision(saved, device))[1]
        else:
            session.resolved_precision = from_rank0(est.resolve_precision(t.precision, device))
    return session.resolved_precision


def _apply_changes(session: Session):
    """on_resume for the loop: the restored optimizer and scheduler carry the old learning rate and weight
    decay; put the configured ones in (the schedule's shape and length come from the config anyway)."""
    keys = {c["key"] for c in session.changes}
    if not keys & {"optim.lr", "optim.weight_decay"}:
        return None
    lr, wd = session.cfg.optim.lr, session.cfg.optim.weight_decay

    def apply(optimizer, scheduler) -> None:
        if "optim.lr" in keys:
            scheduler.base_lrs = [lr for _ in optimizer.param_groups]
            for group, fn in zip(optimizer.param_groups, scheduler.lr_lambdas):
                group["initial_lr"] = lr
                group["lr"] = lr * fn(scheduler.last_epoch)
        if "optim.weight_decay" in keys:
            for group in optimizer.param_groups:
                if group["weight_decay"] > 0:  # the no-decay group (norms, biases) stays at 0
                    group["weight_decay"] = wd

    return apply


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
    atomic_write_text(path, "".join(x + "\n" for x in keep))


class MetricsSink:
    """The loop's one metrics channel: every dict goes to metrics.jsonl, the scalars to TensorBoard, a line to
    run.log (events such as spikes as warnings)."""

    TRAIN_SCALARS = ("loss", "lr", "grad_norm", "tokens_per_s", "mfu")

    def __init__(self, run: Run, tensorboard: bool, purge_step: int):
        self.run = run
        self.tb = None
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(run.dir / "tb"), purge_step=purge_step)

    def __call__(self, m: dict) -> None:
        self.run.log_metrics(m)
        event = m.get("event")
        if event is not None and event != "eval":
            self.run.log.warning("%s", json.dumps(m, ensure_ascii=False))
        elif event == "eval":
            if self.tb is not None:
                for k, v in m.items():
                    if k not in ("step", "event") and isinstance(v, (int, float)):
                        self.tb.add_scalar(k, v, m["step"])
        elif "loss" in m:
            self.run.log.info("step %d loss %.4f lr %.3g grad_norm %.3g tokens/s %.0f", m["step"], m["loss"],
                              m["lr"], m["grad_norm"], m["tokens_per_s"])
            if self.tb is not None:
                for k, v in m.items():  # the loop's figures, and an objective's own ("rewards/margin")
                    if (k in self.TRAIN_SCALARS or "/" in k) and isinstance(v, (int, float)):
                        self.tb.add_scalar(f"train/{k}", v, m["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def build_optimizer(model: torch.nn.Module, cfg: OptimConfig, device: torch.device) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters, weight decay on matrices only (not norms/biases); fused kernel where
    the backend has one."""
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


@dataclass
class Fitted:
    """What `fit` hands to `finish`: the trained (wrapped) model and the loop's summary."""

    net: torch.nn.Module
    result: dict
    precision: str
    estimate: dict

    def report(self) -> dict:
        """The report fields every training stage shares."""
        r = self.result
        return {"steps": r["steps"], "tokens": r["tokens"], "final_loss": r["final_loss"], "heldout": r["eval"],
                "tokens_per_s": r["tokens_per_s"], "spikes": r["skipped"], "rollbacks": r["rollbacks"],
                "estimate": self.estimate, "precision": self.precision}


def steps_for(cfg: TrainingRunConfig, tokens_per_step: int) -> int:
    """train.max_steps, or train.tokens over the tokens one step trains on."""
    return cfg.train.max_steps or math.ceil(cfg.train.tokens / tokens_per_step)


def fit(session: Session, model: torch.nn.Module, stream, objective: Objective, steps: int, tokens_per_step: int,
        seq_len: int, evaluate: Optional[Callable[[torch.nn.Module, str], dict]] = None,
        checkpoint_assets: Path | None = None) -> Fitted:
    """Train `model` for `steps` optimizer steps (resuming from the session's checkpoint) and return it.
    `evaluate(model, precision)` gives held-out metrics; `tokens_per_step` is for the estimate's totals;
    `checkpoint_assets` (a tokenizer folder) is copied into every checkpoint."""
    from danlu.model.create import count_parameters
    from danlu.train import estimate as est
    from danlu.train.loop import LoopConfig, train
    from danlu.train.schedule import lr_multiplier

    cfg, info, t = session.cfg, session.info, session.cfg.train
    model.to(info.device)
    if t.activation_checkpointing:
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    precision, peaks = run_precision(session)
    peak = peaks.get(precision, peaks["fp32"])
    n_params = count_parameters(model)
    fpt = est.flops_per_token(model, seq_len)
    memory = est.memory_estimate(model, t.micro_batch_size, seq_len, precision, t.activation_checkpointing,
                                 info.world_size, fsdp=t.distributed == "fsdp")

    net = wrap_model(model, info, t.distributed)
    if t.compile:
        net = torch.compile(net)
    optimizer = build_optimizer(net, cfg.optim, info.device)
    s = cfg.schedule
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lr_multiplier(s.kind, steps, s.warmup_steps, cfg.optim.min_lr_ratio, s.decay_fraction))

    # per-document attention on CPU for the whole run (danlu.model.attention); a compiled graph keeps the mask
    with document_attention(model, info.device) if not t.compile else contextlib.nullcontext():
        position = stream.state_dict()
        probe = next(stream)  # a batch to time a step with; the stream is put back where it was
        stream.load_state_dict(position)
        step_s = est.measure_step_seconds(net, objective, probe, precision, info.device) * session.grad_accum
        text, estimate = est.summary(n_params, steps * tokens_per_step, fpt, step_s, tokens_per_step, steps, memory,
                                     peak, info.world_size)
        session.say(f"{text}\nprecision {precision} (matmul GFLOP/s: "
                    + ", ".join(f"{k} {v / 1e9:.0f}" for k, v in peaks.items())
                    + f"); {info.world_size} process(es), grad_accum {session.grad_accum}"
                    + f", attention {model.config._attn_implementation}"
                    + (f"; resuming from {session.resume_from}" if session.resume_from else ""))

        sink = (MetricsSink(session.run, cfg.log.tensorboard, session.start_step + 1)
                if session.run is not None else None)
        loop_cfg = LoopConfig(max_steps=steps, grad_accum=session.grad_accum, grad_clip=cfg.optim.grad_clip,
                              precision=precision, log_every=cfg.log.every, eval_every=cfg.eval.every,
                              save_every=cfg.checkpoint.every, keep_last=cfg.checkpoint.keep_last, spikes=cfg.spikes,
                              progress=cfg.log.progress, flops_per_token=fpt, peak_flops=peak,
                              checkpoint_assets=checkpoint_assets)
        try:
            result = train(net, optimizer, scheduler, stream, objective, loop_cfg, info,
                           checkpoint_dir=session.ckpt_dir, resume_from=session.resume_from, sink=sink,
                           evaluate=(lambda m: evaluate(m, precision)) if evaluate is not None else None,
                           meta={"config": cfg.model_dump(mode="json"), "precision": precision},
                           on_resume=_apply_changes(session))
        finally:
            if sink is not None:
                sink.close()
    return Fitted(net, result, precision, estimate)


def lineage(session: Session, base_model: dict, tokenizer_dir: str, data: list[dict], fitted: Fitted) -> dict:
    """lineage.json: what this model was made from (base model, tokenizer, data by hash) and how."""
    return {"stage": session.stage, "danlu": __version__, "created": datetime.now(timezone.utc).isoformat(),
            "base_model": base_model, "tokenizer": str(Path(tokenizer_dir).resolve()) if tokenizer_dir else None,
            "data": data, "steps": fitted.result["steps"], "tokens": fitted.result["tokens"],
            "config": session.cfg.model_dump(mode="json") if isinstance(session.cfg, BaseModel) else session.cfg,
            "resumed_with_changes": [{**c, "from_step": session.start_step} for c in session.changes]}


def save_final_model(session: Session, fitted: Fitted, tokenizer_dir: str, lineage_info: dict) -> Path:
    """Write OUT/model atomically (temp folder, then rename): HF weights, tokenizer, lineage.json. The last
    step's checkpoint (the loop always writes one; already a full HF folder of these weights) lends its model
    files as hard links: no second gather of the full state and no second write of a large model."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from transformers import AutoTokenizer

    from danlu.train.checkpoint import checkpoint_path, link_model_files, save_hf

    steps = fitted.result["steps"]
    checkpoint = checkpoint_path(session.ckpt_dir, steps) if steps else None
    sd = None if checkpoint else get_model_state_dict(fitted.net, options=StateDictOptions(full_state_dict=True,
                                                                                            cpu_offload=True))
    final = session.out / "model"
    if session.info.is_main:
        with atomic_dir(final) as tmp:
            if checkpoint:
                link_model_files(checkpoint, tmp)
            else:
                save_hf(unwrap(fitted.net), tmp, sd)
            if tokenizer_dir and not (tmp / "tokenizer.json").exists():  # the checkpoint may carry it already
                AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(tmp)
            atomic_write_json(tmp / LINEAGE, lineage_info)
    barrier()
    return final


def finish(session: Session, fitted: Fitted, tokenizer_dir: str, lineage_info: dict, report: dict,
           post_save: Optional[Callable[[Path], dict]] = None) -> dict:
    """Save the final model, write report.json (rank 0) and print the closing line; returns the report.
    `post_save(final_model_folder)` (rank 0) runs before the report is written and adds to it."""
    final = save_final_model(session, fitted, tokenizer_dir, lineage_info)
    if post_save is not None and session.info.is_main:
        report = {**report, **post_save(final)}
    report = {"model": str(final), **fitted.report(), "resumed_from": str(session.resume_from or ""),
              "resumed_with_changes": [{**c, "from_step": session.start_step} for c in session.changes],
              "world_size": session.info.world_size, "grad_accum": session.grad_accum, **report}
    if session.run is None:
        return report
    report = session.run.finish(report)
    r = fitted.result
    loss = "n/a (nothing left to train)" if r["final_loss"] is None else f"{r['final_loss']:.4f}"
    session.say(f"done: {r['steps']} steps, final loss {loss}, {r['tokens_per_s']:,.0f} tokens/s; model -> {final}")
    return report
