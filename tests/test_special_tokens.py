"""One special-token resolver (danlu.tokenizer.special): token stores, the trainer and the model loader frame
documents with the tokenizer's own bos/eos, whatever they are called."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from danlu.config import ConfigError
from danlu.data.tokenize import tokenize
from danlu.tokenizer.encode import load_encoder
from danlu.tokenizer.special import special_tokens
from danlu.train.store import TokenStore
from test_tokenizer_expand import sentencepiece_base
from tokstore_helpers import WORDS, make_text

# tokenizer_config.json as the families publish them (the keys that matter here)
QWEN_BASE = {"bos_token": None, "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>",
             "added": ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]}
LLAMA3 = {"bos_token": "<|begin_of_text|>", "eos_token": "<|end_of_text|>", "pad_token": None,
          "added": ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]}


def _texts(n: int = 120) -> list[str]:
    rng = random.Random(0)
    return [make_text(rng, 30) for _ in range(n)]


def byte_level(folder: Path, family: dict) -> Path:
    """A small byte-level BPE with the family's special tokens and tokenizer_config.json (no downloads)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(_texts(), trainers.BpeTrainer(vocab_size=400, special_tokens=family["added"],
                                                          initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                          show_progress=False))
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {k: family[k] for k in ("bos_token", "eos_token", "pad_token")}
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "PreTrainedTokenizerFast",
                                                               "model_max_length": 2048, **config}))
    return folder


def sentencepiece(folder: Path) -> Path:
    """A Llama-2/Mistral-style SentencePiece tokenizer: <s> / </s>, no pad token, bos given as an AddedToken."""
    sentencepiece_base(folder, _texts(150), 400)
    config = {"bos_token": {"__type": "AddedToken", "content": "<s>", "lstrip": False, "normalized": False},
              "eos_token": "</s>", "unk_token": "<unk>", "pad_token": None, "tokenizer_class": "LlamaTokenizer"}
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def _docs(path: Path, n: int = 12) -> list[str]:
    rng = random.Random(1)
    texts = [make_text(rng, rng.randint(3, 30)) for _ in range(n)]
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": t, "source": "s"}) + "\n" for i, t in enumerate(texts)))
    return texts


@pytest.mark.parametrize("family, bos, eos", [("qwen", None, "<|endoftext|>"),
                                              ("llama3", "<|begin_of_text|>", "<|end_of_text|>"),
                                              ("sentencepiece", "<s>", "</s>")])
def test_token_stores_are_framed_with_the_tokenizers_own_tokens(tmp_path, family, bos, eos):
    folder = tmp_path / family
    if family == "sentencepiece":
        sentencepiece(folder)
    else:
        byte_level(folder, QWEN_BASE if family == "qwen" else LLAMA3)
    special = special_tokens(folder)
    assert (special.bos, special.eos) == (bos, eos)
    texts = _docs(tmp_path / "docs.jsonl")
    report = tokenize([tmp_path / "docs.jsonl"], tmp_path / "store", folder, workers=1, progress=False)
    assert report["framing"] == {"bos": bos, "eos": eos} and report["warnings"] == []
    store, enc = TokenStore(tmp_path / "store"), load_encoder(folder)
    pre = [special.bos_id] if bos else []
    for i, text in enumerate(texts):
        assert store.doc(i).tolist() == pre + enc.encode_batch([text])[0] + [special.eos_id]
    assert store.eos_id == special.eos_id and store.bos_id == special.bos_id
    # padding falls back to eos when the tokenizer has no pad token (it is never trained)
    assert store.pad_id == (special.pad_id if special.pad_id is not None else special.eos_id)


def test_model_loader_takes_bos_eos_pad_from_the_tokenizer_config(tmp_path):
    from danlu.model.create import ModelSpec, create_model

    folder = byte_level(tmp_path / "qwen", QWEN_BASE)
    model = create_model(ModelSpec(tokenizer=str(folder), preset="tiny"))
    special = special_tokens(folder)
    assert model.config.bos_token_id is None and model.config.eos_token_id == special.eos_id
    assert model.config.pad_token_id == special.pad_id  # the embedding's padding_idx is the pad token


def test_danlus_own_tokenizer_resolves_like_any_other(tmp_path):
    from danlu.tokenizer.train import SPECIAL_TOKENS, train_tokenizer

    (tmp_path / "c.txt").write_text("\n".join(_texts()), encoding="utf-8")
    train_tokenizer([tmp_path / "c.txt"], tmp_path / "tok", vocab_size=400)
    s = special_tokens(tmp_path / "tok")
    assert (s.bos, s.eos, s.pad) == tuple(SPECIAL_TOKENS[:3])


def test_a_tokenizer_without_bos_or_eos_needs_an_explicit_choice(tmp_path):
    folder = byte_level(tmp_path / "bare", {"bos_token": None, "eos_token": None, "pad_token": None,
                                            "added": ["<|sep|>"]})
    _docs(tmp_path / "docs.jsonl")
    with pytest.raises(ConfigError, match="neither a bos_token nor an eos_token") as e:
        tokenize([tmp_path / "docs.jsonl"], tmp_path / "s0", folder, workers=1, progress=False)
    assert "eos_token=" in str(e.value) and "unframed=true" in str(e.value)
    assert not (tmp_path / "s0").exists()  # refused before any work
    framed = tokenize([tmp_path / "docs.jsonl"], tmp_path / "s1", folder, workers=1, progress=False,
                      sets=["eos_token=<|sep|>"])
    sep = special_tokens(folder, eos_token="<|sep|>").eos_id
    assert framed["framing"]["eos"] == "<|sep|>" and TokenStore(tmp_path / "s1").doc(0).tolist()[-1] == sep
    bare = tokenize([tmp_path / "docs.jsonl"], tmp_path / "s2", folder, workers=1, progress=False, unframed=True)
    assert bare["warnings"] and "without boundary tokens" in bare["warnings"][0]
    with pytest.raises(ValueError, match="not in the vocabulary"):
        tokenize([tmp_path / "docs.jsonl"], tmp_path / "s3", folder, workers=1, progress=False, eos_token="<|nope|>")
