"""`danlu train pt` under torchrun: 2 CPU processes (gloo) train exactly like 1 process with the same global batch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from danlu.config import validate
from danlu.train.config import PretrainConfig
from danlu.train.pretrain import pretrain
from test_train import config, step_losses
from tokstore_helpers import make_store, make_tokenizer
from train_fixtures import make_texts, one_thread

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("dist")
    tok = make_tokenizer(tmp / "tok", vocab_size=320)
    data = {"tok": tok, "ops": make_store(tmp, tok, "ops", texts=make_texts(150, 1)),
            "gen": make_store(tmp, tok, "gen", texts=make_texts(300, 2))}
    cfg = config(data, train={"max_steps": 5}, eval={"every": 0}, checkpoint={"every": 0},
                 log={"every": 1, "progress": False, "tensorboard": False})
    path = tmp / "pt.yaml"
    path.write_text(yaml.safe_dump(cfg))
    single = tmp / "single"
    report = pretrain(validate(cfg, PretrainConfig), single)
    return {"tmp": tmp, "config": path, "single": single, "report": report}


def torchrun(config: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "danlu.cli", "train", "pt", str(config), "-o", str(out), *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)


def check_same_as_single(setup: dict, out: Path, proc: subprocess.CompletedProcess) -> None:
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((out / "report.json").read_text())
    assert report["world_size"] == 2 and report["grad_accum"] == 1  # batch 4 = 2 rows x 2 processes
    single, multi = step_losses(setup["single"]), step_losses(out)
    assert sorted(multi) == sorted(single) == [1, 2, 3, 4, 5]
    for step in single:
        assert multi[step] == pytest.approx(single[step], abs=1e-5), step
    assert report["heldout"] == pytest.approx(setup["report"]["heldout"], rel=1e-6, abs=1e-5)  # ppl = exp(loss)
    # rank 0 alone wrote the run folder: one line per step, one checkpoint, one final model
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 6  # 5 steps + the final eval
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000005"]


def test_two_processes_ddp_match_one_process(setup):
    out = setup["tmp"] / "ddp"
    check_same_as_single(setup, out, torchrun(setup["config"], out))


@pytest.mark.slow
def test_two_processes_fsdp_match_one_process(setup):
    out = setup["tmp"] / "fsdp"
    check_same_as_single(setup, out, torchrun(setup["config"], out, "--set", "train.distributed=fsdp"))
