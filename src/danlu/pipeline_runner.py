"""Run a list of steps, each skipped when its inputs are unchanged since it last finished.

A step's fingerprint hashes its configuration and its inputs: files by their CONTENT, and upstream steps by
the hash of the OUTPUT they produced. Content hashes are cached by path, size and mtime (CACHE, in the
pipeline's output folder), so an unchanged file is not read again, and `touch` changes nothing. A step that
reruns and produces byte-identical output stops the ripple: the steps that read it see the same output hash
and are skipped. The fingerprint and the output hash are stored in the step's run folder (STEP_FILE) beside
report.json; a step whose report is complete and whose fingerprint matches is skipped.

A step that was killed has no report, so it runs again, told to resume when it was killed working on the same
inputs: a marker beside its folder, `.NAME.started`, is written before it starts and removed when it ends.
"""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from danlu.jsonl import walk_files
from danlu.runs import REPORT, STAGE_MARKER, atomic_write_json, atomic_write_text, read_report, record_fatal

STEP_FILE = "fingerprint.json"  # {"fingerprint": hash of config + inputs, "output": hash of what it produced}
CACHE = ".fingerprints.json"  # {absolute path: [size, mtime_ns, content hash]}
# What a run folder holds about the run rather than its result: not part of its output hash.
BOOKKEEPING = {REPORT, "run.log", "metrics.jsonl", "config.yaml", STEP_FILE, "fingerprint.txt"}
RACY_S = 3.0  # a file modified this recently may change again within its mtime's resolution: not cached


class ContentHashes:
    """Content hashes of files, cached by (path, size, mtime_ns) in a JSON file."""

    def __init__(self, path: Path | None):
        self.path = path
        self.entries: dict[str, list] = {}
        if path is not None:
            try:
                data = json.loads(path.read_text(encoding="utf-8"))
                self.entries = data if isinstance(data, dict) else {}
            except (OSError, ValueError):
                self.entries = {}  # no cache (or a damaged one): everything is hashed again, nothing is wrong
        self.read_bytes = 0  # what hashing had to read (the cache's saving shows in tests)

    def file(self, p: Path) -> str:
        st = p.stat()
        key = os.path.realpath(p)
        hit = self.entries.get(key)
        if isinstance(hit, list) and len(hit) == 3 and hit[:2] == [st.st_size, st.st_mtime_ns]:
            return hit[2]
        h = hashlib.blake2b(digest_size=16)
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        self.read_bytes += st.st_size
        digest = h.hexdigest()
        if time.time() - st.st_mtime_ns / 1e9 > RACY_S:
            self.entries[key] = [st.st_size, st.st_mtime_ns, digest]
        return digest

    def tree(self, p: Path, patterns: list[str] | None = None, run_folder: bool = False) -> str:
        """A file's content hash, or a folder's: every file's relative path and content hash (hidden folders
        are not entered; a run folder's bookkeeping files and hidden files are left out; `patterns`, if
        given, are the relative paths that count)."""
        if not p.is_dir():
            return self.file(p) if p.exists() else "missing"
        h = hashlib.blake2b(digest_size=16)
        for found in walk_files(p, hidden_files=not run_folder):
            rel = found.path.relative_to(p).as_posix()
            if found.problem or (run_folder and (rel in BOOKKEEPING or found.path.name.startswith("."))):
                continue
            if patterns is not None and not any(fnmatch.fnmatchcase(rel, pat) for pat in patterns):
                continue
            h.update(rel.encode("utf-8", "surrogateescape") + b"\0")
            h.update((self.file(found.path) if found.path.exists() else "broken link").encode() + b"\n")
        return h.hexdigest()

    def save(self) -> None:
        if self.path is None:
            return
        live = {k: v for k, v in self.entries.items() if os.path.exists(k)}
        try:
            atomic_write_json(self.path, live)
        except OSError:
            pass  # a cache: losing it costs time, never correctness


@dataclass
class Step:
    name: str
    out: Path
    run: Callable[[bool], dict]  # does the work, writes `out`, returns its report; arg: resume an interrupted try
    config: Any = None
    inputs: list[Path] = field(default_factory=list)
    # The files of `out` that make up its result (relative glob patterns); None: all but the bookkeeping.
    outputs: list[str] | None = None


def fingerprint(config: Any, inputs: list[Path], hashes: ContentHashes, produced: dict[Path, str]) -> str:
    """Config + inputs: an upstream step's folder by the hash of its output, anything else by content."""
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for p in sorted(map(Path, inputs)):
        h.update(str(p).encode("utf-8", "surrogateescape") + b"\0")
        real = Path(os.path.realpath(p))
        if real in produced:
            h.update(b"step:" + produced[real].encode())
        else:
            h.update(hashes.tree(p, run_folder=(p / STAGE_MARKER).exists() or (p / REPORT).exists()).encode())
    return h.hexdigest()


def _stored(step: Step) -> dict:
    try:
        data = json.loads((step.out / STEP_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def run_steps(steps: list[Step], force: bool = False, echo: Callable[[str], None] = print,
              cache: Path | None = None, summary: list[dict] | None = None) -> list[dict]:
    """Run `steps` in order; returns one summary per step (name, status, elapsed_s, out, and for a step that
    ran, whether its output changed), appended to `summary` as the steps go (so a last step can report on the
    ones before it). `cache`: the content-hash cache file (see ContentHashes)."""
    hashes = ContentHashes(cache)
    produced: dict[Path, str] = {}  # step folder -> output hash, as steps finish or are skipped
    summary = [] if summary is None else summary
    try:
        for step in steps:
            fp = fingerprint(step.config, step.inputs, hashes, produced)
            stored = _stored(step)
            done = read_report(step.out) is not None and stored.get("fingerprint") == fp and bool(stored.get("output"))
            key = Path(os.path.realpath(step.out))
            if done and not force:
                produced[key] = stored["output"]
                echo(f"[skip] {step.name}: inputs unchanged ({step.out})")
                summary.append({"step": step.name, "status": "skipped", "out": str(step.out)})
                continue
            started = step.out.parent / f".{step.out.name}.started"  # beside: the step may replace its folder
            resume = not done and started.exists() and started.read_text().strip() == fp
            echo(f"[{'resume' if resume else 'run'}] {step.name} -> {step.out}")
            atomic_write_text(started, fp + "\n")
            t0 = time.time()
            try:
                step.run(resume)
            except BaseException as e:  # record why in the step's run.log before the error travels on
                record_fatal(f"step '{step.name}' failed: {type(e).__name__}: {e}", e)
                raise
            output = hashes.tree(step.out, step.outputs, run_folder=True)
            produced[key] = output
            atomic_write_json(step.out / STEP_FILE, {"fingerprint": fp, "output": output})
            started.unlink()
            same = output == stored.get("output")
            if same:
                echo(f"       {step.name}: output unchanged, so the steps reading it need not rerun")
            summary.append({"step": step.name, "status": "ran", "elapsed_s": round(time.time() - t0, 2),
                            "out": str(step.out), "output": "unchanged" if same else "changed"})
            hashes.save()
    finally:
        hashes.save()
    return summary
