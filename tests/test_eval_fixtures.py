"""Shared helpers of the eval tests (no tests here): benchmark CSVs, SFT sets, a tokenizer trained on them and a
tiny Llama saved as a Hugging Face folder, all made in the test's tmp folder."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

TOOLS = ["apt", "dpkg", "systemctl", "journalctl", "mount", "grub", "ip", "ss", "useradd", "chmod", "tar", "rsync"]
TASKS = ["安装软件包", "查看日志", "管理服务", "挂载磁盘", "配置网络", "添加用户", "修改权限", "备份文件",
         "update the package index", "list open sockets", "restart a daemon", "read the boot log"]
SUBJECTS = ("computer_network", "operating_system")


def mcq_rows(n: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        task = rng.choice(TASKS)
        opts = rng.sample(TOOLS, 4)
        rows.append({"id": str(i), "question": f"在 Debian 系统中，{task}应使用哪个命令？", "A": opts[0], "B": opts[1],
                     "C": opts[2], "D": opts[3], "answer": "ABCD"[rng.randrange(4)], "explanation": ""})
    return rows


def write_ceval(root: Path, n_val: int = 6, n_dev: int = 3, seed: int = 0, bad_rows: bool = False) -> Path:
    """C-Eval layout: root/{dev,val}/SUBJECT_{split}.csv with the published header."""
    for s_i, subject in enumerate(SUBJECTS):
        for split, n in (("dev", n_dev), ("val", n_val)):
            path = root / split / f"{subject}_{split}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            rows = mcq_rows(n, seed + 100 * s_i + (0 if split == "dev" else 7))
            with open(path, "w", encoding="utf-8", newline="") as f:
                w = csv.writer(f)
                w.writerow(["id", "question", "A", "B", "C", "D", "answer", "explanation"])
                for r in rows:
                    w.writerow([r[k] for k in ("id", "question", "A", "B", "C", "D", "answer", "explanation")])
                if bad_rows and split == "val":
                    w.writerow([str(n), "这一行的答案不是字母", "a", "b", "c", "d", "E", ""])
                    w.writerow([str(n + 1), "太短"])
    return root


def corpus_texts(root: Path | None = None) -> list[str]:
    texts = []
    if root is not None:
        for p in sorted(root.rglob("*.csv")):
            texts.append(p.read_text(encoding="utf-8"))
    rng = random.Random(1)
    texts += [" ".join(rng.choice(TOOLS + TASKS) for _ in range(30)) for _ in range(200)]
    texts += ["以下是中国关于计算机网络考试的单项选择题，请选出其中的正确答案。答案：A B C D",
              "以下是关于操作系统的单项选择题，请直接给出正确答案的选项。题目：答案是：",
              "The following are multiple choice questions (with answers) about computer network. Answer:"]
    return texts


def make_tokenizer(folder: Path, texts: list[str], vocab_size: int = 600, bos: bool = True) -> Path:
    """A byte-level BPE trained on `texts` with danlu's special tokens; with `bos` its post-processor puts
    <|bos|> before every encoded text (as Llama's does), so BOS framing is exercised."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    from danlu.tokenizer.chat import DEFAULT_CHAT_TEMPLATE, DEFAULT_ROLE_TOKENS

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<|bos|>", "<|eos|>", "<|pad|>", *DEFAULT_ROLE_TOKENS]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    if bos:
        tok.post_processor = processors.TemplateProcessing(single="<|bos|> $A", pair="<|bos|> $A $B",
                                                           special_tokens=[("<|bos|>", tok.token_to_id("<|bos|>"))])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>",
                                   pad_token="<|pad|>")
    fast.chat_template = DEFAULT_CHAT_TEMPLATE
    fast.save_pretrained(folder)
    return folder


def make_model(folder: Path, tokenizer_dir: Path, hidden: int = 64, layers: int = 2, seed: int = 0,
               init: float = 0.02, train_texts: list[str] | None = None, steps: int = 0) -> Path:
    """A tiny Llama for the tokenizer, saved with the tokenizer as one HF folder; `steps` of training on
    `train_texts` make its predictions differ clearly between options (an untrained model gives near-ties)."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                      num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=4096, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, initializer_range=init, tie_word_embeddings=True)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    if steps and train_texts:
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        ids = [tok(t, truncation=True, max_length=256)["input_ids"] for t in train_texts]
        model.train()
        for step in range(steps):
            batch = torch.tensor([ids[step % len(ids)]])
            loss = model(input_ids=batch, labels=batch).loss
            loss.backward()
            opt.step()
            opt.zero_grad()
        model.eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def write_sft(path: Path, samples: list[tuple[str, str, str]], source: str = "test") -> Path:
    """SFT records from (task_type, question, answer) triples."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for i, (tt, q, a) in enumerate(samples):
            f.write(json.dumps({"id": f"s{i}", "messages": [{"role": "user", "content": q},
                                                            {"role": "assistant", "content": a}],
                                "task_type": tt, "tags": [], "source": source}, ensure_ascii=False) + "\n")
    return path


def assert_self_contained(html: str) -> None:
    """A page that makes no network request: no scripts, no external sources, stylesheets or imports."""
    import re

    assert html.startswith("<!doctype html>") and "</html>" in html
    assert "<script" not in html and "@import" not in html and "url(" not in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
