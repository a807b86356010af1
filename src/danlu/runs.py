"""Run folders: the one output convention every stage uses.

    OUT/
      config.yaml     the resolved configuration the stage ran with
      run.log         the stage's log
      metrics.jsonl   (stages that have a curve) one JSON object per logged step
      report.json     counts in/out/removed with reasons, timings, versions; written LAST
      ...artefacts

`report.json` is written last and atomically, so its presence with status "complete" is what marks a
finished stage: a killed process leaves no report and a rerun never mistakes half-written output for
finished output. Every artefact is written through `atomic_path`/`atomic_write_*` for the same reason (with the
modes any other tool would give them: 0666/0777 minus the umask). A folder records the stage that owns it
(`.danlu-stage`): another stage refuses to write there unless forced. An error that ends the process is
written to the run.log of every unfinished run (`record_fatal`, called by the `danlu` entry point and `danlu run`).

The report contract (what the web console and `danlu run`'s report read): every stage's report has

    "counts": {"unit": "records", "in": N, "kept": K, "filtered": {reason: n}, "rejected": {reason: n}}

where filtered = removed on purpose (a quality filter, a duplicate, a held-out split) and rejected = unusable
input (bad JSON, a file that failed to read), and in == kept + sum(filtered) + sum(rejected). A stage that also
accounts in characters adds "chars" with the same shape. Optional "headline" (names of the report's own
scalar fields, dotted for nested ones: ["tokens", "duplicates.exact_rate"]), "warnings" and "advice" ([text]) are what the summary printer
shows beside the counts. `Run.finish` refuses a report that breaks the
contract, so a stage whose numbers do not add up fails loudly instead of writing a report that lies.
"""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
import os
import platform
import re
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
from danlu.names import ESCAPE, display, displayable, honour_umask

REPORT = "report.json"
STAGE_MARKER = ".danlu-stage"  # which stage owns a run folder (see start_run)


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path` in one rename, on error it is removed."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.close(fd)
        honour_umask(tmp)  # mkstemp makes 0600: teammates could not read a shared run
    except OSError as e:
        raise naming_path(e, path) from None
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as e:
        tmp_path.unlink(missing_ok=True)
        named = naming_path(e, path)
        if named is e:
            raise
        raise named from e
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def naming_path(err: OSError, path: str | Path) -> OSError:
    """`err` naming the file the user knows (`path`), not the temporary name it happened on (or none)."""
    if err.errno is None or (err.filename is not None and not Path(err.filename).name.endswith(".tmp")):
        return err
    return OSError(err.errno, err.strerror, str(path))  # OSError(errno, ...) builds the matching subclass


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; on success it replaces `path` (a model, a checkpoint),
    on error it is removed, so no half-written folder ever stands at `path`."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
        honour_umask(tmp, directory=True)
    except OSError as e:
        raise naming_path(e, path) from None
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
        with open(tmp, "w", encoding="utf-8", errors=ESCAPE) as f:  # names that are not UTF-8: see danlu.names
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def atomic_write_json(path: str | Path, obj: Any) -> None:
    text = json.dumps(obj, ensure_ascii=False, indent=2, default=str) + "\n"
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a file name that is not UTF-8: written in its escaped form (danlu.names)
        text = json.dumps(displayable(json.loads(json.dumps(obj, default=str))), ensure_ascii=False, indent=2) + "\n"
    atomic_write_text(path, text)


def read_report(out_dir: str | Path) -> dict | None:
    """The report of a finished stage in `out_dir`, or None if it never finished."""
    p = Path(out_dir) / REPORT
    try:
        report = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return report if report.get("status") == "complete" else None


class AccountingError(ValueError):
    """A stage's report whose counts do not add up (or are missing): the run fails instead of lying."""


def counts(n_in: int, kept: int, filtered: dict[str, int] | None = None, rejected: dict[str, int] | None = None,
           unit: str = "records") -> dict:
    """The contract's counts block (see the module docstring); reasons with a zero count are left out."""
    return {"unit": unit, "in": int(n_in), "kept": int(kept),
            "filtered": {str(k): int(v) for k, v in (filtered or {}).items() if v},
            "rejected": {str(k): int(v) for k, v in (rejected or {}).items() if v}}


def reason_key(reason: str) -> str:
    """A reason as a counts key: reasons that differ only in measured numbers group together
    ("too short: 12 chars < 50" -> "too short: # chars < #")."""
    return re.sub(r"\d+(?:\.\d+)?", "#", reason)


def check_counts(stage: str, report: dict) -> None:
    """Raise AccountingError unless `report` carries a counts block that adds up (and a chars block, if any)."""
    for key, required in (("counts", True), ("chars", False)):
        block = report.get(key)
        if block is None and not required:
            continue
        if not isinstance(block, dict):
            raise AccountingError(f"stage '{stage}': report has no '{key}' block ({{in, kept, filtered, rejected}})")
        bad = [k for k in ("in", "kept") if not isinstance(block.get(k), int) or block[k] < 0]
        bad += [k for k in ("filtered", "rejected") if not isinstance(block.get(k), dict)
                or not all(isinstance(v, int) and v >= 0 for v in block[k].values())]
        if bad:
            raise AccountingError(f"stage '{stage}': {key} block has missing or invalid {', '.join(bad)}: {block}")
        filtered, rejected = sum(block["filtered"].values()), sum(block["rejected"].values())
        if block["in"] != block["kept"] + filtered + rejected:
            raise AccountingError(
                f"stage '{stage}': {key} do not add up: in {block['in']} != kept {block['kept']} + filtered "
                f"{filtered} + rejected {rejected} (difference {block['in'] - block['kept'] - filtered - rejected})")


def summary_lines(report: dict) -> list[str]:
    """Any stage's report as a few lines for the terminal: counts (and chars), headline figures, warnings."""
    c = report["counts"]
    unit = c.get("unit", "records")
    f, r = sum(c["filtered"].values()), sum(c["rejected"].values())
    lines = [f"{report.get('stage', 'stage')}: {unit} in={c['in']:,} kept={c['kept']:,} filtered={f:,} "
             f"rejected={r:,}" + (f" -> {report['out']}" if report.get("out") else "")]
    for name, by in (("filtered", c["filtered"]), ("rejected", c["rejected"])):
        if by:
            top = sorted(by.items(), key=lambda kv: -kv[1])
            shown = ", ".join(f"{k}: {v:,}" for k, v in top[:8]) + (f", ... ({len(top) - 8} more)" if len(top) > 8 else "")
            lines.append(f"  {name:<9} {shown}")
    ch = report.get("chars")
    if ch:
        removed = ch["in"] - ch["kept"]
        share = f" ({removed / ch['in']:.2%})" if ch["in"] else ""
        lines.append(f"  chars     in={ch['in']:,} kept={ch['kept']:,} removed={removed:,}{share}")
    head = [(k.rsplit(".", 1)[-1], v) for k in report.get("headline") or () if (v := _field(report, k)) is not None]
    if head:
        lines.append("  " + " ".join(f"{k}={v:,}" if isinstance(v, int) and not isinstance(v, bool) else f"{k}={v}"
                                     for k, v in head))
    lines += [f"warning: {w}" for w in report.get("warnings") or []]
    lines += [f"advice: {a}" for a in report.get("advice") or []]
    return lines


def _field(report: dict, dotted: str):
    node = report
    for part in dotted.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


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
        """Write report.json (the contract is checked first: see the module docstring) and close run.log."""
        try:
            check_counts(self.stage, report)
        except AccountingError as e:
            self.log.error("%s", e)
            raise
        full = {
            "stage": self.stage,
            "status": "complete",
            "out": str(self.dir),
            "started": datetime.fromtimestamp(self.started, timezone.utc).isoformat(),
            "elapsed_s": round(time.time() - self.started, 3),
            "versions": versions(),
            **report,
        }
        atomic_write_json(self.dir / REPORT, full)
        self.log.info("%s finished in %.1fs; report: %s", self.stage, full["elapsed_s"], self.dir / REPORT)
        self.close()
        return full

    def close(self) -> None:
        """Detach run.log (finish does this; a run that failed is closed by `record_fatal`)."""
        _OPEN.pop(self.dir.resolve(), None)
        for h in list(self.log.handlers):
            if isinstance(h, logging.FileHandler):
                h.close()
                self.log.removeHandler(h)


class RunFolderError(OSError):
    """An output folder that cannot be used (a file stands there, it cannot be written)."""


class ForeignRunFolder(ValueError):
    """An output folder that is another stage's run folder: writing there would overwrite its report."""


# Run folders started in this process and not yet finished: where a fatal error is recorded (record_fatal).
_OPEN: dict[Path, Run] = {}
_TAKE_OVER: contextvars.ContextVar[bool] = contextvars.ContextVar("danlu_take_over", default=False)


@contextlib.contextmanager
def taking_over(force: bool = True) -> Iterator[None]:
    """Within this block `start_run` takes over another stage's run folder (a command's `--force`)."""
    token = _TAKE_OVER.set(bool(force))
    try:
        yield
    finally:
        _TAKE_OVER.reset(token)


def folder_stage(out_dir: str | Path) -> str | None:
    """The stage that owns a run folder: its marker, else (folders made before markers) its report/config."""
    out = Path(out_dir)
    try:
        return (out / STAGE_MARKER).read_text(encoding="utf-8").strip() or None
    except OSError:
        pass
    for name, parse in ((REPORT, json.loads), ("config.yaml", _yaml_mapping)):
        try:
            data = parse((out / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict) and isinstance(data.get("stage"), str):
            return data["stage"]
    return None


def _yaml_mapping(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(str(e)) from None


class _RunLog(logging.FileHandler):
    """run.log: a line that cannot be written (a full disk) is dropped quietly; the error itself reaches the
    user through the exception that follows, not as a logging traceback per line."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802  (logging's name)
        pass


def start_run(out_dir: str | Path, stage: str, config: BaseModel | dict, force: bool = False) -> Run:
    """Open (or reopen) a run folder: remove a stale report, write the resolved config, attach run.log.

    A folder records the stage that owns it (STAGE_MARKER); another stage refuses it unless `force` (or
    `taking_over()`), so `-o` pointing at the wrong folder cannot overwrite that run's report, rejects and
    config. The same stage reopens its own folder freely (reruns, resume)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"{display(out)}: the output folder is an existing file; remove it or choose "
                             "another output folder (-o)")
    owner = folder_stage(out) if out.is_dir() else None
    if owner is not None and owner != stage and not (force or _TAKE_OVER.get()):
        raise ForeignRunFolder(
            f"{display(out)} is the run folder of stage '{owner}': writing '{stage}' output there would overwrite "
            "its report, rejects and config. Choose another output folder (-o), or give --force to take it over")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / REPORT).unlink(missing_ok=True)  # this folder is unfinished until the new report lands
        atomic_write_text(out / STAGE_MARKER, stage + "\n")
        atomic_write_text(out / "config.yaml", to_yaml({"stage": stage, **_as_dict(config)}))
        handler = _RunLog(out / "run.log", encoding="utf-8", errors=ESCAPE)
    except OSError as e:
        raise RunFolderError(e.errno, f"cannot write the output folder ({e.strerror or e})",
                             display(e.filename or out)) from None
    log = logging.getLogger(f"danlu.{stage}.{out.resolve()}")
    log.setLevel(logging.INFO)
    log.propagate = False
    for old in list(log.handlers):  # left by an earlier try in this process that raised before finish()
        old.close()
        log.removeHandler(old)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(handler)
    log.info("danlu %s: %s -> %s", __version__, stage, out)
    run = Run(dir=out, stage=stage, log=log)
    _OPEN.pop(out.resolve(), None)  # a reopened folder moves to the end: open_runs() lists the newest last
    _OPEN[out.resolve()] = run
    return run


def open_runs() -> list[Run]:
    """Run folders started in this process that have not finished (the innermost last)."""
    return list(_OPEN.values())


def record_fatal(message: str, exc: BaseException | None = None) -> list[Path]:
    """Write the error that ends this process into the run.log of every unfinished run (with the traceback
    there, not on the terminal) and close them; returns their folders. Never raises: the disk may be full."""
    folders = []
    for run in open_runs():
        try:
            run.log.error("fatal: %s", message, exc_info=(type(exc), exc, exc.__traceback__) if exc else None)
        except Exception:  # noqa: BLE001  (logging already swallows write errors; this is belt and braces)
            pass
        run.close()
        folders.append(run.dir)
    return folders


def _as_dict(config: BaseModel | dict) -> dict:
    return config.model_dump(mode="json") if isinstance(config, BaseModel) else dict(config)
