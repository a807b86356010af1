"""Helpers for the preference tests: synthetic preference pairs (a correct answer vs the same answer corrupted),
KTO records, and configs for `train dpo` / `train rm` (tiny models: sft_fixtures.tiny_model)."""

from __future__ import annotations

import random
import string

from sft_fixtures import sft_config

WORDS = ("the system service package config file kernel module install update network user log disk mount boot "
         "answer question weather today good morning hello world how are you city name").split()


def pref_record(i: int, prompt: str, chosen: str, rejected: str, task: str = "qa", system: str | None = None,
                source: str = "ops") -> dict:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": prompt}]
    return {"id": f"p{i}", "messages": messages, "chosen": {"role": "assistant", "content": chosen},
            "rejected": {"role": "assistant", "content": rejected}, "task_type": task, "source": source}


def kto_record(i: int, prompt: str, answer: str, desirable: bool, task: str = "qa") -> dict:
    return {"id": f"k{i}", "messages": [{"role": "user", "content": prompt}],
            "completion": {"role": "assistant", "content": answer}, "desirable": desirable, "task_type": task,
            "source": "ops"}


def corrupt(text: str, rng: random.Random, share: float = 0.5) -> str:
    """The answer with about `share` of its words replaced by random letter-digit strings (never the same text)."""
    words = text.split()
    out = [("".join(rng.choice(string.ascii_lowercase + string.digits) for _ in range(rng.randint(3, 6)))
            if rng.random() < share else w) for w in words]
    if out == words:
        out[0] = "zq9" + out[0]
    return " ".join(out)


def synthetic_pairs(n: int, seed: int = 0, lo: int = 6, hi: int = 16) -> list[dict]:
    """Pairs whose chosen answer is a sentence of known words and whose rejected answer is it corrupted; half
    'qa', half 'chat' (a system prompt), answers of different lengths."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) + "?"
        chosen = " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi))) + "."
        task = "qa" if i % 2 == 0 else "chat"
        out.append(pref_record(seed * 100_000 + i, prompt, chosen, corrupt(chosen, rng), task=task,
                               system="You are an ops assistant." if task == "chat" else None))
    return out


def length_biased_pairs(n: int, seed: int = 0) -> list[dict]:
    """Pairs where the chosen answer is always the longer one, with the same words: a reward model trained on them
    learns length (what `danlu score`'s correlation must catch)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        prompt = " ".join(rng.choice(WORDS) for _ in range(4)) + "?"
        short = " ".join(rng.choice(WORDS) for _ in range(rng.randint(2, 5))) + "."
        long = " ".join(rng.choice(WORDS) for _ in range(rng.randint(14, 24))) + "."
        out.append(pref_record(i, prompt, long, short))
    return out


def pref_config(model_dir, train_file, **sections) -> dict:
    """sft_config's run settings with preference-sized rows."""
    return sft_config(model_dir, train_file, **{**sections, "data": {"seq_len": 128, **sections.get("data", {})}})
