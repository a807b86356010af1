"""`danlu train sft`: packing equivalence in both loss normalisations, learning a task, multi-stage lineage, LoRA
and freezing, resume, template drift, over-long samples and the loss-share warning."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from danlu.config import ConfigError, validate
from danlu.train.config import SFTConfig
from danlu.train.sft import sft
from sft_fixtures import facts, mixed_records, sft_config, sft_record, tiny_model, write_jsonl
from train_fixtures import interrupted_after, one_thread

_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("sft")
    return {"root": root, "model": tiny_model(root / "qwen"), "data": write_jsonl(root / "mixed.jsonl",
                                                                                   mixed_records())}


def _run(base, out: Path, **sections) -> dict:
    return sft(validate(sft_config(base["model"], base["data"], **sections), SFTConfig), out)


def _rendered(base, tmp_path):
    """The mixed records rendered (as `train sft` does) into a store, and the model."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from danlu.train.sft_data import SFTStore, prepare

    tok = AutoTokenizer.from_pretrained(base["model"])
    cfg = validate(sft_config(base["model"], base["data"]), SFTConfig)
    prepare(tmp_path, tok, base["model"], tok.chat_template, cfg.data)
    model = AutoModelForCausalLM.from_pretrained(base["model"], dtype=torch.float32)
    return SFTStore(tmp_path / "data" / "train"), model


@pytest.mark.parametrize("loss_norm", ["sample", "token"])
def test_packed_loss_equals_unpacked_and_each_sample_alone(base, tmp_path, loss_norm):
    from danlu.train.objectives import weighted_lm
    from danlu.train.sft_batches import SFTBatches

    store, model = _rendered(base, tmp_path)
    n = len(store)
    objective = weighted_lm()

    def total(packing: bool) -> float:
        stream = SFTBatches(store, np.arange(n), np.ones(n), seq_len=256, batch_size=3, packing=packing,
                            loss_norm=loss_norm, epochs=1, seed=0)
        loss = count = 0.0
        with torch.no_grad():
            for _ in range(stream.steps()):
                batch = next(stream)
                loss += float(objective.loss_sum(model, batch))
                count += objective.count(batch)
        assert count > 0
        return loss / count

    packed, unpacked = total(True), total(False)
    # reference: every sample alone through the plain model, weighted cross-entropy by hand
    per_sample = []
    with torch.no_grad():
        for i in range(n):
            ids = torch.as_tensor(store.doc(i).astype(np.int64))[None]
            w = torch.tensor(np.array(store.weights(i)))
            ce = F.cross_entropy(model(input_ids=ids).logits[0, :-1].float(), ids[0, 1:], reduction="none")
            per_sample.append(((ce * w[1:]).sum().item(), w[1:].sum().item()))
    if loss_norm == "sample":
        reference = sum(s / c for s, c in per_sample) / len(per_sample)
    else:
        reference = sum(s for s, _ in per_sample) / sum(c for _, c in per_sample)
    assert packed == pytest.approx(unpacked, rel=1e-5) and packed == pytest.approx(reference, rel=1e-5)
    rows_packed = SFTBatches(store, np.arange(n), np.ones(n), 256, 3, packing=True).rows
    assert len(rows_packed) < n  # it really packed several samples per row


def test_loss_norm_changes_the_loss_and_token_mode_warns_about_short_answers(base, tmp_path):
    token = _run(base, tmp_path / "token", data={"loss_norm": "token"}, train={"max_steps": 1})
    sample = _run(base, tmp_path / "sample", data={"loss_norm": "sample"}, train={"max_steps": 1})
    assert token["final_loss"] != sample["final_loss"]
    shares = token["task_shares"]
    assert shares["classify"]["weight_share"] < 0.5 * shares["classify"]["sample_share"]
    assert any("'classify'" in w and "short answers count for little" in w for w in token["warnings"])
    assert not sample["warnings"]
    assert all(s["weight_share"] == pytest.approx(s["sample_share"]) for s in sample["task_shares"].values())


def _answer(model_dir: Path, question: str) -> str:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from danlu.tokenizer.chat import render_prompt

    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.tensor([render_prompt(tok, [{"role": "user", "content": question}])])
    out = model.generate(ids, max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id or 0)  # stops at
    # the template's end-of-turn token: SFT saves it in generation_config
    return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()


@pytest.mark.slow
def test_a_tiny_model_learns_facts_seen_only_in_sft_with_new_template_tokens(tmp_path):
    """A base whose tokenizer has no chat template gets danlu's default (its role tokens are new special tokens,
    the embeddings are resized) and learns made-up facts to 100% on its train set; a second SFT stage starts
    from the first run and keeps the chain in lineage.json."""
    model = tiny_model(tmp_path / "base", family="qwen2.5", template=False, tie=False)
    pairs = facts(8)
    data = write_jsonl(tmp_path / "facts.jsonl", [sft_record(i, q, a) for i, (q, a) in enumerate(pairs)])
    cfg = sft_config(model, data, data={"seq_len": 48}, train={"epochs": 100, "batch_size": 2, "micro_batch_size": 2},
                     optim={"lr": 1e-2}, schedule={"warmup_steps": 10})
    report = sft(validate(cfg, SFTConfig), tmp_path / "stage1")
    final = Path(report["model"])
    tok_cfg = json.loads((final / "tokenizer_config.json").read_text())
    assert "<|assistant|>" in (final / "chat_template.jinja").read_text() or "<|assistant|>" in str(tok_cfg)
    assert [_answer(final, q) for q, _ in pairs] == [a for _, a in pairs]
    stage2 = sft(validate(sft_config(tmp_path / "stage1", data, train={"epochs": 1}), SFTConfig), tmp_path / "s2")
    lineage = json.loads((Path(stage2["model"]) / "lineage.json").read_text())
    assert lineage["stage"] == "train-sft" and lineage["base_model"]["lineage"]["stage"] == "train-sft"
    assert lineage["base_model"]["path"] == str(final.resolve())


def test_lora_trains_adapters_only_and_export_merges_with_parity(base, tmp_path):
    from safetensors.torch import load_file

    from danlu.model.export import ParityError, export

    report = _run(base, tmp_path / "lora", model={"method": "lora", "lora": {"r": 4, "alpha": 8}},
                  optim={"lr": 1e-2}, train={"max_steps": 3})
    adapter = Path(report["model"])
    assert (adapter / "adapter_config.json").exists() and report["trainable_parameters"] < 20_000
    assert json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        str(base["model"].resolve())
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    assert any("lora_B" in k and v.abs().sum() > 0 for k, v in weights.items())  # B starts at 0: it trained
    checked = export(adapter, tmp_path / "merged")
    assert checked["merged_adapter"] and checked["max_abs_logit_diff"] <= checked["tolerance"]
    assert (tmp_path / "merged" / "config.json").exists() and not (tmp_path / "merged" / "adapter_config.json").exists()
    with pytest.raises(ParityError, match="nothing was written"):
        export(adapter, tmp_path / "merged16", dtype="bfloat16", tolerance=1e-9)
    assert not (tmp_path / "merged16").exists()


def test_freezing_leaves_frozen_weights_bit_identical(base, tmp_path):
    from safetensors.torch import load_file

    report = _run(base, tmp_path / "freeze", model={"method": "freeze", "freeze": {"layers": [-1]}},
                  optim={"lr": 1e-2}, train={"max_steps": 2})
    before = load_file(str(base["model"] / "model.safetensors"))
    after = load_file(str(Path(report["model"]) / "model.safetensors"))
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(k.startswith("model.layers.1.") for k in changed)  # only the last layer moved
    assert torch.equal(before["model.embed_tokens.weight"], after["model.embed_tokens.weight"])


@pytest.mark.parametrize("method", ["full", "lora"])
def test_resume_equals_the_uninterrupted_run(base, tmp_path, monkeypatch, method):
    sections = dict(model={"method": method}, train={"epochs": 2}, checkpoint={"every": 2}, optim={"lr": 5e-3})
    full = _run(base, tmp_path / "full", **sections)
    interrupted_after(monkeypatch, 2, lambda: _run(base, tmp_path / "cut", **sections))
    cfg = validate(sft_config(base["model"], base["data"], **sections), SFTConfig)
    resumed = sft(cfg, tmp_path / "cut", resume=True)

    def losses(out):
        return [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines()
                if "loss" in json.loads(x)]

    assert resumed["steps"] == full["steps"] > 2
    assert losses(tmp_path / "cut") == losses(tmp_path / "full")  # bit for bit, the same steps


def test_a_template_that_differs_from_the_models_own_is_refused_unless_overridden(base, tmp_path):
    from danlu.tokenizer.chat import DEFAULT_CHAT_TEMPLATE

    with pytest.raises(ConfigError, match="template_override"):
        _run(base, tmp_path / "a", model={"template": DEFAULT_CHAT_TEMPLATE}, train={"max_steps": 1})
    report = _run(base, tmp_path / "b", model={"template": DEFAULT_CHAT_TEMPLATE, "template_override": True},
                  train={"max_steps": 1})
    assert (Path(report["model"]) / "chat_template.jinja").read_text() == DEFAULT_CHAT_TEMPLATE
    ckpt = sorted((tmp_path / "b" / "checkpoints").iterdir())[-1]
    assert (ckpt / "chat_template.jinja").read_text() == DEFAULT_CHAT_TEMPLATE  # saved with every checkpoint


def test_overlong_samples_are_filtered_with_the_reason_or_lose_their_oldest_turns(base, tmp_path):
    long_history = [(f"step {i} " * 20, "ok " * 20) for i in range(6)]
    records = [sft_record(0, "last question", "last answer", history=long_history), sft_record(1, "q", "a")]
    data = write_jsonl(tmp_path / "long.jsonl", records)
    cfg = sft_config(base["model"], data, data={"seq_len": 128}, train={"max_steps": 1})
    report = sft(validate(cfg, SFTConfig), tmp_path / "reject")
    assert report["counts"]["filtered"] == {"longer than seq_len": 1} and report["counts"]["kept"] == 1
    reject = json.loads((tmp_path / "reject" / "data" / "rejects.jsonl").read_text().splitlines()[0])
    assert reject["id"] == "r0" and "tokens > 128" in reject["reason"]
    cfg["data"]["overlong"] = "truncate_history"
    report = sft(validate(cfg, SFTConfig), tmp_path / "truncate")
    assert report["counts"]["kept"] == 2 and report["samples"]["train"] == 2
    data_report = json.loads((tmp_path / "truncate" / "data" / "report.json").read_text())
    assert data_report["truncated_history"] == 1


@pytest.mark.slow
def test_two_processes_ddp_match_one_process(base, tmp_path):
    import os
    import subprocess
    import sys

    import yaml

    cfg = sft_config(base["model"], base["data"], train={"epochs": 1, "batch_size": 4, "micro_batch_size": 2},
                     data={"val_size": 3}, eval={"every": 0})
    single = sft(validate(cfg, SFTConfig), tmp_path / "single")
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(cfg))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "danlu.cli",
           "train", "sft", str(tmp_path / "sft.yaml"), "-o", str(tmp_path / "ddp"),
           "--set", "train.micro_batch_size=2"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads((tmp_path / "ddp" / "report.json").read_text())
    assert report["world_size"] == 2 and report["grad_accum"] == 1

    def losses(out):
        rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in rows if "loss" in r}

    one, two = losses(tmp_path / "single"), losses(tmp_path / "ddp")
    assert sorted(one) == sorted(two) and len(one) == single["steps"] > 1
    for step in one:
        assert two[step] == pytest.approx(one[step], abs=1e-5)
    assert report["heldout"] == pytest.approx(single["heldout"], abs=1e-5)


def test_cli_train_sft_with_set_and_export(base, tmp_path):
    import yaml
    from typer.testing import CliRunner

    from danlu.cli import app
    from danlu.runs import check_counts

    cfg = sft_config(base["model"], base["data"], train={"max_steps": 1})
    (tmp_path / "sft.yaml").write_text(yaml.safe_dump(cfg))
    r = CliRunner().invoke(app, ["train", "sft", str(tmp_path / "sft.yaml"), "-o", str(tmp_path / "run"),
                                 "--set", "model.method=lora", "--set", "model.lora.r=2"])
    assert r.exit_code == 0, (r.output, r.exception)
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    check_counts("train-sft", report)
    assert report["method"] == "lora" and yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())[
        "model"]["lora"]["r"] == 2
    r = CliRunner().invoke(app, ["export", str(tmp_path / "run"), "-o", str(tmp_path / "exported")])
    assert r.exit_code == 0, (r.output, r.exception)
    assert "max logit difference" in r.output and (tmp_path / "exported" / "model.safetensors").exists()
    lineage = json.loads((tmp_path / "exported" / "lineage.json").read_text())
    assert lineage["stage"] == "train-sft" and lineage["export"]["parity"]["merged_adapter"] is True
    r = CliRunner().invoke(app, ["train", "sft", str(tmp_path / "sft.yaml"), "-o", str(tmp_path / "bad"),
                                 "--set", "model.lora.rank=2"])
    assert r.exit_code != 0 and "unknown key 'model.lora.rank' (from --set model.lora.rank=2)" in str(r.exception)


@pytest.mark.parametrize("lora", [False, True])
def test_the_head_at_target_positions_gives_the_full_logits_loss_and_gradients(tmp_path, lora):
    """weighted_lm runs the LM head only where a token is a target; its loss and every gradient equal those of
    the full [rows x width x vocab] logits masked afterwards, and the model is whole again after the step."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from danlu.model.adapters import add_lora
    from danlu.train.config import LoraConfig
    from danlu.train.objectives import IGNORE, cross_entropy_sum, lm_logits, weighted_lm
    from danlu.train.sft_batches import SFTBatches
    from danlu.train.sft_data import SFTStore, prepare

    folder = tiny_model(tmp_path / "qwen")
    data = write_jsonl(tmp_path / "mixed.jsonl", mixed_records())
    tok = AutoTokenizer.from_pretrained(folder)
    prepare(tmp_path, tok, folder, tok.chat_template, validate(sft_config(folder, data), SFTConfig).data)
    store = SFTStore(tmp_path / "data" / "train")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    if lora:
        model = add_lora(model, LoraConfig(r=4), [])
    batch = next(iter(SFTBatches(store, np.arange(len(store)), np.ones(len(store)), seq_len=256, batch_size=3)))

    def full_logits(m, b):
        labels = F.pad(b["labels"][:, 1:], (0, 1), value=IGNORE).flatten()
        weights = F.pad(b["weights"][:, 1:], (0, 1), value=0.0).flatten()
        return cross_entropy_sum(lm_logits(m, b, doc_mask=True).flatten(0, 1).float(), labels, weights)

    losses, grads = [], []
    for loss_sum in (full_logits, weighted_lm().loss_sum):
        model.zero_grad(set_to_none=True)
        loss = loss_sum(model, batch)
        loss.backward()
        losses.append(loss.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    assert torch.allclose(losses[0], losses[1], rtol=1e-5, atol=1e-5)
    assert grads[0] and grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        assert torch.allclose(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-6), name
    assert lm_logits(model, batch, doc_mask=True).shape[:2] == batch["input_ids"].shape  # the hook is gone
