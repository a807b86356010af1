"""Training checkpoints: everything needed to continue exactly where a run stopped.

    OUT/checkpoints/step-00000200/
      config.json, model.safetensors   the model as a plain Hugging Face folder (loads with from_pretrained); for
                                       a LoRA run, the adapter folder (adapter_config.json, adapter_model.safetensors)
      trainable.safetensors            (runs with frozen parameters) the trainable parameters under their own names
      trainer_state.pt                 optimizer, LR scheduler, RNG states, data-stream position, loop state, and the
                                       run's settings (config, precision) so a resume can check what changed

trainer_state.pt holds only tensors and plain values and is loaded with `torch.load(weights_only=True)`: a
checkpoint folder made by someone else can hold data, never code (a pickle would run whatever it names).

A checkpoint is written into a hidden temp folder and renamed into place, so a killed run never leaves a
half-written checkpoint that a resume would pick up. Only the newest `keep_last` are kept. Model and optimizer
state go through torch.distributed.checkpoint's full (unsharded) state dicts, so the same code saves a plain,
DDP or FSDP model, and a checkpoint written by N processes resumes under any other number.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from danlu.runs import atomic_dir
from danlu.train.distributed import DistInfo, barrier, unwrap

STATE_FILE = "trainer_state.pt"
TRAINABLE_FILE = "trainable.safetensors"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """(step, folder) of every complete checkpoint under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = _STEP_DIR.match(p.name)
        if m and (p / STATE_FILE).exists():
            found.append((int(m.group(1)), p))
    return sorted(found)


def checkpoint_path(root: str | Path, step: int) -> Path:
    return Path(root) / f"step-{step:08d}"


def link_model_files(checkpoint: Path, folder: Path) -> None:
    """Put a checkpoint's HF model files (not its trainer state) into `folder` as hard links, copies where the
    filesystem refuses links."""
    if not (checkpoint / STATE_FILE).exists():
        raise FileNotFoundError(f"{checkpoint}: no complete checkpoint there to take the final model from")
    for f in checkpoint.iterdir():
        if f.is_file() and f.name not in (STATE_FILE, TRAINABLE_FILE):
            try:
                os.link(f, folder / f.name)
            except OSError:
                shutil.copy2(f, folder / f.name)


def latest_checkpoint(root: str | Path) -> Path | None:
    found = checkpoints(root)
    return found[-1][1] if found else None


def rng_state() -> dict:
    """Every RNG's state as tensors and plain values (what weights_only loading accepts)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    state = {"torch": torch.get_rng_state(),
             "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                       "has_gauss": int(has_gauss), "gauss": float(gauss)},
             "python": {"version": version, "internal": torch.tensor(internal, dtype=torch.int64),
                        "gauss_next": gauss_next}}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    py = state["python"]
    random.setstate((py["version"], tuple(int(x) for x in py["internal"].tolist()), py["gauss_next"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def has_frozen_parameters(model: torch.nn.Module) -> bool:
    return any(not p.requires_grad for p in model.parameters())


def save_checkpoint(root: str | Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler, stream_state: dict, loop_state: dict, info: DistInfo, keep_last: int = 3,
                    meta: dict | None = None, assets: Path | None = None) -> Path:
    """Write checkpoint `step` (every process must call this: gathering FSDP shards is collective). `meta`: the
    run's settings (JSON-able), kept for the resume to compare against; `assets`: a folder whose files go into
    every checkpoint (the tokenizer with its chat template, so any checkpoint serves as trained)."""
    from safetensors.torch import save_file

    root = Path(root)
    model_sd, optim_sd = get_state_dict(model, optimizer,
                                        options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    final = checkpoint_path(root, step)
    if info.is_main:
        # replacing an existing step: after a spike rollback, the old one is from the discarded stretch
        try:
            with atomic_dir(final) as tmp:
                save_hf(unwrap(model), tmp, model_sd)
                for f in sorted(Path(assets).iterdir()) if assets else ():
                    if f.is_file():
                        shutil.copy2(f, tmp / f.name)
                if has_frozen_parameters(model):  # the HF folder may hold only an adapter: keep what resume needs
                    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
                    save_file({k: v.contiguous() for k, v in model_sd.items() if k in trainable},
                              str(tmp / TRAINABLE_FILE))
                torch.save({"step": step, "optimizer": optim_sd, "scheduler": scheduler.state_dict(),
                            "stream": stream_state, "loop": loop_state, "rng": rng_state(),
                            "meta": json.dumps(meta or {})}, tmp / STATE_FILE)
        except OSError as e:  # a full disk, a folder made read-only: say where, keep what was there
            kept = ", ".join(p.name for _, p in checkpoints(root)) or "none yet"
            raise OSError(e.errno, f"cannot write checkpoint {final}: {e.strerror or e}. Earlier checkpoints are "
                          f"intact ({kept}); free space or fix permissions, then rerun with --resume") from None
        for _, old in checkpoints(root)[:-keep_last]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in root.glob(".step-*.tmp"):  # a write killed outright (SIGKILL) never ran atomic_dir's cleanup
            shutil.rmtree(stale, ignore_errors=True)
    barrier()
    return final


def read_state(path: str | Path) -> dict:
    """A checkpoint's trainer state, loaded with weights_only=True (tensors and plain values only)."""
    file = Path(path) / STATE_FILE
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:  # an UnpicklingError names what the file tried to load; say where and why it is refused
        raise ValueError(f"{file}: refused to load this checkpoint state: it is not plain tensors and values "
                         f"(danlu loads checkpoints with weights_only=True, so a file crafted to run code is "
                         f"rejected): {str(e).splitlines()[0][:300]}") from None
    state["meta"] = json.loads(state.get("meta") or "{}")
    return state


def checkpoint_meta(path: str | Path) -> dict:
    """The run settings a checkpoint was written with (config, precision), {} for older checkpoints."""
    return read_state(path)["meta"]


def save_hf(model: torch.nn.Module, folder: Path, state_dict: dict) -> None:
    """save_pretrained without transformers' per-save progress bar (it would break the training bar)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        model.save_pretrained(folder, state_dict=state_dict)
    finally:
        if was:
            hf_logging.enable_progress_bar()


def load_checkpoint(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    scheduler) -> dict:
    """Restore model, optimizer, scheduler and RNG from `path`; returns the saved state (step, stream, loop, meta).
    Every process reads the folder itself (one node, or a filesystem shared by the nodes)."""
    from safetensors.torch import load_file

    path = Path(path)
    state = read_state(path)
    if (path / TRAINABLE_FILE).exists():
        # frozen weights come from the base model, loaded identically at the start; only these were trained
        model_sd, strict = load_file(str(path / TRAINABLE_FILE)), False
    else:
        model_sd, strict = {}, True
        for f in sorted(path.glob("*.safetensors")):
            model_sd.update(load_file(f))
        _fill_tied(unwrap(model), model_sd)
    set_state_dict(model, optimizer, model_state_dict=model_sd, optim_state_dict=state["optimizer"],
                   options=StateDictOptions(full_state_dict=True, strict=strict))
    scheduler.load_state_dict(state["scheduler"])
    set_rng_state(state["rng"])
    return state


def _fill_tied(model: torch.nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """save_pretrained stores a tied output embedding once; put it back under its own key for loading."""
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if out is None or out.weight is not inp.weight:
        return
    keys = [n for n, p in model.named_parameters(remove_duplicate=False) if p is out.weight]
    present = next((k for k in keys if k in sd), None)
    if present is not None:
        for k in keys:
            sd.setdefault(k, sd[present])


def remove_after(root: str | Path, step: int) -> None:
    """Drop checkpoints newer than `step` (after a rollback they belong to a discarded stretch of training)."""
    for s, p in checkpoints(root):
        if s > step:
            shutil.rmtree(p, ignore_errors=True)
