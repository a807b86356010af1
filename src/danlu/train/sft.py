"""`danlu train sft`: supervised fine-tuning (full, LoRA, or freezing) of a local model on SFT records.

    OUT/
      config.yaml, run.log, report.json, metrics.jsonl, tb/     (danlu.runs conventions)
      data/train, data/val    the records rendered with the chat template (danlu.train.sft_data), reused
      tokenizer/              the tokenizer with the chat template it trained with (also in every checkpoint)
      checkpoints/step-N/     resumable; a loadable model (or adapter) folder each
      model/                  the final model (a LoRA run: the adapter, its base recorded), lineage.json

The stage chooses the model (its own template, or danlu's default with new role tokens), the method, the SFT
stream (danlu.train.sft_batches) and the weighted loss; danlu.train.harness does the rest, as for pretraining.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch

from danlu.config import ConfigError
from danlu.train.config import SFTConfig


def resolve_template(cfg: SFTConfig, own: str | None) -> str | None:
    """The template to train with: the model's own, or the configured one (a .jinja file or the text), which
    must match the model's own unless `template_override` (training and serving must not drift apart)."""
    given = cfg.model.template
    if given is None:
        return own
    text = Path(given).read_text(encoding="utf-8") if len(given) < 4096 and Path(given).is_file() else given
    if own is not None and text != own and not cfg.model.template_override:
        raise ConfigError(f"model.template differs from the chat template {cfg.model.path} was saved with; a model "
                          "trained with one template and served with another answers badly. Set "
                          "model.template_override: true to train with the new one (it is saved with the model)")
    return text


def sample_repeats(store, samples: np.ndarray, source_weights: dict, task_weights: dict) -> np.ndarray:
    """Each sample's up-sampling factor: its source's weight times its task_type's ('a' also covers 'a/b')."""
    out = np.ones(len(samples), dtype=np.float64)
    for k, i in enumerate(samples.tolist()):
        source = store.source_names[int(store.source_codes[i])]
        task = store.task_names[int(store.task_codes[i])]
        out[k] = source_weights.get(source, 1.0) * task_weights.get(task, task_weights.get(task.split("/")[0], 1.0))
    return out


@torch.no_grad()
def task_losses(model: torch.nn.Module, batches: list[dict], task_names: list[str], precision: str, info) -> dict:
    """Held-out loss per task_type (token-weighted within each) and overall, on the validation rows."""
    import torch.nn.functional as F

    from danlu.train.distributed import all_reduce_sum, autocast, unwrap
    from danlu.train.objectives import lm_logits

    net = unwrap(model)
    net.eval()
    sums = torch.zeros(len(task_names), 2, dtype=torch.float64, device=info.device)
    for batch in batches[info.rank :: info.world_size]:
        batch = {k: v.to(info.device) for k, v in batch.items()}
        with autocast(precision, info.device):
            logits = lm_logits(net, batch, doc_mask=True)
        labels = F.pad(batch["labels"][:, 1:], (0, 1), value=-100).flatten()
        w = F.pad(batch["weights"][:, 1:], (0, 1), value=0.0).flatten().double()
        task = F.pad(batch["task"][:, 1:], (0, 1), value=-1).flatten()
        ce = F.cross_entropy(logits.flatten(0, 1).float(), labels, ignore_index=-100, reduction="none").double()
        keep = (labels != -100) & (task >= 0)
        sums.index_add_(0, task[keep], torch.stack([ce[keep] * w[keep], w[keep]], dim=1))
    all_reduce_sum(sums)
    model.train()
    out = {f"eval/{t}/loss": float(s[0] / s[1]) for t, s in zip(task_names, sums) if s[1] > 0}
    if sums[:, 1].sum() > 0:
        out["eval/loss"] = float(sums[:, 0].sum() / sums[:, 1].sum())
    return out


def _share_table(shares: dict, loss_norm: str) -> tuple[str, list[str]]:
    head = f"{'task_type':<28}{'samples':>9}{'loss weight':>13}   (loss_norm: {loss_norm})"
    lines, warnings = [head, "-" * len(head)], []
    for task, s in shares.items():
        lines.append(f"{task:<28}{s['sample_share']:>9.1%}{s['weight_share']:>13.1%}")
        ratio = s["weight_share"] / s["sample_share"] if s["sample_share"] else 1.0
        if ratio > 2 or ratio < 0.5:
            warnings.append(f"task_type '{task}' is {s['sample_share']:.1%} of the samples but gets "
                            f"{s['weight_share']:.1%} of the loss weight under loss_norm '{loss_norm}' "
                            f"({ratio:.2g}x): " + ("its short answers count for little; loss_norm: sample weighs "
                                                  "every sample the same" if ratio < 1 else
                                                  "its long answers dominate the loss"))
    return "\n".join(lines), warnings


def _lineage_base(folder: Path) -> dict:
    from danlu.model.adapters import adapter_base, is_adapter

    info = {"path": str(folder.resolve())}
    config = folder / ("adapter_config.json" if is_adapter(folder) else "config.json")
    info["config_sha256"] = hashlib.sha256(config.read_bytes()).hexdigest()
    if is_adapter(folder):
        info["adapter_of"] = str(adapter_base(folder))
    parent = folder / "lineage.json"
    if parent.exists():  # the chain of stages: pretraining -> SFT -> SFT...
        info["lineage"] = json.loads(parent.read_text(encoding="utf-8"))
    return info


def load_model(m, folder: Path, tokenizer, added: int, seed: int):
    """The stage's starting model (`model.path` resolved to `folder`) as an fp32 causal LM, its embeddings grown to
    the tokenizer (`added` chat-template tokens at its end); returns (model, the new token ids)."""
    from danlu.model import adapters
    from danlu.tokenizer.chat import stop_token_ids

    model = adapters.load_causal_lm(folder, m.attn_implementation, trainable_adapter=m.adapter == "continue",
                                    merge_adapter=m.adapter == "merge")
    new_ids = list(range(len(tokenizer) - added, len(tokenizer))) if added else []
    torch.manual_seed(seed)  # new embedding rows and LoRA's A matrices are drawn: the same on every run
    if len(tokenizer) > model.get_input_embeddings().weight.shape[0]:
        model.resize_token_embeddings(len(tokenizer))  # new role tokens start at the mean embedding
    # generate() stops at the template's end-of-turn tokens, not only at eos (Qwen's <|im_end|>, danlu's <|end|>)
    model.generation_config.eos_token_id = stop_token_ids(tokenizer)
    return model, new_ids


def apply_method(model, m, folder: Path, new_ids: list[int], task_type: str = "CAUSAL_LM", train_modules=()):
    """model.method on a loaded model: LoRA adapters (peft), freezing, or full training; `train_modules` always
    train (a reward model's new score head)."""
    from danlu.model import adapters

    if m.method == "lora" and not (adapters.is_adapter(folder) and m.adapter == "continue"):
        model = adapters.add_lora(model, m.lora, new_ids, task_type)
    elif m.method == "freeze":
        adapters.freeze(model, m.freeze.model_copy(update={"modules": [*m.freeze.modules, *train_modules]}), new_ids)
    elif m.method == "full" and adapters.is_adapter(folder) and m.adapter == "continue":
        raise ConfigError("model.adapter: continue keeps training a LoRA adapter: use model.method: lora")
    return model


def sft(cfg: SFTConfig, out: str | Path | None = None, resume: bool = False) -> dict:
    """Fine-tune per `cfg` into `out` (default cfg.out); with `resume`, continue from the newest checkpoint."""
    from transformers import AutoTokenizer

    from danlu.model import adapters
    from danlu.tokenizer.chat import chat_template, ensure_chat_template
    from danlu.train.distributed import barrier
    from danlu.train.harness import finish, fit, lineage, open_session
    from danlu.train.objectives import weighted_lm
    from danlu.train.sft_batches import SFTBatches, plan_rows, rows_to_batch, weight_shares
    from danlu.train.sft_data import SFTStore, prepare

    session = open_session("train-sft", cfg, out, resume)
    d, t, info, m = cfg.data, cfg.train, session.info, cfg.model
    folder = adapters.model_folder(m.path).resolve()
    tokenizer = AutoTokenizer.from_pretrained(folder)
    added = ensure_chat_template(tokenizer, resolve_template(cfg, chat_template(folder)))
    tok_dir = session.out / "tokenizer"
    if info.is_main:
        tokenizer.save_pretrained(tok_dir)
        data_report = prepare(session.out, tokenizer, tok_dir, tokenizer.chat_template, d)
    barrier()
    if not info.is_main:
        data_report = json.loads((session.out / "data" / "report.json").read_text(encoding="utf-8"))
    train_store, val_store = SFTStore(session.out / "data" / "train"), SFTStore(session.out / "data" / "val")
    samples = np.arange(len(train_store))
    repeats = sample_repeats(train_store, samples, d.source_weights, d.task_type_weights)
    stream = SFTBatches(train_store, samples, repeats, d.seq_len, t.micro_batch_size, d.packing, d.loss_norm,
                        t.epochs, d.seed, info.rank, info.world_size, d.buffer_size)
    steps = min(-(-len(stream.rows) // t.batch_size), t.max_steps or 10**12)
    table, warnings = _share_table(weight_shares(train_store, samples, repeats, d.loss_norm), d.loss_norm)
    session.say(f"SFT data: {len(samples)} training samples ({data_report['samples']['val']} validation), "
                f"{t.epochs:g} epochs -> {len(stream.rows)} rows of up to {d.seq_len} tokens, {steps} steps\n{table}"
                + "".join(f"\nwarning: {w}" for w in warnings))

    model, new_ids = load_model(m, folder, tokenizer, added, t.seed)
    model = apply_method(model, m, folder, new_ids)
    trainable, total = adapters.trainable_count(model)
    session.say(f"method {m.method}: {trainable:,} of {total:,} parameters train ({trainable / total:.2%})"
                + (f"; {added} chat-template tokens added" if added else ""))

    val_rows = plan_rows(np.arange(len(val_store)), val_store.lengths, d.seq_len, True, d.buffer_size)
    val = [rows_to_batch(val_rows[i : i + t.micro_batch_size], val_store, "token", val_store.pad_id)
           for i in range(0, len(val_rows), t.micro_batch_size)]
    names = val_store.task_names
    fitted = fit(session, model, stream, weighted_lm(), steps, t.batch_size * d.seq_len, d.seq_len,
                 evaluate=(lambda net, precision: task_losses(net, val, names, precision, info)) if val else None,
                 checkpoint_assets=tok_dir)
    data = [{"files": data_report.get("fingerprint"), "train": [str(Path(p).resolve()) for p in d.train],
             "val": [str(Path(p).resolve()) for p in d.val]}]
    info_ = {**lineage(session, _lineage_base(folder), str(tok_dir), data, fitted), "method": m.method,
             "chat_template_sha256": hashlib.sha256(tokenizer.chat_template.encode()).hexdigest()}
    report = {"counts": data_report["counts"], "headline": ["steps", "final_loss", "tokens_per_s", "model"],
              "samples": data_report["samples"], "stream": stream.stats(), "loss_norm": d.loss_norm,
              "task_shares": weight_shares(train_store, samples, repeats, d.loss_norm), "warnings": warnings,
              "method": m.method, "trainable_parameters": trainable}
    return finish(session, fitted, str(tok_dir), info_, report,
                  post_save=_merge if m.method == "lora" and m.merge_final else None)


def _merge(final: Path) -> dict:
    """model.merge_final: also write the adapter merged into its base (parity-checked) beside it."""
    from danlu.model.export import export

    return {"merged_model": export(final, final.with_name("model.merged"))}
