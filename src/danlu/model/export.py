"""`danlu export`: a model ready to ship as a plain Hugging Face folder (a LoRA adapter merged into its base),
checked before it is written: the exported model's logits on a probe set must equal the trained model's.

LLaMA-Factory users meet merged models that answer worse than their adapters (a merge in half precision, a base
that is not the one trained on, a tokenizer resized on one side only); here the merge runs in fp32 on the
recorded base, and the parity check fails the command, writing nothing, when the two disagree.
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

import torch

from danlu import __version__
from danlu.runs import atomic_dir, atomic_write_json

PROBE_MESSAGES = [[{"role": "user", "content": "磁盘空间不足时应该先检查什么？"}],
                  [{"role": "system", "content": "You are an ops assistant."},
                   {"role": "user", "content": "How do I restart a systemd service?"}]]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class ParityError(ValueError):
    """The exported model does not compute what the trained one does."""


def probe_batches(tokenizer, vocab_size: int, seed: int = 0) -> list[torch.Tensor]:
    """Chat prompts rendered with the model's template, and random token sequences over the whole vocabulary
    (new tokens included)."""
    from danlu.tokenizer.chat import render_prompt

    out = [torch.tensor([render_prompt(tokenizer, m)]) for m in PROBE_MESSAGES]
    g = torch.Generator().manual_seed(seed)
    out.append(torch.randint(0, vocab_size, (2, 48), generator=g))
    return out


@torch.no_grad()
def _logits(model, batches: list[torch.Tensor]) -> list[torch.Tensor]:
    model.eval()
    return [model(input_ids=b).logits.float() for b in batches]


def export(path: str | Path, out: str | Path, dtype: str = "float32", tolerance: float | None = None) -> dict:
    """Write `path` (a model folder, an adapter folder or a danlu run) to `out` as a full HF model in `dtype`,
    after checking that its logits match the trained model's within `tolerance` (default: 1e-4 relative to the
    largest logit in fp32, 3e-2 in 16-bit). Returns what was checked (also in out/lineage.json)."""
    from transformers import AutoTokenizer

    from danlu.model.adapters import is_adapter, load_causal_lm, model_folder

    if dtype not in DTYPES:
        raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
    folder = model_folder(path)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    trained = load_causal_lm(folder, merge_adapter=False)
    batches = probe_batches(tokenizer, trained.get_input_embeddings().weight.shape[0])
    reference = _logits(trained, batches)
    merged = trained.merge_and_unload() if is_adapter(folder) else trained
    merged = merged.to(DTYPES[dtype])
    got = _logits(merged, batches)
    scale = max(float(r.abs().max()) for r in reference)
    tol = tolerance if tolerance is not None else (1e-4 if dtype == "float32" else 3e-2) * max(scale, 1.0)
    diff = max(float((a - b).abs().max()) for a, b in zip(reference, got))
    check = {"probe_sequences": sum(len(b) for b in batches), "max_abs_logit_diff": diff, "tolerance": tol,
             "dtype": dtype, "merged_adapter": is_adapter(folder)}
    if not diff <= tol:
        raise ParityError(f"{folder}: the exported model's logits differ from the trained model's by {diff:.3g} "
                          f"(tolerance {tol:.3g}); nothing was written to {out}. Export in float32, or check that "
                          "the adapter's base model is the one it was trained on")
    lineage_file = folder / "lineage.json"
    lineage = json.loads(lineage_file.read_text(encoding="utf-8")) if lineage_file.exists() else {}
    lineage = {**lineage, "export": {"from": str(Path(folder).resolve()), "danlu": __version__,
                                     "created": datetime.now(timezone.utc).isoformat(), "parity": check}}
    with atomic_dir(Path(out)) as tmp:
        merged.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)  # with its chat template: the export serves as it was trained
        atomic_write_json(tmp / "lineage.json", lineage)
    return {"out": str(out), **check}
