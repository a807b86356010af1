"""The load-test script against a real `danlu serve` process: 64 concurrent streaming clients, every request
answered, no 5xx, TTFT percentiles printed."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from serve_fixtures import cached_serve_models

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_64_concurrent_clients_all_answered_without_5xx(tmp_path_factory):
    model = cached_serve_models(tmp_path_factory)["memo"]
    proc = subprocess.run([sys.executable, str(REPO / "benchmarks" / "load_serve.py"), "--model", str(model),
                           "--clients", "64", "--requests", "128", "--max-tokens", "8", "--threads", "1",
                           "--time-limit", "240"], capture_output=True, text=True, timeout=400)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "128 answered" in proc.stdout and "5xx: 0" in proc.stdout and "TTFT p50" in proc.stdout
