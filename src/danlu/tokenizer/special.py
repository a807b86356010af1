"""Which tokens begin, end and pad: read from a tokenizer folder's own config, the way transformers reads it.

Token stores (document framing), the tokenizer trainer and the model loader all ask `special_tokens(folder)`,
so a Qwen-style tokenizer (no BOS; EOS `<|endoftext|>`), a Llama-3-style one (`<|begin_of_text|>` /
`<|end_of_text|>`), a SentencePiece one (`<s>` / `</s>`) and danlu's own (`<|bos|>` / `<|eos|>`) are framed
correctly without any token name written into danlu. The names come from tokenizer_config.json
(`bos_token`, `eos_token`, `pad_token`: a string or an AddedToken object), else special_tokens_map.json;
their ids from tokenizer.json.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

ROLES = ("bos", "eos", "pad")


@dataclass(frozen=True)
class SpecialTokens:
    vocab_size: int  # tokenizer.json's vocabulary, added tokens included
    bos: str | None = None
    eos: str | None = None
    pad: str | None = None
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None

    @property
    def framed(self) -> bool:
        """Whether documents get a boundary token (a BOS before or an EOS after each one)."""
        return self.bos_id is not None or self.eos_id is not None

    def pad_or_fallback(self) -> int:
        """Padding id for packed rows: pad, else eos, else 0 (padding is never trained, any id works)."""
        return next((i for i in (self.pad_id, self.eos_id) if i is not None), 0)


def _name(value) -> str | None:
    if isinstance(value, dict):  # {"__type": "AddedToken", "content": "<s>", ...}
        value = value.get("content")
    return value if isinstance(value, str) and value else None


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except ValueError as e:
        raise ValueError(f"{path}: not valid JSON: {e}") from None
    return data if isinstance(data, dict) else {}


def special_tokens(tokenizer_dir: str | Path, eos_token: str | None = None) -> SpecialTokens:
    """The folder's bos/eos/pad tokens and ids. `eos_token` names an EOS for a tokenizer whose config gives
    none (it must be in the vocabulary). A configured token missing from the vocabulary is an error."""
    from tokenizers import Tokenizer

    folder = Path(tokenizer_dir)
    tok_file = folder / "tokenizer.json"
    if not tok_file.exists():
        raise FileNotFoundError(f"{folder}: not a Hugging Face tokenizer folder (no tokenizer.json)")
    tok = Tokenizer.from_file(str(tok_file))
    config = _read_json(folder / "tokenizer_config.json")
    fallback = _read_json(folder / "special_tokens_map.json")
    names = {r: _name(config.get(f"{r}_token")) if f"{r}_token" in config else _name(fallback.get(f"{r}_token"))
             for r in ROLES}
    if eos_token is not None:
        names["eos"] = eos_token
    ids = {}
    for role, name in names.items():
        if name is None:
            ids[role] = None
            continue
        ids[role] = tok.token_to_id(name)
        if ids[role] is None:
            raise ValueError(f"{folder}: {role}_token {name!r} is not in the vocabulary of tokenizer.json")
    return SpecialTokens(vocab_size=tok.get_vocab_size(with_added_tokens=True), bos=names["bos"],
                         eos=names["eos"], pad=names["pad"], bos_id=ids["bos"], eos_id=ids["eos"], pad_id=ids["pad"])
