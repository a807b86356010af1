"""Configuration of the training stages: the sections they share (TrainingRunConfig) and `danlu train pt`'s."""

from __future__ import annotations

from typing import Literal, Optional, Union

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


class TrainingRunConfig(StrictModel):
    """The sections every training stage's config has (each stage adds its model and data sections)."""

    out: Optional[str] = None
    train: TrainConfig
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    spikes: SpikeConfig = SpikeConfig()
    log: LogConfig = LogConfig()
    eval: EvalConfig = EvalConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()


class PretrainConfig(TrainingRunConfig):
    model: ModelSpec
    data: DataConfig


# --- supervised fine-tuning (`danlu train sft`) -----------------------------------------------------------------


class LoraConfig(StrictModel):
    """LoRA through peft: low-rank adapters on the chosen linear layers; the base stays frozen."""

    r: int = Field(8, ge=1)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: Union[str, list[str]] = "all-linear"  # peft's names, e.g. [q_proj, v_proj]
    use_dora: bool = False  # weight-decomposed LoRA (Liu et al. 2024)
    use_rslora: bool = False  # rank-stabilised scaling alpha / sqrt(r)


class FreezeConfig(StrictModel):
    """Which parameters train under `method: freeze` (everything else keeps its weights bit for bit)."""

    layers: list[int] = Field(default_factory=lambda: [-1])  # decoder layers to train; negative counts from the end
    embeddings: bool = False  # also train the input and output embeddings
    norms: bool = False  # also train every norm's weights
    modules: list[str] = Field(default_factory=list)  # also train parameters whose name contains one of these


class SFTModelSpec(StrictModel):
    path: str  # a local HF model folder, a LoRA adapter folder, or a danlu training run (its model/ is used)
    template: Optional[str] = None  # a chat template (a .jinja file or the template text) instead of the model's own
    template_override: bool = False  # allow `template` to differ from the template the model was saved with
    method: Literal["full", "lora", "freeze"] = "full"
    lora: LoraConfig = LoraConfig()
    freeze: FreezeConfig = FreezeConfig()
    # when `path` is a LoRA adapter (a previous stage): merge it into its base first, or keep training it
    adapter: Literal["merge", "continue"] = "merge"
    merge_final: bool = False  # LoRA: OUT/model is the merged full model (else the adapter, with its base recorded)
    attn_implementation: str = "sdpa"


class SFTDataConfig(StrictModel):
    train: list[str] = Field(min_length=1)  # SFT JSONL (`danlu data sft` output): files or folders
    val: list[str] = Field(default_factory=list)  # a validation set; else `val_size` of train is held out
    val_size: float = Field(0.0, ge=0)  # a share (< 1) or a number of records (>= 1), picked by record id
    seq_len: int = Field(2048, ge=8)  # the cutoff: a rendered sample must fit
    packing: bool = True  # several samples per row, no attention across them (positions restart)
    # token: every target token weighs the same; sample: every sample's mean loss weighs the same (as unpacked
    # batches of one sample do). With token weighting a one-token answer counts for almost nothing next to a
    # long one, so classification-style task_types lose weight: danlu prints the shares before training.
    loss_norm: Literal["sample", "token"] = "sample"
    assistant: Literal["all", "last"] = "all"  # train every assistant turn, or only the last
    train_on_prompt: bool = False  # also train the prompt tokens (weight 1)
    overlong: Literal["reject", "truncate_history"] = "reject"  # a sample over seq_len: rejected, or earliest turns dropped
    source_weights: dict[str, float] = Field(default_factory=dict)  # up-sample factor per source (2: seen twice)
    task_type_weights: dict[str, float] = Field(default_factory=dict)  # per task_type ('a' covers 'a/b' too)
    seed: int = 0
    buffer_size: int = Field(256, ge=1)  # samples a row is packed from (best fit)


class SFTTrainConfig(TrainConfig):
    epochs: float = Field(3.0, gt=0)  # passes over the (re-weighted) training set; 1.1: the first 10% twice
    max_steps: Optional[int] = Field(None, ge=1)  # stop here even if epochs remain
    batch_size: int = Field(16, ge=1)  # global rows per optimizer step
    micro_batch_size: int = Field(4, ge=1)

    @model_validator(mode="after")
    def _steps(self) -> "SFTTrainConfig":
        if self.tokens is not None:
            raise ValueError("train.tokens is for pretraining; SFT runs for train.epochs (and at most train.max_steps)")
        return self


class SFTConfig(TrainingRunConfig):
    model: SFTModelSpec
    data: SFTDataConfig
    train: SFTTrainConfig = SFTTrainConfig()
    optim: OptimConfig = OptimConfig(lr=2e-5, weight_decay=0.0, min_lr_ratio=0.0)
    schedule: ScheduleConfig = ScheduleConfig(warmup_steps=10)
    eval: EvalConfig = EvalConfig(every=0)


# --- preference tuning (`danlu train dpo`) and reward models (`danlu train rm`, `danlu score`) ----------------------


class PrefDataConfig(StrictModel):
    # `danlu data pref` output: preference pairs (pref.jsonl) and/or KTO records (kto.jsonl), files or folders.
    # Pair losses use the pairs (KTO records in the inputs are filtered, with the reason); `dpo.loss: kto` uses
    # KTO records and splits pairs into a desirable and an undesirable answer.
    train: list[str] = Field(min_length=1)
    val: list[str] = Field(default_factory=list)  # a validation set; else `val_size` of train is held out
    val_size: float = Field(0.0, ge=0)  # a share (< 1) or a number of records (>= 1), picked by record id
    seq_len: int = Field(2048, ge=8)  # the cutoff for one sequence (prompt + answer); a row holds 2 x seq_len
    packing: bool = True  # the pairs of a micro-batch share rows (no attention across sequences), else one per row
    # a pair's prompt goes through the model once, both answers attending to it (same result, fewer tokens; needs
    # an attention implementation that takes a 4D mask: sdpa or eager, not flash)
    share_prompt: bool = True
    overlong: Literal["reject", "truncate_history"] = "reject"  # over seq_len: filtered, or earliest turns dropped
    source_weights: dict[str, float] = Field(default_factory=dict)  # up-sample factor per source (2: seen twice)
    task_type_weights: dict[str, float] = Field(default_factory=dict)  # per task_type ('a' covers 'a/b' too)
    seed: int = 0


class DPOLossConfig(StrictModel):
    """The preference loss (formulas in danlu.train.pref_losses) and where the reference log-probs come from."""

    loss: Literal["sigmoid", "ipo", "hinge", "simpo", "orpo", "kto"] = "sigmoid"
    beta: float = Field(0.1, gt=0)  # DPO/IPO/hinge/KTO: KL strength (IPO's tau); SimPO: reward scale; ORPO: lambda
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)  # sigmoid: conservative DPO's share of flipped labels
    ftx: float = Field(0.0, ge=0)  # weight of an SFT term (mean NLL of the chosen answer) added to every pair
    simpo_gamma: float = Field(0.5, ge=0)  # SimPO's target reward margin (gamma)
    desirable_weight: float = Field(1.0, gt=0)  # KTO: lambda_D
    undesirable_weight: float = Field(1.0, gt=0)  # KTO: lambda_U
    # precompute: the frozen starting model scores every sequence once before training (stored beside the
    # rendered data, fingerprinted on the model): no reference in memory or compute during training.
    # copy: a frozen copy of the starting model runs live. disable_adapter (LoRA): the model with its adapter
    # switched off is the reference (no second copy in memory).
    reference: Literal["precompute", "copy", "disable_adapter"] = "precompute"


class PrefTrainConfig(SFTTrainConfig):
    epochs: float = Field(1.0, gt=0)
    batch_size: int = Field(16, ge=1)  # pairs (KTO: records) per optimizer step, all processes
    micro_batch_size: int = Field(4, ge=1)  # pairs per forward pass per process


class DPOConfig(TrainingRunConfig):
    model: SFTModelSpec
    data: PrefDataConfig
    dpo: DPOLossConfig = DPOLossConfig()
    train: PrefTrainConfig = PrefTrainConfig()
    optim: OptimConfig = OptimConfig(lr=5e-6, weight_decay=0.0, min_lr_ratio=0.0)
    schedule: ScheduleConfig = ScheduleConfig(warmup_steps=10)
    eval: EvalConfig = EvalConfig(every=0)

    @model_validator(mode="after")
    def _reference(self) -> "DPOConfig":
        if self.dpo.reference == "disable_adapter" and self.model.method != "lora":
            raise ValueError("dpo.reference: disable_adapter needs model.method: lora (the base without the adapter "
                             "is the reference); use precompute or copy")
        return self


class RMLossConfig(StrictModel):
    # Bradley-Terry: -log sigmoid(r_chosen - r_rejected); plus center * (r_chosen + r_rejected)^2, which keeps the
    # scores centred on 0 (the reward is only defined up to a constant; Eisenstein et al. 2023)
    center: float = Field(0.0, ge=0)


class RMConfig(TrainingRunConfig):
    model: SFTModelSpec  # any causal LM folder (or run); a one-output score head is added on top
    data: PrefDataConfig
    rm: RMLossConfig = RMLossConfig()
    train: PrefTrainConfig = PrefTrainConfig()
    optim: OptimConfig = OptimConfig(lr=1e-5, weight_decay=0.0, min_lr_ratio=0.0)
    schedule: ScheduleConfig = ScheduleConfig(warmup_steps=10)
    eval: EvalConfig = EvalConfig(every=0)


class ScoreConfig(StrictModel):
    """`danlu score`: a reward model's score for every answer in SFT records, generation outputs (eval gen's
    answers.jsonl) or preference pairs, and how the scores go with answer length."""

    data: list[str] = Field(min_length=1)
    template: Optional[str] = None  # a chat template instead of the reward model's own (a .jinja file or the text)
    seq_len: int = Field(4096, ge=8)  # longer sequences are filtered, with the reason
    batch_size: int = Field(8, ge=1)
    precision: Literal["auto", "bf16", "fp32"] = "fp32"
