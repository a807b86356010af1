"""Pretraining data figures: tokenize speed (MB/s) against a plain HF-tokenizers peer, packing waste, stream speed.

    .venv/bin/python benchmarks/bench_pretrain_data.py [CORPUS=/work/debian-zh] [--vocab 8192]

Peer: what a datatrove-style tokenizer step does, HF `tokenizers` encode_batch in one process, framing and
writing a uint16 array, measured on the same text in the same run. Packing: padding of best-fit vs greedy on the
corpus's real document lengths. Stream: packed rows per second from the token stores.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tokstore_helpers import corpus_to_jsonl  # noqa: E402

from danlu.data.tokenize import tokenize  # noqa: E402
from danlu.jsonl import read_jsonl  # noqa: E402
from danlu.tokenizer.encode import load_encoder  # noqa: E402
from danlu.tokenizer.train import train_tokenizer  # noqa: E402
from danlu.train.batches import PackedBatches, SourceSpec  # noqa: E402
from danlu.train.packing import pack  # noqa: E402
from danlu.train.store import TokenStore  # noqa: E402


def peer_hf_tokenizers(jsonl: Path, tok: Path, out: Path) -> float:
    from tokenizers import Tokenizer

    t0 = time.perf_counter()
    hf = Tokenizer.from_file(str(tok / "tokenizer.json"))
    bos, eos = hf.token_to_id("<|bos|>"), hf.token_to_id("<|eos|>")
    texts = [r["text"] for _, r in read_jsonl(jsonl, require={"text": str}) if isinstance(r, dict)]
    arrays = [np.array([bos, *e.ids, eos], dtype=np.uint16) for e in hf.encode_batch(texts, add_special_tokens=False)]
    np.concatenate(arrays).tofile(out)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("corpus", nargs="?", default="/work/debian-zh")
    ap.add_argument("--vocab", type=int, default=8192)
    args = ap.parse_args()
    corpus = Path(args.corpus)
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        corpus_to_jsonl(corpus, "ops", tmp / "ops.jsonl")
        corpus_to_jsonl(corpus, "general", tmp / "general.jsonl")
        mb = (tmp / "ops.jsonl").stat().st_size / 2**20
        train_tokenizer([tmp / "ops.jsonl", tmp / "general.jsonl"], tmp / "tok", vocab_size=args.vocab)
        print(f"corpus: {corpus} ops part, {mb:.1f} MB of JSONL; tokenizer vocab {args.vocab}, "
              f"encoder engine: {load_encoder(tmp / 'tok').engine}")

        peer_s = peer_hf_tokenizers(tmp / "ops.jsonl", tmp / "tok", tmp / "peer.bin")
        text_mb = None
        rows = [f"{'tokenize (ops)':<42}{'seconds':>9}{'MB/s':>9}{'vs peer':>9}"]
        for workers in (1, 2):
            r = tokenize([tmp / "ops.jsonl"], tmp / f"s{workers}", tmp / "tok", workers=workers, shard_mb=2,
                         progress=False)
            text_mb = r["text_bytes"] / 2**20
            s = r["timings"]["tokenize_s"]
            rows.append(f"{f'danlu data tokenize --workers {workers}':<42}{s:>9.2f}{text_mb / s:>9.2f}"
                        f"{peer_s / s:>8.2f}x")
        rows.insert(1, f"{'peer: HF tokenizers encode_batch, 1 process':<42}{peer_s:>9.2f}{text_mb / peer_s:>9.2f}"
                       f"{1:>8.2f}x")
        print("\n".join(rows))
        again = tokenize([tmp / "ops.jsonl"], tmp / "s2", tmp / "tok", workers=2, shard_mb=2, progress=False)
        print(f"rerun on a finished store: reused={again.get('reused')}")

        lengths = TokenStore(tmp / "s1").lengths.tolist()
        gen_r = tokenize([tmp / "general.jsonl"], tmp / "g", tmp / "tok", workers=1, progress=False)
        print(f"\ndocuments: {len(lengths)} ops (median {int(np.median(lengths))} tokens, max {max(lengths)}), "
              f"{gen_r['counts']['kept']} general")
        print(f"{'packing (ops lengths)':<28}{'rows':>8}{'padding':>10}")
        for seq_len in (512, 2048):
            for method in ("greedy", "best_fit"):
                rs = pack(lengths, seq_len, method, buffer_size=256)
                pad = sum(seq_len - sum(p[3] for p in row) for row in rs) / (len(rs) * seq_len)
                print(f"{f'seq {seq_len} {method}':<28}{len(rs):>8}{pad:>10.2%}")

        sources = [SourceSpec(name="ops", store=str(tmp / "s1"), weight=0.15, domain=True),
                   SourceSpec(name="general", store=str(tmp / "g"), weight=0.85)]
        stream = PackedBatches(sources, seq_len=2048, batch_size=16)
        t0 = time.perf_counter()
        n = 50
        for _ in range(n):
            next(stream)
        dt = time.perf_counter() - t0
        st = stream.stats()
        print(f"\nstream seq 2048 x 16: {n / dt:.0f} batches/s ({n * 16 * 2048 / dt / 1e6:.1f}M tokens/s), "
              f"pad {st['pad_fraction']:.2%}, waste (pad+overlap) {st['waste_fraction']:.2%}")


if __name__ == "__main__":
    main()
