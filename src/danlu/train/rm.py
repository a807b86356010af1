"""`danlu train rm`: a Bradley-Terry reward model, a one-output score head on any causal LM (transformers'
AutoModelForSequenceClassification, num_labels=1), trained full, with LoRA or frozen layers on preference pairs.

    loss per pair = -log sigmoid(s_chosen - s_rejected) [+ rm.center x (s_chosen + s_rejected)^2]

A sequence's score is the head's output at its last answer token (the end-of-turn token), read from the
per-token scores of one packed, document-masked forward (danlu.train.pref_batches), so training, validation
and `danlu score` read the score at the same place whatever the padding or packing. The run folder is the
DPO/SFT one (data/, tokenizer/, checkpoints/, model/ with lineage.json); the model folder loads with
AutoModelForSequenceClassification (a LoRA run: the adapter with the trained head, its base recorded).
Validation: accuracy overall and per task_type, the accuracy on pairs whose chosen answer is the longer and the
shorter one, and the correlation of the score with the answer's length (a reward model that learned length).
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch
import torch.nn.functional as F

from danlu.train.config import RMConfig
from danlu.train.objectives import MetricSums, Objective, lm_logits

RM_METRICS = ("accuracy", "scores/chosen", "scores/rejected", "scores/margin", "length/chosen", "length/rejected")


def load_reward_model(folder: str | Path, attn_implementation: str = "sdpa", pad_token_id: int | None = None):
    """A model folder as an fp32 reward model: a reward model (full, or a LoRA adapter with its head, merged), or
    a causal LM (full or a causal LoRA adapter, merged) whose decoder gets a new score head (initialised from
    the torch seed)."""
    from transformers import AutoModelForSequenceClassification

    from danlu.model import adapters

    folder = Path(folder)
    kw = dict(num_labels=1, dtype=torch.float32, attn_implementation=attn_implementation)
    if not adapters.is_adapter(folder):
        with _quiet_if(not is_reward_model(folder)):  # transformers reports the new head as "MISSING" weights
            model = AutoModelForSequenceClassification.from_pretrained(folder, **kw)
    elif json.loads((folder / adapters.ADAPTER_CONFIG).read_text(encoding="utf-8")).get("task_type") == "SEQ_CLS":
        from peft import PeftModel

        base = AutoModelForSequenceClassification.from_pretrained(adapters.adapter_base(folder), **kw)
        adapters._match_vocab(base, folder)
        model = PeftModel.from_pretrained(base, folder).merge_and_unload()
    else:  # an SFT stage's adapter: merge it, then put its decoder under a new head
        causal = adapters.load_causal_lm(folder, attn_implementation, merge_adapter=True)
        causal.config.num_labels = 1
        model = AutoModelForSequenceClassification.from_config(causal.config, attn_implementation=attn_implementation)
        model.base_model.load_state_dict(causal.base_model.state_dict())
    if pad_token_id is not None:
        model.config.pad_token_id = pad_token_id  # transformers' own pooling needs one (danlu reads seq_last)
    return model


def is_reward_model(folder: Path) -> bool:
    archs = json.loads((Path(folder) / "config.json").read_text(encoding="utf-8")).get("architectures") or []
    return any(a.endswith("ForSequenceClassification") for a in archs)


@contextlib.contextmanager
def _quiet_if(quiet: bool):
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    if quiet:
        hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(before)


def score_head(model: torch.nn.Module) -> torch.nn.Module:
    from danlu.train.distributed import unwrap

    net = unwrap(model)
    net = net.get_base_model() if hasattr(net, "get_base_model") else net
    return net.score


def sequence_scores(model: torch.nn.Module, batch: dict) -> torch.Tensor:
    """[S] float32: each sequence's score at its last answer token. The head's per-token output is taken with a
    forward hook: transformers pools at the last non-pad token of a row, which in a packed row is the last
    sequence's only."""
    captured = []
    handle = score_head(model).register_forward_hook(lambda module, args, out: captured.append(out))
    try:
        lm_logits(model, batch, doc_mask=True)
    finally:
        handle.remove()
    return captured[-1].flatten()[batch["seq_last"]].float()


def rm_objective(cfg) -> Objective:
    metrics = MetricSums()

    def loss_sum(model: torch.nn.Module, batch: dict) -> torch.Tensor:
        s = sequence_scores(model, batch)
        sc, sr = s[0::2], s[1::2]
        loss = -F.logsigmoid(sc - sr) + cfg.center * (sc + sr) ** 2
        n = batch["seq_tokens"]
        d = (sc - sr).detach().double()
        for name, v in zip(RM_METRICS, ((d > 0).double(), sc.detach(), sr.detach(), d, n[0::2], n[1::2])):
            metrics.add(name, v.sum(), len(sc))
        return loss.sum() + 0.0 * s.sum()  # an empty micro-batch still reaches every parameter

    return Objective(name="bradley_terry", count=lambda b: float(b["loss_count"].sum()), loss_sum=loss_sum,
                     metrics=metrics)


@torch.no_grad()
def evaluate(model: torch.nn.Module, batches: list[dict], task_names: list[str], precision: str, info) -> dict:
    """Held-out accuracy (overall, per task_type, chosen longer / shorter), mean scores, margin, and the Pearson
    correlation of score and answer length over every held-out sequence."""
    from danlu.train.distributed import all_reduce_sum, autocast, unwrap
    from danlu.train.pref_forward import evaluating

    sums = torch.zeros(len(task_names), 6, 2, dtype=torch.float64, device=info.device)  # [sum, count]
    moments = torch.zeros(6, dtype=torch.float64, device=info.device)  # n, x, y, xx, yy, xy (x: length, y: score)
    net = unwrap(model)
    for batch in batches[info.rank :: info.world_size]:
        batch = {k: v.to(info.device) for k, v in batch.items()}
        with evaluating(net), autocast(precision, info.device):
            s = sequence_scores(net, batch).double()
        sc, sr, n, task = s[0::2], s[1::2], batch["seq_tokens"], batch["seq_task"][0::2]
        win = (sc > sr).double()
        longer, shorter = (n[0::2] > n[1::2]).double(), (n[0::2] < n[1::2]).double()
        for c, (v, w) in enumerate(((win, 1.0), (sc, 1.0), (sr, 1.0), (sc - sr, 1.0), (win, longer), (win, shorter))):
            w = torch.as_tensor(w, dtype=torch.float64, device=info.device).expand(len(sc))
            sums[:, c, 0].index_add_(0, task, v * w)
            sums[:, c, 1].index_add_(0, task, w)
        moments += torch.stack([torch.tensor(float(len(s)), dtype=torch.float64, device=info.device), n.sum(),
                                s.sum(), (n * n).sum(), (s * s).sum(), (n * s).sum()])
    all_reduce_sum(sums)
    all_reduce_sum(moments)
    names = ("accuracy", "scores/chosen", "scores/rejected", "scores/margin", "accuracy/chosen_longer",
             "accuracy/chosen_shorter")
    out, total = {}, sums.sum(0)
    for c, name in enumerate(names):
        if total[c, 1] > 0:
            out[f"eval/{name}"] = float(total[c, 0] / total[c, 1])
    for k, task in enumerate(task_names):
        if sums[k, 0, 1] > 0:
            out[f"eval/{task}/accuracy"] = float(sums[k, 0, 0] / sums[k, 0, 1])
    n, x, y, xx, yy, xy = moments.tolist()
    var = (n * xx - x * x) * (n * yy - y * y)
    if n > 1 and var > 0:
        out["eval/length_corr"] = float((n * xy - x * y) / var**0.5)
    return out


def rm(cfg: RMConfig, out: str | Path | None = None, resume: bool = False) -> dict:
    """Train a reward model per `cfg` into `out` (default cfg.out); with `resume`, continue from the newest
    checkpoint."""
    import numpy as np

    from danlu.model import adapters
    from danlu.train.dpo import data_line, open_pref_data, val_batches
    from danlu.train.harness import finish, fit, lineage, open_session
    from danlu.train.pref_batches import PrefBatches
    from danlu.train.pref_data import PAIRS
    from danlu.train.sft import _lineage_base, apply_method

    session = open_session("train-rm", cfg, out, resume)
    d, t, info, m = cfg.data, cfg.train, session.info, cfg.model
    run = open_pref_data(session, cfg, PAIRS)
    tok = run.tokenizer
    torch.manual_seed(t.seed)  # the new score head (and new embedding rows, LoRA's A) are drawn: the same every run
    model = load_reward_model(run.folder, m.attn_implementation,
                              tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id)
    if len(tok) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tok))
    new_ids = list(range(len(tok) - run.added, len(tok))) if run.added else []
    model = apply_method(model, m.model_copy(update={"adapter": "merge"}), run.folder, new_ids, task_type="SEQ_CLS",
                         train_modules=("score",))
    trainable, total = adapters.trainable_count(model)

    stream = PrefBatches(run.train, run.units, run.repeats, d.seq_len, t.micro_batch_size, d.packing, t.epochs,
                         d.seed, info.rank, info.world_size, share_prompt=d.share_prompt)
    steps = min(stream.steps(t.batch_size), t.max_steps or 10**12)
    session.say(f"reward model data: {data_line(run, t, steps)}\nmethod {m.method}: {trainable:,} of {total:,} "
                f"parameters train ({trainable / total:.2%}), score head included")
    val = val_batches(run.val, t.micro_batch_size, d)
    names = run.val.task_names
    evaluate_fn = (lambda net, prec: evaluate(net, val, names, prec, info)) if val else None
    tokens_per_step = int(np.mean(run.train.unit_lengths)) * t.batch_size
    fitted = fit(session, model, stream, rm_objective(cfg.rm), steps, tokens_per_step, 2 * d.seq_len,
                 evaluate=evaluate_fn, checkpoint_assets=run.tok_dir)
    info_ = {**lineage(session, _lineage_base(run.folder), str(run.tok_dir), run.data_lineage(d), fitted),
             "method": m.method, "reward_model": True, "chat_template_sha256": run.template_sha()}
    report = {"counts": run.data_report["counts"],
              "headline": ["steps", "final_loss", "heldout.eval/accuracy", "model"],
              "pairs": run.data_report["pairs"], "stream": stream.stats(), "method": m.method,
              "trainable_parameters": trainable}
    return finish(session, fitted, str(run.tok_dir), info_, report)
