"""DPO: danlu vs TRL's DPOTrainer (trl 1.16, its own venv, CPU), the same tiny Llama, the same pairs, the same pairs
per step and cutoff, in one run: the loss of the first step (same weights, same batch) and pairs/s, peak memory.

    .venv/bin/python benchmarks/bench_dpo.py [--runs 3] [--pairs 96] [--batch 8] [--cutoff 512]
        [--trl-python /work/peers/trl/bin/python] [--corpus ../shared/corpora/llamafactory] [--threads 2]

Setup (once, in a temp folder):
- data: `danlu data pref CORPUS --dataset dpo_en_demo` (danlu's importer of LF's ranking data), rendered by danlu's
  `train dpo` data step with the model's chat template (Qwen2.5's, tests/chat_templates.py); pairs with a sequence
  over the cutoff are left out, the first --pairs train both sides.
- model A: the tiny Llama of bench_sft.py (byte-level BPE trained on the pairs' text, d=256, 4 layers, tied
  embeddings, random init), saved once; both sides start from it. Model B: the same shape, another seed.
- TRL gets danlu's token ids (prompt_ids / chosen_ids / rejected_ids: the prompt with the assistant header, the
  answer with its <|im_end|>; its _prepare_dataset is skipped), so both score exactly the same tokens.
First-step loss: policy A, reference B (so the loss is not the log 2 every DPO run starts at), the first --batch
pairs, fp32, sigmoid, beta 0.1: danlu's objective (packed rows, precomputed reference) vs TRL's compute_loss on
its collated batch (padded, live reference). Must agree to 1e-4.
Throughput, each side in its own process (OMP/torch threads = --threads, offline, fp32, full fine-tuning, one epoch
over the pairs, --batch pairs per step, no accumulation, constant LR, AdamW 0.9/0.999, no weight decay, grad clip
1, no evaluation, no checkpoints during training):
- danlu precompute: `danlu train dpo` as configured by default (reference log-probs computed once before
  training; packing on: a step's pairs share rows of 2 x cutoff tokens, document-masked; share_prompt on: each
  pair's prompt goes through the model once).
- danlu copy: the same with a live frozen reference copy (what TRL does by default).
- TRL live: DPOTrainer defaults for the reference (a second model, run every step), bf16 and gradient
  checkpointing off (its defaults turn them on; here both sides are fp32 without recomputation).
- TRL precompute: precompute_ref_log_probs=True.
Measured: pairs/s = pairs / the training loop's own seconds (danlu's train_s, TRL's train_runtime; loading, data
preparation and the reference precompute excluded and printed apart), peak RSS of the process (ru_maxrss via wait4),
padding share (padded positions / positions of the batches trained). Runs interleave (order reversed each round);
medians are printed.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from bench_sft import OFFLINE, build_model, run_process, write_yaml  # noqa: E402  (the same model and process helpers)

TRL_SCRIPT = r'''
import json, sys, time
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, DPOTrainer

mode, model_dir, ref_dir, rows_file, out_dir, batch, lr, threads = sys.argv[1:9]
batch, lr, threads = int(batch), float(lr), int(threads)
torch.set_num_threads(threads)
rows = json.load(open(rows_file))


class PreTokenized(DPOTrainer):
    """The dataset already holds danlu's token ids: skip TRL's own chat-template tokenization."""

    def _prepare_dataset(self, dataset, *args, **kwargs):
        return dataset


args = DPOConfig(output_dir=out_dir, per_device_train_batch_size=batch, num_train_epochs=1, learning_rate=lr,
                 lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
                 adam_beta1=0.9, adam_beta2=0.999, beta=0.1, loss_type=["sigmoid"], max_length=None, bf16=False,
                 gradient_checkpointing=False, use_cpu=True, report_to=[], save_strategy="no", logging_steps=10,
                 disable_tqdm=True, seed=0, dataloader_num_workers=0, precompute_ref_log_probs=mode == "precompute")
tok = AutoTokenizer.from_pretrained(model_dir)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
if mode == "loss":
    ref = AutoModelForCausalLM.from_pretrained(ref_dir, dtype=torch.float32)
    trainer = PreTokenized(model=model, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows[:batch]),
                           processing_class=tok)
    inputs = trainer.data_collator(rows[:batch])
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, inputs)
    print(json.dumps({"loss": float(loss)}))
    sys.exit(0)
t0 = time.perf_counter()
trainer = PreTokenized(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
init_s = time.perf_counter() - t0
seen = {"positions": 0, "real": 0}
step = trainer.compute_loss


def counting(model, inputs, *a, **k):
    seen["positions"] += int(inputs["attention_mask"].numel())
    seen["real"] += int(inputs["attention_mask"].sum())
    return step(model, inputs, *a, **k)


trainer.compute_loss = counting
result = trainer.train()
print(json.dumps({"train_s": result.metrics["train_runtime"], "steps": result.global_step, "init_s": init_s,
                  **seen}))
'''


def prepare(args, work: Path) -> dict:
    """Import, build models A and B, render with danlu, choose the pairs; returns paths and the pair count."""
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    from danlu.config import validate
    from danlu.data.sft.stage import preference_data
    from danlu.train.config import DPOConfig
    from danlu.train.pref_data import PrefStore
    from danlu.train.pref_data import prepare as render

    preference_data([args.corpus], work / "import", datasets=[args.dataset], task_type="qa", progress=False)
    records = [json.loads(x) for x in (work / "import" / "pref.jsonl").read_text(encoding="utf-8").splitlines()]
    texts = [{"messages": r["messages"] + [r["chosen"], r["rejected"]]} for r in records]
    model_a = build_model(texts, work / "model-a", args)
    model_b = work / "model-b"
    shutil.copytree(model_a, model_b)
    torch.manual_seed(1)
    LlamaForCausalLM(LlamaForCausalLM.from_pretrained(model_a).config).save_pretrained(model_b)

    tok = AutoTokenizer.from_pretrained(model_a)
    (work / "all.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), "utf-8")
    cfg = validate({"model": {"path": str(model_a)}, "data": {"train": [str(work / "all.jsonl")],
                                                                "seq_len": args.cutoff}, "train": {"max_steps": 1}},
                   DPOConfig)
    report = render(work / "render", tok, model_a, tok.chat_template, cfg.data, "pairs")
    store = PrefStore(work / "render" / "data" / "train")
    n = min(args.pairs, store.n_units)
    ids = store.ids()
    by_id = {r["id"]: r for r in records}
    chosen = [by_id[ids[2 * k]] for k in range(n)]
    (work / "train.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in chosen), "utf-8")
    rows = []
    for k in range(n):
        (c, wc), (r, wr) = store.sequence(2 * k), store.sequence(2 * k + 1)
        first = int(next(i for i, w in enumerate(wc) if w > 0))
        if list(c[:first]) != list(r[:first]) or not (wc[first:] > 0).all() or not (wr[first:] > 0).all():
            sys.exit(f"pair {k}: chosen and rejected do not share the prompt tokens, or the answer is not one target")
        rows.append({"prompt_ids": c[:first].tolist(), "chosen_ids": c[first:].tolist(),
                     "rejected_ids": r[first:].tolist()})
    (work / "trl_rows.json").write_text(json.dumps(rows), "utf-8")
    kept = report["counts"]["kept"]
    return {"model_a": model_a, "model_b": model_b, "pairs": n, "store": store, "rendered": kept,
            "filtered": report["counts"]["filtered"], "imported": len(records)}


def danlu_first_loss(setup: dict, args) -> float:
    import torch
    from transformers import AutoModelForCausalLM

    from danlu.train.config import DPOLossConfig
    from danlu.train.distributed import DistInfo
    from danlu.train.dpo import dpo_objective
    from danlu.train.pref_batches import units_batch
    from danlu.train.pref_forward import precompute

    a = AutoModelForCausalLM.from_pretrained(setup["model_a"], dtype=torch.float32)
    b = AutoModelForCausalLM.from_pretrained(setup["model_b"], dtype=torch.float32)
    store = setup["store"]
    ref = precompute(b, store, args.batch, args.cutoff, True, "fp32", DistInfo(), "reference B", share_prompt=True)
    batch = units_batch(list(range(args.batch)), store, args.cutoff, True, ref, share_prompt=True)
    with torch.no_grad():
        return float(dpo_objective(DPOLossConfig(), "pairs").loss_sum(a, batch)) / args.batch


def run_trl(mode: str, setup: dict, work: Path, args, env: dict) -> dict:
    out = work / f"trl-{mode}"
    shutil.rmtree(out, ignore_errors=True)
    cmd = [args.trl_python, "-c", TRL_SCRIPT, mode, str(setup["model_a"]), str(setup["model_b"]),
           str(work / "trl_rows.json"), str(out), str(args.batch), str(args.lr), str(args.threads)]
    log = work / f"trl-{mode}.log"
    rc, wall, rss = run_process(cmd, env, log)
    lines = log.read_text(encoding="utf-8").splitlines()
    if rc or not lines or not lines[-1].startswith("{"):
        sys.exit(f"TRL ({mode}) failed (exit {rc}); see {log}:\n" + "\n".join(lines[-20:]))
    return {**json.loads(lines[-1]), "wall_s": wall, "rss_mb": rss}


def danlu_config(setup: dict, work: Path, args, reference: str) -> dict:
    return {"model": {"path": str(setup["model_a"]), "method": "full"},
            "data": {"train": [str(work / "train.jsonl")], "seq_len": args.cutoff, "packing": True, "seed": 0},
            "dpo": {"loss": "sigmoid", "beta": 0.1, "reference": reference},
            "train": {"epochs": 1, "batch_size": args.batch, "micro_batch_size": args.batch, "precision": "fp32"},
            "optim": {"lr": args.lr, "min_lr_ratio": 1.0, "weight_decay": 0.0, "betas": [0.9, 0.999],
                      "grad_clip": 1.0},
            "schedule": {"kind": "constant", "warmup_steps": 0},
            "spikes": {"enabled": False},
            "log": {"every": 10, "progress": False, "tensorboard": False},
            "eval": {"every": 0}, "checkpoint": {"every": 0, "keep_last": 1}}


def run_danlu(reference: str, setup: dict, work: Path, args, env: dict) -> dict:
    out = work / f"danlu-{reference}"
    shutil.rmtree(out, ignore_errors=True)
    cfg = write_yaml(work / f"danlu-{reference}.yaml", danlu_config(setup, work, args, reference))
    danlu = Path(sys.executable).with_name("danlu")
    log = work / f"danlu-{reference}.log"
    rc, wall, rss = run_process([str(danlu), "train", "dpo", str(cfg), "-o", str(out)], env, log)
    if rc:
        sys.exit(f"danlu ({reference}) failed (exit {rc}); see {log}:\n" + log.read_text()[-2000:])
    report = json.loads((out / "report.json").read_text(encoding="utf-8"))
    metrics = [json.loads(x) for x in (out / "metrics.jsonl").read_text(encoding="utf-8").splitlines()]
    return {"train_s": [m["train_s"] for m in metrics if "train_s" in m][-1], "steps": report["steps"],
            "init_s": report.get("reference_s") or 0.0, "wall_s": wall, "rss_mb": rss,
            "pad": report["stream"]["pad_fraction"], "units": report["stream"]["units_seen"]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--corpus", type=Path, default=REPO.parent / "shared" / "corpora" / "llamafactory")
    ap.add_argument("--dataset", default="dpo_en_demo")
    ap.add_argument("--trl-python", default="/work/peers/trl/bin/python")
    ap.add_argument("--runs", type=int, default=3, help="rounds; each runs every side once (order alternates)")
    ap.add_argument("--pairs", type=int, default=96, help="training pairs (at most those that fit the cutoff)")
    ap.add_argument("--batch", type=int, default=8, help="pairs per optimizer step (TRL per_device_train_batch_size)")
    ap.add_argument("--cutoff", type=int, default=512, help="tokens per sequence (prompt + answer)")
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2, help="torch threads of every training process")
    ap.add_argument("--sides", default="danlu-precompute,danlu-copy,trl-live,trl-precompute")
    ap.add_argument("--keep", action="store_true", help="keep the work folder (its path is printed)")
    args = ap.parse_args()

    import torch
    import transformers

    torch.set_num_threads(args.threads)
    transformers.utils.logging.disable_progress_bar()
    if not args.corpus.exists():
        sys.exit(f"{args.corpus} not found (the LLaMA-Factory demo data lives in ../shared/corpora/llamafactory)")
    work = Path(tempfile.mkdtemp(prefix="bench-dpo-"))
    env = {**OFFLINE, "PATH": os.environ["PATH"], "OMP_NUM_THREADS": str(args.threads), "HF_HOME": str(work / "hf")}
    try:
        setup = prepare(args, work)
        print(f"data: {setup['imported']} pairs imported from {args.dataset}, {setup['rendered']} fit the cutoff "
              f"{args.cutoff} ({setup['filtered']}); {setup['pairs']} train, {args.batch} per step; "
              f"model d={args.hidden} L={args.layers} vocab {args.vocab}, fp32, {args.threads} threads")
        ours = danlu_first_loss(setup, args)
        theirs = run_trl("loss", setup, work, args, env)["loss"]
        diff = abs(ours - theirs)
        print(f"first-step loss (policy A, reference B, the first {args.batch} pairs): danlu {ours:.6f}  TRL "
              f"{theirs:.6f}  |diff| {diff:.2e}  ({'agree' if diff <= 1e-4 else 'DISAGREE'} to 1e-4)")

        sides = args.sides.split(",")
        results: dict[str, list[dict]] = {s: [] for s in sides}
        for r in range(args.runs):
            for side in (sides if r % 2 == 0 else sides[::-1]):
                kind, mode = side.split("-", 1)
                res = run_danlu(mode, setup, work, args, env) if kind == "danlu" else \
                    run_trl(mode, setup, work, args, env)
                res["pairs_s"] = setup["pairs"] / res["train_s"]
                results[side].append(res)
                print(f"  round {r + 1} {side:<17} {res['pairs_s']:7.2f} pairs/s  train {res['train_s']:6.1f} s  "
                      f"peak RSS {res['rss_mb']:6.0f} MB", flush=True)

        med = {s: {k: statistics.median(x[k] for x in rs) for k in ("pairs_s", "train_s", "init_s", "rss_mb")}
               for s, rs in results.items()}
        print(f"\n{'side':<18}{'pairs/s':>9}{'train s':>9}{'ref/init s':>11}{'peak RSS MB':>13}{'padding':>9}")
        for s, rs in results.items():
            last = rs[-1]
            pad = last["pad"] if "pad" in last else 1 - last["real"] / last["positions"]
            m = med[s]
            print(f"{s:<18}{m['pairs_s']:>9.2f}{m['train_s']:>9.1f}{m['init_s']:>11.1f}{m['rss_mb']:>13.0f}{pad:>9.1%}")
        print("(ref/init s: danlu's reference precompute; TRL's trainer construction, its precompute included)")
        for a, b in (("danlu-precompute", "trl-live"), ("danlu-copy", "trl-live"),
                     ("danlu-precompute", "trl-precompute")):
            if a in med and b in med:
                print(f"{a} / {b}: {med[a]['pairs_s'] / med[b]['pairs_s']:.2f}x pairs/s, "
                      f"{med[a]['rss_mb'] / med[b]['rss_mb']:.2f}x peak RSS")
        if "danlu-precompute" in med and "trl-live" in med:
            a, b = med["danlu-precompute"], med["trl-live"]
            e2e = b["train_s"] / (a["train_s"] + a["init_s"])
            print(f"counting the precompute (one epoch): danlu-precompute / trl-live {e2e:.2f}x")
        return 0 if diff <= 1e-4 else 1
    finally:
        if args.keep:
            print(f"work folder kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
