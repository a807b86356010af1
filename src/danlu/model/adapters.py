"""Fine-tuning methods on a loaded model: LoRA (peft), freezing, and picking up what an earlier stage left.

A stage's input model is a local HF folder, a danlu training run (its `model/`), or a LoRA adapter folder
(adapter_config.json naming its base by a local path). An adapter from an earlier stage is merged into its base
before a new stage (`adapter: merge`, the default: stages stack as full models) or trained further
(`adapter: continue`).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

ADAPTER_CONFIG = "adapter_config.json"


def model_folder(path: str | Path) -> Path:
    """The model folder behind `path`: a training run's model/, or the folder itself."""
    path = Path(path)
    if (path / "model").is_dir() and ((path / "model" / "config.json").exists()
                                      or (path / "model" / ADAPTER_CONFIG).exists()):
        return path / "model"
    if not ((path / "config.json").exists() or (path / ADAPTER_CONFIG).exists()):
        raise FileNotFoundError(f"{path}: not a model folder (no config.json or adapter_config.json), nor a danlu "
                                "training run with one in model/")
    return path


def is_adapter(folder: str | Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).exists()


def adapter_base(folder: str | Path) -> Path:
    """The local base model an adapter was trained on (danlu records it as an absolute path)."""
    base = json.loads((Path(folder) / ADAPTER_CONFIG).read_text(encoding="utf-8")).get("base_model_name_or_path")
    if not base or not (Path(base) / "config.json").exists():
        raise FileNotFoundError(f"{folder}: the adapter's base model {base!r} is not a local model folder "
                                "(danlu never downloads one): fix base_model_name_or_path in adapter_config.json")
    return Path(base)


def load_causal_lm(folder: str | Path, attn_implementation: str = "sdpa", trainable_adapter: bool = False,
                   merge_adapter: bool = True):
    """A model folder as an fp32 causal LM: a full model, or base + adapter (merged, or as a PeftModel)."""
    from transformers import AutoModelForCausalLM

    folder = Path(folder)
    if not is_adapter(folder):
        return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                    attn_implementation=attn_implementation)
    from peft import PeftModel

    base = AutoModelForCausalLM.from_pretrained(adapter_base(folder), dtype=torch.float32,
                                                attn_implementation=attn_implementation)
    _match_vocab(base, folder)
    model = PeftModel.from_pretrained(base, folder, is_trainable=trainable_adapter)
    return model.merge_and_unload() if merge_adapter else model


def _match_vocab(base, adapter_folder: Path) -> None:
    """An adapter trained after new tokens were added (a chat template's role tokens) expects the larger
    embedding: resize the base to the adapter's tokenizer first."""
    from transformers import AutoTokenizer

    if (adapter_folder / "tokenizer.json").exists():
        n = len(AutoTokenizer.from_pretrained(adapter_folder))
        if n > base.get_input_embeddings().weight.shape[0]:
            base.resize_token_embeddings(n, mean_resizing=False)


def add_lora(model, cfg, new_token_ids: list[int] | None = None, task_type: str = "CAUSAL_LM"):
    """Wrap `model` with fresh LoRA adapters (peft); the base weights are frozen. Tokens added for the chat
    template get trainable embedding rows (peft's trainable_token_indices), or they would stay at their init.
    task_type "SEQ_CLS" (a reward model) also trains and saves the new score head in full."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(task_type=task_type, r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout,
                        target_modules=cfg.target_modules, use_dora=cfg.use_dora, use_rslora=cfg.use_rslora,
                        trainable_token_indices=list(new_token_ids) if new_token_ids else None)
    return get_peft_model(model, config)


def freeze(model, cfg, new_token_ids: list[int] | None = None) -> list[str]:
    """Train only the chosen decoder layers (and, as configured, embeddings, norms, named modules); returns the
    names of the trainable parameters. Frozen weights are never touched by the optimizer."""
    from danlu.train.distributed import decoder_layers

    layers = decoder_layers(model)
    chosen = {i % len(layers) for i in cfg.layers} if layers else set()
    train_ids = {id(p) for i in chosen for p in layers[i].parameters()}
    embeddings = [model.get_input_embeddings(), model.get_output_embeddings()]
    if cfg.embeddings or new_token_ids:  # new tokens must learn their rows
        train_ids |= {id(p) for m in embeddings if m is not None for p in m.parameters()}
    names = []
    for name, p in model.named_parameters():
        keep = id(p) in train_ids or (cfg.norms and "norm" in name.lower()) or any(m in name for m in cfg.modules)
        p.requires_grad_(keep)
        if keep:
            names.append(name)
    if not names:
        raise ValueError("model.freeze trains no parameter: choose layers, embeddings, norms or modules")
    return names


def trainable_count(model) -> tuple[int, int]:
    """(trainable, total) parameters."""
    total = sum(p.numel() for p in model.parameters())
    return sum(p.numel() for p in model.parameters() if p.requires_grad), total
