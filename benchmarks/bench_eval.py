"""danlu mcq vs EleutherAI lm-evaluation-harness (`--model hf`) on the same model and questions, in one run.

Both score C-Eval-format CSVs k-shot with the same prompt (the C-Eval authors' format, no answer delimiter) by
the log-probabilities of the letters A-D, so their choices must agree; the difference is that danlu computes
each subject's shared k-shot prefix once (its KV cache reused by every question) while lm-eval runs the whole
prompt for every question. Each tool's whole job is timed (model load, data, prompts, scoring); runs are
interleaved and medians reported, since the machine's cores may be busy. Both run in this process, on the
same torch threads (--threads).

    .venv/bin/python benchmarks/bench_eval.py                 # 4 subjects x 60 questions, 5-shot, d=256 L=4
    .venv/bin/python benchmarks/bench_eval.py --questions 20 --repeats 1   # quick
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

for _k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ.setdefault(_k, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

TOOLS = ["apt", "dpkg", "systemctl", "journalctl", "mount", "grub", "ip", "ss", "useradd", "chmod", "tar", "rsync",
         "iptables", "nftables", "lvm", "mdadm", "cron", "sshd", "nginx", "postfix"]
TOPICS = ["软件包管理", "系统日志", "服务管理", "磁盘挂载", "网络配置", "用户与权限", "备份与恢复", "防火墙", "定时任务",
          "远程登录", "邮件服务", "逻辑卷"]
SUBJECTS = ["computer_network", "operating_system", "computer_architecture", "college_programming", "logic",
            "law", "accountant", "physician"]


def question(rng: random.Random) -> dict:
    topic = rng.choice(TOPICS)
    opts = rng.sample(TOOLS, 4)
    q = (f"在一台运行 Debian 12 的服务器上，管理员需要处理与{topic}有关的问题：{rng.choice(TOPICS)}出现异常，"
         f"并且需要保留现有配置。下列哪个工具最适合完成这项工作？")
    return {"question": q, **{k: f"使用 {o} 命令完成" for k, o in zip("ABCD", opts)}, "answer": rng.choice("ABCD")}


def write_data(root: Path, subjects: int, questions: int, shots: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    names = SUBJECTS[:subjects]
    for s in names:
        for split, n in (("dev", shots), ("val", questions)):
            path = root / split / f"{s}_{split}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            with open(path, "w", encoding="utf-8", newline="") as f:
                w = csv.writer(f)
                w.writerow(["id", "question", "A", "B", "C", "D", "answer", "explanation"])
                for i in range(n):
                    r = question(rng)
                    w.writerow([i, r["question"], r["A"], r["B"], r["C"], r["D"], r["answer"], ""])
    return names


def build_model(root: Path, data: Path, hidden: int, layers: int, seed: int) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    texts = [p.read_text(encoding="utf-8") for p in sorted(data.rglob("*.csv"))]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainer=trainers.BpeTrainer(
        vocab_size=2000, special_tokens=["<|bos|>", "<|eos|>", "<|pad|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|bos|>", eos_token="<|eos|>", pad_token="<|pad|>")
    cfg = LlamaConfig(vocab_size=len(fast), hidden_size=hidden, intermediate_size=hidden * 11 // 4,
                      num_hidden_layers=layers, num_attention_heads=max(1, hidden // 64),
                      num_key_value_heads=max(1, hidden // 128), max_position_embeddings=4096,
                      bos_token_id=fast.bos_token_id, eos_token_id=fast.eos_token_id, pad_token_id=fast.pad_token_id,
                      initializer_range=0.2)
    torch.manual_seed(seed)
    folder = root / "model"
    LlamaForCausalLM(cfg).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def lm_eval_tasks(folder: Path, data: Path, subjects: list[str]) -> list[str]:
    import yaml

    from danlu.eval.mcq_data import builtin_subjects

    names = builtin_subjects()["ceval"]
    folder.mkdir(parents=True, exist_ok=True)
    tasks = []
    for s in subjects:
        task = {"task": f"bench_{s}", "dataset_path": "csv",
                "dataset_kwargs": {"data_files": {"validation": str(data / "val" / f"{s}_val.csv"),
                                                  "dev": str(data / "dev" / f"{s}_dev.csv")}},
                "validation_split": "validation", "fewshot_split": "dev", "fewshot_config": {"sampler": "first_n"},
                "output_type": "multiple_choice", "target_delimiter": "", "fewshot_delimiter": "\n\n",
                "description": f"以下是中国关于{names[s]['name']}考试的单项选择题，请选出其中的正确答案。\n\n",
                "doc_to_text": "{{question.strip()}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\n答案：",
                "doc_to_choice": ["A", "B", "C", "D"], "doc_to_target": "{{['A', 'B', 'C', 'D'].index(answer)}}",
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}]}
        (folder / f"{task['task']}.yaml").write_text(yaml.safe_dump(task, allow_unicode=True), encoding="utf-8")
        tasks.append(task["task"])
    return tasks


def run_danlu(model: Path, data: Path, out: Path, shots: int, batch: int) -> tuple[float, dict]:
    from danlu.eval.config import McqConfig
    from danlu.eval.mcq import run_mcq

    t0 = time.perf_counter()
    run_mcq(model, out, McqConfig(data=[str(data)], k_shot=shots, methods=["letter"], batch_size=batch),
            progress=False)
    dt = time.perf_counter() - t0
    with open(out / "questions.jsonl", encoding="utf-8") as f:
        return dt, {(r := json.loads(line))["id"]: r["letter"]["choice"] for line in f}


def run_lm_eval(model: Path, tasks_dir: Path, tasks: list[str], shots: int, batch: int) -> tuple[float, dict]:
    import lm_eval
    from lm_eval.tasks import TaskManager

    t0 = time.perf_counter()
    res = lm_eval.simple_evaluate(model="hf", model_args=f"pretrained={model},dtype=float32", tasks=tasks,
                                  num_fewshot=shots, batch_size=batch, device="cpu", log_samples=True,
                                  task_manager=TaskManager(include_path=str(tasks_dir)))
    dt = time.perf_counter() - t0
    choices = {}
    for task, samples in res["samples"].items():
        subject = task[len("bench_"):]
        for s in samples:
            lls = [r[0] for r in s["filtered_resps"]]
            choices[f"{subject}/{s['doc_id']}"] = "ABCD"[max(range(4), key=lambda i: lls[i])]
    return dt, choices


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--subjects", type=int, default=4)
    ap.add_argument("--questions", type=int, default=60, help="questions per subject")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads for both tools (0: torch's default; 1 "
                    "is steadier on a small machine whose cores other work also uses)")
    ap.add_argument("--work", type=Path, default=None, help="working folder (default: a temporary one)")
    args = ap.parse_args()

    import logging

    import torch

    logging.getLogger("lm_eval").setLevel(logging.ERROR)
    if args.threads:
        torch.set_num_threads(args.threads)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-eval-"))
    data = work / "ceval"
    subjects = write_data(data, args.subjects, args.questions, args.shots)
    model = build_model(work, data, args.hidden, args.layers, seed=0)
    tasks = lm_eval_tasks(work / "tasks", data, subjects)
    n = args.subjects * args.questions
    print(f"model: Llama d={args.hidden} L={args.layers}; {args.subjects} subjects x {args.questions} questions, "
          f"{args.shots}-shot, batch {args.batch_size}, torch threads {torch.get_num_threads()}, device cpu")

    # warm-up (first-call costs: imports, kernel selection), not timed
    run_danlu(model, data, work / "warm", args.shots, args.batch_size)
    times = {"danlu": [], "lm-eval": []}
    choices = {}
    for r in range(args.repeats):
        order = ("danlu", "lm-eval") if r % 2 == 0 else ("lm-eval", "danlu")
        for tool in order:
            if tool == "danlu":
                dt, ch = run_danlu(model, data, work / f"danlu-{r}", args.shots, args.batch_size)
            else:
                dt, ch = run_lm_eval(model, work / "tasks", tasks, args.shots, args.batch_size)
            times[tool].append(dt)
            choices[tool] = ch
            print(f"  run {r + 1} {tool:<8} {dt:8.2f} s  {n / dt:8.1f} questions/s", flush=True)
    same = sum(choices["danlu"][k] == choices["lm-eval"].get(k) for k in choices["danlu"])
    med = {t: statistics.median(v) for t, v in times.items()}
    print(f"{'tool':<10}{'questions':>10}{'median s':>10}{'questions/s':>13}")
    for t in ("danlu", "lm-eval"):
        print(f"{t:<10}{n:>10}{med[t]:>10.2f}{n / med[t]:>13.1f}")
    print(f"speed-up danlu / lm-eval: {med['lm-eval'] / med['danlu']:.2f}x (median of {args.repeats})")
    print(f"identical choices: {same}/{n} ({same / n:.1%}); "
          f"distinct letters chosen: {len(set(choices['danlu'].values()))}")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
