"""SFT throughput and loss: danlu vs LLaMA-Factory (0.9.5, its own venv), the same tiny Llama, the same
alpaca_zh_demo samples, the same cutoff and samples per step, in one run.

    .venv/bin/python benchmarks/bench_sft.py [--runs 3] [--samples 900] [--val 100] [--cutoff 512] [--batch 8]
        [--lf-venv /work/peers/lf] [--corpus ../shared/corpora/llamafactory] [--threads 2] [--candidate-src DIR]

Setup (once per run of this script, in a temp folder):
- data: `danlu data sft CORPUS --dataset alpaca_zh_demo` (danlu's importer; the same rows LF reads). Samples whose
  rendered length exceeds the cutoff are left out for both sides (danlu drops them, LF would truncate them), then
  every 10th sample is held out for validation and the first --samples of the rest train both sides.
- model: a tiny Llama (d=256, 4 layers, GQA 4/2, tied embeddings), random init, saved once as a HF folder with a
  byte-level BPE tokenizer trained on the dataset's text with the qwen2.5 family's special tokens and its real
  published chat template (tests/chat_templates.py); both sides start from these same weights.
- template check: every sample is rendered by danlu (danlu.tokenizer.chat.render_sample, what `train sft` uses)
  and by LF (its alpaca converter + `qwen` template); the token ids must be identical (the qwen template and
  Qwen2.5's chat template both add the same default system prompt). LF's targets also include the "\\n" after
  <|im_end|>, danlu's stop at <|im_end|>: the one known difference in what is trained (printed).

The sides (each in its own process, OMP_NUM_THREADS=--threads, offline, full fine-tuning, 1 epoch, --precision:
fp32, or bf16 autocast on both sides - danlu train.precision bf16, LF bf16: true - with fp32 weights and optimizer):
- LF: `llamafactory-cli train lf.yaml`: stage sft, template qwen, cutoff_len, per_device_train_batch_size
  --batch (no accumulation), cosine schedule, the same warm-up share, AdamW (HF defaults: betas 0.9/0.999),
  weight decay 0, max_grad_norm 1, packing off (LF's SFT default: each batch padded to its longest sample, to a
  multiple of 8). Gradient checkpointing is disabled (LF enables it by default; it recomputes the forward, which
  would slow LF down for no memory need here).
- danlu packed: `danlu train sft danlu.yaml` with data.packing true (best-fit rows of up to the cutoff, document
  masking), loss_norm token (HF's loss is token-averaged over the step), rows per step chosen so a step holds
  about --batch samples (so both take about the same number of steps at the same LR), the same schedule shape,
  optimizer settings, grad clip; spike handling off (LF has none).
- danlu unpacked: the same with packing off and --batch samples per step: the effect of packing alone.
- danlu candidate (with --candidate-src DIR): danlu packed run from a patched copy of src/, in the same rounds.
Measured: train seconds (each side's own loop clock: HF's train_runtime, danlu's train_s; model loading, data
preparation, danlu's 3 probe forward/backward passes for its estimate and its final evaluation excluded; the
whole process wall is printed too), CPU seconds of the same loop (time.process_time, all threads: far less
sensitive to other engineers' load than wall time), real tokens/s = the tokens of the training samples (the same
count for every side, checked against each side's batches) / train seconds, padding share = padded positions /
all positions of the batches that were trained, peak RSS (ru_maxrss of the training process, from wait4), and the
validation loss of each final model from ONE evaluator here: plain transformers, each held-out sample alone,
token-averaged cross-entropy over danlu's assistant-target tokens (the same masks for every model).
The CPU clocks and LF's batch positions come from observers put on each training process's PYTHONPATH as
sitecustomize.py (LF: a wrapper of transformers' Trainer.training_step; danlu: of danlu.train.loop.train); they
only read clocks and tensor shapes.
Runs interleave (the order alternates) and medians are printed. Exits non-zero if a side fails.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the real published chat templates live with the test fixtures

OFFLINE = {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}

# LF's own rendering of each training row: its alpaca converter and template encoder (what its supervised
# preprocessing calls per example; truncation never applies, every sample fits the cutoff).
LF_RENDER = r'''
import json, sys
from transformers import AutoTokenizer
from llamafactory.data.converter import get_dataset_converter
from llamafactory.data.parser import get_dataset_list
from llamafactory.data.template import get_template_and_fix_tokenizer
from llamafactory.hparams import DataArguments
model_dir, data_dir, names = sys.argv[1], sys.argv[2], sys.argv[3].split(",")
args = DataArguments(dataset_dir=data_dir, template="qwen")
tok = AutoTokenizer.from_pretrained(model_dir)
template = get_template_and_fix_tokenizer(tok, args)
out = {}
for name, attr in zip(names, get_dataset_list(names, data_dir)):
    conv = get_dataset_converter(attr.formatting, attr, args)
    rows = json.load(open(f"{data_dir}/{attr.dataset_name}", encoding="utf-8"))
    out[name] = []
    for row in rows:
        ex = conv(row)
        src, tgt = template.encode_oneturn(tok, ex["_prompt"] + ex["_response"], ex["_system"], ex["_tools"])
        out[name].append([src, tgt])
print(json.dumps(out))
'''

# Observers, put on each training process's PYTHONPATH as sitecustomize.py: they record the wall and CPU seconds
# (time.process_time: all threads of the process) of the training loop, which is robust to other engineers'
# load where wall time is not, and (LF) the positions of every batch. They change nothing that trains.
LF_OBSERVER = r'''
import atexit, json, os, time
_path = os.environ.get("BENCH_SFT_OBSERVE")
if _path:
    import transformers

    _step = transformers.Trainer.training_step
    _stats = {"batches": 0, "positions": 0, "real": 0, "targets": 0, "rows": 0}

    def training_step(self, model, inputs, *args, **kwargs):
        mask = inputs["attention_mask"]
        if "first_s" not in _stats:
            _stats["first_s"], _stats["first_cpu"] = time.perf_counter(), time.process_time()
        _stats["batches"] += 1
        _stats["rows"] += int(mask.shape[0])
        _stats["positions"] += int(mask.numel())
        _stats["real"] += int(mask.sum())
        _stats["targets"] += int((inputs["labels"] != -100).sum())
        out = _step(self, model, inputs, *args, **kwargs)
        _stats["last_s"], _stats["last_cpu"] = time.perf_counter(), time.process_time()
        return out

    transformers.Trainer.training_step = training_step
    atexit.register(lambda: open(_path, "w").write(json.dumps(_stats)))
'''

# danlu's loop (danlu.train.loop.train) is timed whole, less its end-of-run evaluation and checkpoint (which its
# own train_s leaves out too).
DANLU_OBSERVER = r'''
import atexit, json, os, time
_path = os.environ.get("BENCH_SFT_OBSERVE")
if _path:
    import danlu.train.loop as loop

    _stats = {"loop_s": 0.0, "loop_cpu": 0.0, "excluded_s": 0.0, "excluded_cpu": 0.0}

    def _timed(fn, key):
        def run(*args, **kwargs):
            wall, cpu = time.perf_counter(), time.process_time()
            try:
                return fn(*args, **kwargs)
            finally:
                _stats[key + "_s"] += time.perf_counter() - wall
                _stats[key + "_cpu"] += time.process_time() - cpu
        return run

    _train = _timed(loop.train, "loop")

    def train(*args, **kwargs):
        if kwargs.get("evaluate") is not None:
            kwargs["evaluate"] = _timed(kwargs["evaluate"], "excluded")
        return _train(*args, **kwargs)

    loop.train = train
    loop.save_checkpoint = _timed(loop.save_checkpoint, "excluded")
    atexit.register(lambda: open(_path, "w").write(json.dumps(_stats)))
'''


def observed_env(env: dict, work: Path, name: str, code: str) -> tuple[dict, Path]:
    hook = work / f"observer_{name}"
    hook.mkdir(exist_ok=True)
    (hook / "sitecustomize.py").write_text(code, encoding="utf-8")
    stats = work / f"observed_{name}.json"
    stats.unlink(missing_ok=True)
    path = os.pathsep.join(p for p in (env.get("PYTHONPATH"), str(hook)) if p)
    return {**env, "PYTHONPATH": path, "BENCH_SFT_OBSERVE": str(stats)}, stats


# --- setup: data, model, template check --------------------------------------------------------------------------


def import_records(corpus: Path, dataset: str, work: Path) -> tuple[list[dict], list[dict]]:
    """danlu's records of `dataset` (its importer) and the raw rows, in the same order."""
    from danlu.data.sft.stage import sft_data

    sft_data([corpus], work / "import", datasets=[dataset], task_type="qa", progress=False)
    records = [json.loads(x) for x in (work / "import" / "sft.jsonl").read_text(encoding="utf-8").splitlines()]
    info = json.loads((corpus / "dataset_info.json").read_text(encoding="utf-8"))[dataset]
    rows = json.loads((corpus / info["file_name"]).read_text(encoding="utf-8"))
    if len(rows) != len(records):
        sys.exit(f"danlu imported {len(records)} of {len(rows)} rows of {dataset}: cannot pair them with LF's rows")
    for row, rec in zip(rows, records):  # LF joins instruction and input with a newline, as danlu does
        user = "\n".join(x for x in (row["instruction"], row.get("input", "")) if x)
        if [m["content"] for m in rec["messages"]] != [user, row["output"]]:
            sys.exit(f"danlu record {rec['id']} does not match its row {row['instruction'][:40]!r}")
    return records, rows


def build_model(records: list[dict], folder: Path, args) -> Path:
    """Tokenizer (BPE trained on the records' text, qwen2.5 specials and chat template) and a tiny random Llama."""
    import torch
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from chat_templates import FAMILIES

    template, specials, roles, extra, _ = FAMILIES["qwen2.5"]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=args.vocab, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([m["content"] for r in records for m in r["messages"]], trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in extra])
    folder.mkdir(parents=True)
    tok.save(str(folder / "tokenizer.json"))
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **roles, "chat_template": template,
              "model_max_length": args.cutoff, "clean_up_tokenization_spaces": False}
    (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False), encoding="utf-8")
    hf_tok = AutoTokenizer.from_pretrained(folder)
    cfg = LlamaConfig(vocab_size=len(hf_tok), hidden_size=args.hidden, intermediate_size=args.hidden * 11 // 4,
                      num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
                      max_position_embeddings=args.cutoff, tie_word_embeddings=True, bos_token_id=None,
                      eos_token_id=hf_tok.eos_token_id, pad_token_id=hf_tok.pad_token_id)
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(folder)
    return folder


def render(records: list[dict], model_dir: Path) -> list:
    from transformers import AutoTokenizer

    from danlu.tokenizer.chat import render_sample

    tok = AutoTokenizer.from_pretrained(model_dir)
    return [render_sample(tok, r["messages"]) for r in records]


def write_sides(work: Path, records: list[dict], rows: list[dict], train: list[int], val: list[int]) -> dict:
    """The same samples as danlu SFT JSONL and as an LF alpaca dataset folder."""
    def jsonl(path: Path, idx: list[int]) -> str:
        path.write_text("".join(json.dumps(records[i], ensure_ascii=False) + "\n" for i in idx), encoding="utf-8")
        return str(path)

    lf_dir = work / "lf_data"
    lf_dir.mkdir()
    for name, idx in (("bench_train", train), ("bench_val", val)):
        (lf_dir / f"{name}.json").write_text(json.dumps([rows[i] for i in idx], ensure_ascii=False), encoding="utf-8")
    (lf_dir / "dataset_info.json").write_text(json.dumps({n: {"file_name": f"{n}.json"}
                                                          for n in ("bench_train", "bench_val")}), encoding="utf-8")
    return {"train": jsonl(work / "train.jsonl", train), "val": jsonl(work / "val.jsonl", val), "lf_dir": lf_dir}


def check_templates(lf_python: Path, model_dir: Path, lf_dir: Path, samples: list, train: list[int],
                    val: list[int]) -> str:
    """LF's ids must equal danlu's for every sample; returns a line on the targets' difference."""
    proc = subprocess.run([str(lf_python), "-c", LF_RENDER, str(model_dir), str(lf_dir), "bench_train,bench_val"],
                          capture_output=True, text=True, env={**OFFLINE, "PATH": os.environ["PATH"]})
    if proc.returncode:
        sys.exit(f"LLaMA-Factory could not render the samples:\n{proc.stderr[-3000:]}")
    lf = json.loads(proc.stdout.splitlines()[-1])
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    extra: dict[str, int] = {}
    for name, idx in (("bench_train", train), ("bench_val", val)):
        for (src, tgt), i in zip(lf[name], idx):
            s = samples[i]
            if src + tgt != s.ids:
                sys.exit(f"LF's qwen template renders sample {i} differently from the model's chat template:\n"
                         f"LF    {src + tgt}\ndanlu {s.ids}")
            mine = [k for k, w in enumerate(s.weights) if w > 0]
            theirs = list(range(len(src), len(src) + len(tgt)))
            if mine != theirs[: len(mine)]:
                sys.exit(f"sample {i}: danlu's targets {mine[:5]}... are not a prefix of LF's {theirs[:5]}...")
            for k in theirs[len(mine):]:
                piece = repr(tok.decode([s.ids[k]]))
                extra[piece] = extra.get(piece, 0) + 1
    listed = ", ".join(f"{t} x{n}" for t, n in extra.items()) or "none"
    return (f"template check: {len(train) + len(val)} samples, token ids identical (LF qwen template == the model's "
            f"chat template); targets LF trains beyond danlu's: {listed}")


# --- the runs ----------------------------------------------------------------------------------------------------


def run_process(cmd: list[str], env: dict, log: Path) -> tuple[int, float, float]:
    """Run a training process; returns (exit status, wall seconds, its peak RSS in MB, from wait4)."""
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, env=env, stdout=f, stderr=subprocess.STDOUT, cwd=log.parent)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - t, usage.ru_maxrss / 1024  # ru_maxrss is in KB on Linux


def danlu_config(model_dir: Path, files: dict, args, packing: bool, rows: int, warmup: int) -> dict:
    return {"model": {"path": str(model_dir), "method": "full"},
            "data": {"train": [files["train"]], "val": [files["val"]], "seq_len": args.cutoff, "packing": packing,
                     "loss_norm": "token", "seed": 0},
            "train": {"epochs": args.epochs, "batch_size": rows, "micro_batch_size": rows,
                      "precision": args.precision,
                      "seed": 0},
            "optim": {"lr": args.lr, "min_lr_ratio": 0.0, "weight_decay": 0.0, "betas": [0.9, 0.999], "eps": 1e-8,
                      "grad_clip": 1.0},
            "schedule": {"kind": "cosine", "warmup_steps": warmup},
            "spikes": {"enabled": False},
            "log": {"every": 10, "progress": False, "tensorboard": False},
            "eval": {"every": 0},
            "checkpoint": {"every": 0, "keep_last": 1}}


def lf_config(model_dir: Path, lf_dir: Path, out: Path, args, warmup: int) -> dict:
    return {"model_name_or_path": str(model_dir), "stage": "sft", "do_train": True, "finetuning_type": "full",
            "disable_gradient_checkpointing": True, "dataset_dir": str(lf_dir), "dataset": "bench_train",
            "template": "qwen", "cutoff_len": args.cutoff, "overwrite_cache": True, "preprocessing_num_workers": 1,
            "output_dir": str(out), "overwrite_output_dir": True, "per_device_train_batch_size": args.batch,
            "gradient_accumulation_steps": 1, "learning_rate": args.lr, "num_train_epochs": args.epochs,
            "lr_scheduler_type": "cosine", "warmup_steps": warmup, "weight_decay": 0.0, "max_grad_norm": 1.0,
            "logging_steps": 10, "save_strategy": "no", "report_to": "none", "use_cpu": True,
            "bf16": args.precision == "bf16",
            "fp16": False, "seed": 0, "dataloader_num_workers": 0, "disable_tqdm": True, "plot_loss": False}


def write_yaml(path: Path, cfg: dict) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def danlu_batches(out: Path, cfg: dict) -> dict:
    """Positions of the batches danlu's loop trained on, rebuilt from its rendered store with its stream (the
    plan is deterministic). report.json's stream.pad_fraction rounds each row to 8 on its own, but a batch pads
    every row to its longest row, so it is recounted here."""
    import numpy as np

    from danlu.train.sft_batches import SFTBatches
    from danlu.train.sft_data import SFTStore

    store = SFTStore(out / "data" / "train")
    d, t = cfg["data"], cfg["train"]
    stream = SFTBatches(store, np.arange(len(store)), np.ones(len(store)), d["seq_len"], t["micro_batch_size"],
                        d["packing"], d["loss_norm"], t["epochs"], d["seed"])
    positions = sum(next(stream)["input_ids"].numel() for _ in range(stream.steps()))
    return {"positions": positions, "real": int(stream.stats()["tokens"]), "rows": len(stream.rows)}


def run_danlu(name: str, cfg: dict, work: Path, env: dict) -> dict:
    out = work / name
    if out.exists():
        shutil.rmtree(out)
    cfg_path = write_yaml(work / f"{name}.yaml", cfg)
    danlu = Path(sys.executable).with_name("danlu")
    env, stats_file = observed_env(env, work, name, DANLU_OBSERVER)
    rc, wall, rss = run_process([str(danlu), "train", "sft", str(cfg_path), "-o", str(out)], env,
                                work / f"{name}.log")
    if rc or not stats_file.exists():
        return {"failed": f"exit {rc}; see {work / f'{name}.log'}"}
    o = json.loads(stats_file.read_text(encoding="utf-8"))
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    train_s = [m["train_s"] for m in metrics if "train_s" in m][-1]
    batches = danlu_batches(out, cfg)
    return {"steps": report["steps"], "train_s": train_s, "wall_s": wall, "rss_mb": rss, "model": out / "model",
            "real": report["stream"]["tokens"], "positions": batches["positions"], "rows": batches["rows"],
            "samples_seen": report["stream"]["samples_seen"], "report_pad_fraction": report["stream"]["pad_fraction"],
            "own_val_loss": report["heldout"].get("eval/loss"), "final_loss": report["final_loss"],
            "loop_s": o["loop_s"] - o["excluded_s"], "cpu_s": o["loop_cpu"] - o["excluded_cpu"]}


def run_lf(cfg: dict, work: Path, env: dict, lf_venv: Path) -> dict:
    out = Path(cfg["output_dir"])
    if out.exists():
        shutil.rmtree(out)
    cfg_path = write_yaml(work / "lf.yaml", cfg)
    lf_env, stats_file = observed_env(env, work, "lf", LF_OBSERVER)
    lf_env.update(HF_HOME=str(work / "hf_home"), HF_DATASETS_CACHE=str(work / "hf_home" / "datasets"))
    rc, wall, rss = run_process([str(lf_venv / "bin" / "llamafactory-cli"), "train", str(cfg_path)], lf_env,
                                work / "lf.log")
    if rc or not stats_file.exists():
        return {"failed": f"exit {rc}; see {work / 'lf.log'}"}
    results = json.loads((out / "train_results.json").read_text(encoding="utf-8"))
    state = json.loads((out / "trainer_state.json").read_text(encoding="utf-8"))
    b = json.loads(stats_file.read_text(encoding="utf-8"))
    losses = [h["loss"] for h in state["log_history"] if "loss" in h]
    return {"steps": state["global_step"], "train_s": results["train_runtime"], "wall_s": wall, "rss_mb": rss,
            "model": out, "real": b["real"], "positions": b["positions"], "rows": b["rows"],
            "samples_seen": b["rows"], "loop_s": b["last_s"] - b["first_s"], "cpu_s": b["last_cpu"] - b["first_cpu"],
            "own_val_loss": None, "final_loss": losses[-1] if losses else None}


# --- one evaluator for every model -------------------------------------------------------------------------------


def val_loss(model_dir: Path, samples: list) -> float:
    """Token-averaged cross-entropy over the assistant targets (danlu's masks) of each held-out sample alone."""
    import torch
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for s in samples:
            ids = torch.tensor(s.ids)[None]
            target = torch.tensor(s.weights[1:]) > 0
            ce = F.cross_entropy(model(input_ids=ids).logits[0, :-1].float(), ids[0, 1:], reduction="none")
            total += float(ce[target].sum())
            count += int(target.sum())
    return total / count


# --- main --------------------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "corpora" / "llamafactory")
    ap.add_argument("--dataset", default="alpaca_zh_demo")
    ap.add_argument("--lf-venv", type=Path, default=Path("/work/peers/lf"))
    ap.add_argument("--runs", type=int, default=3, help="rounds; each runs every side once (order alternates)")
    ap.add_argument("--samples", type=int, default=900, help="training samples (at most what fits the cutoff)")
    ap.add_argument("--val", type=int, default=100, help="held-out samples (every 10th that fits)")
    ap.add_argument("--cutoff", type=int, default=512, help="LF cutoff_len = danlu data.seq_len")
    ap.add_argument("--batch", type=int, default=8, help="samples per optimizer step (LF per_device_train_batch_size)")
    ap.add_argument("--danlu-rows", type=int, default=0,
                    help="packed rows per danlu step (0: as many as hold about --batch samples)")
    ap.add_argument("--epochs", type=float, default=1.0)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--warmup", type=float, default=0.1, help="warm-up share of each side's steps")
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="both sides: danlu train.precision, LF bf16 (autocast; weights and optimizer stay fp32)")
    ap.add_argument("--threads", type=int, default=2, help="torch threads of every training process")
    ap.add_argument("--no-unpacked", action="store_true", help="skip the danlu packing-off side")
    ap.add_argument("--candidate-src", type=Path,
                    help="also run danlu packed from this source folder (a patched copy of src/, put ahead of the "
                         "editable install on PYTHONPATH): measures a change in the same rounds, tree untouched")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (its path is printed)")
    args = ap.parse_args()

    import numpy as np
    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    from danlu.train.sft_batches import epoch_order, plan_rows

    t0 = time.time()
    load = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="bench-sft-"))
    print(f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores; "
          f"torch {torch.__version__}, transformers {transformers.__version__}; work folder {work}")

    records, rows = import_records(args.corpus, args.dataset, work)
    model_dir = build_model(records, work / "model", args)
    samples = render(records, model_dir)
    fits = [i for i, s in enumerate(samples) if len(s.ids) <= args.cutoff]
    val = fits[::10][: args.val]
    held = set(val)
    train = [i for i in fits if i not in held][: args.samples]
    files = write_sides(work, records, rows, train, val)
    lengths = np.array([len(samples[i].ids) for i in train])
    real_tokens = int(lengths.sum()) * int(args.epochs) if args.epochs == int(args.epochs) else None
    n_params = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_pretrained(model_dir).parameters())
    print(f"data: {args.dataset} {len(records)} records, {len(fits)} fit cutoff {args.cutoff}; train {len(train)} "
          f"samples ({int(lengths.sum()):,} tokens, mean {lengths.mean():.0f}, max {lengths.max()}), val {len(val)}; "
          f"model Llama d={args.hidden} L={args.layers} vocab {args.vocab} ({n_params / 1e6:.2f}M params)")

    lf_python = args.lf_venv / "bin" / "python"
    have_lf = (args.lf_venv / "bin" / "llamafactory-cli").exists()
    if have_lf:
        print(check_templates(lf_python, model_dir, files["lf_dir"], samples, train, val))
    else:
        print(f"LLaMA-Factory skipped: no {args.lf_venv}/bin/llamafactory-cli (--lf-venv)")

    # steps: LF takes ceil(samples / batch); danlu packed takes its planned rows / rows per step
    order = epoch_order(np.arange(len(train)), np.ones(len(train)), args.epochs, 0)
    packed_rows = len(plan_rows(order, lengths, args.cutoff, True, 256))
    rows_per_step = args.danlu_rows or max(1, round(args.batch * packed_rows / len(order)))
    steps = {"LF": math.ceil(len(order) / args.batch), "danlu packed": math.ceil(packed_rows / rows_per_step),
             "danlu unpacked": math.ceil(len(order) / args.batch)}
    warm = {k: math.ceil(args.warmup * v) for k, v in steps.items()}
    env = {**OFFLINE, "PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"),
           "OMP_NUM_THREADS": str(args.threads), "MKL_NUM_THREADS": str(args.threads)}
    sides = {"danlu packed": lambda: run_danlu("danlu_packed", danlu_config(
                 model_dir, files, args, True, rows_per_step, warm["danlu packed"]), work, env)}
    if args.candidate_src:
        candidate_env = {**env, "PYTHONPATH": str(args.candidate_src.resolve())}
        sides["danlu candidate"] = lambda: run_danlu("danlu_candidate", danlu_config(
            model_dir, files, args, True, rows_per_step, warm["danlu packed"]), work, candidate_env)
        print(f"danlu candidate: danlu packed run from {args.candidate_src}")
    if have_lf:
        sides["LF"] = lambda: run_lf(lf_config(model_dir, files["lf_dir"], work / "lf_out", args, warm["LF"]), work,
                                     env, args.lf_venv)
    if not args.no_unpacked:
        sides["danlu unpacked"] = lambda: run_danlu("danlu_unpacked", danlu_config(
            model_dir, files, args, False, args.batch, warm["danlu unpacked"]), work, env)
    print(f"per step: LF {args.batch} samples; danlu packed {rows_per_step} rows of <= {args.cutoff} tokens "
          f"({packed_rows} rows for {len(order)} samples, ~{len(order) / packed_rows * rows_per_step:.1f} samples); "
          f"danlu unpacked {args.batch} samples. lr {args.lr:g} cosine to 0, warm-up {args.warmup:.0%} of steps, "
          f"{args.epochs:g} epoch(s), {args.precision}, {args.threads} threads")

    results: dict[str, list[dict]] = {k: [] for k in sides}
    failed = []
    names = list(sides)
    for rnd in range(args.runs):
        for name in (names if rnd % 2 == 0 else names[::-1]):
            r = sides[name]()
            if "failed" in r:
                failed.append(f"{name} (round {rnd + 1}): {r['failed']}")
                print(f"FAILED {name} round {rnd + 1}: {r['failed']}", flush=True)
                continue
            r["val_loss"] = val_loss(r["model"], [samples[i] for i in val])
            results[name].append(r)
            print(f"  round {rnd + 1} {name:<15} {r['steps']:>4} steps {r['train_s']:7.1f}s train "
                  f"{r['cpu_s']:7.1f} CPU-s {r['wall_s']:7.1f}s wall {r['real'] / r['train_s']:6.0f} real tok/s "
                  f"{r['real'] / r['cpu_s']:6.0f} per CPU-s  val loss {r['val_loss']:.4f}  load {os.getloadavg()[0]:.2f}",
                  flush=True)

    counted = {name: {r["real"] for r in rs} for name, rs in results.items() if rs}
    if real_tokens is not None:
        for name, seen in counted.items():
            if seen != {real_tokens}:
                print(f"warning: {name} trained on {sorted(seen)} real tokens, the data has {real_tokens}")
    base = val_loss(model_dir, [samples[i] for i in val])
    counted_text = f"{real_tokens:,}" if real_tokens is not None else "(fractional epochs: per side)"
    print(f"\nmedians of {args.runs} run(s); real tokens = the {len(train)} training samples' {counted_text} tokens "
          f"x {args.epochs:g} epoch(s) (every side's batches held exactly these); val loss before training {base:.4f}")
    head = (f"{'side':<16}{'steps':>6}{'train s':>9}{'wall s':>8}{'real tok/s':>12}{'vs LF':>7}{'CPU s':>8}"
            f"{'tok/CPU-s':>11}{'vs LF':>7}{'padding':>9}{'peak RSS MB':>13}{'val loss':>10}")
    print(head)
    print("-" * len(head))
    med = {}
    for name, rs in results.items():
        if not rs:
            continue
        m = {k: statistics.median(r[k] for r in rs) for k in ("train_s", "wall_s", "cpu_s", "rss_mb", "val_loss")}
        m["tps"] = statistics.median(r["real"] / r["train_s"] for r in rs)
        m["tpc"] = statistics.median(r["real"] / r["cpu_s"] for r in rs)
        m["steps"], m["pad"] = rs[0]["steps"], 1 - rs[0]["real"] / rs[0]["positions"]
        med[name] = m
    for name, m in med.items():
        ratio, cpu_ratio = (f"{m[k] / med['LF'][k]:.2f}x" if "LF" in med else "-" for k in ("tps", "tpc"))
        print(f"{name:<16}{m['steps']:>6}{m['train_s']:>9.1f}{m['wall_s']:>8.1f}{m['tps']:>12,.0f}{ratio:>7}"
              f"{m['cpu_s']:>8.1f}{m['tpc']:>11,.0f}{cpu_ratio:>7}{m['pad']:>9.1%}{m['rss_mb']:>13,.0f}"
              f"{m['val_loss']:>10.4f}")
    # On a shared machine the least-disturbed run says most about each side's own speed (timeit's rule)
    best = {name: max(r["real"] / r["train_s"] for r in rs) for name, rs in results.items() if rs}
    if "LF" in best:
        print(f"best of {args.runs} (real tok/s, vs LF): " + "; ".join(
            f"{name} {v:,.0f} {v / best['LF']:.2f}x" for name, v in best.items()))
    for name, rs in results.items():
        if rs and name.startswith("danlu"):
            r = rs[0]
            print(f"{name}: report.json stream.pad_fraction {r['report_pad_fraction']:.1%} vs "
                  f"{1 - r['real'] / r['positions']:.1%} of the positions its batches held; danlu's own val loss "
                  f"{r['own_val_loss']:.4f} (its packed validation rows); loop clock {r['train_s']:.1f}s, observer "
                  f"{r['loop_s']:.1f}s")
    if "LF" in results and results["LF"]:
        r = results["LF"][0]
        print(f"LF: HF train_runtime {r['train_s']:.1f}s vs first-to-last training_step {r['loop_s']:.1f}s")
    for name in ("danlu packed", "danlu candidate"):
        if "LF" in med and name in med:
            d, lf = med[name], med["LF"]
            print(f"{name} / LF real-token throughput {d['tps'] / lf['tps']:.2f}x per train second, "
                  f"{d['tpc'] / lf['tpc']:.2f}x per CPU second (target >= 2x); val loss danlu - LF "
                  f"{d['val_loss'] - lf['val_loss']:+.4f}")
    print(f"load average at end {' '.join(f'{x:.2f}' for x in os.getloadavg())}; total {time.time() - t0:.0f}s")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    if failed:
        print("failed:\n  " + "\n  ".join(failed), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
