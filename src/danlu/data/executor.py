"""Where a data stage's work runs: in a local process pool (danlu.workers) or on a Ray cluster (Ray tasks).

A stage cuts its input into tasks in input order (a batch of records, a file, a shard of text) and names a
module-level function that turns one task into its result. `Executor.map` yields (task, result) in input
order whoever ran them, so what a stage writes (records, ids, rejects, reports, token shards) does not depend
on the executor or on the number of workers: tests/test_scale.py checks local 1 worker == local 2 workers ==
Ray 2 workers byte for byte.

- local (default): danlu.workers.ordered_map. One worker runs everything in this process; more run in
  forkserver processes with crash isolation and per-task time limits.
- ray (`pip install 'danlu[ray]'`; `--executor ray [--address ADDR]`): each task is one Ray remote task
  (`ray.remote` with `max_retries=0`) running the same function; a window of tasks is in flight and results
  are read back in submission order. Plain tasks rather than Ray Data datasets: a dataset costs time to
  plan and start (measured on 2 cores, a window of 16 trivial tasks: 2.3 s for the first dataset, 0.35 s
  once warm, against 0.02 s as plain tasks), and Ray Data's retries on a dead worker re-ran a task that kills
  its worker without end (the stage hung). Without an address a Ray instance
  is started on this machine for the stage and stopped after it; with one (`auto`, `HOST:PORT`, `ray://...`)
  the stage joins that cluster. Tasks run where Ray places them, so inputs and the output folder must be on a
  filesystem every node sees, at the same path, and danlu must be installed on every node. A task whose
  worker dies (a native crash, Ray's out-of-memory killer, a lost node) fails alone (ItemFailed), as locally,
  and is not retried; an exception raised by the stage's own function propagates, as locally. Ray has no
  per-task time limit that counts from the task's start, so `timeout` (ingest's file_timeout) is enforced
  locally only. The driver (this process) still reads the JSONL and writes the outputs; see docs/scale.md
  for what that bounds.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Literal, TypeVar

from pydantic import Field

from danlu.config import ConfigError, StrictModel
from danlu.workers import ItemFailed, ordered_map, windowed

T = TypeVar("T")
R = TypeVar("R")

RAY_MISSING = "the Ray executor needs Ray: pip install 'danlu[ray]' (ray[data])"
# Auto-sizing (workers: 0): a pool costs ~1 s to start and each worker imports the stage's modules, so an input
# smaller than this per extra worker runs in this process (the result is the same either way).
AUTO_BYTES_PER_WORKER = 4 << 20


class ExecutorFields(StrictModel):
    """Where a stage runs (not what it computes: results are the same on every executor)."""

    executor: Literal["local", "ray"] = "local"
    # local: worker processes (0: one per CPU core for inputs of a few MB or more, else this process alone);
    # ray: CPUs of the Ray instance started for the stage (0: all), ignored when joining a cluster (--address)
    workers: int = Field(0, ge=0)
    address: str | None = None  # ray only: the cluster to join ("auto", "HOST:PORT", "ray://HOST:10001")


def auto_workers(workers: int, input_bytes: int | None = None) -> int:
    """The local worker count for `workers` (0: one per core, but no more than the input keeps busy)."""
    if workers:
        return workers
    cores = os.cpu_count() or 1
    if input_bytes is None:
        return cores
    return max(1, min(cores, 1 + input_bytes // AUTO_BYTES_PER_WORKER))


def input_bytes(files: Iterable) -> int:
    return sum(os.path.getsize(f) for f in files)


@dataclass
class Executor:
    """Runs a stage's tasks in input order; use as a context manager (a Ray instance it started is stopped)."""

    kind: str = "local"
    workers: int = 1  # local: resolved worker count; ray: CPUs of a local instance (0: all)
    address: str | None = None
    _ray_started: bool = False

    @classmethod
    def from_options(cls, opts: ExecutorFields, input_size: int | None = None) -> "Executor":
        if opts.executor == "ray":
            return cls("ray", opts.workers, opts.address)
        if opts.address:
            raise ConfigError(f"address {opts.address!r} is for the Ray executor: add --executor ray "
                              "(executor: ray)")
        return cls("local", auto_workers(opts.workers, input_size))

    @property
    def parallelism(self) -> int:
        """How many tasks run at once: the local workers, or the Ray cluster's CPUs (inside the `with`)."""
        return self.workers if self.kind == "local" else _ray_cpus()

    def describe(self) -> dict:
        """What the report records about where the stage ran."""
        if self.kind == "local":
            return {"executor": "local", "workers": self.workers}
        out = {"executor": "ray", "address": self.address or ("a Ray instance on this machine" if self._ray_started
                                                              else "the caller's Ray session")}
        if _ray_ready():
            import ray

            out["cpus"] = int(ray.cluster_resources().get("CPU", 0))
        return out

    def __enter__(self) -> "Executor":
        if self.kind == "ray":
            self._ray_started = _ray_init(self.address, self.workers)
            import ray

        return self

    def __exit__(self, *exc) -> None:
        if self.kind == "ray" and self._ray_started:
            import ray

            ray.shutdown()
            self._ray_started = False

    def map(self, fn: Callable[[T], R], items: Iterable[T], *, window: int | None = None,
            timeout: float | None = None, here: bool = False) -> Iterator[tuple[T, R | ItemFailed]]:
        """(item, fn(item) or ItemFailed) in input order; `window` bounds the tasks in flight (default 4 per
        worker locally, 2 per CPU on Ray). `here`: run locally in this process whatever the worker count (work
        whose pickling would cost more than it saves on one machine); Ray still distributes it."""
        if self.kind == "local":
            yield from ordered_map(fn, items, 1 if here else self.workers, timeout=timeout, window=window)
            return
        if not self._ray_started and not _ray_ready():
            raise RuntimeError("the Ray executor is used outside its `with` block")
        yield from _ray_map(fn, items, window or 2 * _ray_cpus())

    def band_join(self, stage: str) -> Callable[[Iterable], Iterator]:
        """dedup's `pairs` argument: group_pairs over the band partitions through this executor (in this process
        locally, where pickling the partitions would cost more than grouping them; Ray spreads them). A partition
        that fails stops `stage` with its size."""
        from danlu.data.dedup import group_pairs

        def pairs(tasks):
            for task, result in self.map(group_pairs, tasks, here=True):
                if isinstance(result, ItemFailed):
                    raise RuntimeError(f"{stage}: a dedup partition of {len(task[0])} documents failed: "
                                       f"{result.reason}")
                yield result

        return pairs


# --- Ray --------------------------------------------------------------------------------------------------


def _ray_ready() -> bool:
    try:
        import ray
    except ImportError:
        return False
    return ray.is_initialized()


def _ray_init(address: str | None, cpus: int) -> bool:
    """Connect to (or start) Ray; True when this call started or connected it (and should shut it down)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage report leaves the machine
    try:
        import ray
    except ImportError:
        raise RuntimeError(RAY_MISSING) from None
    if ray.is_initialized():  # the caller (a notebook, a test) has its own session: use it, leave it running
        return False
    kwargs: dict = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING,
                    "configure_logging": True}
    if address:
        ray.init(address=address, **kwargs)
    else:  # a private instance: bound to loopback, nothing listens on the machine's network addresses
        ray.init(num_cpus=cpus or None, _node_ip_address="127.0.0.1", **kwargs)
    return True


def _ray_cpus() -> int:
    import ray

    return max(1, int(ray.cluster_resources().get("CPU", 1)))


def _in_folder(cwd: str, fn: Callable[[T], R], item: T) -> R:
    """`fn(item)` in the driver's folder where this node has it (relative paths, and ids derived from them,
    mean what they mean to the driver); on a node without it, in the worker's own folder."""
    if os.getcwd() != cwd and os.path.isdir(cwd):
        os.chdir(cwd)
    return fn(item)


_REMOTE: dict = {}  # the remote function, made once per Ray session


def _submit(fn: Callable, item, cwd: str):
    """One task on Ray: no retries (a task that kills its worker would only kill the next one), one CPU."""
    import ray

    key = ray.get_runtime_context().get_job_id()
    if key not in _REMOTE:
        _REMOTE.clear()
        _REMOTE[key] = ray.remote(num_cpus=1, max_retries=0, retry_exceptions=False)(_in_folder)
    return _REMOTE[key].remote(cwd, fn, item)


def _ray_map(fn: Callable, items: Iterable, window: int) -> Iterator[tuple]:
    """Like danlu.workers.ordered_map, on Ray: at most `window` tasks in flight, results in input order."""
    import ray

    cwd = os.getcwd()
    yield from windowed(items, lambda item: _submit(fn, item, cwd), _ray_result,
                        lambda ref: ray.cancel(ref, force=True), window)


def _ray_result(ref):
    """The task's result; ItemFailed when its worker or node died (a Python exception from the stage's own
    function is a bug and propagates, as it does locally, as the original exception type)."""
    import ray
    import ray.exceptions as rex

    try:
        return ray.get(ref)
    except (rex.WorkerCrashedError, rex.OutOfMemoryError, rex.NodeDiedError, rex.ObjectLostError,
            rex.LocalRayletDiedError) as e:
        return ItemFailed(f"the Ray worker running it failed: {type(e).__name__}: {str(e)[:300]}")
