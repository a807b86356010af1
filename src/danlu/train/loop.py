"""The one training loop: a model, a batch stream and an objective (pretraining, SFT and DPO differ only there).

Each optimizer step pulls `grad_accum` micro-batches from the stream, normalises the summed loss by the item
count of the whole step over all processes (so the gradient is the same however the step is split over
micro-batches and processes), clips, steps AdamW and the LR schedule, and logs. Checkpoints carry the stream
position, so a resumed run sees exactly the batches the uninterrupted run would have seen.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Optional, Protocol

import torch

from danlu.train.checkpoint import checkpoints, load_checkpoint, remove_after, save_checkpoint
from danlu.train.config import SpikeConfig
from danlu.train.distributed import DistInfo, all_reduce_sum, autocast, barrier, grad_sync
from danlu.train.objectives import Objective
from danlu.train.spikes import SpikeDetector


@dataclass
class LoopConfig:
    max_steps: int
    grad_accum: int = 1
    grad_clip: float = 1.0
    precision: str = "fp32"  # "bf16" (autocast) or "fp32"; resolve "auto" with estimate.resolve_precision
    log_every: int = 10
    eval_every: int = 0  # 0: evaluate only at the end
    save_every: int = 0  # 0: checkpoint only at the end
    keep_last: int = 3
    spikes: SpikeConfig = field(default_factory=SpikeConfig)
    progress: bool = True
    flops_per_token: float = 0.0  # for MFU (estimate.flops_per_token)
    peak_flops: float = 0.0  # per process (estimate.measure_peak_flops)
    checkpoint_assets: Optional[Path] = None  # files copied into every checkpoint (a tokenizer folder)


@dataclass
class LoopState:
    step: int = 0  # optimizer steps done
    tokens: int = 0  # input tokens consumed by those steps, all processes
    rollbacks: int = 0
    skipped: list = field(default_factory=list)  # spike events: what was rolled back and skipped
    detector: dict = field(default_factory=dict)
    verified: int = -1  # the checkpoint step last rolled back to: its weights are known good

    def to_dict(self) -> dict:
        return {"step": self.step, "tokens": self.tokens, "rollbacks": self.rollbacks,
                "skipped": list(self.skipped), "detector": self.detector, "verified": self.verified}


class Stream(Protocol):
    """What the loop needs from a batch stream (danlu.train.batches.PackedBatches is one): endless batches of
    tensors, and a JSON-able position to resume from."""

    def __next__(self) -> dict: ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...


Sink = Callable[[dict], None]  # receives every metrics dict the loop produces (danlu.train.harness.MetricsSink)


def train(model: torch.nn.Module, optimizer: torch.optim.Optimizer, scheduler, stream: Stream,
          objective: Objective, cfg: LoopConfig, info: DistInfo = DistInfo(), *,
          checkpoint_dir: str | Path | None = None, resume_from: str | Path | None = None,
          sink: Optional[Sink] = None,
          evaluate: Optional[Callable[[torch.nn.Module], dict]] = None,
          meta: Optional[dict] = None,
          on_resume: Optional[Callable[[torch.optim.Optimizer, object], None]] = None) -> dict:
    """Run optimizer steps until cfg.max_steps; returns a summary (losses per step, spikes, throughput).

    `sink` receives every metrics dict: {"step", "loss", ...} per logged step, {"event": "eval", ...} after each
    evaluation, {"event": "spike", ...} per spike (rank 0 only); `evaluate(model)` returns {name: value}
    held-out metrics (called on every process); `meta` (the run's settings) is kept in every checkpoint;
    `on_resume(optimizer, scheduler)` runs after a checkpoint is restored (to apply a setting changed since)."""
    state = LoopState()
    detector = SpikeDetector(cfg.spikes)
    if resume_from is not None:
        saved = load_checkpoint(resume_from, model, optimizer, scheduler)
        if on_resume is not None:
            on_resume(optimizer, scheduler)
        stream.load_state_dict(saved["stream"])
        state = LoopState(**saved["loop"])
        detector.load_state_dict(state.detector)
    emit = sink if info.is_main else None
    losses: dict[int, float] = {}
    evals: dict = {}

    from tqdm.auto import tqdm

    bar = tqdm(total=cfg.max_steps, initial=state.step, desc="train", unit="step",
               disable=not (cfg.progress and info.is_main), dynamic_ncols=True)
    t_last, tokens_last, tokens_start = time.perf_counter(), state.tokens, state.tokens
    t_start = t_last
    paused = 0.0  # seconds spent evaluating and checkpointing, left out of the throughput
    extra = objective.metrics  # the objective's own figures (MetricSums), averaged over each logging window
    window: dict[str, list[torch.Tensor]] = {}
    if extra is not None:
        extra.take()  # drop what a call before training (the step-time probe) added
    model.train()
    while state.step < cfg.max_steps:
        micro = [{k: v.to(info.device, non_blocking=True) for k, v in next(stream).items()}
                 for _ in range(cfg.grad_accum)]
        n_items = all_reduce_sum(torch.tensor(float(sum(objective.count(b) for b in micro)), dtype=torch.float64,
                                              device=info.device))
        n_tokens = sum(b["input_ids"].numel() for b in micro) * info.world_size
        loss_sum = torch.zeros((), dtype=torch.float64, device=info.device)
        for i, batch in enumerate(micro):
            with grad_sync(model, i == len(micro) - 1), autocast(cfg.precision, info.device):
                loss = objective.loss_sum(model, batch)
            # DDP/FSDP average gradients over processes; scale so the result is sum / items of the whole step
            (loss * (info.world_size / n_items.clamp(min=1))).backward()
            loss_sum += loss.detach().double()
        step_loss = float(all_reduce_sum(loss_sum) / n_items.clamp(min=1))
        step_extra = extra.take() if extra is not None else {}  # a spike's step is dropped with its figures

        max_norm = cfg.grad_clip if cfg.grad_clip > 0 else float("inf")
        grad_norm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
        if detector.is_spike(step_loss) or not math.isfinite(grad_norm):
            optimizer.zero_grad(set_to_none=True)
            window.clear()  # figures of steps a rollback discards
            _on_spike(state, detector, step_loss if math.isfinite(grad_norm) else float("nan"), cfg, model,
                      optimizer, scheduler, checkpoint_dir, emit, info, on_resume)
            bar.n = state.step
            bar.refresh()
            continue
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        detector.update(step_loss)
        state.step += 1
        state.tokens += n_tokens
        losses[state.step] = step_loss
        for name, (total, count) in step_extra.items():
            acc = window.setdefault(name, [torch.zeros((), dtype=torch.float64, device=total.device),
                                           torch.zeros((), dtype=torch.float64, device=total.device)])
            acc[0] += total
            acc[1] += count
        bar.update(1)
        bar.set_postfix(loss=f"{step_loss:.4f}")

        last = state.step == cfg.max_steps
        if state.step % cfg.log_every == 0 or last:
            now = time.perf_counter() - paused
            tps = (state.tokens - tokens_last) / max(now - t_last, 1e-9)
            t_last, tokens_last = now, state.tokens
            m = {"step": state.step, "loss": step_loss, "lr": lr, "grad_norm": grad_norm,
                 "tokens": state.tokens, "tokens_per_s": round(tps, 1), "train_s": round(now - t_start, 3)}
            if cfg.flops_per_token and cfg.peak_flops:
                m["mfu"] = round(min(1.0, tps * cfg.flops_per_token / (cfg.peak_flops * info.world_size)), 4)
            if window:  # every process holds the same names (MetricSums' contract): one all-reduce for all
                names = sorted(window)
                sums = all_reduce_sum(torch.stack([torch.stack(window[k]) for k in names]).to(info.device))
                m.update({k: float(s / c) for k, (s, c) in zip(names, sums.tolist()) if c > 0})
                window = {}
            if emit:
                emit(m)
        t_pause = time.perf_counter()
        if evaluate is not None and ((cfg.eval_every and state.step % cfg.eval_every == 0) or last):
            evals = evaluate(model)
            model.train()
            if emit:
                emit({"step": state.step, "event": "eval", **evals})
        if checkpoint_dir is not None and ((cfg.save_every and state.step % cfg.save_every == 0) or last):
            state.detector = detector.state_dict()
            save_checkpoint(checkpoint_dir, state.step, model, optimizer, scheduler, stream.state_dict(),
                            state.to_dict(), info, cfg.keep_last, meta=meta, assets=cfg.checkpoint_assets)
        paused += time.perf_counter() - t_pause
    bar.close()
    elapsed = time.perf_counter() - t_start - paused
    return {"steps": state.step, "tokens": state.tokens, "losses": losses,
            "final_loss": losses.get(state.step), "eval": evals, "rollbacks": state.rollbacks,
            "skipped": state.skipped, "elapsed_s": round(elapsed, 3),
            "tokens_per_s": round((state.tokens - tokens_start) / max(elapsed, 1e-9), 1)}


def _on_spike(state: LoopState, detector: SpikeDetector, loss: float, cfg: LoopConfig, model, optimizer,
              scheduler, checkpoint_dir, emit, info: DistInfo, on_resume=None) -> None:
    """Roll back to the newest checkpoint known good and skip the batches seen since (the stream is not rewound).

    A checkpoint at step c is known good once the loss at step c+1 (computed with its weights) was accepted,
    i.e. c < state.step; the checkpoint at state.step itself may hold the update that caused the spike, unless
    it is the one just rolled back to (a second spike right after a rollback comes from the data)."""
    spike_step = state.step + 1
    good = [(s, p) for s, p in checkpoints(checkpoint_dir)] if checkpoint_dir is not None else []
    good = [(s, p) for s, p in good if s < state.step or s == state.verified]
    event: dict = {"event": "spike", "step": spike_step, "loss": loss if math.isfinite(loss) else str(loss)}
    if len(state.skipped) >= cfg.spikes.max_rollbacks:
        raise RuntimeError(f"loss spike at step {spike_step} (loss {loss}) after {len(state.skipped)} spikes already "
                           "handled (spikes.max_rollbacks); stopping: inspect the data or lower the learning rate")
    if not good:
        # nothing verified to return to: drop this step's batches without updating (weights are unchanged)
        event.update(rolled_back_to=None, skipped_steps=[spike_step, spike_step],
                     skipped_micro_batches=cfg.grad_accum)
    else:
        step, path = good[-1]
        saved = load_checkpoint(path, model, optimizer, scheduler)
        if on_resume is not None:  # a checkpoint from before a resume carries the settings changed since
            on_resume(optimizer, scheduler)
        if info.is_main:
            remove_after(checkpoint_dir, step)
        barrier()
        restored = saved["loop"]
        state.step, state.tokens = restored["step"], restored["tokens"]
        detector.load_state_dict(restored["detector"])
        state.rollbacks += 1
        state.verified = step
        event.update(rolled_back_to=step, skipped_steps=[step + 1, spike_step],
                     skipped_micro_batches=(spike_step - step) * cfg.grad_accum)
    state.skipped.append(event)
    if emit:
        emit(event)
