"""Test helpers: a tiny byte-level BPE tokenizer trained on made-up text, Document JSONL, and token stores.

Used by the pretraining-data and training-loop tests to build real tokenizers and stores in seconds.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from danlu.records import document

WORDS = ("apt", "dpkg", "软件包", "内核", "the", "system", "安装", "config", "服务", "network", "日志",
         "user", "root", "mount", "文件", "shell", "配置", "debian", "升级", "package")


def make_text(rng: random.Random, n_words: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n_words))


def make_tokenizer(folder: Path, vocab_size: int = 300) -> Path:
    """Train a byte-level BPE (special tokens <|bos|> <|eos|> <|pad|>) on generated text; save an HF folder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    rng = random.Random(0)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|bos|>", "<|eos|>", "<|pad|>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator([make_text(rng, 50) for _ in range(200)], trainer=trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>",
                            pad_token="<|pad|>").save_pretrained(folder)
    return folder


def write_docs(path: Path, n_docs: int, source: str = "ops", seed: int = 0, max_words: int = 120,
               bad_lines: dict[int, str] | None = None) -> list[dict]:
    """Write `n_docs` Document records (word counts 1..max_words) to `path`; `bad_lines` maps 1-based line
    numbers to raw text inserted there. Returns the good records in order."""
    rng = random.Random(seed)
    docs = [document(make_text(rng, rng.randint(1, max_words)), source, f"{source}/doc{i}.txt", "txt", i)
            for i in range(n_docs)]
    lines = [json.dumps(d, ensure_ascii=False) for d in docs]
    for lineno in sorted(bad_lines or {}):
        lines.insert(lineno - 1, bad_lines[lineno])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return docs


def write_texts(path: Path, texts: list[str], source: str) -> Path:
    """Document records of the given texts, one per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i, t in enumerate(texts):
            f.write(json.dumps(document(t, source, f"{source}.txt", "txt", position=i), ensure_ascii=False) + "\n")
    return path


def make_store(root: Path, tokenizer: Path, name: str, n_docs: int = 0, seed: int = 0, max_words: int = 120,
               texts: list[str] | None = None) -> Path:
    """A finished token store under root/name of `texts`, or else of `n_docs` generated documents."""
    from danlu.data.tokenize import tokenize

    if texts is None:
        write_docs(root / f"{name}.jsonl", n_docs, source=name, seed=seed, max_words=max_words)
    else:
        write_texts(root / f"{name}.jsonl", texts, name)
    tokenize([root / f"{name}.jsonl"], root / name, tokenizer, workers=1, progress=False)
    return root / name


def corpus_to_jsonl(corpus: Path, part: str, out: Path) -> int:
    """Raw files of the Debian corpus under corpus/part (text-like ones) -> Document JSONL; returns documents.

    The token store does not care how clean the text is, so files are read as they are (UTF-8, bad bytes
    replaced) instead of going through `danlu data ingest`.
    """
    n = 0
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out, "w", encoding="utf-8") as f:
        for path in sorted(p for p in (corpus / part).rglob("*") if p.is_file()):
            raw = path.read_bytes()
            if b"\x00" in raw[:4096] or path.suffix.lower() in (".pdf", ".gz", ".png", ".jpg", ".epub"):
                continue
            text = raw.decode("utf-8", errors="replace")
            if text.strip():
                rel = str(path.relative_to(corpus))
                f.write(json.dumps(document(text, part.split("/")[0], rel, path.suffix.lstrip(".") or "txt"),
                                   ensure_ascii=False) + "\n")
                n += 1
    return n
