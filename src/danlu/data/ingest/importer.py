"""`ingest`: walk files and folders, read each with its format's reader (in a process pool, output in input
order), write document records to OUT/documents.jsonl and account for every input file in report.json.

Resume: the outcome of every file that took RESUME_MIN_SECONDS or more to read (OCR'd or large PDFs, big
books) is kept in OUT/.resume/ until the run finishes, keyed by the file's path, size, mtime and the options.
A rerun after a kill reuses those and reads again only the files that were cheap to read anyway."""

from __future__ import annotations

import gzip
import os
import pickle
import shutil
import time
import zlib
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Literal

from pydantic import Field
from tqdm import tqdm

from danlu.config import StrictModel, build_config
from danlu.data.executor import Executor, ExecutorFields
from danlu.data.ingest.base import Options
from danlu.data.ingest.errors import IngestFailure, SkipFile
from danlu.data.ingest.formats import check_name, detect_format, reader
from danlu.jsonl import JsonlWriter, walk_files
from danlu.names import display
from danlu.records import document, stable_id
from danlu.runs import atomic_path, counts, reason_key, start_run
from danlu.workers import ItemFailed

DOCUMENTS = "documents.jsonl"
REJECTS = "rejects.jsonl"
REPORT_LIST_MAX = 1000  # report.json lists at most this many bad records; rejects.jsonl has them all
FILE_TIMEOUT_S = 3600.0  # a scanned book legitimately takes minutes; a reader stuck for an hour is hung
RESUME_DIR = ".resume"
RESUME_MIN_SECONDS = 0.5


class IngestConfig(ExecutorFields):  # workers: reader processes (0: one per CPU core); executor, address
    inputs: list[str]
    out: str
    source: str | None = None  # corpus name of every record (default: the input folder's name)
    text_field: str = "text"  # the field/column holding the text in jsonl/json/csv
    ocr: Literal["auto", "off", "force"] = "auto"  # OCR for PDF pages without a text layer
    file_timeout: float = Field(FILE_TIMEOUT_S, ge=0)  # seconds per file (with 2+ workers); 0: no limit


@dataclass
class FileTask:
    path: str  # absolute path on disk (a name that is not UTF-8 stays as os gives it: see danlu.names)
    rel: str  # path relative to the input it was found under (recorded in the document)
    source: str
    problem: str = ""  # set for an entry that is not read (a symlink loop...): it is listed as skipped


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
    """Every file under the inputs, sorted within each input; symlinked folders are followed, and a link that
    is not (a loop, or a folder read anyway) becomes a task that is reported as skipped with the reason. Hidden
    folders and `exclude` (the output folder) are not entered, a file met twice is taken once. Two inputs that
    give the same (source, relative path) keep ids apart by prefixing the input folder's name. A missing input is an error, not an empty import."""
    tasks: list[FileTask] = []
    seen_files: set[str] = set()
    seen_names: set[tuple[str, str]] = set()
    for inp in map(Path, inputs):
        if not inp.exists() and not inp.is_symlink():
            raise FileNotFoundError(f"{display(inp)}: no such file or folder")
        root = inp.resolve() if inp.is_dir() else inp.absolute().parent
        name = source or root.name or "corpus"
        if inp.is_dir():
            pairs = [(f.path, f.path.relative_to(inp).as_posix(), f.problem or "")
                     for f in walk_files(inp, exclude=exclude, hidden_files=True)]
        else:
            pairs = [(inp, inp.name, "")]
        for p, rel, problem in pairs:
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
            tasks.append(FileTask(key, rel, name, problem))
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
        if task.problem:
            raise SkipFile(task.problem)
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


def _outcomes(tasks: list[FileTask], opts: Options, workers: int | Executor, fn: Callable = _process_star,
              timeout: float | None = None) -> Iterator[FileOutcome]:
    """Outcomes in task order, through an executor (`workers`: a local worker count, or an Executor). Locally
    with 2+ workers each file is isolated: a reader that crashes or runs past `timeout` seconds fails that
    file only, and the run goes on; on Ray a reader that kills its worker fails that file only."""
    ex = workers if isinstance(workers, Executor) else Executor("local", workers)
    for (task, _), outcome in ex.map(fn, [(t, opts) for t in tasks], timeout=timeout):
        if isinstance(outcome, ItemFailed):
            outcome = FileOutcome(task.rel, task.source, "failed", seconds=timeout if outcome.timed_out else 0.0,
                                  reason=f"the reader {outcome.reason}" + (" (file_timeout)" if outcome.timed_out else ""))
        yield outcome


def _resume_key(task: FileTask, opts: Options) -> str:
    try:
        st = os.stat(task.path)
    except OSError:
        return ""  # unreadable now: nothing to resume, the reader will report it
    return stable_id(task.path, task.rel, task.source, st.st_size, st.st_mtime_ns, opts.text_field, opts.ocr, length=32)


def _resumable(tasks: list[FileTask], opts: Options, workers: int | Executor, cache: Path, resumed: list[int],
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


def ingest(inputs: list[str | Path] | str | Path, out: str | Path, *, sets: Iterable[str] = (),
           progress: bool = True, force: bool = False, **options) -> dict:
    """Import documents from files/folders into OUT/documents.jsonl; returns the report (also OUT/report.json).
    `options` are IngestConfig's fields (source, text_field, ocr, workers, executor, address, file_timeout);
    `sets` are `--set key=value` overrides; `force` takes over an output folder that another stage wrote."""
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    cfg = build_config(IngestConfig, fields=dict(options, inputs=[str(p) for p in inputs], out=str(out)), sets=sets,
                       source="data ingest")
    tasks = discover(cfg.inputs, cfg.source, exclude=out)
    timeout = cfg.file_timeout or None
    ex = Executor.from_options(cfg)
    run = start_run(out, "ingest", cfg, force=force)
    opts = Options(text_field=cfg.text_field, ocr=cfg.ocr)
    with ex:
        run.log.info("%d input files, %s, ocr=%s", len(tasks), ex.describe(), cfg.ocr)
        return _ingest(tasks, opts, ex, timeout, run, cfg, progress)


def _ingest(tasks: list[FileTask], opts: Options, ex: Executor, timeout: float | None, run, cfg: IngestConfig,
            progress: bool) -> dict:
    """The import itself, with the run folder open and the executor started."""

    by_format: dict[str, dict] = {}
    failed, skipped, bad_records = [], [], []
    outcome_reasons: dict[str, Counter] = {"skipped": Counter(), "failed": Counter()}
    totals = {"records": 0, "characters": 0, "bytes": 0, "pages": 0, "ocr_pages": 0, "bad_records": 0}
    recovered: dict[str, Counter] = {}  # format -> fallback -> files read by a reader's fallback (meta.recovered)
    recovered_examples: list[dict] = []
    bar = tqdm(total=len(tasks), unit="file", desc="ingest", disable=not progress, dynamic_ncols=True)
    resumed = [0]
    with JsonlWriter(run.path(DOCUMENTS)) as writer, JsonlWriter(run.path(REJECTS)) as rejects:
        for o in _resumable(tasks, opts, ex, run.path(RESUME_DIR), resumed, timeout):
            bar.update(1)
            stats = by_format.setdefault(o.format or "unknown", _new_format_stats())
            stats["files"] += 1
            stats[o.status] += 1
            stats["bytes"] += o.bytes
            stats["seconds"] += o.seconds
            totals["bytes"] += o.bytes
            if o.status != "written":
                entry = {"path": o.rel, "source": o.source, "format": o.format, "status": o.status, "reason": o.reason}
                (failed if o.status == "failed" else skipped).append(entry)
                outcome_reasons[o.status][reason_key(o.reason.split(":", 1)[0])] += 1
                rejects.write(entry)
                run.log.info("%s %s: %s", o.status, o.rel, o.reason)
                continue
            chars = 0
            for rec in o.records:
                writer.write(rec)
                chars += len(rec["text"])
            how = (o.records[0].get("meta") or {}).get("recovered") if o.records else None
            if how:
                for fb in how.get("fallbacks") or ["noted"]:
                    recovered.setdefault(o.format, Counter())[fb] += 1
                if len(recovered_examples) < REPORT_LIST_MAX:
                    recovered_examples.append({"path": o.rel, "format": o.format, **how})
            for key, value in (("records", len(o.records)), ("chars", chars), ("pages", o.pages),
                               ("ocr_pages", o.ocr_pages)):
                stats[key] += value
                totals["characters" if key == "chars" else key] += value
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
    for stats in by_format.values():
        stats["seconds"] = round(stats["seconds"], 3)
    written = sum(st["written"] for st in by_format.values())
    report = {
        # every input file is written, skipped (never a document) or failed (with the error)
        "counts": counts(len(tasks), written, outcome_reasons["skipped"], outcome_reasons["failed"], unit="files"),
        "headline": ["records", "characters", "bad_records", "ocr_pages"],
        "inputs": cfg.inputs,
        "output": DOCUMENTS,
        "files_resumed": resumed[0],
        **totals,
        "by_format": dict(sorted(by_format.items())),
        "failed": failed,
        "skipped": skipped,
        "bad_record_examples": bad_records,
        "recovered": {fmt: dict(c) for fmt, c in sorted(recovered.items())},
        "recovered_examples": recovered_examples,
        "executor": ex.describe(),
    }
    n_rec = sum(sum(c.values()) for c in recovered.values())
    if n_rec:
        report["warnings"] = [f"{n_rec} file(s) were not to the letter of their format and were read by a fallback ("
                              + "; ".join(f"{fmt}: " + ", ".join(f"{k} {v}" for k, v in c.items())
                                          for fmt, c in sorted(recovered.items()))
                              + "): see recovered_examples in report.json and each record's meta.recovered"]
    return run.finish(report)
