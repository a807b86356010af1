"""The pretraining loop: exact resume, spike rollback, accumulation, schedules, config errors, outputs, CLI."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from danlu.config import ConfigError, validate
from danlu.train.batches import PackedBatches, SourceSpec
from danlu.train.config import PretrainConfig, SpikeConfig
from danlu.train.loop import LoopConfig, train
from danlu.train.objectives import causal_lm
from danlu.train.pretrain import pretrain
from danlu.train.schedule import lr_multiplier
from tokstore_helpers import make_store, make_tokenizer
from train_fixtures import one_thread, make_texts, tiny_llama


_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("pt-data")
    tok = make_tokenizer(tmp / "tok", vocab_size=320)
    return {"tok": tok, "ops": make_store(tmp, tok, "ops", texts=make_texts(150, 1)),
            "gen": make_store(tmp, tok, "gen", texts=make_texts(300, 2))}


def config(stores: dict, **sections) -> dict:
    cfg = {
        "model": {"preset": "tiny", "tokenizer": str(stores["tok"])},
        "data": {"sources": [{"name": "ops", "store": str(stores["ops"]), "weight": 0.15, "domain": True},
                             {"name": "gen", "store": str(stores["gen"]), "weight": 0.85}],
                 "seq_len": 64, "doc_mask": True, "heldout_rows": 2},
        "train": {"max_steps": 8, "batch_size": 4, "micro_batch_size": 2, "precision": "fp32"},
        "optim": {"lr": 3e-3},
        "schedule": {"warmup_steps": 2},
        "log": {"every": 1, "progress": False, "tensorboard": True},
        "eval": {"every": 4},
        "checkpoint": {"every": 3, "keep_last": 2},
    }
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    return cfg


def step_losses(out: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "event" not in r}


def stream(data: dict, batch_size: int, **kw) -> PackedBatches:
    sources = [SourceSpec(name="ops", store=str(data["ops"]), weight=0.3, domain=True),
               SourceSpec(name="gen", store=str(data["gen"]), weight=0.7)]
    return PackedBatches(sources, seq_len=64, batch_size=batch_size, doc_mask=True, seed=0, **kw)


def test_resume_after_a_kill_matches_the_uninterrupted_run(data, tmp_path, monkeypatch):
    full = pretrain(validate(config(data), PretrainConfig), tmp_path / "full")
    assert full["steps"] == 8 and set(full["heldout"]) == {"eval/ops/loss", "eval/ops/ppl", "eval/gen/loss",
                                                           "eval/gen/ppl"}
    cfg = validate(config(data), PretrainConfig)
    calls = {"n": 0}
    real_next = PackedBatches.__next__

    def dying_next(self):
        calls["n"] += 1
        if calls["n"] == 1 + 2 * 7 + 1:  # the estimate's probe, 7 steps of 2 micro-batches, then die in step 8
            raise KeyboardInterrupt("killed")
        return real_next(self)

    monkeypatch.setattr(PackedBatches, "__next__", dying_next)
    with pytest.raises(KeyboardInterrupt):
        pretrain(cfg, tmp_path / "cut")
    monkeypatch.setattr(PackedBatches, "__next__", real_next)
    ckpts = sorted(p.name for p in (tmp_path / "cut" / "checkpoints").iterdir())
    assert ckpts == ["step-00000003", "step-00000006"]  # keep_last=2; nothing half-written left behind
    assert not (tmp_path / "cut" / "report.json").exists()
    with pytest.raises(ValueError, match="--resume"):
        pretrain(cfg, tmp_path / "cut")
    stale = tmp_path / "cut" / "checkpoints" / ".step-00000009.k1ll.tmp"  # what a SIGKILL mid-write leaves
    (stale / "model.safetensors").parent.mkdir(parents=True)
    resumed = pretrain(cfg, tmp_path / "cut", resume=True)
    assert resumed["resumed_from"].endswith("step-00000006")
    assert not stale.exists()
    a, b = step_losses(tmp_path / "full"), step_losses(tmp_path / "cut")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-6), step
    assert resumed["heldout"] == pytest.approx(full["heldout"], abs=1e-6)
    assert resumed["stream"]["rows"] == full["stream"]["rows"]


def test_output_folder_is_a_plain_hf_model_with_tokenizer_and_lineage(data, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    report = pretrain(validate(config(data, train={"max_steps": 2}), PretrainConfig), tmp_path / "o")
    folder = Path(report["model"])
    model = AutoModelForCausalLM.from_pretrained(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    ids = torch.tensor([tok.encode("apt install kernel")])
    ckpt = AutoModelForCausalLM.from_pretrained(tmp_path / "o" / "checkpoints" / "step-00000002")
    assert torch.equal(model(ids).logits, ckpt(ids).logits)  # the final model is the last checkpoint's
    last = tmp_path / "o" / "checkpoints" / "step-00000002" / "model.safetensors"
    assert (folder / "model.safetensors").stat().st_ino == last.stat().st_ino  # linked, not written twice
    lineage = json.loads((folder / "lineage.json").read_text())
    assert lineage["base_model"]["preset"] == "tiny" and lineage["steps"] == 2
    assert [d["name"] for d in lineage["data"]] == ["ops", "gen"] and lineage["data"][0]["store_json_sha256"]
    assert (tmp_path / "o" / "tb").is_dir() and report["mix"]["rows"][0]["name"] == "ops"
    assert report["estimate"]["parameters"] == sum(p.numel() for p in model.parameters())


def test_gradient_accumulation_equals_one_big_batch(data):
    """The step loss is normalised by the target tokens of the whole step: 4 micro-batches of 2 rows train
    exactly like 1 batch of 8 rows."""
    runs = []
    for micro, accum in ((8, 1), (2, 4)):
        model = tiny_llama()
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
        runs.append(train(model, opt, sched, stream(data, micro), causal_lm(True),
                          LoopConfig(max_steps=4, grad_accum=accum, progress=False))["losses"])
    for step in runs[0]:
        assert runs[1][step] == pytest.approx(runs[0][step], abs=1e-5)


class CorruptAt:
    """A stream that returns random tokens at some calls (corrupted batches) and records what it returned."""

    def __init__(self, inner, at: int | tuple[int, ...]):
        self.inner, self.calls, self.returned = inner, 0, []
        self.at = {at} if isinstance(at, int) else set(at)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        batch = next(self.inner)
        if self.calls in self.at:
            g = torch.Generator().manual_seed(0)
            noise = torch.randint(2, 320, batch["input_ids"].shape, generator=g)
            batch = {**batch, "input_ids": noise, "labels": noise.clone()}
        self.calls += 1
        self.returned.append({k: v.clone() for k, v in batch.items()})
        return batch

    def state_dict(self) -> dict:
        return self.inner.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.inner.load_state_dict(state)


def test_heldout_loss_does_not_depend_on_the_micro_batch_size(data, tmp_path):
    reports = [pretrain(validate(config(data, train={"max_steps": 2, "micro_batch_size": micro},
                                        eval={"every": 0}, checkpoint={"every": 0}), PretrainConfig),
                        tmp_path / f"micro{micro}") for micro in (2, 4)]
    a, b = (r["heldout"] for r in reports)
    assert set(a) == set(b) and all(a[k] == pytest.approx(b[k], rel=1e-4) for k in a)


def test_a_restart_without_checkpoints_does_not_repeat_metric_lines(data, tmp_path):
    import shutil

    cfg = validate(config(data, train={"max_steps": 3}, checkpoint={"every": 0}), PretrainConfig)
    pretrain(cfg, tmp_path / "out")
    shutil.rmtree(tmp_path / "out" / "checkpoints")  # as if killed before its first checkpoint
    pretrain(cfg, tmp_path / "out")
    rows = [json.loads(x) for x in (tmp_path / "out" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3]


def test_activation_checkpointing_changes_memory_not_the_losses(data, tmp_path, monkeypatch):
    from transformers import LlamaForCausalLM

    sections = dict(train={"max_steps": 4}, eval={"every": 0}, checkpoint={"every": 0})
    plain = pretrain(validate(config(data, **sections), PretrainConfig), tmp_path / "plain")
    enabled = []
    real_enable = LlamaForCausalLM.activation_checkpointing_enable
    monkeypatch.setattr(LlamaForCausalLM, "activation_checkpointing_enable",
                        lambda self, **kw: enabled.append(self) or real_enable(self, **kw))
    sections["train"]["activation_checkpointing"] = True
    ckpt = pretrain(validate(config(data, **sections), PretrainConfig), tmp_path / "ckpt")
    assert len(enabled) == 1 and enabled[0].is_activation_checkpointing
    assert ckpt["estimate"]["memory_bytes"]["activations"] < plain["estimate"]["memory_bytes"]["activations"]
    a, b = step_losses(tmp_path / "plain"), step_losses(tmp_path / "ckpt")
    assert list(a) == [1, 2, 3, 4] and all(a[k] == pytest.approx(b[k], abs=1e-5) for k in a)


def test_loss_spike_rolls_back_to_last_good_checkpoint_and_skips_the_batches(data, tmp_path):
    def fresh():
        model = tiny_llama()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
        return model, opt, torch.optim.lr_scheduler.LambdaLR(opt, lr_multiplier("cosine", 24, 2))

    spikes = SpikeConfig(window=10, threshold=4.0, min_history=8)
    cfg = LoopConfig(max_steps=24, save_every=5, keep_last=3, spikes=spikes, progress=False, log_every=1)
    corrupt = CorruptAt(stream(data, 4), at=17)  # the batch of step 18
    events: list[dict] = []
    model, opt, sched = fresh()
    result = train(model, opt, sched, corrupt, causal_lm(True), cfg, checkpoint_dir=tmp_path / "ck",
                   sink=events.append)
    spike = [e for e in events if e.get("event") == "spike"]
    assert len(spike) == 1 and result["rollbacks"] == 1
    # step 18's loss exposed the spike; the checkpoint at 15 is the newest verified one (16 used its weights)
    assert spike[0]["step"] == 18 and spike[0]["rolled_back_to"] == 15
    assert spike[0]["skipped_steps"] == [16, 18] and spike[0]["skipped_micro_batches"] == 3
    assert spike[0]["loss"] > 1.5 * result["losses"][17]
    # the run equals an uninterrupted one that never saw the skipped batches (calls 15, 16, 17)
    kept = [b for i, b in enumerate(corrupt.returned) if i not in (15, 16, 17)]
    model, opt, sched = fresh()
    ref = train(model, opt, sched, iter(kept), causal_lm(True),
                LoopConfig(max_steps=24, spikes=spikes, progress=False))
    assert len(kept) == 24
    for step in range(1, 25):
        assert result["losses"][step] == pytest.approx(ref["losses"][step], abs=1e-6), step


def test_a_second_spike_right_after_a_rollback_keeps_the_verified_checkpoint(data, tmp_path):
    model = tiny_llama()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_multiplier("cosine", 24, 2))
    cfg = LoopConfig(max_steps=24, save_every=5, keep_last=3, progress=False, log_every=1,
                     spikes=SpikeConfig(window=10, threshold=4.0, min_history=8))
    events: list[dict] = []
    # call 17 is step 18's batch; after the rollback to 15, call 18 is the (again corrupt) batch of step 16
    train(model, opt, sched, CorruptAt(stream(data, 4), at=(17, 18)), causal_lm(True), cfg,
          checkpoint_dir=tmp_path / "ck", sink=events.append)
    spikes = [e for e in events if e.get("event") == "spike"]
    assert [(e["step"], e["rolled_back_to"]) for e in spikes] == [(18, 15), (16, 15)]


def test_schedules():
    cos = lr_multiplier("cosine", total_steps=101, warmup_steps=10, min_ratio=0.1)  # steps 0..100 run
    assert cos(0) < cos(5) < cos(9) <= 1.0 and cos(10) == pytest.approx(1.0)
    assert cos(55) == pytest.approx(0.55) and cos(100) == pytest.approx(0.1)  # the last step ends at min
    wsd = lr_multiplier("wsd", total_steps=100, warmup_steps=10, min_ratio=0.0, decay_fraction=0.2)
    assert wsd(10) == wsd(79) == 1.0 and wsd(89) == pytest.approx(0.5) and wsd(99) == pytest.approx(0.0)
    short = lr_multiplier("wsd", total_steps=10, warmup_steps=0, min_ratio=0.1, decay_fraction=0.1)
    assert short(8) == 1.0 and short(9) == pytest.approx(0.1)  # even a one-step decay reaches min


@pytest.mark.parametrize("change,needle", [
    ({"train": {"max_step": 3}}, "train.max_step"),
    ({"train": {"max_steps": 3, "tokens": 100}}, "train.max_steps and train.tokens"),
    ({"data": {"seq_len": "long"}}, "data.seq_len"),
    ({"optim": {"lr": -1}}, "optim.lr"),
    ({"schedule": {"kind": "linear"}}, "schedule.kind"),
])
def test_config_errors_name_the_key(data, change, needle):
    cfg = config(data)
    for section, values in change.items():
        cfg[section] = {**cfg[section], **values}
        if "max_step" in values:
            cfg[section].pop("max_steps")
    with pytest.raises(ConfigError) as e:
        validate(cfg, PretrainConfig, "pt.yaml")
    assert needle in str(e.value) and "pt.yaml" in str(e.value)


def test_batch_size_must_split_over_micro_batches(data, tmp_path):
    with pytest.raises(ConfigError, match="train.batch_size"):
        pretrain(validate(config(data, train={"batch_size": 5}), PretrainConfig), tmp_path / "x")


def test_cli_pt_with_set_overrides(data, tmp_path):
    from typer.testing import CliRunner

    from danlu.cli import app

    path = tmp_path / "pt.yaml"
    path.write_text(yaml.safe_dump(config(data)))
    res = CliRunner().invoke(app, ["train", "pt", str(path), "-o", str(tmp_path / "run"),
                                   "--set", "train.max_steps=2", "--set", "log.tensorboard=false"])
    assert res.exit_code == 0, res.output
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert report["steps"] == 2 and report["status"] == "complete" and not (tmp_path / "run" / "tb").exists()
    assert "max_steps: 2" in (tmp_path / "run" / "config.yaml").read_text()


@pytest.mark.slow
def test_pretrain_on_the_real_debian_corpus(debian_corpus, tmp_path):
    """End to end on real text: Debian FAQ (domain) + Chinese fortunes (general) -> tokenizer -> stores ->
    a tiny Llama whose held-out loss falls well below the uniform-guess level ln(vocab)."""
    import math
    import re

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    faq = "\n".join(p.read_text(encoding="utf-8", errors="replace")
                    for p in sorted((debian_corpus / "ops" / "debian-faq").glob("*.txt")))
    ops = [p.strip() for p in re.split(r"\n\s*\n", faq) if len(p.strip()) > 40]
    fortunes = (debian_corpus / "general" / "fortunes-zh" / "tang300.u8").read_text(encoding="utf-8")
    general = [re.sub(r"\x1b\[[0-9;]*m", "", t).strip() for t in fortunes.split("\n%\n") if len(t.strip()) > 10]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(ops + general, trainers.BpeTrainer(
        vocab_size=1024, special_tokens=["<|bos|>", "<|eos|>"], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>").save_pretrained(
        tmp_path / "tok")
    stores = {"tok": tmp_path / "tok", "ops": make_store(tmp_path, tmp_path / "tok", "ops", texts=ops),
              "gen": make_store(tmp_path, tmp_path / "tok", "gen", texts=general)}
    cfg = config(stores, train={"max_steps": 80, "batch_size": 8, "micro_batch_size": 8}, optim={"lr": 5e-3},
                 data={"seq_len": 128, "heldout_rows": 16}, schedule={"warmup_steps": 5}, eval={"every": 0},
                 checkpoint={"every": 0})
    report = pretrain(validate(cfg, PretrainConfig), tmp_path / "out")
    assert report["heldout"]["eval/gen/loss"] < math.log(1024) - 1.0
    assert report["heldout"]["eval/ops/loss"] < math.log(1024) - 0.5  # 15% of the tokens
    assert report["final_loss"] < step_losses(tmp_path / "out")[1] - 1.0
