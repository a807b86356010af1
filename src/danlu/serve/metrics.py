"""Latency and throughput figures per request and in aggregate, in the terms practitioners model serving with:
total ~ b + k*x, b the time to first token (TTFT, driven by the prompt), k the time per output token (TPOT),
x the tokens generated. The aggregate is a Prometheus registry (prometheus_client) served at `/metrics`, with
metric names close to vLLM's so existing dashboards need little change.
"""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TOKEN_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


@dataclass
class RequestMetrics:
    """Times (time.perf_counter) of one request's life and its token counts."""

    arrival: float = field(default_factory=time.perf_counter)
    scheduled: float | None = None  # prefill started
    first_token: float | None = None
    finished: float | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0  # over all n choices

    @property
    def queue_time(self) -> float | None:
        return None if self.scheduled is None else self.scheduled - self.arrival

    @property
    def ttft(self) -> float | None:
        return None if self.first_token is None else self.first_token - self.arrival

    @property
    def tpot(self) -> float | None:
        """Mean time per output token after the first."""
        if self.first_token is None or self.finished is None or self.completion_tokens < 2:
            return None
        return (self.finished - self.first_token) / (self.completion_tokens - 1)

    @property
    def e2e(self) -> float | None:
        return None if self.finished is None else self.finished - self.arrival

    def as_dict(self) -> dict:
        return {"queue_time_s": self.queue_time, "ttft_s": self.ttft, "tpot_s": self.tpot, "e2e_s": self.e2e,
                "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens}


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of the values, None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = min(len(ordered), max(1, math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


class EngineMetrics:
    """One registry per engine (two engines in one process never share counters)."""

    def __init__(self, model_name: str, keep: int = 10_000):
        self.registry = CollectorRegistry()
        labels, r = ["model_name"], self.registry
        self.requests = Counter("danlu_requests", "Finished requests by finish reason",
                                labels + ["finish_reason"], registry=r)
        self.prompt_tokens = Counter("danlu_prompt_tokens", "Prompt tokens processed", labels, registry=r)
        self.generation_tokens = Counter("danlu_generation_tokens", "Tokens generated", labels, registry=r)
        self.ttft = Histogram("danlu_time_to_first_token_seconds", "Arrival to first token", labels,
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("danlu_time_per_output_token_seconds", "Mean time per output token after the first",
                              labels, buckets=TOKEN_BUCKETS, registry=r)
        self.queue = Histogram("danlu_request_queue_time_seconds", "Arrival to prefill", labels,
                               buckets=LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("danlu_e2e_request_latency_seconds", "Arrival to last token", labels,
                             buckets=LATENCY_BUCKETS, registry=r)
        self.running = Gauge("danlu_num_requests_running", "Sequences in the running batch", labels, registry=r)
        self.waiting = Gauge("danlu_num_requests_waiting", "Requests waiting for a batch slot", labels, registry=r)
        self.name = model_name
        self.recent: deque[RequestMetrics] = deque(maxlen=keep)
        self._lock = threading.Lock()

    def record(self, m: RequestMetrics, finish_reason: str) -> None:
        name = self.name
        self.requests.labels(name, finish_reason).inc()
        self.prompt_tokens.labels(name).inc(m.prompt_tokens)
        self.generation_tokens.labels(name).inc(m.completion_tokens)
        for hist, value in ((self.ttft, m.ttft), (self.tpot, m.tpot), (self.queue, m.queue_time), (self.e2e, m.e2e)):
            if value is not None:
                hist.labels(name).observe(value)
        with self._lock:
            self.recent.append(m)

    def set_load(self, running: int, waiting: int) -> None:
        self.running.labels(self.name).set(running)
        self.waiting.labels(self.name).set(waiting)

    def summary(self) -> dict:
        """p50/p99 of TTFT, TPOT and queue time over the recent requests, and token totals."""
        with self._lock:
            recent = list(self.recent)
        out: dict = {"requests": len(recent),
                     "prompt_tokens": sum(m.prompt_tokens for m in recent),
                     "completion_tokens": sum(m.completion_tokens for m in recent)}
        for key, values in (("ttft_s", [m.ttft for m in recent]), ("tpot_s", [m.tpot for m in recent]),
                            ("queue_time_s", [m.queue_time for m in recent])):
            vals = [v for v in values if v is not None]
            out[key] = {"p50": percentile(vals, 50), "p99": percentile(vals, 99)}
        return out

    def prometheus_text(self) -> bytes:
        return generate_latest(self.registry)
