"""Models for the serving tests: a danlu-trained byte-level tokenizer (English only, so every Chinese character
is split over 3 byte tokens) and a tiny Llama that has memorised a few chat replies and a plain-text line.

Memorised replies make the outputs known in advance (streaming must reproduce them exactly, with no U+FFFD
between the bytes of a character); the same model with its sharp logits keeps greedy decoding stable under
the float differences between batched and single-row kernels.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from train_fixtures import one_thread

ENGLISH = ("apt dpkg kernel module package install remove update upgrade mirror source debian system user root "
           "shell file path config network service daemon log boot grub disk mount the a of to is and in").split()

# (user message, assistant reply): the replies are what greedy chat must return, byte for byte
CHATS = [
    ("你好", "你好！我是丹炉，一个运维助手。"),
    ("how do I install a package?", "Run apt install 软件包 as root."),
    ("重启服务", "systemctl restart 服务名；然后查看日志。"),
]
# a plain-text line for /v1/completions: the prompt is its start
TEXT_LINE = "debian mirror: 软件源 is the source of every package. done."
TEXT_PROMPT = "debian mirror:"


def write_tokenizer(folder: Path) -> Path:
    """danlu's own trainer on English words: role tokens, <|bos|>/<|eos|>/<|end|> and the default template."""
    import random

    from danlu.tokenizer.train import train_tokenizer

    rng = random.Random(0)
    corpus = folder.parent / f"{folder.name}-corpus.jsonl"
    with open(corpus, "w", encoding="utf-8") as f:
        for i in range(300):
            text = " ".join(rng.choice(ENGLISH) for _ in range(40))
            f.write(json.dumps({"id": str(i), "text": text, "source": "t", "path": "t", "format": "txt",
                                "meta": {}}) + "\n")
    train_tokenizer([corpus], folder, vocab_size=400)
    return folder


def training_rows(tokenizer) -> list[list[int]]:
    """Token ids of each memorised chat (rendered with the chat template) and of the text line."""
    from danlu.tokenizer.chat import render_prompt, stop_token_ids

    end = tokenizer.convert_tokens_to_ids("<|end|>")
    rows = []
    for user, reply in CHATS:
        prompt = render_prompt(tokenizer, [{"role": "user", "content": user}])
        rows.append(prompt + tokenizer.encode(reply, add_special_tokens=False) + [end])
    rows.append(tokenizer.encode(TEXT_LINE) + [tokenizer.eos_token_id])
    assert end in stop_token_ids(tokenizer)
    return rows


def write_memorising_model(folder: Path, tokenizer_dir: Path, steps: int = 300, seed: int = 0) -> Path:
    """Train a tiny Llama until it reproduces every training row greedily; save model + tokenizer files."""
    import shutil

    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    rows = training_rows(tok)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, tie_word_embeddings=False)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    width = max(len(r) for r in rows)
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    labels = torch.tensor([r + [-100] * (width - len(r)) for r in rows])
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(steps):
        loss = model(input_ids=ids, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() < 0.05:  # near the floor: rows share their first tokens, so some loss is irreducible
            break
    model.eval()
    model.save_pretrained(str(folder))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        shutil.copyfile(tokenizer_dir / name, folder / name)
    return folder


def write_random_model(folder: Path, tokenizer_dir: Path, seed: int = 1, init_range: float = 0.2) -> Path:
    """An untrained tiny Llama (wide init, so its logits have clear winners) with the tokenizer files."""
    import shutil

    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      initializer_range=init_range, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id)
    cfg._attn_implementation = "sdpa"
    torch.manual_seed(seed)
    LlamaForCausalLM(cfg).eval().save_pretrained(str(folder))
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja"):
        shutil.copyfile(tokenizer_dir / name, folder / name)
    return folder


def greedy_no_cache(model, prompt: list[int], n_tokens: int) -> list[int]:
    """Reference decoding: the full sequence through the model at every step, no KV cache, argmax."""
    ids = list(prompt)
    with torch.inference_mode():
        for _ in range(n_tokens):
            logits = model(input_ids=torch.tensor([ids]), use_cache=False).logits[0, -1]
            ids.append(int(logits.argmax()))
    return ids[len(prompt):]


def serve_models(root: Path) -> dict[str, Path]:
    """tokenizer, memorising model and random model under root (built once per test session)."""
    tok = write_tokenizer(root / "tok")
    return {"tokenizer": tok, "memo": write_memorising_model(root / "memo", tok),
            "random": write_random_model(root / "random", tok)}


def cached_serve_models(tmp_path_factory) -> dict[str, Path]:
    """serve_models() once per session for every test_serve_* module (the session's base temp folder is shared;
    a marker file says the build finished)."""
    root = tmp_path_factory.getbasetemp() / "serve-models"
    paths = {"tokenizer": root / "tok", "memo": root / "memo", "random": root / "random"}
    if not (root / "DONE").exists():
        root.mkdir(parents=True, exist_ok=True)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # module fixtures run before the tests' one_thread fixture
        try:
            serve_models(root)
        finally:
            torch.set_num_threads(threads)
        (root / "DONE").write_text("ok")
    return paths


# pytest fixtures of the serving tests (a test module imports them by name)
@pytest.fixture(autouse=True)
def _one_thread():
    yield from one_thread()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """The tiny models of serve_models, built once per session."""
    return cached_serve_models(tmp_path_factory)
