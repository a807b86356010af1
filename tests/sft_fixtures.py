"""Helpers for the SFT tests: tiny models with real published chat templates, and SFT record files."""

from __future__ import annotations

import json
import random
from pathlib import Path

import torch

from chat_templates import write_tokenizer

NAMES = ["nginx", "redis", "mysql", "kafka", "etcd", "consul", "vault", "grafana", "loki", "tempo", "harbor",
         "minio", "cilium", "istio", "jenkins", "gitea"]


def tiny_model(folder: Path, family: str = "qwen2.5", seed: int = 0, template: bool = True, tie: bool = True) -> Path:
    """A tiny Llama saved with a `family` tokenizer (its real chat template, or none with template=False)."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    write_tokenizer(family, folder)
    tok = AutoTokenizer.from_pretrained(folder)
    if not template:
        config = json.loads((folder / "tokenizer_config.json").read_text())
        config.pop("chat_template", None)
        (folder / "tokenizer_config.json").write_text(json.dumps(config))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                      tie_word_embeddings=tie, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def facts(n: int = 12, seed: int = 0) -> list[tuple[str, str]]:
    """(question, answer) pairs a model can only know from SFT: made-up ports of made-up services."""
    rng = random.Random(seed)
    return [(f"{name} port?", f"{rng.randint(1000, 9999)}") for name in NAMES[:n]]


def sft_record(i: int, question: str, answer: str, task: str = "qa", system: str | None = None,
               history: list[tuple[str, str]] = (), source: str = "ops") -> dict:
    messages = [{"role": "system", "content": system}] if system else []
    for q, a in history:
        messages += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return {"id": f"r{i}", "messages": messages, "task_type": task, "tags": [], "source": source}


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def mixed_records(n: int = 24, seed: int = 0) -> list[dict]:
    """Records of very different lengths and tasks: one-letter classification answers next to long answers,
    single and multi-turn, with and without a system prompt."""
    rng = random.Random(seed)
    words = "the service restarts after the config file changes and the log shows the new port".split()
    out = []
    for i in range(n):
        if i % 3 == 0:
            out.append(sft_record(i, f"is {rng.choice(NAMES)} healthy?", rng.choice("AB"), task="classify"))
        elif i % 3 == 1:
            answer = " ".join(rng.choice(words) for _ in range(rng.randint(10, 40)))
            out.append(sft_record(i, f"explain {rng.choice(NAMES)}", answer, task="explain",
                                  system="You are an ops assistant." if i % 2 else None))
        else:
            out.append(sft_record(i, "and then?", " ".join(rng.choice(words) for _ in range(6)), task="chat",
                                  history=[(f"start {rng.choice(NAMES)}", "done")]))
    return out


def sft_config(model_dir: Path, train_file: Path, **sections) -> dict:
    cfg = {"model": {"path": str(model_dir)},
           "data": {"train": [str(train_file)], "seq_len": 256},
           "train": {"epochs": 1, "batch_size": 4, "micro_batch_size": 2, "precision": "fp32"},
           "optim": {"lr": 1e-3},
           "schedule": {"warmup_steps": 0},
           "log": {"every": 1, "progress": False, "tensorboard": False},
           "checkpoint": {"every": 0}}
    for name, values in sections.items():
        cfg[name] = {**cfg.get(name, {}), **values}
    return cfg
