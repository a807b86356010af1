"""danlu's SFT/preference importers against LLaMA-Factory's own converters, on LF's demo data through its
dataset_info.json, in the same run: examples kept, examples whose conversation is identical, and rows/s.

    .venv/bin/python benchmarks/bench_sft_data.py [--lf-data ../shared/corpora/llamafactory]
        [--lf-python /work/peers/lf/bin/python] [--repeats 3]

Peer: llamafactory 0.9.5's parser (get_dataset_list) and converters (get_dataset_converter(...)(row)) applied to
each row of each file, the step LF runs inside `datasets.map` before tokenizing; an example whose _prompt or
_response comes back empty is one LF skips ("abnormal example"). danlu: `sft_data` / `preference_data` (read,
convert, validate with records.py, write JSONL, report). Both sides are reduced to (role, text) turns (a tool
call as its JSON, a tool result as "tool") and compared per example. LF's converter does not validate, so the
rows danlu rejects are listed with their reason. Timings interleave the two and report medians.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SFT = ["alpaca_zh_demo", "alpaca_en_demo", "identity", "glaive_toolcall_en_demo", "glaive_toolcall_zh_demo"]
PREF = ["dpo_zh_demo", "dpo_en_demo", "kto_en_demo"]

PEER = r'''
import json, sys, time
from llamafactory.data.converter import get_dataset_converter
from llamafactory.data.parser import get_dataset_list
from llamafactory.hparams import DataArguments
lf_dir, names = sys.argv[1], sys.argv[2].split(",")
args = DataArguments(dataset_dir=lf_dir)
out, seconds = {}, 0.0
for name, attr in zip(names, get_dataset_list(names, lf_dir)):
    t = time.perf_counter()
    rows = json.load(open(f"{lf_dir}/{attr.dataset_name}", encoding="utf-8"))
    conv = get_dataset_converter(attr.formatting, attr, args)
    done = [conv(r) for r in rows]
    seconds += time.perf_counter() - t
    out[name] = [None if not (d["_prompt"] and d["_response"]) else
                              {"system": d["_system"], "turns": [[m["role"], m["content"]] for m in d["_prompt"]],
                               "response": [[m["role"], m["content"]] for m in d["_response"]],
                               "tools": d["_tools"]} for d in done]
print(json.dumps({"seconds": seconds, "datasets": out}, ensure_ascii=False))
'''


def lf_run(lf_python: str, lf_dir: Path, names: list[str]) -> dict:
    proc = subprocess.run([lf_python, "-c", PEER, str(lf_dir), ",".join(names)], capture_output=True, text=True,
                          env={"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
                               "PATH": "/usr/bin:/bin"})
    if proc.returncode:
        sys.exit(f"LLaMA-Factory peer failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.splitlines()[-1])


def lf_turns(ex: dict, kind: str) -> list:
    """LF's example as danlu turns: system first, function -> assistant call, observation -> tool."""
    roles = {"user": "user", "assistant": "assistant", "function": "assistant", "observation": "tool"}
    turns = ([["system", ex["system"]]] if ex["system"] else []) + [[roles[r], c] for r, c in ex["turns"]]
    if kind == "sft":
        return turns + [[roles[r], c] for r, c in ex["response"]]
    if kind == "kto":  # LF encodes the label as an empty answer after (desirable) or before (undesirable)
        desirable = ex["response"][-1][1] == ""
        answer = ex["response"][0] if desirable else ex["response"][-1]
        return turns + [["assistant", answer[1]], ["desirable", desirable]]
    return turns + [["chosen", ex["response"][0][1]], ["rejected", ex["response"][1][1]]]


def danlu_turns(rec: dict, kind: str) -> list:
    def one(m):
        if m.get("tool_calls"):  # LF keeps the function_call text; compare the parsed call
            return [m["role"], [{"name": c["name"], "arguments": c["arguments"]} for c in m["tool_calls"]]]
        return [m["role"], m["content"]]

    turns = [one(m) for m in rec["messages"]]
    if kind == "kto":
        return turns + [["assistant", rec["completion"]["content"]], ["desirable", rec["desirable"]]]
    if kind == "preference":
        return turns + [["chosen", rec["chosen"]["content"]], ["rejected", rec["rejected"]["content"]]]
    return turns


def normalise_lf(turns: list) -> list:
    out = []
    for role, content in turns:
        if role == "assistant" and isinstance(content, str) and content.startswith('{"name"'):
            try:
                call = json.loads(content)
                content = [{"name": call["name"], "arguments": call["arguments"]}]
            except (ValueError, KeyError, TypeError):
                pass
        out.append([role, content])
    return out


def danlu_convert_seconds(lf_dir: Path, names: list[str]) -> float:
    """danlu's read + convert + validate only (what the peer's number covers, plus validation)."""
    from danlu.data.sft.registry import dataset_specs
    from danlu.data.sft.rows import read_rows
    from danlu.data.sft.stage import CONVERTERS
    from danlu.records import problem

    t = time.perf_counter()
    for spec in dataset_specs(lf_dir / "dataset_info.json", names)[0]:
        for path in spec.files:
            for _, _, row in read_rows(path):
                ex = CONVERTERS[spec.formatting](row, spec)
                rec = {"messages": ex.messages, "task_type": "bench", "chosen": ex.chosen, "rejected": ex.rejected,
                       "completion": ex.completion, "desirable": ex.desirable, "tools": ex.tools}
                problem({k: v for k, v in rec.items() if v is not None}, ex.kind, strict=True)
    return time.perf_counter() - t


def danlu_run(lf_dir: Path, names: list[str], out: Path, stage) -> tuple[float, dict]:
    t = time.perf_counter()
    rep = stage([lf_dir], out, datasets=names, task_type="bench", progress=False)
    seconds = time.perf_counter() - t
    recs = {}
    for fname, kind in (("sft.jsonl", "sft"), ("pref.jsonl", "preference"), ("kto.jsonl", "kto")):
        path = out / fname
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                rec = json.loads(line)
                recs.setdefault(rec["source"], []).append((kind, rec))
    return seconds, {"report": rep, "records": recs}


def compare(lf: dict, danlu: dict, lf_dir: Path) -> None:
    rejects = {}
    rej_path = Path(danlu["report"]["out"]) / "rejects.jsonl"
    for line in rej_path.read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        rejects.setdefault(r["dataset"], {})[r.get("index")] = r["reason"]
    print(f"{'dataset':<26} {'rows':>5} {'LF kept':>8} {'danlu kept':>10} {'identical':>9}  danlu rejects")
    for name, lf_examples in lf["datasets"].items():
        mine = iter(danlu["records"].get(name, []))
        same = 0
        mismatches = []
        for i, ex in enumerate(lf_examples):
            if i in rejects.get(name, {}):
                continue
            kind, rec = next(mine)
            if ex is not None and normalise_lf(lf_turns(ex, kind)) == danlu_turns(rec, kind):
                same += 1
            else:
                mismatches.append(i)
        kept = len(danlu["records"].get(name, []))
        lf_kept = sum(ex is not None for ex in lf_examples)
        why = "; ".join(f"[{i}] {reason}" for i, reason in sorted(rejects.get(name, {}).items()))
        print(f"{name:<26} {len(lf_examples):>5} {lf_kept:>8} {kept:>10} {same:>9}  {why or '-'}")
        if mismatches:
            print(f"  differing examples: {mismatches[:10]}")


def main() -> None:
    from danlu.data.sft import preference_data, sft_data

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--lf-data", type=Path, default=Path(__file__).resolve().parents[2] / "shared" / "corpora" / "llamafactory")
    ap.add_argument("--lf-python", default="/work/peers/lf/bin/python")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    for names, stage, label in ((SFT, sft_data, "SFT"), (PREF, preference_data, "preference + KTO")):
        lf_times, danlu_times, convert_times = [], [], []
        with tempfile.TemporaryDirectory() as tmp:
            for r in range(args.repeats):  # interleaved
                lf = lf_run(args.lf_python, args.lf_data, names)
                lf_times.append(lf["seconds"])
                secs, danlu = danlu_run(args.lf_data, names, Path(tmp) / f"run{r}", stage)
                danlu_times.append(secs)
                convert_times.append(danlu_convert_seconds(args.lf_data, names))
            rows = sum(len(v) for v in lf["datasets"].values())
            print(f"\n== {label}: {rows} rows through {args.lf_data / 'dataset_info.json'}")
            compare(lf, danlu, args.lf_data)
            lf_s, c_s, d_s = (statistics.median(t) for t in (lf_times, convert_times, danlu_times))
            print(f"read + convert, LLaMA-Factory parser/converters: {rows / lf_s:,.0f} rows/s ({lf_s:.3f} s)")
            print(f"read + convert + validate, danlu converters + records.py: {rows / c_s:,.0f} rows/s ({c_s:.3f} s); "
                  f"danlu/LF {lf_s / c_s:.2f}x")
            print(f"whole stage, danlu {stage.__name__} (+ write JSONL, rejects, report): {rows / d_s:,.0f} rows/s "
                  f"({d_s:.3f} s)  [medians of {args.repeats}, interleaved]")


if __name__ == "__main__":
    main()
