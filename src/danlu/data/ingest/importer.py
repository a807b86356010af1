"""`ingest`: walk files and folders, read each with its format's reader (in a process pool, output in input
order), write document records to OUT/documents.jsonl and account for every input file in report.json.

Resume: the outcome of every file that took RESUME_MIN_SECONDS or more to read (OCR'd or large PDFs, big
books) is kept in OUT/.resume/ until the run finishes, keyed by the file's path, size, mtime and the options.
A rerun after a kill reuses those and reads again only the files that were cheap to read anyway."""

from __future__ import annotations

import gzip
import multiprocessing
import os
import pickle
import shutil
import time
import zlib
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal

from pydantic import Field
from tqdm import tqdm

from danlu.config import StrictModel
from danlu.data.ingest.base import Options
from danlu.data.ingest.errors import IngestFailure, SkipFile
from danlu.data.ingest.formats import check_name, detect_format, reader
from danlu.jsonl import JsonlWriter
from danlu.records import document, stable_id
from danlu.runs import atomic_path, start_run

DOCUMENTS = "documents.jsonl"
REJECTS = "rejects.jsonl"
REPORT_LIST_MAX = 1000  # report.json lists at most this many bad records; rejects.jsonl has them all
FILE_TIMEOUT_S = 3600.0  # a scanned book legitimately takes minutes; a reader stuck for an hour is hung
RESUME_DIR = ".resume"
RESUME_MIN_SECONDS = 0.5


class IngestConfig(StrictModel):
    inputs: list[str]
    out: str
    source: str | None = None
    text_field: str = "text"
    ocr: Literal["auto", "off", "force"] = "auto"
    workers: int | None = None
    file_timeout: float | None = Field(FILE_TIMEOUT_S, gt=0)  # per file, with 2+ workers; None: no limit


@dataclass
class FileTask:
    path: str  # absolute path on disk
    rel: str  # path relative to the input it was found under (recorded in the document)
    source: str


@dataclass
class FileOutcome:
    rel: str
    source: str
    status: str  # written | skipped | failed
    format: str = ""
    reason: str = ""
    records: list[dict] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0
    pages: int = 0
    ocr_pages: int = 0
    bad_lines: list[tuple[int, str]] = field(default_factory=list)


def discover(inputs: Iterable[str | Path], source: str | None = None, exclude: str | Path | None = None
             ) -> list[FileTask]:
    """Every file under the inputs, sorted within each input; hidden folders and `exclude` (the output folder)
    are not entered, a file met twice is taken once. Two inputs that give the same (source, relative path)
    keep ids apart by prefixing the input folder's name. A missing input is an error, not an empty import."""
    tasks: list[FileTask] = []
    seen_files: set[str] = set()
    seen_names: set[tuple[str, str]] = set()
    skip_dir = Path(exclude).resolve() if exclude else None
    for inp in map(Path, inputs):
        if not inp.exists() and not inp.is_symlink():
            raise FileNotFoundError(f"{inp}: no such file or folder")
        root = inp.resolve() if inp.is_dir() else inp.absolute().parent
        name = source or root.name or "corpus"
        if inp.is_dir():
            files = []
            for dirpath, dirnames, filenames in os.walk(inp, followlinks=False):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith(".")
                                     and Path(dirpath, d).resolve() != skip_dir)
                files.extend(Path(dirpath, f) for f in filenames)
            files.sort(key=lambda p: p.relative_to(inp).as_posix())
            pairs = [(p, p.relative_to(inp).as_posix()) for p in files]
        else:
            pairs = [(inp, inp.name)]
        for p, rel in pairs:
            key = str(p.absolute())
            if key in seen_files:
                continue
            seen_files.add(key)
            if (name, rel) in seen_names:
                rel = f"{root.name}/{rel}"
                n = 2
                while (name, rel) in seen_names:
                    rel, n = f"{root.name}.{n}/{rel.split('/', 1)[1]}", n + 1
            seen_names.add((name, rel))
            tasks.append(FileTask(key, rel, name))
    return tasks


def _read_bytes(task: FileTask) -> tuple[bytes, str]:
    """File bytes and the name to detect the format from (a .gz file is decompressed and named without .gz)."""
    try:
        data = Path(task.path).read_bytes()
    except OSError as e:
        raise IngestFailure(f"cannot read the file: {e.strerror or e}") from None
    name = Path(task.rel).name
    if name.lower().endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as e:
            raise IngestFailure(f"corrupt gzip file: {e}") from None
        name = name[:-3]
    return data, name


def process_file(task: FileTask, opts: Options) -> FileOutcome:
    """Read one file into document records; never raises: a problem becomes a failed/skipped outcome."""
    t0 = time.perf_counter()
    out = FileOutcome(task.rel, task.source, "failed")
    try:
        if Path(task.rel).name.startswith("."):
            raise SkipFile("hidden file")
        check_name(Path(task.rel.removesuffix(".gz").removesuffix(".GZ")))  # before reading a video into memory
        data, name = _read_bytes(task)
        out.bytes = len(data)
        out.format = detect_format(Path(name), data[:2048])
        if not data:
            raise IngestFailure("empty file (0 bytes)")
        result = reader(out.format)(data, Path(task.path), opts)
        for doc in result.docs:
            meta = {**result.meta, **doc.meta}
            out.records.append(document(doc.text, task.source, task.rel, out.format, doc.position, meta))
        out.status, out.pages, out.ocr_pages = "written", result.pages, result.ocr_pages
        out.bad_lines = result.bad_lines
    except SkipFile as e:
        out.status, out.reason = "skipped", str(e)
    except IngestFailure as e:
        out.reason = str(e)
    except MemoryError:
        out.reason = "ran out of memory reading the file"
    except Exception as e:  # a reader bug or a library's unexpected error: still one failure, not a dead run
        out.reason = f"unexpected {type(e).__name__}: {e}"
    out.seconds = time.perf_counter() - t0
    return out


def _process_star(args: tuple[FileTask, Options]) -> FileOutcome:
    return process_file(*args)


def _isolated(task: FileTask, opts: Options, fn: Callable = _process_star) -> FileOutcome:
    """Read one file in a process of its own, so a reader that crashes the interpreter (a native library
    fault on a hostile PDF) costs that file only."""
    ctx = multiprocessing.get_context("forkserver")
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as pool:
            return pool.submit(fn, (task, opts)).result()
    except BrokenProcessPool:
        return FileOutcome(task.rel, task.source, "failed", reason="the reader process crashed on this file "
                           "(a native library fault: the file is probably corrupt)")


def _outcomes(tasks: list[FileTask], opts: Options, workers: int, fn: Callable = _process_star,
              timeout: float | None = None) -> Iterator[FileOutcome]:
    """Outcomes in task order; in a process pool when there is more than one worker (even for one file: the pool
    is what isolates crashes and enforces the timeout).
    At most a few files per worker are in flight, so a slow file never makes finished ones pile up in memory.
    In the pool, a file whose reader runs past `timeout` seconds (counted from when it is waited for) fails
    and its stuck worker is stopped; the run goes on."""
    if workers <= 1:
        for t in tasks:
            yield fn((t, opts))
        return
    # forkserver: workers start from a clean process, so a parent that already runs threads (torch) is safe.
    ctx = multiprocessing.get_context("forkserver")
    window = workers * 4
    done = 0
    while done < len(tasks):
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx)
        pending: deque = deque()
        submitted = done
        try:
            while done < len(tasks):
                while submitted < len(tasks) and len(pending) < window:
                    pending.append(pool.submit(fn, (tasks[submitted], opts)))
                    submitted += 1
                outcome = pending.popleft().result(timeout=timeout)
                done += 1
                yield outcome
        except FutureTimeout:
            # The executor has no public way to stop a running task: end its worker processes, then go on
            # with a new pool (the other files in flight are submitted again).
            for proc in list(getattr(pool, "_processes", {}).values()):
                proc.terminate()
            yield FileOutcome(tasks[done].rel, tasks[done].source, "failed", seconds=timeout,
                              reason=f"reading took longer than {timeout:g}s (file_timeout); the reader was stopped")
            done += 1
        except BrokenProcessPool:
            # A worker died. The next file in order was in flight: retry it alone, then go on with a new pool.
            yield _isolated(tasks[done], opts, fn)
            done += 1
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


def _resume_key(task: FileTask, opts: Options) -> str:
    try:
        st = os.stat(task.path)
    except OSError:
        return ""  # unreadable now: nothing to resume, the reader will report it
    return stable_id(task.path, task.rel, task.source, st.st_size, st.st_mtime_ns, opts.text_field, opts.ocr, length=32)


def _resumable(tasks: list[FileTask], opts: Options, workers: int, cache: Path, resumed: list[int],
               timeout: float | None) -> Iterator[FileOutcome]:
    """`_outcomes` in task order, reusing the kept outcomes of an interrupted run and keeping the slow new ones."""
    keys = [_resume_key(t, opts) for t in tasks]
    kept = {i: cache / f"{k}.pkl" for i, k in enumerate(keys) if k and (cache / f"{k}.pkl").exists()}
    fresh = _outcomes([t for i, t in enumerate(tasks) if i not in kept], opts, workers, timeout=timeout)
    for i, key in enumerate(keys):
        if i in kept:
            resumed[0] += 1
            yield pickle.loads(kept[i].read_bytes())  # our own file, written below by this code
            continue
        outcome = next(fresh)
        if key and outcome.seconds >= RESUME_MIN_SECONDS:
            with atomic_path(cache / f"{key}.pkl") as tmp:
                tmp.write_bytes(pickle.dumps(outcome))
        yield outcome


def _new_format_stats() -> dict:
    return {"files": 0, "written": 0, "skipped": 0, "failed": 0, "records": 0, "chars": 0, "bytes": 0,
            "seconds": 0.0, "pages": 0, "ocr_pages": 0}


def ingest(
    inputs: list[str | Path] | str | Path,
    out: str | Path,
    *,
    source: str | None = None,
    text_field: str = "text",
    ocr: str = "auto",
    workers: int | None = None,
    file_timeout: float | None = FILE_TIMEOUT_S,
    progress: bool = True,
) -> dict:
    """Import documents from files/folders into OUT/documents.jsonl; returns the report (also OUT/report.json).

    `source` names the corpus in every record (default: the name of each input folder, or of a file's folder);
    `text_field` is the field/column holding the text in jsonl/json/csv; `ocr` is auto|off|force;
    `file_timeout` stops a reader stuck on one file for that many seconds (with 2+ workers).
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    cfg = IngestConfig(inputs=[str(p) for p in inputs], out=str(out), source=source, text_field=text_field,
                       ocr=ocr, workers=workers, file_timeout=file_timeout)
    tasks = discover(cfg.inputs, cfg.source, exclude=out)
    n_workers = max(1, cfg.workers or os.cpu_count() or 1)
    run = start_run(out, "ingest", cfg)
    run.log.info("%d input files, %d workers, ocr=%s", len(tasks), n_workers, cfg.ocr)
    opts = Options(text_field=cfg.text_field, ocr=cfg.ocr)

    by_format: dict[str, dict] = {}
    failed, skipped, bad_records = [], [], []
    counts = {"in": len(tasks), "written": 0, "skipped": 0, "failed": 0}
    totals = {"records": 0, "chars": 0, "bytes": 0, "pages": 0, "ocr_pages": 0, "bad_records": 0}
    bar = tqdm(total=len(tasks), unit="file", desc="ingest", disable=not progress, dynamic_ncols=True)
    resumed = [0]
    with JsonlWriter(run.path(DOCUMENTS)) as writer, JsonlWriter(run.path(REJECTS)) as rejects:
        for o in _resumable(tasks, opts, n_workers, run.path(RESUME_DIR), resumed, cfg.file_timeout):
            bar.update(1)
            counts[o.status] += 1
            stats = by_format.setdefault(o.format or "unknown", _new_format_stats())
            stats["files"] += 1
            stats[o.status] += 1
            stats["bytes"] += o.bytes
            stats["seconds"] += o.seconds
            totals["bytes"] += o.bytes
            if o.status != "written":
                entry = {"path": o.rel, "source": o.source, "format": o.format, "status": o.status, "reason": o.reason}
                (failed if o.status == "failed" else skipped).append(entry)
                rejects.write(entry)
                run.log.info("%s %s: %s", o.status, o.rel, o.reason)
                continue
            chars = 0
            for rec in o.records:
                writer.write(rec)
                chars += len(rec["text"])
            for key, value in (("records", len(o.records)), ("chars", chars), ("pages", o.pages),
                               ("ocr_pages", o.ocr_pages)):
                stats[key] += value
                totals[key] += value
            for line, reason in o.bad_lines:
                entry = {"path": o.rel, "source": o.source, "format": o.format, "status": "bad_record",
                         "line": line, "reason": reason}
                rejects.write(entry)
                totals["bad_records"] += 1
                if len(bad_records) < REPORT_LIST_MAX:
                    bad_records.append(entry)
    bar.close()
    shutil.rmtree(run.path(RESUME_DIR), ignore_errors=True)  # the run is complete: nothing left to resume
    if resumed[0]:
        run.log.info("resumed: %d file outcomes reused from an interrupted run", resumed[0])
    # Every input file is accounted for exactly once.
    assert counts["in"] == counts["written"] + counts["skipped"] + counts["failed"], counts
    for stats in by_format.values():
        stats["seconds"] = round(stats["seconds"], 3)
    report = {
        "inputs": cfg.inputs,
        "output": DOCUMENTS,
        "files": counts,
        "files_resumed": resumed[0],
        **totals,
        "by_format": dict(sorted(by_format.items())),
        "failed": failed,
        "skipped": skipped,
        "bad_record_examples": bad_records,
    }
    return run.finish(report)
