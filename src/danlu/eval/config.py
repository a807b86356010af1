"""The options of every evaluation suite, with their defaults (the only place defaults live).

`danlu eval CONFIG.yaml` reads an `EvalConfig`: the model, the output folder and one section per suite to run;
a suite whose section is absent does not run. Each suite is also a function taking its own section
(danlu.eval.ppl.run_ppl(model, out, PplConfig(...)), ...), which is what `danlu run` calls.
"""

from __future__ import annotations

from typing import Literal, Optional

from pydantic import Field, model_validator

from danlu.config import StrictModel


class Runtime(StrictModel):
    """Where and in what precision the model runs (shared by the suites that load it)."""

    device: str = "auto"  # auto (cuda if available, else cpu) | cpu | cuda | cuda:N
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: float32 on CPU, bfloat16 on GPU
    threads: Optional[int] = None  # torch CPU threads (None: torch's default)


class PplConfig(StrictModel):
    """Held-out text: loss, perplexity, bits per byte and per character, per source."""

    data: list[str] = Field(min_length=1)  # Document JSONL files or folders ({"id", "text", "source", ...})
    max_length: int = Field(1024, ge=8)  # tokens per window (at most the model's context)
    stride: int = Field(512, ge=1)  # new tokens per window after the first (< max_length: the rest is context)
    batch_tokens: int = Field(8192, ge=8)  # tokens per forward (windows batched up to this)
    max_documents: Optional[int] = Field(None, ge=1)  # per source, the first N (in file order)

    @model_validator(mode="after")
    def _stride(self) -> "PplConfig":
        if self.stride >= self.max_length:
            raise ValueError(f"ppl.stride ({self.stride}) must be below ppl.max_length ({self.max_length}): "
                             "each window keeps max_length - stride tokens of context")
        return self


McqMethod = Literal["letter", "cloze"]


class McqConfig(StrictModel):
    """C-Eval / CMMLU / MMLU-style multiple choice, k-shot, scored two ways (see danlu.eval.mcq)."""

    data: list[str] = Field(min_length=1)  # benchmark root folders (dev/ val/ test/) or single CSV files
    format: Literal["auto", "ceval", "cmmlu", "mmlu"] = "auto"  # auto: from the CSV header
    split: Optional[str] = None  # split scored (None: val for C-Eval and MMLU, test for CMMLU)
    k_shot: int = Field(5, ge=0)  # examples from the dev split, in file order (the authors' choice)
    delimiter: Optional[str] = None  # between the answer prefix ("答案：") and the letter; None: the format's
    #                                  published one ("" for C-Eval/CMMLU as their authors wrote; " " for MMLU)
    methods: list[McqMethod] = ["letter", "cloze"]
    subjects: Optional[list[str]] = None  # only these subjects (file-name keys)
    subject_map: Optional[str] = None  # YAML overriding/adding subject names and categories
    chat: bool = False  # render through the model's chat template (examples as user/assistant turns)
    batch_size: int = Field(16, ge=1)  # questions (or letter/option rows) per forward
    max_questions: Optional[int] = Field(None, ge=1)  # per subject, the first N

    @model_validator(mode="after")
    def _methods(self) -> "McqConfig":
        if not self.methods or len(set(self.methods)) != len(self.methods):
            raise ValueError(f"mcq.methods must list letter and/or cloze once each, got {self.methods}")
        return self


class GenerationOptions(StrictModel):
    max_new_tokens: int = Field(256, ge=1)
    do_sample: bool = False  # greedy by default
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    seed: int = 0
    batch_size: int = Field(8, ge=1)
    backend: Literal["auto", "engine", "hf"] = "auto"  # auto: danlu's serving engine when installed, else HF


class GenConfig(StrictModel):
    """Answers for SFT-format test sets, scored per task_type."""

    data: list[str] = Field(min_length=1)  # SFT JSONL files or folders; the last assistant turn is the reference
    generation: GenerationOptions = GenerationOptions()
    label_task_types: list[str] = []  # task_types scored as classification (label accuracy); also any whose
    #                                   name contains one of `label_markers`
    label_markers: list[str] = ["classif", "label", "分类"]
    rouge_tokens: Literal["jieba", "char"] = "jieba"  # Chinese segmentation for ROUGE (words or characters)
    max_samples: Optional[int] = Field(None, ge=1)  # the first N samples (in file order)
    template: Optional[str] = None  # a chat template file overriding the model's own


class JudgeDimension(StrictModel):
    name: str
    weight: float = Field(1.0, ge=0)
    description: str = ""


DEFAULT_DIMENSIONS = [
    JudgeDimension(name="instruction_following", weight=1.0, description="does the answer do what was asked"),
    JudgeDimension(name="correctness", weight=2.0, description="agreement with the reference answer"),
    JudgeDimension(name="hallucination", weight=1.0,
                   description="no invented facts (high = none invented)"),
    JudgeDimension(name="safety", weight=0.5, description="no harmful or unsafe content"),
]


class JudgeConfig(StrictModel):
    """An LLM judge behind any OpenAI-compatible endpoint."""

    answers: str  # a gen run folder (its answers.jsonl) or an answers JSONL; the candidate (A in pairwise)
    against: Optional[str] = None  # pairwise: the other candidate's gen run folder / answers JSONL (B)
    mode: Literal["pointwise", "pairwise"] = "pointwise"
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "judge"
    api_key_env: str = "OPENAI_API_KEY"  # the key is read from this environment variable (never from the file)
    language: Literal["zh", "en"] = "zh"  # which default prompt
    prompt: Optional[str] = None  # a prompt template file (Jinja) replacing the default
    dimensions: list[JudgeDimension] = DEFAULT_DIMENSIONS
    scale: int = Field(10, ge=2)  # scores 1..scale
    samples: int = Field(1, ge=1)  # judge each item this many times (the spread is reported)
    temperature: float = Field(0.0, ge=0)  # with samples > 1 use > 0, or every sample is the same reply
    max_tokens: int = Field(1024, ge=16)
    concurrency: int = Field(8, ge=1)
    retries: int = Field(3, ge=0)  # per call: HTTP errors (429, 5xx, timeouts) and malformed replies
    timeout_s: float = Field(120.0, gt=0)
    cache: Optional[str] = None  # SQLite file of judge replies (None: ~/.cache/danlu/judge.sqlite)
    price_input: float = Field(0.0, ge=0)  # cost per million prompt tokens
    price_output: float = Field(0.0, ge=0)  # cost per million completion tokens
    max_items: Optional[int] = Field(None, ge=1)

    @model_validator(mode="after")
    def _pairwise(self) -> "JudgeConfig":
        if self.mode == "pairwise" and not self.against:
            raise ValueError("judge.mode pairwise needs judge.against (the other model's answers)")
        if self.mode == "pointwise" and (not self.dimensions or sum(d.weight for d in self.dimensions) <= 0):
            raise ValueError("judge.dimensions needs at least one dimension with a weight > 0")
        names = [d.name for d in self.dimensions]
        if len(set(names)) != len(names):
            raise ValueError(f"judge.dimensions: names must be unique, got {names}")
        return self


class RecallCheck(StrictModel):
    data: list[str] = Field(min_length=1)  # the SFT training set (JSONL files or folders)
    max_samples: int = Field(200, ge=1)  # a sample of this many (seeded, spread over task_types)
    seed: int = 0


class HallucinationCheck(StrictModel):
    probes: list[str] = Field(min_length=1)  # JSONL: {"id", "prefix", "question", "answer"[, "aliases"]}
    base_model: str  # the model before SFT (continues each fact's prefix)
    max_new_tokens: int = Field(32, ge=1)


class AnswerProbCheck(StrictModel):
    data: list[str] = Field(min_length=1)  # SFT JSONL: P(last assistant answer | the turns before it)
    max_samples: Optional[int] = Field(None, ge=1)


class DiagnosticsConfig(StrictModel):
    recall: Optional[RecallCheck] = None
    hallucination: Optional[HallucinationCheck] = None
    answer_prob: Optional[AnswerProbCheck] = None
    generation: GenerationOptions = GenerationOptions(max_new_tokens=128)
    batch_size: int = Field(8, ge=1)  # for answer_prob scoring

    @model_validator(mode="after")
    def _some(self) -> "DiagnosticsConfig":
        if not (self.recall or self.hallucination or self.answer_prob):
            raise ValueError("diagnostics: give at least one of recall, hallucination, answer_prob")
        return self


class EvalConfig(StrictModel):
    """`danlu eval CONFIG.yaml`: the suites to run on one model, each into OUT/<suite>/."""

    model: Optional[str] = None  # HF model folder (not needed for a judge-only run)
    out: str = "runs/eval"
    name: Optional[str] = None  # the label compare shows (default: the model folder's name)
    runtime: Runtime = Runtime()
    ppl: Optional[PplConfig] = None
    mcq: Optional[McqConfig] = None
    gen: Optional[GenConfig] = None
    judge: Optional[JudgeConfig] = None
    diagnostics: Optional[DiagnosticsConfig] = None
    baseline: Optional[str] = None  # an earlier eval out folder: compared with this one when the suites finish

    @model_validator(mode="after")
    def _check(self) -> "EvalConfig":
        suites = [s for s in SUITES if getattr(self, s) is not None]
        if not suites:
            raise ValueError(f"give at least one suite section: {', '.join(SUITES)}")
        if self.model is None and any(s != "judge" for s in suites):
            raise ValueError("'model' (a Hugging Face model folder) is required for " + ", ".join(
                s for s in suites if s != "judge"))
        return self


SUITES = ("ppl", "mcq", "gen", "judge", "diagnostics")


class CompareConfig(StrictModel):
    top_cases: int = Field(50, ge=0)  # cases per direction written to cases.jsonl and the page
    bootstrap: int = Field(1000, ge=0)  # resamples for the paired bootstrap interval (0: off)
    confidence: float = Field(0.95, gt=0, lt=1)
    seed: int = 0
