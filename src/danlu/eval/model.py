"""Load a local HF causal LM and its tokenizer for evaluation: eval mode, on the chosen device and dtype."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from danlu.eval.config import Runtime


@dataclass
class LoadedModel:
    model: object  # transformers PreTrainedModel
    tokenizer: object  # transformers PreTrainedTokenizer(Fast)
    path: Path
    device: object  # torch.device

    @property
    def max_length(self) -> int:
        cfg = self.model.config
        return int(getattr(cfg, "max_position_embeddings", None) or 2048)


def pick_device(runtime: Runtime):
    import torch

    if runtime.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(runtime.device)


def pick_dtype(runtime: Runtime, device):
    import torch

    if runtime.dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, runtime.dtype)


def load_model(model_dir: str | Path, runtime: Runtime = Runtime()) -> LoadedModel:
    """A model folder, a LoRA adapter folder (merged into its recorded base) or a danlu training run (its
    model/), loaded in fp32 through danlu.model.adapters, then cast and moved for inference."""
    import torch
    from transformers import AutoTokenizer

    from danlu.model.adapters import load_causal_lm, model_folder

    if runtime.threads:
        torch.set_num_threads(runtime.threads)
    path = model_folder(model_dir)
    model = load_causal_lm(path)
    device = pick_device(runtime)
    model = model.to(device=device, dtype=pick_dtype(runtime, device)).eval()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    return LoadedModel(model=model, tokenizer=tokenizer, path=path, device=device)
