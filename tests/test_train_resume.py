"""Resuming a training run: a changed setting is applied deliberately and recorded, or refused; the checkpoint
state loads as data only (weights_only); `precision: auto` is decided once per run."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

from danlu.config import ConfigError, validate
from danlu.train.config import PretrainConfig
from danlu.train.pretrain import pretrain
from test_train import config, data, step_losses  # noqa: F401  (the module-scoped fixture)
from train_fixtures import interrupted_after, one_thread

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


def _cfg(stores, **sections) -> PretrainConfig:
    base = {"train": {"max_steps": 6}, "checkpoint": {"every": 3, "keep_last": 3}, "eval": {"every": 0},
            "log": {"every": 1, "progress": False, "tensorboard": False}, "schedule": {"warmup_steps": 0,
                                                                                       "kind": "constant"}}
    for k, v in sections.items():
        base[k] = {**base.get(k, {}), **v}
    return validate(config(stores, **base), PretrainConfig)


def _metrics(out) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def test_a_changed_learning_rate_is_applied_logged_and_recorded(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    interrupted_after(monkeypatch, 3, lambda: pretrain(_cfg(data, optim={"lr": 1e-3}), out))
    report = pretrain(_cfg(data, optim={"lr": 1e-2}), out, resume=True)
    lrs = {r["step"]: r["lr"] for r in _metrics(out) if "lr" in r}
    assert lrs[3] == pytest.approx(1e-3) and lrs[4] == pytest.approx(1e-2)  # the new lr really ran
    change = {"key": "optim.lr", "from": 1e-3, "to": 1e-2, "from_step": 3}
    assert report["resumed_with_changes"] == [change]
    lineage = json.loads((out / "model" / "lineage.json").read_text())
    assert lineage["resumed_with_changes"] == [change] and lineage["config"]["optim"]["lr"] == 1e-2
    assert "optim.lr changed from 0.001 to 0.01: applied from step 3" in (out / "run.log").read_text()
    # the same change made from the start trains differently: the resumed run is not the old-lr run relabelled
    plain = pretrain(_cfg(data, optim={"lr": 1e-3}), tmp_path / "plain")
    assert plain["final_loss"] != report["final_loss"]


def test_a_setting_that_cannot_change_mid_run_is_refused(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    interrupted_after(monkeypatch, 3, lambda: pretrain(_cfg(data), out))
    with pytest.raises(ConfigError, match=r"train\.batch_size: 4 -> 8"):
        pretrain(_cfg(data, train={"batch_size": 8}), out, resume=True)
    with pytest.raises(ConfigError, match=r"data\.seq_len: 64 -> 32"):
        pretrain(_cfg(data, data={"seq_len": 32}), out, resume=True)
    assert pretrain(_cfg(data), out, resume=True)["steps"] == 6  # unchanged: resumes


class _Exploit:
    """A pickle that runs code when loaded (what weights_only loading must refuse)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_a_crafted_checkpoint_state_is_refused_not_run(data, tmp_path, monkeypatch):
    out = tmp_path / "run"
    interrupted_after(monkeypatch, 3, lambda: pretrain(_cfg(data), out))
    state_file = out / "checkpoints" / "step-00000003" / "trainer_state.pt"
    marker = tmp_path / "pwned"
    with open(state_file, "wb") as f:
        pickle.dump({"step": 3, "payload": _Exploit(marker)}, f)
    with pytest.raises(ValueError, match="refused to load this checkpoint state"):
        pretrain(_cfg(data), out, resume=True)
    assert not marker.exists()


def test_precision_auto_is_decided_once_and_kept_on_resume(data, tmp_path, monkeypatch):
    from danlu.train import estimate

    verdicts = iter(["bf16", "fp32", "fp32", "fp32"])
    real = estimate.resolve_precision

    def flip(precision, device):
        got, peaks = real("fp32", device)
        if precision == "auto":
            return next(verdicts), {**peaks, "bf16": peaks["fp32"]}
        return real(precision, device)

    monkeypatch.setattr(estimate, "resolve_precision", flip)
    out = tmp_path / "run"
    interrupted_after(monkeypatch, 3, lambda: pretrain(_cfg(data, train={"precision": "auto"}), out))
    report = pretrain(_cfg(data, train={"precision": "auto"}), out, resume=True)
    assert report["precision"] == "bf16"  # the first verdict, although a new measurement says fp32
    assert torch.load(out / "checkpoints" / "step-00000006" / "trainer_state.pt",
                      weights_only=True)["meta"].count('"precision": "bf16"') == 1


def test_a_full_disk_while_checkpointing_names_the_path_and_keeps_earlier_checkpoints(data, tmp_path, monkeypatch):
    import errno

    from danlu.train import checkpoint

    real_save = torch.save

    def full_disk(obj, f, *a, **kw):
        if "step-00000006" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *a, **kw)

    monkeypatch.setattr(checkpoint.torch, "save", full_disk)
    out = tmp_path / "run"
    with pytest.raises(OSError, match=r"cannot write checkpoint .*step-00000006: No space left on device\. "
                                      r"Earlier checkpoints are intact \(step-00000003\)"):
        pretrain(_cfg(data), out)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000003"]  # no half-written step 6
    monkeypatch.setattr(checkpoint.torch, "save", real_save)
    assert pretrain(_cfg(data), out, resume=True)["steps"] == 6
