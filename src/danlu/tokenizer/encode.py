"""Fast batch encoding of a Hugging Face tokenizer folder (used by `danlu data tokenize` and `data chunk`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tokenizers import Tokenizer


@dataclass
class Encoder:
    """Encode many texts to token ids without special tokens; bos/eos ids for document framing."""

    encode_batch: Callable[[list[str]], list[list[int]]]
    vocab_size: int
    bos_id: int | None
    eos_id: int | None


def load_encoder(tokenizer_dir: str | Path) -> Encoder:
    path = Path(tokenizer_dir) / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not a Hugging Face tokenizer folder (no tokenizer.json)")
    tok = Tokenizer.from_file(str(path))

    def encode_batch(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in tok.encode_batch(texts, add_special_tokens=False)]

    return Encoder(encode_batch, tok.get_vocab_size(), tok.token_to_id("<|bos|>"), tok.token_to_id("<|eos|>"))
