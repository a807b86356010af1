"""Data stages at corpus scale: wall time, MB/s and peak memory of ingest, clean, chunk, stats and tokenize on 1x,
4x and 16x scale-ups of the Debian corpus, local with 1 and 2 workers and Ray with 2 workers (issue 17).

    .venv/bin/python benchmarks/bench_scale.py [--corpus /work/notes/debian-corpus] [--scales 1,4,16]
        [--where local1,local2,ray2] [--stages ingest,clean,chunk,stats,tokenize] [--work DIR]
    .venv/bin/python benchmarks/bench_scale.py --table            # the table of every run so far
    .venv/bin/python benchmarks/bench_scale.py --dedup-docs 250000,1000000   # dedup memory per document
    .venv/bin/python benchmarks/bench_scale.py --driver-io WORK/16x.jsonl    # the driver's own MB/s

What is measured: every stage run is the `danlu data ...` command in a child process (the CLI's start-up and,
for Ray, starting and stopping the stage's own Ray instance are part of its wall time). MB/s = MB of the
stage's input (files for ingest, JSONL for the rest) / wall seconds. Memory: "max proc" is ru_maxrss from wait4,
the largest single process of the stage's tree (with one local worker: the driver, where dedup runs; with more,
the driver or a worker, whichever was larger; with Ray the processes Ray starts are not waited for); "tree" is
the peak of the summed RSS of the stage's process and all its descendants (workers, Ray's raylet, GCS and
workers), sampled every 0.2 s (shared pages count once per process, so it overstates a forked pool a little).
"load" is the 1-minute load average when the run ended: above ~2 on this 2-core machine something else was
running and the wall time is pessimistic.

Scale-ups: 1x is `danlu data ingest` of the corpus files; Nx is N copies of its records, copy 0 the original and
copy k a perturbed one (10% of CJK characters and ASCII letters replaced by others of the same class drawn from
the same document, seeded by (k, record), new id and path): 5-gram Jaccard to the original ~0.4, so copies are
neither exact nor near duplicates and every copy is cleaned like real text. The stages run as a chain: clean
(--preset pretrain) on Nx, chunk on clean.jsonl, stats and tokenize on chunks.jsonl; the outputs of each
configuration are compared (sha256) with local 1 worker, which checks that the three executors agree at scale.

Results go to WORK/results.jsonl (one line per run) and every invocation prints the table of all of them (wall:
the median of a cell's runs; memory: its latest run; load: each run's), so a grid can be run in parts and
repeated (e.g. one scale per invocation under `flock /work/notes/cpu.lock`). Run it on a quiet
machine: two busy cores make every figure noisy.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

DANLU = [str(Path(sys.executable).with_name("danlu"))]
WHERE = {"local1": ["--workers", "1"], "local2": ["--workers", "2"], "ray2": ["--executor", "ray", "--workers", "2"]}
STAGES = ["ingest", "clean", "chunk", "stats", "tokenize"]
PERTURB = 0.10  # share of letters replaced in a copy
OUTPUTS = {"ingest": ["documents.jsonl", "rejects.jsonl"],
           "clean": ["clean.jsonl", "rejects.jsonl", "duplicates.jsonl"],
           "chunk": ["chunks.jsonl"], "stats": [], "tokenize": []}


# --- scale-ups -----------------------------------------------------------------------------------------------


def _classes(cps: np.ndarray) -> list[np.ndarray]:
    return [(cps >= 0x4E00) & (cps <= 0x9FFF), (cps >= 0x61) & (cps <= 0x7A), (cps >= 0x41) & (cps <= 0x5A)]


def perturb(text: str, copy: int, index: int) -> str:
    """`text` with PERTURB of its CJK characters and ASCII letters replaced by others of the same class from the
    same text (deterministic per copy and record)."""
    cps = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).copy()
    rng = np.random.default_rng([copy, index])
    hit = rng.random(len(cps)) < PERTURB
    for cls in _classes(cps):
        pool = cps[cls]
        sel = hit & cls
        if len(pool) > 1 and sel.any():
            cps[sel] = rng.choice(pool, int(sel.sum()))
    return cps.tobytes().decode("utf-32-le")


def scale_up(src: Path, dst: Path, n: int) -> None:
    """N copies of the records of `src` (copy 0 as is, the others perturbed) into `dst`."""
    records = [json.loads(line) for line in src.read_text(encoding="utf-8").splitlines() if line.strip()]
    tmp = dst.with_suffix(".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for k in range(n):
            for i, rec in enumerate(records):
                if k:
                    rec = {**rec, "id": f"{rec['id']}~{k}", "path": f"copy{k}/{rec.get('path')}",
                           "text": perturb(rec["text"], k, i)}
                f.write(json.dumps(rec, ensure_ascii=False) + "\n")
    tmp.replace(dst)


# --- one measured stage run ------------------------------------------------------------------------------------


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        p = psutil.Process(pid)
        procs = [p] + p.children(recursive=True)
    except psutil.Error:
        return 0
    total = 0
    for q in procs:
        try:
            total += q.memory_info().rss
        except psutil.Error:
            pass
    return total


# A child's ru_maxrss starts at its parent's RSS (Linux keeps the high-water mark across exec), so the stage is
# started by this small launcher, not by the benchmark process, whose RSS would be counted in every stage's.
LAUNCH = """import os, sys
pid = os.fork()
if pid == 0:
    os.execv(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
open(sys.argv[1], "w").write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def measure(cmd: list[str], log: Path, cwd: Path) -> dict:
    """Run `cmd`; wall seconds, ru_maxrss (MB) and the peak summed RSS of its process tree (MB)."""
    peak = [0]
    rss_file = log.with_suffix(".maxrss")
    with open(log, "w") as f:
        t = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-S", "-c", LAUNCH, str(rss_file), *cmd], stdout=f,
                                stderr=subprocess.STDOUT, cwd=cwd, env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
        done = threading.Event()

        def sample():
            while not done.wait(0.2):
                peak[0] = max(peak[0], _tree_rss(proc.pid))

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        rc = proc.wait()
        wall = time.perf_counter() - t
        done.set()
        sampler.join()
    if rc:
        raise SystemExit(f"{' '.join(cmd)} failed ({rc}); see {log}:\n{log.read_text()[-3000:]}")
    maxrss = int(rss_file.read_text()) / 1024
    rss_file.unlink()
    return {"s": wall, "driver_mb": maxrss, "tree_mb": max(peak[0] / 2**20, maxrss)}


def digest(folder: Path, names: list[str]) -> str:
    """sha256 of the named outputs and of a token store's shards and indexes (what must not depend on where)."""
    h = hashlib.sha256()
    for name in names:
        p = folder / name
        h.update(name.encode() + b"\0" + (p.read_bytes() if p.exists() else b"-"))
    if (folder / "report.json").exists() and not names:  # stats: its report without timings and paths
        report = json.loads((folder / "report.json").read_text())
        kept = ("counts", "chars", "characters", "tokens", "per_source", "char_lengths", "token_lengths", "duplicates")
        h.update(json.dumps({k: v for k, v in report.items() if k in kept},
                            sort_keys=True).encode())
    for p in sorted(folder.rglob("*")):
        if p.is_file() and (".tokens" in p.name or ".index" in p.name):
            h.update(p.name.encode() + b"\0" + p.read_bytes())
    return h.hexdigest()[:12]


def stage_cmd(stage: str, inp: Path, out: Path, tok: Path) -> list[str]:
    base = [*DANLU, "data", stage, str(inp), "-o", str(out)]
    return {"ingest": base + ["--no-progress"],
            "clean": base + ["--preset", "pretrain", "--no-progress"],
            "chunk": base + ["--tokenizer", str(tok), "--no-progress"],
            "stats": base + ["--tokenizer", str(tok)],
            "tokenize": base + ["--tokenizer", str(tok)]}[stage]


def input_mb(path: Path) -> float:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20
    return path.stat().st_size / 2**20


# --- the grid --------------------------------------------------------------------------------------------------


def run_grid(args) -> None:
    work = Path(args.work).resolve()
    args.corpus = str(Path(args.corpus).resolve())
    work.mkdir(parents=True, exist_ok=True)
    results = work / "results.jsonl"
    one_x = work / "1x.jsonl"
    tok = work / "tok"
    if not one_x.exists():  # the 1x JSONL and the tokenizer (not measured)
        measure([*DANLU, "data", "ingest", str(args.corpus), "-o", str(work / "base"), "--no-progress", "--force"],
                work / "base.log", work)
        shutil.copyfile(work / "base" / "documents.jsonl", one_x)
    if not (tok / "tokenizer.json").exists():
        measure([*DANLU, "tokenizer", "train", str(one_x), "-o", str(tok), "--vocab-size", "8192"], work / "tok.log",
                work)
    stages = args.stages.split(",")
    for scale in [int(s) for s in args.scales.split(",")]:
        data = work / f"{scale}x.jsonl"
        if not data.exists():
            scale_up(one_x, data, scale)
        for where in args.where.split(","):
            run = work / f"run-{scale}x-{where}"
            inputs = {"ingest": Path(args.corpus), "clean": data, "chunk": run / "clean" / "clean.jsonl",
                      "stats": run / "chunk" / "chunks.jsonl", "tokenize": run / "chunk" / "chunks.jsonl"}
            for stage in stages:
                if stage == "ingest" and scale != 1:
                    continue  # ingest reads files: measured on the 1x files only
                inp = inputs[stage]
                if not inp.exists():
                    raise SystemExit(f"{stage} needs {inp}: run the stage before it in the same invocation")
                out = run / stage
                shutil.rmtree(out, ignore_errors=True)
                run.mkdir(exist_ok=True)
                m = measure(stage_cmd(stage, inp, out, tok) + WHERE[where], out.with_suffix(".log"), work)
                row = {"scale": scale, "where": where, "stage": stage, "mb": round(input_mb(inp), 2),
                       "s": round(m["s"], 2), "driver_mb": round(m["driver_mb"]), "tree_mb": round(m["tree_mb"]),
                       "digest": digest(out, OUTPUTS[stage]), "rss": "launcher",
                       "load": round(os.getloadavg()[0], 1), "at": time.strftime("%Y-%m-%dT%H:%M:%S")}
                with open(results, "a") as f:
                    f.write(json.dumps(row) + "\n")
                print(f"{scale}x {where:<7}{stage:<9}{row['mb']:>8.1f} MB {row['s']:>7.1f} s "
                      f"{row['mb'] / row['s']:>6.2f} MB/s  max proc {row['driver_mb']} MB  tree {row['tree_mb']} MB",
                      flush=True)
            shutil.rmtree(run / "tokenize", ignore_errors=True)  # the largest output; its digest is kept
    print_table(results)


def print_table(results: Path) -> None:
    """One line per (stage, scale, where): the median wall time of its runs, memory from its latest run."""
    cells: dict[tuple, list[dict]] = {}
    for line in results.read_text().splitlines():
        r = json.loads(line)
        cells.setdefault((r["stage"], r["scale"], r["where"]), []).append(r)
    order = {s: i for i, s in enumerate(STAGES)}
    wh = {w: i for i, w in enumerate(WHERE)}
    rows = {}
    for key, runs in cells.items():
        measured = [r for r in runs if r.get("rss") == "launcher"]  # earlier runs counted the parent's RSS
        last = (measured or runs)[-1]
        rows[key] = {**last, "s": float(np.median([r["s"] for r in runs])), "runs": len(runs),
                     "loads": "/".join(str(r.get("load", "?")) for r in runs),
                     "digests": {r["digest"] for r in runs}, "mem_ok": bool(measured)}
    print(f"\n{'stage':<9}{'scale':>6} {'where':<8}{'input MB':>9}{'wall s':>8}{'MB/s':>7}{'max proc MB':>12}"
          f"{'tree MB':>9}  runs  load        same as local1")
    for key in sorted(rows, key=lambda k: (order[k[0]], k[1], wh[k[2]])):
        r = rows[key]
        ref = rows.get((r["stage"], r["scale"], "local1"), {}).get("digests")
        same = "-" if r["where"] == "local1" or not ref else ("yes" if r["digests"] == ref else "NO")
        mem = f"{r['driver_mb']:>12}{r['tree_mb']:>9}" if r["mem_ok"] else f"{'?':>12}{'?':>9}"
        print(f"{r['stage']:<9}{str(r['scale']) + 'x':>6} {r['where']:<8}{r['mb']:>9.1f}{r['s']:>8.1f}"
              f"{r['mb'] / r['s']:>7.2f}{mem}  {r['runs']:>4}  {r['loads']:<11} {same}")
    clean = {(k[1], k[2]): v for k, v in rows.items() if k[0] == "clean" and v["mem_ok"]}
    for where in WHERE:
        scales = sorted(s for s, w in clean if w == where)
        if len(scales) > 1:
            lo, hi = clean[(scales[0], where)], clean[(scales[-1], where)]
            print(f"clean peak memory (max proc) {where}: {lo['driver_mb']} MB at {scales[0]}x -> {hi['driver_mb']} "
                  f"MB at {scales[-1]}x ({hi['driver_mb'] / lo['driver_mb']:.2f}x for {scales[-1] // scales[0]}x "
                  "the data)")


def dedup_child(n: int) -> None:
    """In a child process: what clean's dedup holds for `n` surviving documents (ids, counts, exact keys, 128-perm
    MinHash signatures, added in batches of 2048 as workers return them), then its clustering (exact, then
    near at the pretrain preset's threshold); prints baseline, held and peak RSS (MB) and the clustering's seconds
    as JSON. Random signatures: no clusters, so this is dedup's floor; real duplicates add their pairs."""
    import resource
    from types import SimpleNamespace

    from danlu.data.clean.pipeline import _Balance, _Survivors
    from danlu.data.dedup import DedupKeys, key_clusters, lsh_clusters, lsh_params

    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    rng = np.random.default_rng(0)
    store = _Survivors()
    for start in range(0, n, 2048):
        m = min(2048, n - start)
        keys = DedupKeys(rng.integers(0, 256, (m, 16), dtype=np.uint8),
                         {(128, 5, 1): rng.integers(0, 2**32, (m, 128), dtype=np.uint32)}, np.zeros(m, dtype=bool))
        store.add(SimpleNamespace(kept=[{"id": f"{start + i:016x}", "path": "ops/x.md"} for i in range(m)],
                                  kinds=["document"] * m, balances=[_Balance(5000)] * m, dedup_chars=[5000] * m,
                                  keys=keys))
    held = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t = time.perf_counter()  # the clustering alone
    keys = store.keys()
    key_clusters(keys.exact)
    bands, rows = lsh_params(0.8, 128)
    lsh_clusters(keys.near[(128, 5, 1)], bands, rows, skip=keys.empty)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"n": n, "base_mb": base, "held_mb": held, "peak_mb": peak, "s": time.perf_counter() - t}))


def dedup_memory(sizes: list[int]) -> None:
    """Memory per document of dedup: the slope of the peak between two sizes (imports and baseline cancel)."""
    runs = []
    for n in sizes:
        out = subprocess.run([sys.executable, __file__, "--dedup-child", str(n)], capture_output=True, text=True,
                             check=True)
        runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = runs[-1]
        print(f"dedup of {n:>9,} documents: held {r['held_mb'] - r['base_mb']:>7.0f} MB, peak "
              f"{r['peak_mb'] - r['base_mb']:>7.0f} MB over the {r['base_mb']:.0f} MB baseline, "
              f"clustering {r['s']:.1f} s")
    if len(runs) > 1:
        a, b = runs[0], runs[-1]
        dn = b["n"] - a["n"]
        print(f"dedup per document: held {(b['held_mb'] - a['held_mb']) * 2**20 / dn:.0f} B, peak "
              f"{(b['peak_mb'] - a['peak_mb']) * 2**20 / dn:.0f} B, clustering {(b['s'] - a['s']) / dn * 1e6:.1f} us")


def driver_io(src: Path) -> None:
    """What the driver alone costs per MB: read and parse the records and write them back (one pass, as a stage's
    driver does), and a pickle round trip of batches (what goes to and comes back from workers)."""
    import pickle
    import tempfile

    from danlu.jsonl import JsonlWriter
    from danlu.records import read_records

    mb = input_mb(src)
    with tempfile.TemporaryDirectory() as d:
        t = time.perf_counter()
        with JsonlWriter(Path(d) / "copy.jsonl") as w:
            for _, _, rec, _ in read_records([src], "auto"):
                w.write(rec)
        rw = time.perf_counter() - t
    t = time.perf_counter()
    batch = []
    for _, _, rec, _ in read_records([src], "auto"):
        batch.append(rec)
        if len(batch) == 200:
            pickle.loads(pickle.dumps(batch, protocol=5))
            batch = []
    rp = time.perf_counter() - t
    print(f"driver on {src.name} ({mb:.1f} MB): read+write {rw:.1f} s = {mb / rw:.1f} MB/s; "
          f"read+pickle round trip {rp:.1f} s = {mb / rp:.1f} MB/s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--corpus", default="/work/notes/debian-corpus")
    ap.add_argument("--scales", default="1,4,16")
    ap.add_argument("--where", default=",".join(WHERE))
    ap.add_argument("--stages", default=",".join(STAGES))
    ap.add_argument("--work", default="/tmp/danlu-bench-scale")
    ap.add_argument("--table", action="store_true", help="only print the table of WORK/results.jsonl")
    ap.add_argument("--dedup-docs", default="", help="only measure dedup's memory per document at these sizes "
                    "(e.g. 250000,1000000)")
    ap.add_argument("--dedup-child", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--driver-io", default="", help="only measure the driver's own read/write/pickle MB/s on this "
                    "JSONL")
    args = ap.parse_args()
    if args.driver_io:
        driver_io(Path(args.driver_io))
        return
    if args.dedup_child:
        dedup_child(args.dedup_child)
        return
    if args.dedup_docs:
        dedup_memory([int(n) for n in args.dedup_docs.split(",")])
        return
    if args.table:
        print_table(Path(args.work) / "results.jsonl")
        return
    if not Path(args.corpus).is_dir():
        raise SystemExit(f"{args.corpus}: no corpus (build it with /work/shared/scripts/debian-zh-corpus.sh)")
    run_grid(args)


if __name__ == "__main__":
    main()
