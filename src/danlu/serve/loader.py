"""Load what the server serves: a local HF causal LM folder (danlu's own or any other), a merged export, or a
LoRA adapter folder on top of its base; its tokenizer and the chat template saved with it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

TOKENIZER_MARKERS = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


@dataclass
class LoadedModel:
    model: object  # a transformers PreTrainedModel in eval mode
    tokenizer: object
    template: str | None  # the folder's chat template (None: the tokenizer's own or danlu's default applies)
    name: str  # the name clients ask for (`model` in requests)
    path: str
    base_path: str | None  # the base model of a LoRA adapter folder
    max_model_len: int
    eos_token_ids: list[int]


def resolve_device(device: str = "auto"):
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device) -> "object":
    """'auto': bf16 on a GPU that supports it (else fp16), fp32 on CPU; or a named dtype."""
    import torch

    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype == "auto":
        if device.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return torch.float32
    if dtype not in names:
        raise ValueError(f"dtype {dtype!r} is not one of auto, {', '.join(names)}")
    return names[dtype]


def adapter_base(folder: Path, base: str | None) -> Path:
    """The base model folder of a LoRA adapter: `base` if given, else adapter_config.json's
    base_model_name_or_path, which must be a local folder (nothing is downloaded)."""
    cfg = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))
    path = Path(base or cfg.get("base_model_name_or_path") or "")
    if not base and not path.is_absolute():
        path = (folder / path) if (folder / path / "config.json").exists() else path
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{folder}/adapter_config.json: base model {str(path)!r} is not a local model folder; "
                                "give the base folder with --base")
    return path


def load_model(path: str | Path, *, base: str | None = None, dtype: str = "auto", device: str = "auto",
               name: str | None = None, max_model_len: int | None = None, chat_template_file: str | None = None,
               attn_implementation: str = "sdpa", merge_lora: bool = True) -> LoadedModel:
    """Load a model folder for serving. A folder with adapter_config.json is a LoRA adapter: its base is loaded
    and the adapter merged into it (one matmul per layer, as fast as a merged export); the tokenizer comes from
    the adapter folder when it has one (adapters trained with new tokens ship theirs), else from the base."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from danlu.model.adapters import model_folder
    from danlu.tokenizer.chat import chat_template

    if not Path(path).is_dir():
        raise FileNotFoundError(f"{path}: no such model folder")
    folder = model_folder(path)  # a danlu training run: its model/
    is_adapter = (folder / "adapter_config.json").exists()
    base_path = adapter_base(folder, base) if is_adapter else None
    weights_dir = base_path or folder
    tok_dir = folder if any((folder / m).exists() for m in TOKENIZER_MARKERS) else weights_dir
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)

    tokenizer = AutoTokenizer.from_pretrained(str(tok_dir))
    model = AutoModelForCausalLM.from_pretrained(str(weights_dir), dtype=torch_dtype,
                                                 attn_implementation=attn_implementation)
    if is_adapter:
        from peft import PeftModel

        if model.get_input_embeddings().weight.shape[0] < len(tokenizer):
            model.resize_token_embeddings(len(tokenizer))
        model = PeftModel.from_pretrained(model, str(folder))
        if merge_lora:
            model = model.merge_and_unload()
    model.to(dev).eval()

    template = Path(chat_template_file).read_text(encoding="utf-8") if chat_template_file else chat_template(tok_dir)
    limit = getattr(model.config.get_text_config(), "max_position_embeddings", None) or 2048
    if max_model_len is not None:
        if max_model_len > limit:
            raise ValueError(f"max_model_len {max_model_len} exceeds the model's max_position_embeddings {limit}")
        limit = max_model_len
    return LoadedModel(model=model, tokenizer=tokenizer, template=template, name=name or Path(path).name,
                       path=str(folder), base_path=str(base_path) if base_path else None, max_model_len=limit,
                       eos_token_ids=eos_token_ids(model, tokenizer))


def eos_token_ids(model, tokenizer) -> list[int]:
    """The tokenizer's eos and the model's generation_config eos id(s): plain completions stop there."""
    ids = set()
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    gen = getattr(model, "generation_config", None)
    eos = getattr(gen, "eos_token_id", None) if gen is not None else None
    if eos is not None:
        ids.update(int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos]))
    return sorted(ids)
