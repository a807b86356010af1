"""Before training: parameters, FLOPs, expected time at the measured throughput, memory; MFU's yardsticks."""

from __future__ import annotations

import time

import torch

from danlu.model.create import count_parameters


def measure_matmul_flops(dtype: torch.dtype, device: torch.device, seconds: float = 0.3, n: int = 0,
                         repeats: int = 5) -> float:
    """Achieved matmul FLOP/s for square n x n matrices (the peak MFU is measured against): the best of
    `repeats` short timings after a warm-up. One long timing averages in whatever else the machine was doing
    (another process, a throttled core), which understates the peak and pushes MFU past 100% later; the best
    short run is the machine's real capacity."""
    n = n or (4096 if device.type == "cuda" else 512)
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)
    a @ b  # warm up
    _sync(device)
    best = 0.0
    for _ in range(max(1, repeats)):
        iters, t0 = 0, time.perf_counter()
        while True:
            a @ b
            iters += 1
            _sync(device)
            if time.perf_counter() - t0 >= seconds / max(1, repeats):
                break
        best = max(best, 2 * n**3 * iters / (time.perf_counter() - t0))
    return best


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resolve_precision(precision: str, device: torch.device) -> tuple[str, dict[str, float]]:
    """'auto' -> 'bf16' where bf16 matmuls are faster than fp32 here, else 'fp32'; also returns the measured
    GFLOP/s. Measured rather than guessed: CPUs without AVX-512 BF16/AMX run bf16 matmuls far slower (one
    AMD EPYC measured 180 GFLOP/s fp32 vs 1 GFLOP/s bf16), with them about twice as fast."""
    peaks = {"fp32": measure_matmul_flops(torch.float32, device)}
    if precision != "fp32":
        peaks["bf16"] = measure_matmul_flops(torch.bfloat16, device, seconds=0.3)
    if precision == "auto":
        precision = "bf16" if peaks["bf16"] > 1.2 * peaks["fp32"] else "fp32"
    return precision, peaks


def flops_per_token(model: torch.nn.Module, seq_len: int) -> float:
    """Training FLOPs per token: 6 x matmul parameters (all but the input embedding lookup; a tied output
    head still costs its matmul) + attention scores 12 x layers x hidden x seq_len (PaLM appendix B)."""
    cfg = model.config
    n = count_parameters(model) - model.get_input_embeddings().weight.numel()
    out = model.get_output_embeddings()
    if out is not None and out.weight is model.get_input_embeddings().weight:
        n += out.weight.numel()
    return 6 * n + 12 * cfg.num_hidden_layers * cfg.hidden_size * seq_len


def memory_estimate(model: torch.nn.Module, micro_batch: int, seq_len: int, precision: str,
                    activation_checkpointing: bool, world_size: int = 1, fsdp: bool = False) -> dict[str, float]:
    """Rough bytes per process: fp32 weights + grads + AdamW moments (16 B/param, sharded under FSDP),
    activations (~34 x hidden bytes per token per layer in 16-bit, Korthikanti et al. 2022; 2 x hidden with
    activation checkpointing) and the fp32 logits with their gradient."""
    cfg = model.config
    n = count_parameters(model)
    states = 16 * n / (world_size if fsdp else 1)
    per_layer = (2 if activation_checkpointing else 34) * cfg.hidden_size * (1 if precision == "bf16" else 2)
    acts = micro_batch * seq_len * cfg.num_hidden_layers * per_layer
    logits = micro_batch * seq_len * cfg.vocab_size * 4 * 3
    return {"weights_grads_optimizer": states, "activations": acts, "logits": logits,
            "total": states + acts + logits}


def measure_step_seconds(model: torch.nn.Module, objective, batch: dict, precision: str, device: torch.device,
                         steps: int = 2) -> float:
    """Seconds per forward+backward of one micro-batch (after one untimed warm-up); gradients are cleared,
    weights and optimizer untouched, so the training run itself is unaffected."""
    from danlu.train.distributed import autocast

    batch = {k: v.to(device) for k, v in batch.items()}
    times = []
    for i in range(steps + 1):
        _sync(device)
        t0 = time.perf_counter()
        with autocast(precision, device):
            loss = objective.loss_sum(model, batch)
        loss.backward()
        _sync(device)
        if i:
            times.append(time.perf_counter() - t0)
    for p in model.parameters():
        p.grad = None
    return min(times)


def fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f}"


def fmt_count(n: float) -> str:
    for unit, div in (("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return f"{n:.0f}"


def fmt_duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def mfu(tokens_per_s: float, fpt: float, peak: float, world_size: int = 1) -> float | None:
    """Model FLOPs utilisation, at most 1: a measured peak below the achieved rate (measured while the machine
    was busy) must not report more than the machine can do."""
    if not peak or not fpt:
        return None
    return round(min(1.0, tokens_per_s * fpt / (peak * world_size)), 4)


def summary(n_params: int, tokens: int, fpt: float, step_s: float, tokens_per_step: int, steps: int,
            memory: dict[str, float], peak: float, world_size: int) -> tuple[str, dict]:
    """The printed pre-training estimate and its numbers."""
    tps = tokens_per_step / max(step_s, 1e-9)
    total_flops = fpt * tokens
    est = {"parameters": n_params, "tokens": tokens, "flops_6nd": 6 * n_params * tokens,
           "flops": total_flops, "measured_tokens_per_s": round(tps, 1),
           "expected_seconds": round(steps * step_s, 1), "memory_bytes": {k: int(v) for k, v in memory.items()},
           "expected_mfu": mfu(tps, fpt, peak, world_size)}
    text = (f"estimate: {fmt_count(n_params)} parameters, {fmt_count(tokens)} tokens, "
            f"{total_flops:.3g} FLOPs (6ND = {6 * n_params * tokens:.3g}); measured {tps:,.0f} tokens/s "
            f"-> ~{fmt_duration(steps * step_s)} for {steps} steps; memory ~{fmt_bytes(memory['total'])} per process "
            f"(weights+grads+AdamW {fmt_bytes(memory['weights_grads_optimizer'])}, activations "
            f"{fmt_bytes(memory['activations'])}, logits {fmt_bytes(memory['logits'])})"
            + (f"; expected MFU {est['expected_mfu']:.1%}" if est["expected_mfu"] is not None else ""))
    return text, est
