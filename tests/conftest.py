"""Shared fixtures. Tests never touch the network: transformers/hub are forced offline here."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
CORPUS_SCRIPT = SHARED / "scripts" / "debian-zh-corpus.sh"


@pytest.fixture(scope="session")
def debian_corpus(tmp_path_factory) -> Path:
    """The real Debian Chinese ops corpus (built once per session); skips where ../shared or apt is absent."""
    if not CORPUS_SCRIPT.exists():
        pytest.skip(f"{CORPUS_SCRIPT} not found: the real-corpus tests need ../shared beside the checkout")
    cached = os.environ.get("DANLU_DEBIAN_CORPUS")
    if cached and Path(cached, "MANIFEST.tsv").exists():
        return Path(cached)
    if shutil.which("apt-get") is None:
        pytest.skip("the Debian corpus script needs apt-get (a Debian machine)")
    out = tmp_path_factory.mktemp("debian-zh")
    proc = subprocess.run(["bash", str(CORPUS_SCRIPT), str(out)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"could not build the Debian corpus (needs root and the package registry): {proc.stderr[-500:]}")
    return out
