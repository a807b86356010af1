"""Resize a local model's input and output embeddings for an extended tokenizer.

Rows of existing ids are kept bit for bit, so on text that encodes without new tokens the model's logits over
the old vocabulary are unchanged. Each new token's row starts as the mean of the base rows of the pieces the
base tokenizer split it into (the usual initialisation in vocabulary extension: the new token starts as
"about what its pieces meant").
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tokenizers import Tokenizer

from danlu.runs import atomic_dir

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")


def new_token_pieces(base_tokenizer: str | Path, new_tokenizer: str | Path) -> dict[int, list[int]]:
    """new id -> the base ids its token splits into. Raises if `new_tokenizer` renumbers any base token."""
    base = Tokenizer.from_file(str(Path(base_tokenizer) / "tokenizer.json"))
    new = Tokenizer.from_file(str(Path(new_tokenizer) / "tokenizer.json"))
    base_vocab, new_vocab = base.get_vocab(with_added_tokens=True), new.get_vocab(with_added_tokens=True)
    moved = [t for t, i in base_vocab.items() if new_vocab.get(t) != i]
    if moved:
        raise ValueError(f"{new_tokenizer} does not extend {base_tokenizer}: {len(moved)} base tokens changed id, e.g. {moved[:3]}")
    pieces = {}
    for tok, idx in new_vocab.items():
        if tok not in base_vocab:
            # the model's own BPE on the token string, without pre-tokenisation (token strings are byte-level text)
            pieces[idx] = [t.id for t in base.model.tokenize(tok)]
    return pieces


def resize_for_tokenizer(
    model_dir: str | Path, base_tokenizer: str | Path, new_tokenizer: str | Path, out_dir: str | Path
) -> dict:
    """Load `model_dir`, add rows for `new_tokenizer`'s new ids, save safetensors + the new tokenizer to `out_dir`."""
    import torch
    from transformers import AutoModelForCausalLM

    pieces = new_token_pieces(base_tokenizer, new_tokenizer)
    model = AutoModelForCausalLM.from_pretrained(str(model_dir))
    old_rows = model.get_input_embeddings().weight.shape[0]
    base_max = max((i for p in pieces.values() for i in p), default=-1)
    if base_max >= old_rows:
        raise ValueError(f"{model_dir} has {old_rows} embedding rows but its tokenizer uses id {base_max}")
    rows = max(old_rows, max(pieces, default=-1) + 1)
    if rows > old_rows:
        model.resize_token_embeddings(rows, mean_resizing=False)
    emb_in = model.get_input_embeddings().weight
    out_layer = model.get_output_embeddings()
    emb_out = out_layer.weight if out_layer is not None else None
    with torch.no_grad():
        for idx, base_ids in pieces.items():
            emb_in[idx] = emb_in[base_ids].mean(0)
            if emb_out is not None and emb_out.data_ptr() != emb_in.data_ptr():
                emb_out[idx] = emb_out[base_ids].mean(0)
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        model.save_pretrained(str(tmp))  # safetensors by default
        for name in TOKENIZER_FILES:
            if (Path(new_tokenizer) / name).exists():
                shutil.copyfile(Path(new_tokenizer) / name, tmp / name)
    return {"dir": str(out), "rows_before": old_rows, "rows_after": rows, "new_rows_initialised": len(pieces)}
