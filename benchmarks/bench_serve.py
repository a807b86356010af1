"""Serving throughput and latency: danlu's engine vs transformers `generate` on the same model and prompts.

    .venv/bin/python benchmarks/bench_serve.py [--preset 20m] [--new-tokens 64] [--streams 8] [--rounds 5]

Practitioners model a request's latency as b + k*x (b: time to first token, TTFT; k: time per output token,
TPOT; x: tokens generated), so this prints tokens/s (generated tokens over wall time, prefill included), TTFT
p50/p99 and TPOT p50 in three scenarios:

  1 stream       N requests one after another, each alone
  N streams      N requests arriving together, each generating --new-tokens
  N streams mix  2N requests arriving together, each with its own length (8..2x --new-tokens), at most N
                 generating at a time (N concurrent streams with a queue)

for three ways of serving:

  danlu     the engine (continuous batching, KV cache; max_batch N), requests submitted at once, in process
  hf-seq    `model.generate` one request at a time (a server without batching); a request's TTFT includes
            waiting for the ones before it
  hf-batch  `model.generate` over N left-padded prompts at once (static batching): a batch runs until its
            longest request is done, later requests wait for the next batch. Tokens past a request's own
            length are computed but not counted.

Same model (a randomly initialised Llama of a danlu size preset with a danlu tokenizer, or --model), same
prompts (real text of the bundled example corpus, 32-256 tokens), greedy, eos ignored, same torch threads,
one warm-up of everything first. Rounds interleave the systems (the order rotates); tokens/s are medians
over rounds, TTFT percentiles pool every request of every round.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
CORPUS = REPO / "examples" / "corpus"
TEXTS = sorted(CORPUS.glob("ops/*.md")) + [CORPUS / "general" / "essays.jsonl"]  # the UTF-8 ones


def build_model(work: Path, preset: str, vocab: int) -> Path:
    from danlu.model.create import ModelSpec, create_model
    from danlu.tokenizer.train import train_tokenizer

    tok_dir, model_dir = work / "tok", work / "model"
    train_tokenizer(TEXTS, tok_dir, vocab_size=vocab)
    model = create_model(ModelSpec(preset=preset, tokenizer=str(tok_dir), max_position_embeddings=1024))
    model.save_pretrained(str(model_dir))
    for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        (model_dir / f).write_bytes((tok_dir / f).read_bytes())
    return model_dir


def make_prompts(tokenizer, n: int, seed: int = 0) -> list[list[int]]:
    text = "\n".join(p.read_text(encoding="utf-8") for p in TEXTS)
    ids = tokenizer.encode(text, add_special_tokens=False)
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        length = rng.randint(32, 256)
        start = rng.randrange(0, len(ids) - length)
        out.append([tokenizer.bos_token_id] + ids[start:start + length - 1])
    return out


class FirstCall:
    """A logits processor that only notes when generate first calls it: right after the prefill forward."""

    def __init__(self):
        self.t = None

    def __call__(self, input_ids, scores):
        if self.t is None:
            self.t = time.perf_counter()
        return scores


def hf_generate(model, prompts: list[list[int]], new_tokens: int, pad_id: int) -> tuple[float, float]:
    """One generate call over left-padded prompts; returns the times of the first and the last token."""
    width = max(len(p) for p in prompts)
    ids = torch.tensor([[pad_id] * (width - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts])
    first = FirstCall()
    with torch.inference_mode():
        model.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                       do_sample=False, logits_processor=[first], pad_token_id=pad_id)
    return first.t, time.perf_counter()


def run_hf(model, jobs: list[tuple[list[int], int]], batch: int, pad_id: int, alone: bool = False) -> dict:
    """`jobs` (prompt, new tokens) all arrive at t0 and run `batch` at a time in arrival order; with `alone`,
    each job arrives when the previous one is done (one stream)."""
    t0, ttfts, tpots, tokens = time.perf_counter(), [], [], 0
    for i in range(0, len(jobs), batch):
        chunk = jobs[i:i + batch]
        start = time.perf_counter()
        longest = max(n for _, n in chunk)
        first, last = hf_generate(model, [p for p, _ in chunk], longest, pad_id)
        ttfts += [first - (start if alone else t0)] * len(chunk)
        tpots += [(last - first) / max(1, longest - 1)] * len(chunk)
        tokens += sum(n for _, n in chunk)
    return {"wall": time.perf_counter() - t0, "tokens": tokens, "ttft": ttfts, "tpot": tpots}


def run_danlu(engine, jobs: list[tuple[list[int], int]], alone: bool = False) -> dict:
    from danlu.serve.engine import Collector
    from danlu.serve.sampling import SamplingParams

    def params(n):
        return SamplingParams(max_tokens=n, temperature=0, ignore_eos=True)

    t0 = time.perf_counter()
    if alone:
        outs = [engine.generate(p, params(n)) for p, n in jobs]
        metrics, tokens = [o.metrics for o in outs], sum(len(o.choices[0].token_ids) for o in outs)
    else:
        reqs = [engine.submit(p, params(n), sink=Collector(1)) for p, n in jobs]
        for r in reqs:
            r.done.wait()
        metrics, tokens = [r.metrics for r in reqs], sum(r.metrics.completion_tokens for r in reqs)
    wall = time.perf_counter() - t0
    assert tokens == sum(n for _, n in jobs)
    return {"wall": wall, "tokens": tokens, "ttft": [m.ttft for m in metrics], "tpot": [m.tpot for m in metrics]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="20m", help="danlu model size preset (tiny, 20m, 100m, ...)")
    ap.add_argument("--model", help="benchmark this model folder instead of a random preset model")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from danlu.serve.engine import Engine
    from danlu.serve.loader import load_model
    from danlu.serve.metrics import percentile

    work = Path(tempfile.mkdtemp(prefix="bench-serve-"))
    folder = Path(args.model) if args.model else build_model(work, args.preset, args.vocab)
    loaded = load_model(folder, dtype=args.dtype, device="cpu")
    model, tok = loaded.model, loaded.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    n, new = args.streams, args.new_tokens
    engine = Engine(loaded, max_batch=n).start()
    prompts = make_prompts(tok, 2 * n)
    rng = random.Random(1)
    equal = [(p, new) for p in prompts[:n]]
    mixed = [(p, rng.randint(8, 2 * new)) for p in prompts]
    n_params = sum(p.numel() for p in model.parameters())
    print(f"model: {folder} ({n_params / 1e6:.1f}M parameters, {args.dtype}), torch threads {args.threads}; "
          f"prompts {min(map(len, prompts))}-{max(map(len, prompts))} tokens; {new} new tokens "
          f"(mix: 8-{2 * new}); {args.rounds} rounds")

    scenarios = {
        ("1 stream", "danlu"): lambda: run_danlu(engine, equal, alone=True),
        ("1 stream", "hf-seq"): lambda: run_hf(model, equal, 1, pad, alone=True),
        (f"{n} streams", "danlu"): lambda: run_danlu(engine, equal),
        (f"{n} streams", "hf-seq"): lambda: run_hf(model, equal, 1, pad),
        (f"{n} streams", "hf-batch"): lambda: run_hf(model, equal, n, pad),
        (f"{n} streams mix", "danlu"): lambda: run_danlu(engine, mixed),
        (f"{n} streams mix", "hf-seq"): lambda: run_hf(model, mixed, 1, pad),
        (f"{n} streams mix", "hf-batch"): lambda: run_hf(model, mixed, n, pad),
    }
    for fn in scenarios.values():  # warm-up: first calls at new shapes are slow
        fn()
    runs: dict = {k: [] for k in scenarios}
    keys = list(scenarios)
    for r in range(args.rounds):
        shift = r % len(keys)
        for k in keys[shift:] + keys[:shift]:
            runs[k].append(scenarios[k]())
        print(f"  round {r + 1}/{args.rounds} done", file=sys.stderr)
    engine.stop()

    print(f"\n{'scenario':<16} {'system':<9} {'tok/s':>8} {'TTFT p50 ms':>12} {'TTFT p99 ms':>12} "
          f"{'TPOT p50 ms':>12}")
    table = {}
    for (scenario, system), rs in runs.items():
        ttft = [t for x in rs for t in x["ttft"]]
        tpot = [t for x in rs for t in x["tpot"] if t is not None]
        table[scenario, system] = (statistics.median(x["tokens"] / x["wall"] for x in rs),
                                   percentile(ttft, 50) * 1e3, percentile(ttft, 99) * 1e3)
        tps, p50, p99 = table[scenario, system]
        print(f"{scenario:<16} {system:<9} {tps:>8.1f} {p50:>12.1f} {p99:>12.1f} {percentile(tpot, 50) * 1e3:>12.1f}")
    print()
    for scenario in dict.fromkeys(s for s, _ in runs):
        d = table[scenario, "danlu"]
        peers = [p for p in ("hf-seq", "hf-batch") if (scenario, p) in table]
        print(f"{scenario}: " + "; ".join(
            f"danlu/{p} tok/s {d[0] / table[scenario, p][0]:.2f}x, TTFT p50 {d[1] / table[scenario, p][1]:.2f}x"
            for p in peers))


if __name__ == "__main__":
    main()
