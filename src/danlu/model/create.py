"""Load a local Hugging Face causal LM, or create a new Llama-architecture one from a size preset or dims.

New models use transformers' LlamaConfig/LlamaForCausalLM (RoPE, RMSNorm, SwiGLU, grouped-query attention),
so every checkpoint we write is a plain Hugging Face folder that any tool loads.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from pydantic import model_validator

from danlu.config import StrictModel
from danlu.tokenizer.special import special_tokens

# Llama-shaped presets: hidden size, layers, attention heads, key/value heads (GQA), SwiGLU width.
SIZE_PRESETS: dict[str, dict[str, int]] = {
    "tiny": dict(hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=176),
    "20m": dict(hidden_size=256, num_layers=6, num_heads=4, num_kv_heads=2, intermediate_size=704),
    "100m": dict(hidden_size=768, num_layers=12, num_heads=12, num_kv_heads=4, intermediate_size=2048),
    "350m": dict(hidden_size=1024, num_layers=24, num_heads=16, num_kv_heads=8, intermediate_size=2816),
    "1b": dict(hidden_size=2048, num_layers=16, num_heads=32, num_kv_heads=8, intermediate_size=8192),
    "3b": dict(hidden_size=3072, num_layers=28, num_heads=24, num_kv_heads=8, intermediate_size=8192),
}


class ModelSpec(StrictModel):
    """`path` (continued pretraining of a local HF model) XOR a new Llama (`preset` and/or explicit dims)."""

    path: Optional[str] = None
    tokenizer: Optional[str] = None  # HF tokenizer folder; defaults to `path` for an existing model
    preset: Optional[str] = None
    hidden_size: Optional[int] = None
    num_layers: Optional[int] = None
    num_heads: Optional[int] = None
    num_kv_heads: Optional[int] = None
    intermediate_size: Optional[int] = None
    max_position_embeddings: int = 4096
    rope_theta: float = 10000.0
    tie_word_embeddings: bool = True
    attn_implementation: str = "sdpa"

    @model_validator(mode="after")
    def _check(self) -> "ModelSpec":
        dims = [k for k in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size")
                if getattr(self, k) is not None]
        if self.path and (self.preset or dims):
            raise ValueError(f"model.path cannot be combined with model.preset/dims ({', '.join(dims) or 'preset'})")
        if not self.path:
            if self.preset is not None and self.preset not in SIZE_PRESETS:
                raise ValueError(f"model.preset {self.preset!r} is not one of {', '.join(SIZE_PRESETS)}")
            if self.preset is None and len(dims) < 5:
                missing = sorted({"hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size"}
                                 - set(dims))
                raise ValueError("give model.path, model.preset, or all dims; missing model." + ", model.".join(missing))
            if not self.tokenizer:
                raise ValueError("model.tokenizer (a tokenizer folder) is required for a new model")
        return self

    def dims(self) -> dict[str, int]:
        d = dict(SIZE_PRESETS[self.preset]) if self.preset else {}
        for k in ("hidden_size", "num_layers", "num_heads", "num_kv_heads", "intermediate_size"):
            if getattr(self, k) is not None:
                d[k] = getattr(self, k)
        return d

    def tokenizer_dir(self) -> str:
        return self.tokenizer or self.path or ""


def llama_config(spec: ModelSpec, vocab_size: int, bos_id: int | None = None, eos_id: int | None = None,
                 pad_id: int | None = None):
    from transformers import LlamaConfig

    d = spec.dims()
    if d["hidden_size"] % d["num_heads"] or d["num_heads"] % d["num_kv_heads"]:
        raise ValueError(f"model: hidden_size {d['hidden_size']} must divide by num_heads {d['num_heads']}, "
                         f"and num_heads by num_kv_heads {d['num_kv_heads']}")
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=d["hidden_size"],
        intermediate_size=d["intermediate_size"],
        num_hidden_layers=d["num_layers"],
        num_attention_heads=d["num_heads"],
        num_key_value_heads=d["num_kv_heads"],
        max_position_embeddings=spec.max_position_embeddings,
        rope_theta=spec.rope_theta,
        tie_word_embeddings=spec.tie_word_embeddings,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )


def create_model(spec: ModelSpec, seed: int = 0):
    """A HF causal LM in fp32 (the master weights; compute runs under autocast)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    if spec.path:
        if not Path(spec.path, "config.json").exists():
            raise FileNotFoundError(f"model.path {spec.path}: not a Hugging Face model folder (no config.json)")
        return AutoModelForCausalLM.from_pretrained(spec.path, dtype=torch.float32,
                                                    attn_implementation=spec.attn_implementation)
    special = special_tokens(spec.tokenizer_dir())
    # pad_token_id becomes the embedding's padding_idx (a row kept at zero and never trained): it must be the
    # tokenizer's pad token, never the EOS that ends every document
    config = llama_config(spec, special.vocab_size, special.bos_id, special.eos_id, special.pad_id)
    config._attn_implementation = spec.attn_implementation
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).float()


def count_parameters(model, exclude_embeddings: bool = False) -> int:
    n = sum(p.numel() for p in model.parameters())
    if exclude_embeddings:
        n -= model.get_input_embeddings().weight.numel()
    return n
