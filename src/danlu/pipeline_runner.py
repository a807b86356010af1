"""Run a list of steps, each skipped when its inputs are unchanged since it last finished.

A step's fingerprint hashes its configuration and its inputs (files by size+mtime, upstream steps by their
own fingerprints, so a rerun upstream that changed nothing does not ripple down). It is stored in the step's
run folder beside report.json; a step whose report is complete and whose fingerprint matches is skipped. A
step that was killed has no report, so it runs again, told to resume when it was killed working on the same
inputs: a marker beside its folder, `.NAME.started`, is written before it starts and removed when it ends.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from danlu.runs import atomic_write_text, read_report

FINGERPRINT = "fingerprint.txt"


def fingerprint(config: Any, inputs: list[Path]) -> str:
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for p in sorted(map(Path, inputs)):
        h.update(str(p).encode())
        if (p / FINGERPRINT).exists():  # an upstream step: same inputs, same (deterministic) output
            h.update((p / FINGERPRINT).read_bytes())
        elif (p / "report.json").exists():  # a run folder made outside the pipeline
            h.update((p / "report.json").read_bytes())
        elif p.is_dir():
            for f in sorted(q for q in p.rglob("*") if q.is_file()):
                st = f.stat()
                h.update(f"{f.relative_to(p)}:{st.st_size}:{st.st_mtime_ns}".encode())
        elif p.exists():
            st = p.stat()
            h.update(f"{st.st_size}:{st.st_mtime_ns}".encode())
    return h.hexdigest()


@dataclass
class Step:
    name: str
    out: Path
    run: Callable[[bool], dict]  # does the work, writes `out`, returns its report; arg: resume an interrupted try
    config: Any = None
    inputs: list[Path] = field(default_factory=list)


def run_steps(steps: list[Step], force: bool = False, echo: Callable[[str], None] = print) -> list[dict]:
    """Run `steps` in order; returns one summary per step (name, status, elapsed_s, out)."""
    summary = []
    for step in steps:
        fp = fingerprint(step.config, step.inputs)
        fp_file = step.out / FINGERPRINT
        done = read_report(step.out) is not None and fp_file.exists() and fp_file.read_text().strip() == fp
        if done and not force:
            echo(f"[skip] {step.name}: inputs unchanged ({step.out})")
            summary.append({"step": step.name, "status": "skipped", "out": str(step.out)})
            continue
        started = step.out.parent / f".{step.out.name}.started"  # beside: the step may replace its folder
        resume = not done and started.exists() and started.read_text().strip() == fp
        echo(f"[{'resume' if resume else 'run'}] {step.name} -> {step.out}")
        atomic_write_text(started, fp + "\n")
        t0 = time.time()
        step.run(resume)
        atomic_write_text(fp_file, fp + "\n")
        started.unlink()
        summary.append({"step": step.name, "status": "ran", "elapsed_s": round(time.time() - t0, 2), "out": str(step.out)})
    return summary
