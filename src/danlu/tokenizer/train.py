"""Train a tokenizer on danlu documents and save it as a Hugging Face tokenizer folder.

BPE (default): danlu's C trainer (_bpe.c) learns a byte-level BPE over GPT-4 split-pattern chunks. It builds the
characters covering `character_coverage` of the text first, the way sentencepiece picks its alphabet, which makes
it several times faster than rustbpe on Chinese at equal or better compression (benchmarks/bench_tokenizer.py).
Without a C compiler at install time the extension is absent and rustbpe trains instead. Either way the ranks
are exported into an HF tokenizer.json that encodes identically to tiktoken (see bytelevel.py). Lossless on any
input: every byte is a token, so there is no [UNK].
Unigram: the HF tokenizers Unigram trainer over the same byte-level alphabet (also lossless).
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from pathlib import Path
from typing import Iterable, Iterator, Literal

import regex
from pydantic import Field, field_validator
from tokenizers import Tokenizer, processors

from danlu.config import StrictModel, build_config
from danlu.jsonl import write_jsonl
from danlu.runs import atomic_path, atomic_write_json, atomic_write_text, counts, reason_key, start_run
from danlu.tokenizer.bytelevel import GPT4_PATTERN, hf_tokenizer_from_ranks
from danlu.tokenizer.chat import DEFAULT_CHAT_TEMPLATE, DEFAULT_ROLE_TOKENS
from danlu.tokenizer.corpus import CorpusStats, chunks, corpus_files, iter_documents

SPECIAL_TOKENS = ["<|bos|>", "<|eos|>", "<|pad|>", *DEFAULT_ROLE_TOKENS]

class TokenizerTrainOptions(StrictModel):
    """What `danlu tokenizer train` and the pipeline's `tokenizer:` section set."""

    vocab_size: int = 32768  # total, special tokens included
    type: Literal["bpe", "unigram"] = "bpe"
    pattern: str = GPT4_PATTERN
    # BPE: the share of non-ASCII character occurrences whose characters become tokens before the merge loop
    # (sentencepiece's character_coverage; 0.9995 is its default for CJK). Rarer characters stay bytes.
    character_coverage: float = Field(0.9995, gt=0, le=1)
    model_max_length: int = 2048

    @field_validator("vocab_size")
    @classmethod
    def _room_for_merges(cls, v: int) -> int:
        floor = 256 + len(SPECIAL_TOKENS)
        if v <= floor:
            raise ValueError(f"vocab_size {v} is too small: byte-level needs > {floor} (256 bytes + "
                             f"{len(SPECIAL_TOKENS)} special tokens)")
        return v


class TokenizerTrainConfig(TokenizerTrainOptions):
    inputs: list[str]
    out: str


def train_tokenizer(inputs: list[str | Path], out: str | Path, *, sets: Iterable[str] = (), **options) -> dict:
    """Train on `inputs` (Document JSONL / text files or folders), write an HF tokenizer folder to `out`.
    `options` are TokenizerTrainOptions' fields (vocab_size, type, pattern, character_coverage, ...)."""
    cfg = build_config(TokenizerTrainConfig, fields=dict(options, inputs=[str(p) for p in inputs], out=str(out)),
                       sets=sets, source="tokenizer train")
    corpus_files(cfg.inputs)  # missing inputs fail before an output folder is made
    run = start_run(out, "tokenizer-train", cfg)
    stats = CorpusStats()
    t0 = time.perf_counter()
    if cfg.type == "bpe":
        tok, engine = _train_bpe(_documents(cfg.inputs, stats), cfg, run.log)
    else:
        tok, engine = _train_unigram(_documents(cfg.inputs, stats, split=True), cfg), "tokenizers-unigram"
    train_s = time.perf_counter() - t0
    if stats.documents == 0 or stats.characters == 0:
        raise ValueError(f"no text to train on in {', '.join(cfg.inputs)} ({stats.documents} documents, "
                         f"{stats.characters} characters, {len(stats.rejected)} records rejected)")
    save_tokenizer_folder(tok, run.dir, model_max_length=cfg.model_max_length)
    if stats.rejected:
        write_jsonl(run.path("rejects.jsonl"), stats.rejected)
    run.log.info("trained %s (%s) vocab %d on %d documents in %.1fs", cfg.type, engine, tok.get_vocab_size(),
                 stats.documents, train_s)
    reached = tok.get_vocab_size(with_added_tokens=True)
    warnings = []
    if reached < cfg.vocab_size:
        warnings.append(f"asked for a vocabulary of {cfg.vocab_size:,} but the corpus only supports {reached:,} "
                        "(every distinct merge is used): give more text, or ask for less")
    for w in warnings:
        run.log.warning("%s", w)
    reasons = Counter(reason_key(r["reason"].split(":")[0]) for r in stats.rejected)
    return run.finish(
        {
            "counts": counts(stats.documents + len(stats.rejected), stats.documents, rejected=reasons),
            "headline": ["vocab_size", "characters", "engine"],
            "warnings": warnings,
            "files": stats.files,
            "characters": stats.characters,
            "requested_vocab_size": cfg.vocab_size,
            "vocab_size": reached,
            "type": cfg.type,
            "engine": engine,
            "special_tokens": SPECIAL_TOKENS,
            "timings": {"train_s": round(train_s, 3), "total_s": round(time.perf_counter() - t0, 3)},
        }
    )


def _documents(inputs: list[str], stats: CorpusStats, split: bool = False) -> Iterator[str]:
    """Document texts; `split` cuts long ones at line ends (lets the multi-threaded Rust trainers spread work)."""
    from tqdm import tqdm

    with tqdm(desc="reading", unit=" docs", disable=None) as bar:
        for _, text in iter_documents(inputs, stats):
            bar.update(1)
            if split:
                yield from chunks(text)
            else:
                yield text


def _train_bpe(docs: Iterator[str], cfg: TokenizerTrainConfig, log: logging.Logger) -> tuple[Tokenizer, str]:
    n_tokens = cfg.vocab_size - len(SPECIAL_TOKENS)
    try:
        from danlu.tokenizer import _bpe
    except ImportError:
        log.warning("danlu's C tokenizer trainer is not built (no C compiler when danlu was installed?): "
                    "training with rustbpe instead, several times slower on CJK text")
        ranks, engine = _rustbpe_ranks((c for d in docs for c in chunks(d)), n_tokens, cfg.pattern), "rustbpe"
    else:
        ranks, engine = _danlu_ranks(_bpe, docs, n_tokens, cfg), "danlu-bpe"
    specials = {name: len(ranks) + i for i, name in enumerate(SPECIAL_TOKENS)}
    return _with_bos_processor(hf_tokenizer_from_ranks(ranks, cfg.pattern, specials)), engine


def _danlu_ranks(_bpe, docs: Iterator[str], n_tokens: int, cfg: TokenizerTrainConfig) -> dict[bytes, int]:
    from tqdm import tqdm

    trainer = _bpe.Trainer()
    if cfg.pattern == GPT4_PATTERN:
        for text in docs:
            trainer.add_text(text)  # the C splitter is this pattern hand-coded (tested against the regex)
    else:
        split = regex.compile(cfg.pattern)
        for text in docs:
            for piece, n in Counter(m.group() for m in split.finditer(text)).items():
                trainer.add_chunk(piece, n)
    with tqdm(total=n_tokens, desc="merges", unit=" tokens", disable=None) as bar:
        tokens = trainer.train(
            n_tokens, coverage=cfg.character_coverage, progress=lambda done, _total: bar.update(done - bar.n)
        )
    return {t: i for i, t in enumerate(tokens)}


def _rustbpe_ranks(texts: Iterator[str], n_tokens: int, pattern: str) -> dict[bytes, int]:
    import rustbpe

    trainer = rustbpe.Tokenizer()
    trainer.train_from_iterator(texts, n_tokens, pattern=pattern)
    return dict(trainer.get_mergeable_ranks())


def _train_unigram(texts: Iterator[str], cfg: TokenizerTrainConfig) -> Tokenizer:
    from tokenizers import Regex, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.Unigram())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(cfg.pattern), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.UnigramTrainer(
        vocab_size=cfg.vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes: lossless, never [UNK]
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return _with_bos_processor(tok)


def _with_bos_processor(tok: Tokenizer) -> Tokenizer:
    """`tokenizer(text)` in transformers gives BOS + text, matching how `danlu data tokenize` frames documents."""
    bos = SPECIAL_TOKENS[0]
    tok.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tok.token_to_id(bos))]
    )
    return tok


def save_tokenizer_folder(
    tok: Tokenizer, out: str | Path, model_max_length: int = 2048, chat_template: str | None = DEFAULT_CHAT_TEMPLATE,
    config_extra: dict | None = None,
) -> None:
    """Write tokenizer.json, tokenizer_config.json, special_tokens_map.json and chat_template.jinja atomically."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / "tokenizer.json") as tmp:
        tok.save(str(tmp))
    vocab = tok.get_vocab(with_added_tokens=True)
    roles = dict(zip(("bos", "eos", "pad"), SPECIAL_TOKENS))  # what danlu's own tokenizers begin/end/pad with
    special_map = {f"{k}_token": v for k, v in roles.items() if v in vocab}
    extra = [t for t in SPECIAL_TOKENS if t in vocab and t not in roles.values()]
    if extra:
        special_map["additional_special_tokens"] = extra
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **special_map,
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,  # byte-level decoding is exact; never "clean" spaces
        **(config_extra or {}),
    }
    atomic_write_json(out / "tokenizer_config.json", config)
    atomic_write_json(out / "special_tokens_map.json", special_map)
    if chat_template:
        atomic_write_text(out / "chat_template.jinja", chat_template)
