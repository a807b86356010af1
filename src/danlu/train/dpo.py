"""`danlu train dpo`: preference tuning (DPO, IPO, hinge, SimPO, ORPO; KTO on unpaired data) of a local model.

    OUT/
      config.yaml, run.log, report.json, metrics.jsonl, tb/     (danlu.runs conventions)
      data/train, data/val    pairs (or KTO records) rendered with the chat template (danlu.train.pref_data)
      data/ref/               the reference log-probs of every sequence (dpo.reference: precompute), reused
      tokenizer/, checkpoints/step-N/, model/ (+ lineage.json)    as for SFT

The stage reuses SFT's model handling (template, LoRA/freeze, adapters of earlier stages) and the harness; it
chooses the preference stream (danlu.train.pref_batches), the loss (danlu.train.pref_losses) and the reference.
Logged per step (averaged over the logging window) and on the validation split, overall and per task_type:
the loss, rewards of chosen and rejected, their margin, preference accuracy and the answers' mean lengths in
tokens. The validation split also reports the accuracy on pairs whose chosen answer is the longer and the
shorter one: a model that learned "longer is better" wins the first and loses the second.
"""

from __future__ import annotations

import copy
import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from danlu.train.config import DPOConfig
from danlu.train.objectives import MetricSums, Objective

PAIR_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margin", "rewards/accuracy", "logps/chosen",
                "logps/rejected", "length/chosen", "length/rejected")


def pair_terms(cfg, logp: torch.Tensor, batch: dict, ref: torch.Tensor | None) -> dict[str, torch.Tensor]:
    """Per-pair loss and figures of a batch of pairs (sequences 2k, 2k+1 are pair k's chosen and rejected)."""
    from danlu.train import pref_losses as L

    n = batch["seq_tokens"].to(logp.dtype).clamp(min=1)
    ref = torch.zeros_like(logp) if ref is None else ref.to(logp.dtype)
    pc, pr, rc, rr, nc, nr = logp[0::2], logp[1::2], ref[0::2], ref[1::2], n[0::2], n[1::2]
    loss = L.pair_loss(cfg.loss, pc, pr, rc, rr, nc, nr, cfg.beta, cfg.label_smoothing, cfg.simpo_gamma, cfg.ftx)
    reward = L.rewards(cfg.loss, logp.detach(), ref, n, cfg.beta)
    return {"loss": loss, "chosen": reward[0::2], "rejected": reward[1::2], "logp_chosen": pc.detach(),
            "logp_rejected": pr.detach(), "len_chosen": nc, "len_rejected": nr, "task": batch["seq_task"][0::2]}


def kto_terms(cfg, logp: torch.Tensor, batch: dict, ref: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-record loss and figures of a batch of KTO records."""
    from danlu.train import pref_losses as L

    ref = ref.to(logp.dtype)
    good = batch["seq_desirable"]
    z0 = L.kto_kl(logp.detach(), ref)
    loss = L.kto(logp, ref, good, cfg.beta, z0, cfg.desirable_weight, cfg.undesirable_weight)
    return {"loss": loss, "reward": cfg.beta * (logp.detach() - ref), "good": good, "kl": z0,
            "len": batch["seq_tokens"].to(logp.dtype), "task": batch["seq_task"]}


def _report(metrics: MetricSums, kind: str, t: dict) -> None:
    if kind == "kto":
        good, bad = t["good"], ~t["good"]
        metrics.add("rewards/desirable", t["reward"][good].sum(), good.sum())
        metrics.add("rewards/undesirable", t["reward"][bad].sum(), bad.sum())
        metrics.add("kl", t["kl"], 1.0)
        metrics.add("length/desirable", t["len"][good].sum(), good.sum())
        metrics.add("length/undesirable", t["len"][bad].sum(), bad.sum())
        return
    n = len(t["chosen"])
    margin = t["chosen"] - t["rejected"]
    for name, v in zip(PAIR_METRICS, (t["chosen"], t["rejected"], margin, (margin > 0).double(), t["logp_chosen"],
                                      t["logp_rejected"], t["len_chosen"], t["len_rejected"])):
        metrics.add(name, v.sum(), n)


def dpo_objective(cfg, kind: str, ref_model: torch.nn.Module | None = None) -> Objective:
    """The preference objective: loss summed over the batch's pairs (KTO: records), normalised by their count.
    The reference log-probs come from the batch (precomputed), a frozen copy, or the adapter-less model."""
    from danlu.train.pref_forward import reference_live, sequence_logps
    from danlu.train.pref_losses import REFERENCE_FREE

    metrics = MetricSums()
    needs_ref = kind == "kto" or cfg.loss not in REFERENCE_FREE

    def reference(model, batch):
        if not needs_ref:
            return None
        if cfg.reference == "precompute":
            return batch["seq_ref"]
        return reference_live(cfg.reference, model, ref_model, batch)

    def loss_sum(model: torch.nn.Module, batch: dict) -> torch.Tensor:
        logp = sequence_logps(model, batch)
        ref = reference(model, batch)
        t = kto_terms(cfg, logp, batch, ref) if kind == "kto" else pair_terms(cfg, logp, batch, ref)
        _report(metrics, kind, t)
        return t["loss"].sum() + 0.0 * logp.sum()  # an empty micro-batch still reaches every parameter

    return Objective(name=f"pref_{cfg.loss}", count=lambda b: float(b["loss_count"].sum()), loss_sum=loss_sum,
                     metrics=metrics)


PAIR_EVAL = ("loss", *PAIR_METRICS, "accuracy/chosen_longer", "accuracy/chosen_shorter")
KTO_EVAL = ("loss", "rewards/desirable", "rewards/undesirable", "length/desirable", "length/undesirable")
PER_TASK = ("loss", "rewards/margin", "rewards/accuracy", "rewards/desirable", "rewards/undesirable")


def _eval_columns(kind: str, t: dict) -> list[tuple[torch.Tensor, torch.Tensor | float]]:
    """(value, weight) per item for each column of PAIR_EVAL / KTO_EVAL."""
    if kind == "kto":
        good = t["good"].double()
        return [(t["loss"], 1.0), (t["reward"], good), (t["reward"], 1 - good), (t["len"], good), (t["len"], 1 - good)]
    margin = t["chosen"] - t["rejected"]
    win = (margin > 0).double()
    return [(t["loss"], 1.0), (t["chosen"], 1.0), (t["rejected"], 1.0), (margin, 1.0), (win, 1.0),
            (t["logp_chosen"], 1.0), (t["logp_rejected"], 1.0), (t["len_chosen"], 1.0), (t["len_rejected"], 1.0),
            (win, (t["len_chosen"] > t["len_rejected"]).double()),
            (win, (t["len_chosen"] < t["len_rejected"]).double())]


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list[dict], cfg, kind: str, task_names: list[str], precision: str, info,
             ref_model=None) -> dict:
    """Validation figures, overall ("eval/NAME") and per task_type ("eval/TASK/NAME"); see the module docstring."""
    from danlu.train.distributed import all_reduce_sum, autocast, unwrap
    from danlu.train.pref_forward import evaluating, reference_live, sequence_logps
    from danlu.train.pref_losses import REFERENCE_FREE

    columns = KTO_EVAL if kind == "kto" else PAIR_EVAL
    needs_ref = kind == "kto" or cfg.loss not in REFERENCE_FREE
    sums = torch.zeros(len(task_names), len(columns), 2, dtype=torch.float64, device=info.device)  # [sum, count]
    net = unwrap(model)
    for batch in batches[info.rank :: info.world_size]:
        batch = {k: v.to(info.device) for k, v in batch.items()}
        with evaluating(net), autocast(precision, info.device):
            logp = sequence_logps(net, batch)
            ref = None if not needs_ref else batch["seq_ref"] if cfg.reference == "precompute" else \
                reference_live(cfg.reference, model, ref_model, batch)
        t = kto_terms(cfg, logp, batch, ref) if kind == "kto" else pair_terms(cfg, logp, batch, ref)
        for c, (v, w) in enumerate(_eval_columns(kind, t)):
            w = torch.as_tensor(w, dtype=torch.float64, device=info.device).expand(len(t["task"]))
            sums[:, c, 0].index_add_(0, t["task"], v.double() * w)
            sums[:, c, 1].index_add_(0, t["task"], w)
    all_reduce_sum(sums)
    out, total = {}, sums.sum(0)
    for c, name in enumerate(columns):
        if total[c, 1] > 0:
            out[f"eval/{name}"] = float(total[c, 0] / total[c, 1])
    for k, task in enumerate(task_names):
        for c, name in enumerate(columns):
            if name in PER_TASK and sums[k, c, 1] > 0:
                out[f"eval/{task}/{name}"] = float(sums[k, c, 0] / sums[k, c, 1])
    return out


def _reference_values(session, cfg: DPOConfig, model, stores: dict, data_fp: str, folder: Path, precision: str):
    """dpo.reference: precompute -> {split: log-probs of every sequence}, read from OUT/data/ref when its
    fingerprint (data, model, precision) matches, else computed now by the starting model and stored."""
    from danlu.train.distributed import barrier
    from danlu.train.pref_data import model_identity, read_reference, reference_fingerprint, write_reference
    from danlu.train.pref_forward import precompute

    m, d, t = cfg.model, cfg.data, cfg.train
    fp = reference_fingerprint(data_fp, model_identity(folder), precision,
                               {"adapter": m.adapter, "attn": m.attn_implementation, "seq_len": d.seq_len})
    found = read_reference(session.out, fp)
    if found is not None:
        session.say("reference log-probs: reused from data/ref (same data, model and precision)")
        return found, 0.0
    model.to(session.info.device)
    start = time.perf_counter()
    values = {split: precompute(model, store, t.micro_batch_size, d.seq_len, d.packing, precision, session.info,
                                f"reference ({split})", d.share_prompt) for split, store in stores.items()}
    seconds = time.perf_counter() - start
    if session.info.is_main:
        write_reference(session.out, fp, values, {"model": str(folder), "precision": precision,
                                                  "seconds": round(seconds, 3)})
    barrier()
    session.say(f"reference log-probs: computed for {sum(len(v) for v in values.values())} sequences in "
                f"{seconds:.1f} s (stored in data/ref; the reference never runs during training)")
    return values, seconds


@dataclass
class PrefRun:
    """What DPO and reward-model training share before the model: tokenizer (with the template it trains
    with), rendered data, training units and their up-sampling."""

    folder: Path  # the starting model folder
    tokenizer: object
    tok_dir: Path
    added: int  # chat-template tokens added to the tokenizer
    data_report: dict
    train: object  # PrefStore
    val: object
    units: np.ndarray
    repeats: np.ndarray
    unit: str  # "pairs" or "records"

    def data_lineage(self, d) -> list[dict]:
        return [{"files": self.data_report.get("fingerprint"), "train": [str(Path(x).resolve()) for x in d.train],
                 "val": [str(Path(x).resolve()) for x in d.val]}]

    def template_sha(self) -> str:
        return hashlib.sha256(self.tokenizer.chat_template.encode()).hexdigest()


def open_pref_data(session, cfg, mode: str) -> PrefRun:
    """Resolve the model folder and template, save the tokenizer to OUT/tokenizer, render (or reuse) the data."""
    from transformers import AutoTokenizer

    from danlu.model import adapters
    from danlu.tokenizer.chat import chat_template, ensure_chat_template
    from danlu.train.distributed import barrier
    from danlu.train.pref_data import PAIRS, PrefStore, prepare
    from danlu.train.sft import resolve_template, sample_repeats

    d, info = cfg.data, session.info
    folder = adapters.model_folder(cfg.model.path).resolve()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    added = ensure_chat_template(tokenizer, resolve_template(cfg, chat_template(folder)))
    tok_dir = session.out / "tokenizer"
    if info.is_main:
        tokenizer.save_pretrained(tok_dir)
        data_report = prepare(session.out, tokenizer, tok_dir, tokenizer.chat_template, d, mode)
    barrier()
    if not info.is_main:
        data_report = json.loads((session.out / "data" / "report.json").read_text(encoding="utf-8"))
    train, val = PrefStore(session.out / "data" / "train"), PrefStore(session.out / "data" / "val")
    units = np.arange(train.n_units)
    repeats = sample_repeats(train, units * train.width, d.source_weights, d.task_type_weights)
    return PrefRun(folder, tokenizer, tok_dir, added, data_report, train, val, units, repeats,
                   "pairs" if mode == PAIRS else "records")


def data_line(run: PrefRun, t, steps: int) -> str:
    from danlu.train.pref_data import summary

    tasks = summary(run.train)
    return (f"{run.train.n_units} training {run.unit} ({run.val.n_units} validation), {t.epochs:g} epochs, "
            f"{t.batch_size} {run.unit} per step -> {steps} steps; task_types: "
            + ", ".join(f"{k} {v}" for k, v in tasks.most_common()))


def val_batches(store, micro_batch_size: int, data_cfg, ref=None) -> list[dict]:
    from danlu.train.pref_batches import units_batch

    d = data_cfg
    return [units_batch(list(range(i, min(i + micro_batch_size, store.n_units))), store, d.seq_len, d.packing, ref,
                        d.share_prompt) for i in range(0, store.n_units, micro_batch_size)]


def dpo(cfg: DPOConfig, out: str | Path | None = None, resume: bool = False) -> dict:
    """Preference-tune per `cfg` into `out` (default cfg.out); with `resume`, continue from the newest checkpoint."""
    from danlu.model import adapters
    from danlu.train.harness import finish, fit, lineage, open_session, run_precision
    from danlu.train.pref_batches import PrefBatches
    from danlu.train.pref_data import KTO, PAIRS
    from danlu.train.pref_losses import REFERENCE_FREE
    from danlu.train.sft import _lineage_base, _merge, apply_method, load_model

    session = open_session("train-dpo", cfg, out, resume)
    d, t, info, m, p = cfg.data, cfg.train, session.info, cfg.model, cfg.dpo
    mode = KTO if p.loss == "kto" else PAIRS
    run = open_pref_data(session, cfg, mode)
    model, new_ids = load_model(m, run.folder, run.tokenizer, run.added, t.seed)
    precision, _ = run_precision(session)
    needs_ref = mode == KTO or p.loss not in REFERENCE_FREE
    ref, ref_s = {"train": None, "val": None}, None
    if needs_ref and p.reference == "precompute":
        ref, ref_s = _reference_values(session, cfg, model, {"train": run.train, "val": run.val},
                                       run.data_report["fingerprint"], run.folder, precision)
    ref_model = copy.deepcopy(model).requires_grad_(False).to(info.device) \
        if needs_ref and p.reference == "copy" else None
    model = apply_method(model, m, run.folder, new_ids)
    trainable, total = adapters.trainable_count(model)

    stream = PrefBatches(run.train, run.units, run.repeats, d.seq_len, t.micro_batch_size, d.packing, t.epochs,
                         d.seed, info.rank, info.world_size, ref["train"], d.share_prompt)
    steps = min(stream.steps(t.batch_size), t.max_steps or 10**12)
    session.say(f"preference data ({p.loss}): {data_line(run, t, steps)}\nmethod {m.method}: {trainable:,} of "
                f"{total:,} parameters train ({trainable / total:.2%}); reference: "
                f"{p.reference if needs_ref else 'none (reference-free loss)'}")
    val = val_batches(run.val, t.micro_batch_size, d, ref["val"])
    names = run.val.task_names
    evaluate_fn = (lambda net, prec: evaluate(net, val, p, mode, names, prec, info, ref_model)) if val else None
    fitted = fit(session, model, stream, dpo_objective(p, mode, ref_model), steps,
                 int(np.mean(run.train.unit_lengths)) * t.batch_size, 2 * d.seq_len, evaluate=evaluate_fn,
                 checkpoint_assets=run.tok_dir)
    info_ = {**lineage(session, _lineage_base(run.folder), str(run.tok_dir), run.data_lineage(d), fitted),
             "method": m.method, "loss": p.loss, "chat_template_sha256": run.template_sha()}
    report = {"counts": run.data_report["counts"], "headline": ["steps", "final_loss", "tokens_per_s", "model"],
              "loss": p.loss, "reference": p.reference if needs_ref else None, "reference_s": ref_s,
              run.unit: run.data_report[run.unit],
              "stream": stream.stats(), "method": m.method, "trainable_parameters": trainable}
    return finish(session, fitted, str(run.tok_dir), info_, report,
                  post_save=_merge if m.method == "lora" and m.merge_final else None)
