"""Configuration of `danlu train pt` (and the shared loop pieces SFT/DPO reuse)."""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from danlu.config import StrictModel
from danlu.model.create import ModelSpec
from danlu.train.mixing import SourceSpec


class DataConfig(StrictModel):
    sources: list[SourceSpec] = Field(min_length=1)  # token stores (`danlu data tokenize`) and their weights
    seq_len: int = Field(512, ge=8)
    # Document masking (positions restart per document; no attention across documents). Default ON, from
    # benchmarks/bench_pretrain.py on the Debian corpus (Llama d=128 L=4, 123K identical tokens, fp32 CPU):
    # held-out loss with doc_mask minus without: ops -0.030, general -0.083 (each held-out document scored
    # alone, as prompts arrive at inference) and still lower when scored as packed unmasked rows; it cost 1-2%
    # throughput (SDPA gets an explicit mask instead of its is_causal fast path). The general text here is
    # many short documents per row, where cross-document attention is pure noise; the nanoGPT speedrun saw no
    # gain on long web documents, so for corpora of long documents `doc_mask: false` is a fair choice.
    doc_mask: bool = True
    seed: int = 0
    max_domain_ratio: float = Field(0.15, gt=0, le=1)  # warn when domain sources exceed this share
    # Rows of held-out documents per source for the held-out loss / perplexity: a fixed set whatever the
    # micro-batch size or process count, so runs stay comparable.
    heldout_rows: int = Field(32, ge=0)


class OptimConfig(StrictModel):
    lr: float = Field(3e-4, gt=0)
    min_lr_ratio: float = Field(0.1, ge=0, le=1)  # final LR = lr * min_lr_ratio
    weight_decay: float = Field(0.1, ge=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-8
    grad_clip: float = Field(1.0, ge=0)  # 0 disables clipping
    fused: Optional[bool] = None  # None: fused AdamW where the backend supports it


class ScheduleConfig(StrictModel):
    kind: Literal["cosine", "wsd", "constant"] = "cosine"
    warmup_steps: int = Field(100, ge=0)
    decay_fraction: float = Field(0.2, gt=0, le=1)  # wsd: the share of steps spent decaying at the end


class SpikeConfig(StrictModel):
    """Loss-spike rule: a step is a spike when its loss is non-finite or (after `min_history` steps)
    zscore:    loss > mean + threshold * std of the last `window` good losses, or
    ema_ratio: loss > threshold * EMA of good losses (EMA decay 1 - 1/window)."""

    enabled: bool = True
    rule: Literal["zscore", "ema_ratio"] = "zscore"
    window: int = Field(50, ge=2)
    threshold: float = Field(6.0, gt=0)
    min_history: int = Field(20, ge=2)
    max_rollbacks: int = Field(5, ge=0)  # spikes handled (rollbacks or skipped batches) before the run stops


class TrainConfig(StrictModel):
    max_steps: Optional[int] = Field(None, ge=1)
    tokens: Optional[int] = Field(None, ge=1)  # alternative to max_steps: steps = tokens / (batch_size*seq_len)
    batch_size: int = Field(32, ge=1)  # global rows per optimizer step (all processes, all accumulation)
    micro_batch_size: int = Field(8, ge=1)  # rows per forward pass per process
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    compile: bool = False
    activation_checkpointing: bool = False
    distributed: Literal["ddp", "fsdp"] = "ddp"  # used when launched under torchrun with >1 process
    seed: int = 0

    @model_validator(mode="after")
    def _steps(self) -> "TrainConfig":
        if (self.max_steps is None) == (self.tokens is None):
            raise ValueError("set exactly one of train.max_steps and train.tokens")
        return self


class LogConfig(StrictModel):
    every: int = Field(10, ge=1)
    tensorboard: bool = True
    progress: bool = True


class EvalConfig(StrictModel):
    every: int = Field(200, ge=0)  # 0: only at the end


class CheckpointConfig(StrictModel):
    every: int = Field(200, ge=0)  # 0: only at the end
    keep_last: int = Field(3, ge=1)


class PretrainConfig(StrictModel):
    out: Optional[str] = None
    model: ModelSpec
    data: DataConfig
    train: TrainConfig
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    spikes: SpikeConfig = SpikeConfig()
    log: LogConfig = LogConfig()
    eval: EvalConfig = EvalConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
