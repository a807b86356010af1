"""Load test for `danlu serve`: C concurrent clients (the official async openai client, streaming) send R chat
requests in total to a server on this machine's loopback, within a time limit.

    .venv/bin/python benchmarks/load_serve.py [--model DIR | --url http://127.0.0.1:8000] [--clients 64]
        [--requests 256] [--max-tokens 32] [--time-limit 300]

With --model (default: a random 20m-preset Llama with a danlu tokenizer, as bench_serve builds) it starts
`danlu serve` itself on a free loopback port and stops it at the end; --url points it at a running server
(loopback only: this is not a tool for loading other people's machines). Prints how many requests were
answered, the status codes, TTFT (first content token, as the client sees it) and latency p50/p99, and
exits 1 unless every request was answered with no 5xx and within the time limit.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from urllib.parse import urlparse

sys.path.insert(0, str(Path(__file__).resolve().parent))

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def start_server(model: str, port: int, max_batch: int, threads: int | None) -> subprocess.Popen:
    import httpx2 as httpx

    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.Popen([sys.executable, "-m", "danlu.cli", "serve", model, "--port", str(port),
                             "--max-batch", str(max_batch), "--set", "log_level=warning",
                             *(["--threads", str(threads)] if threads else [])], env=env)
    deadline = time.time() + 180
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"danlu serve exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    proc.terminate()
    raise RuntimeError("danlu serve did not come up within 180 s")


async def run_load(base_url: str, clients: int, requests: int, max_tokens: int, time_limit: float,
                   questions: list[str]) -> dict:
    import openai

    results: list[dict] = []
    issued = 0
    rng = random.Random(0)

    async def one(client, model: str) -> dict:
        t0 = time.perf_counter()
        first = None
        try:
            stream = await client.chat.completions.create(
                model=model, messages=[{"role": "user", "content": rng.choice(questions)}], max_tokens=max_tokens,
                temperature=0.8, stream=True)
            finish = None
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content and first is None:
                    first = time.perf_counter() - t0
                if chunk.choices and chunk.choices[0].finish_reason:
                    finish = chunk.choices[0].finish_reason
            return {"status": 200 if finish else "no finish", "ttft": first, "latency": time.perf_counter() - t0}
        except openai.APIStatusError as e:
            return {"status": e.status_code}
        except openai.APIError as e:
            return {"status": type(e).__name__}

    async def worker(client, model):
        nonlocal issued
        while issued < requests:
            issued += 1
            results.append(await one(client, model))

    async with openai.AsyncOpenAI(base_url=base_url, api_key=os.environ.get("DANLU_API_KEY", "none"),
                                  max_retries=0, timeout=time_limit) as client:
        model = (await client.models.list()).data[0].id
        t0 = time.perf_counter()
        tasks = [asyncio.create_task(worker(client, model)) for _ in range(clients)]
        done, pending = await asyncio.wait(tasks, timeout=time_limit)
        for t in pending:
            t.cancel()
        wall = time.perf_counter() - t0
    return {"results": results, "wall": wall, "timed_out": bool(pending), "requests": requests}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder to serve (default: a random 20m-preset Llama)")
    ap.add_argument("--url", help="a running server on loopback, e.g. http://127.0.0.1:8000")
    ap.add_argument("--clients", type=int, default=64)
    ap.add_argument("--requests", type=int, default=256)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-batch", type=int, default=32, help="the server's batch size (with --model)")
    ap.add_argument("--threads", type=int, help="the server's torch threads (with --model; default: one per "
                    "core; on a machine shared with other work, 1 avoids OpenMP threads waiting on each other)")
    ap.add_argument("--time-limit", type=float, default=300, help="seconds for the whole run")
    args = ap.parse_args()
    if args.requests < 1 or args.clients < 1:
        ap.error("--clients and --requests must be >= 1")

    from danlu.serve.metrics import percentile
    from danlu.serve.server import free_port

    proc = None
    if args.url:
        host = urlparse(args.url).hostname
        if host not in LOOPBACK:
            ap.error(f"--url must be a loopback address ({', '.join(sorted(LOOPBACK))}), got {host}")
        base_url = args.url.rstrip("/").removesuffix("/v1") + "/v1"
    else:
        model = args.model
        if model is None:
            from bench_serve import build_model

            model = str(build_model(Path(tempfile.mkdtemp(prefix="load-serve-")), "20m", 4096))
        port = free_port()
        proc = start_server(model, port, args.max_batch, args.threads)
        base_url = f"http://127.0.0.1:{port}/v1"
    questions = ["How do I check disk space?", "重启服务之后怎么看日志？", "Explain logrotate in one line.",
                 "apt 和 dpkg 有什么区别？", "What does systemctl enable do?", "如何排查网络不通？"]
    try:
        out = asyncio.run(run_load(base_url, args.clients, args.requests, args.max_tokens, args.time_limit,
                                   questions))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)

    results = out["results"]
    codes = Counter(str(r["status"]) for r in results)
    ok = [r for r in results if r["status"] == 200]
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    lat = [r["latency"] for r in ok]
    five = sum(n for c, n in codes.items() if c.isdigit() and int(c) >= 500)
    answered = len(ok)

    def ms(x):
        return "-" if x is None else f"{x * 1e3:.0f} ms"

    print(f"{args.clients} clients, {out['requests']} requests, max_tokens {args.max_tokens}: "
          f"{answered} answered in {out['wall']:.1f} s ({answered / out['wall']:.1f} req/s)")
    print(f"status codes: {dict(codes)}; 5xx: {five}; timed out: {out['timed_out']}")
    print(f"TTFT p50 {ms(percentile(ttft, 50))}, p99 {ms(percentile(ttft, 99))}; "
          f"latency p50 {ms(percentile(lat, 50))}, p99 {ms(percentile(lat, 99))}")
    return 0 if answered == out["requests"] and five == 0 and not out["timed_out"] else 1


if __name__ == "__main__":
    sys.exit(main())
