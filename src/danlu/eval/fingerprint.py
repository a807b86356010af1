"""What an evaluation evaluated: the model folder and the data, by content, recorded in every suite's report.

`danlu run` skips an eval whose fingerprint is unchanged, and compare shows which models and data two runs
measured (and warns when two runs of one suite scored different data). Weights are hashed with xxh3-128
(several GB/s, so hashing a 7B model costs seconds, not minutes); small files (configs, tokenizer) too.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import xxhash

from danlu.jsonl import jsonl_files

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".gguf")
MODEL_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "chat_template.jinja", "tokenizer.model", "adapter_config.json")


def file_hash(path: Path, chunk: int = 1 << 24) -> str:
    h = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def model_fingerprint(model_dir: str | Path) -> dict:
    """{"path", "files": {name: {"bytes", "xxh3"}}, "lineage": ..., "key"} of a model folder (a HF model, a
    LoRA adapter, or a danlu training run's model/)."""
    from danlu.model.adapters import model_folder

    folder = model_folder(model_dir)
    files = {}
    for p in sorted(folder.iterdir()):
        if p.is_file() and (p.name in MODEL_FILES or p.suffix in WEIGHT_SUFFIXES):
            files[p.name] = {"bytes": p.stat().st_size, "xxh3": file_hash(p)}
    lineage = None
    if (folder / "lineage.json").exists():
        try:
            lineage = json.loads((folder / "lineage.json").read_text(encoding="utf-8"))
        except ValueError as e:
            raise ValueError(f"{folder / 'lineage.json'}: not valid JSON: {e}") from None
    key = xxhash.xxh3_128(json.dumps({"files": files, "lineage": lineage}, sort_keys=True).encode()).hexdigest()
    return {"path": str(folder.resolve()), "files": files, "lineage": lineage, "key": key}


def data_fingerprint(paths: Iterable[str | Path], suffixes: tuple[str, ...] = (".jsonl",)) -> dict:
    """{"files": {path: {"bytes", "xxh3"}}, "key"} of the data files a suite read (folders expanded)."""
    files = {}
    for p in jsonl_files(list(paths), suffixes):
        files[str(p)] = {"bytes": p.stat().st_size, "xxh3": file_hash(p)}
    key = xxhash.xxh3_128(json.dumps(sorted((v["xxh3"], v["bytes"]) for v in files.values())).encode()).hexdigest()
    return {"files": files, "key": key}


def eval_fingerprint(model: dict | None, data: dict, config: dict) -> dict:
    """The whole eval's identity: same model content + same data content + same options = same results."""
    key = xxhash.xxh3_128(json.dumps({"model": model and model["key"], "data": data["key"], "config": config},
                                     sort_keys=True, default=str).encode()).hexdigest()
    return {"model": model, "data": data, "key": key}
