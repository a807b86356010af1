"""Run folders: the one output convention every stage uses.

    OUT/
      config.yaml     the resolved configuration the stage ran with
      run.log         the stage's log
      metrics.jsonl   (stages that have a curve) one JSON object per logged step
      report.json     counts in/out/removed with reasons, timings, versions; written LAST
      ...artefacts

`report.json` is written last and atomically, so its presence with status "complete" is what marks a
finished stage: a killed process leaves no report and a rerun never mistakes half-written output for
finished output. Every artefact is written through `atomic_path`/`atomic_write_*` for the same reason.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from pydantic import BaseModel

from danlu import __version__
from danlu.config import to_yaml

REPORT = "report.json"


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename, on error it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; on success it replaces `path` (a model, a checkpoint),
    on error it is removed, so no half-written folder ever stands at `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2, default=str) + "\n")


def read_report(out_dir: str | Path) -> dict | None:
    """The report of a finished stage in `out_dir`, or None if it never finished."""
    p = Path(out_dir) / REPORT
    try:
        report = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return report if report.get("status") == "complete" else None


def versions() -> dict[str, str]:
    out = {"danlu": __version__, "python": platform.python_version(), "platform": platform.platform()}
    for mod in ("torch", "transformers", "tokenizers"):
        m = sys.modules.get(mod)  # report only what the stage actually used; never import torch just for this
        if m is not None:
            out[mod] = getattr(m, "__version__", "?")
    return out


@dataclass
class Run:
    """An open run folder. Create with `start_run`, end with `finish`."""

    dir: Path
    stage: str
    log: logging.Logger
    started: float = field(default_factory=time.time)

    def path(self, name: str) -> Path:
        return self.dir / name

    def log_metrics(self, metrics: dict) -> None:
        """Append one JSON line to metrics.jsonl (flushed at once, so a crash loses at most the line being written)."""
        with open(self.dir / "metrics.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(metrics, ensure_ascii=False) + "\n")

    def finish(self, report: dict) -> dict:
        full = {
            "stage": self.stage,
            "status": "complete",
            "started": datetime.fromtimestamp(self.started, timezone.utc).isoformat(),
            "elapsed_s": round(time.time() - self.started, 3),
            "versions": versions(),
            **report,
        }
        atomic_write_json(self.dir / REPORT, full)
        self.log.info("%s finished in %.1fs; report: %s", self.stage, full["elapsed_s"], self.dir / REPORT)
        for h in list(self.log.handlers):
            if isinstance(h, logging.FileHandler):
                h.close()
                self.log.removeHandler(h)
        return full


def start_run(out_dir: str | Path, stage: str, config: BaseModel | dict) -> Run:
    """Open (or reopen) a run folder: remove a stale report, write the resolved config, attach run.log."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / REPORT).unlink(missing_ok=True)  # this folder is unfinished until the new report lands
    atomic_write_text(out / "config.yaml", to_yaml({"stage": stage, **_as_dict(config)}))
    log = logging.getLogger(f"danlu.{stage}.{out.resolve()}")
    log.setLevel(logging.INFO)
    log.propagate = False
    for old in list(log.handlers):  # left by an earlier try in this process that raised before finish()
        old.close()
        log.removeHandler(old)
    handler = logging.FileHandler(out / "run.log", encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.info("danlu %s: %s -> %s", __version__, stage, out)
    return Run(dir=out, stage=stage, log=log)


def _as_dict(config: BaseModel | dict) -> dict:
    return config.model_dump(mode="json") if isinstance(config, BaseModel) else dict(config)
