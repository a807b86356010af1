"""The one worker pool every stage uses: results in input order, each item isolated, an optional time limit.

    for item, result in ordered_map(read_one, files, workers=2, timeout=600):
        if isinstance(result, ItemFailed): ...   # that item's worker crashed or ran past the limit; the rest go on

Built on pebble's ProcessPool, which does what concurrent.futures cannot: a task that runs past its timeout is
stopped (its worker process is replaced), and a worker that dies (a native library fault on a hostile PDF) costs
only the task it was running. The timeout counts from when the task starts running, not from when it was
queued. With one worker everything runs in this process (no isolation, no timeout, no pickling). A worker
runs each task in the caller's current folder, so relative paths (and ids derived from them) mean the same
as they would in the caller.

Start method: forkserver, for every stage. Workers fork from a clean server process rather than from a parent
that may already run threads (torch, tokenizers), and the server preloads danlu instead of the caller's
__main__. Each worker still imports the caller's script (as `__mp_main__`, to find its functions), so a script
that runs a stage with more than one worker needs the usual `if __name__ == "__main__":` guard, as for any
multiprocessing code; the `danlu` CLI and notebooks need nothing.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import deque
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, TypeVar

T = TypeVar("T")
R = TypeVar("R")

PRELOAD = ["danlu.workers"]  # imported once in the server; each stage's module is imported by its first task


@dataclass
class ItemFailed:
    """An item whose worker crashed or ran past the time limit."""

    reason: str
    timed_out: bool = False


def _context():
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(PRELOAD)  # replaces the default ['__main__']: the caller's script is not re-run
    return ctx


def ordered_map(fn: Callable[[T], R], items: Iterable[T], workers: int, timeout: float | None = None,
                window: int | None = None) -> Iterator[tuple[T, R | ItemFailed]]:
    """(item, fn(item) or ItemFailed) for every item, in input order. At most `window` items (default 4 per
    worker) are in flight, so results never pile up behind a slow item; `fn` must be a module-level function.
    An exception raised by `fn` itself propagates (stages catch their own errors inside `fn`)."""
    if workers <= 1:
        for item in items:
            yield item, fn(item)
        return
    import pebble

    window = window or 4 * workers
    cwd = os.getcwd()
    with pebble.ProcessPool(max_workers=workers, context=_context()) as pool:
        try:
            yield from windowed(items, lambda item: pool.schedule(_in_folder, args=(cwd, fn, item), timeout=timeout),
                                lambda future: _result(future, timeout), lambda future: future.cancel(), window)
        finally:
            pool.stop()
            pool.join()


def windowed(items: Iterable[T], submit: Callable, collect: Callable, cancel: Callable,
             window: int) -> Iterator[tuple[T, object]]:
    """(item, collect(submit(item))) in input order with at most `window` items submitted and not yet collected;
    if the consumer stops early (an error, a break), `cancel` gets every handle still pending. The ordering
    and back-pressure of every executor (this pool, Ray tasks: danlu.data.executor)."""
    pending: deque = deque()
    it = iter(items)
    try:
        while True:
            while len(pending) < window and (item := next(it, _END)) is not _END:
                pending.append((item, submit(item)))
            if not pending:
                return
            item, handle = pending.popleft()
            yield item, collect(handle)
    finally:
        for _, handle in pending:
            cancel(handle)


_END = object()


def _in_folder(cwd: str, fn: Callable[[T], R], item: T) -> R:
    """`fn(item)` in the caller's current folder (the forkserver's is where the first pool was started)."""
    if os.getcwd() != cwd:
        os.chdir(cwd)
    return fn(item)


def _result(future, timeout: float | None):
    import pebble

    try:
        return future.result()
    except FutureTimeout:
        return ItemFailed(f"took longer than {timeout:g}s; the worker was stopped", timed_out=True)
    except pebble.ProcessExpired as e:
        return ItemFailed(f"the worker process crashed (exit code {e.exitcode}): a native library fault, "
                          "e.g. on a corrupt file")
