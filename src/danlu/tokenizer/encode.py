"""Fast batch encoding of a Hugging Face tokenizer folder (used by `danlu data tokenize` and `data chunk`).

When the folder's tokenizer.json is a byte-level BPE that tiktoken can run exactly (every tokenizer `danlu
tokenizer train/expand` writes for --type bpe), encoding goes through tiktoken, which is several times faster
than HF tokenizers; otherwise through HF tokenizers. Either way special-token strings inside documents
("<|eos|>" typed in a text) are encoded as plain text, so a document can never inject control tokens.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tokenizers import Tokenizer

from danlu.tokenizer.bytelevel import ranks_from_tokenizer_json
from danlu.tokenizer.special import special_tokens

# A probe covering scripts, digits, whitespace runs, emoji and control characters: the tiktoken engine must give
# the HF ids on it before it is trusted (a cheap guard on top of the structural check).
_PROBE = [
    "Debian 的 apt-get install -y  软件包\n\n\t  It's 12345 ok?! 🙂👍🏽 𠀀\x00\x1b[0m",
    "  leading spaces\r\n中文、English、日本語のテキスト・한국어 — «ÿ» \u200b\ufeff",
]


@dataclass
class Encoder:
    """Encode many texts to token ids without special tokens; the tokenizer's bos/eos ids (danlu.tokenizer.special)."""

    encode_batch: Callable[[list[str]], list[list[int]]]
    vocab_size: int
    bos_id: int | None
    eos_id: int | None
    engine: str = "tokenizers"  # "tiktoken" when the fast exact path is used


def load_encoder(tokenizer_dir: str | Path, engine: str = "auto", threads: int | None = None) -> Encoder:
    """Encoder for a tokenizer folder. engine: "auto" (tiktoken when exact, else tokenizers), "tiktoken", "tokenizers".
    threads: tiktoken threads per encode_batch call (default: CPU count; pass 1 inside multi-process workers)."""
    if engine not in ("auto", "tiktoken", "tokenizers"):
        raise ValueError(f"engine must be auto, tiktoken or tokenizers, not {engine!r}")
    path = Path(tokenizer_dir) / "tokenizer.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not a Hugging Face tokenizer folder (no tokenizer.json)")
    spec = json.loads(path.read_text(encoding="utf-8"))
    hf = Tokenizer.from_file(str(path))
    hf.encode_special_tokens = True  # "<|eos|>" inside a document is text, as in tiktoken's encode_ordinary
    special = special_tokens(tokenizer_dir)
    vocab_size, bos, eos = special.vocab_size, special.bos_id, special.eos_id

    def hf_encode_batch(texts: list[str]) -> list[list[int]]:
        return [e.ids for e in hf.encode_batch(texts, add_special_tokens=False)]

    if engine == "tokenizers":
        return Encoder(hf_encode_batch, vocab_size, bos, eos, "tokenizers")
    mapped = ranks_from_tokenizer_json(spec)
    if isinstance(mapped, str):
        if engine == "tiktoken":
            raise ValueError(f"{path}: tiktoken cannot encode this tokenizer exactly: {mapped}")
        return Encoder(hf_encode_batch, vocab_size, bos, eos, "tokenizers")
    enc = tiktoken_encoding(*mapped, name=str(path))
    threads = threads or max(1, min(8, os.cpu_count() or 1))

    def tt_encode_batch(texts: list[str]) -> list[list[int]]:
        if threads == 1 or len(texts) < 2:
            return [enc.encode_ordinary(t) for t in texts]
        return enc.encode_ordinary_batch(texts, num_threads=threads)

    if tt_encode_batch(_PROBE) != hf_encode_batch(_PROBE):  # pragma: no cover - guards unknown regex dialect gaps
        if engine == "tiktoken":
            raise ValueError(f"{path}: tiktoken and tokenizers disagree on the probe text")
        return Encoder(hf_encode_batch, vocab_size, bos, eos, "tokenizers")
    return Encoder(tt_encode_batch, vocab_size, bos, eos, "tiktoken")


def tiktoken_encoding(ranks: dict[bytes, int], pattern: str, specials: dict[str, int], name: str = "danlu"):
    import tiktoken

    return tiktoken.Encoding(name, pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)
