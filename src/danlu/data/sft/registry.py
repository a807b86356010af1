"""LLaMA-Factory's dataset registry (`data/dataset_info.json`), read strictly, so an LF user points danlu at their
`data/` folder unchanged.

Each entry: file_name (a file or folder beside the registry), formatting (alpaca | sharegpt | openai), ranking,
columns, tags, num_samples, split, file_sha1. Where LLaMA-Factory silently ignores a misspelt key ("format" for
"formatting" reads the data as alpaca), danlu stops and names it. Hub entries (hf_hub_url, ms_hub_url,
om_hub_url, script_url, cloud_file_name) are refused: danlu never downloads.
"""

from __future__ import annotations

import difflib
import hashlib
import json
from pathlib import Path

from danlu.data.sft.spec import COLUMNS, FORMATS, MEDIA_COLUMNS, TAGS, DatasetSpec

REGISTRY = "dataset_info.json"
HUB_KEYS = ("hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name")
ENTRY_KEYS = ("file_name", "formatting", "ranking", "columns", "tags", "num_samples", "split", "subset", "folder",
              "file_sha1", *HUB_KEYS)
DATA_SUFFIXES = (".json", ".jsonl", ".csv", ".parquet")


class RegistryError(ValueError):
    """A dataset_info.json entry danlu cannot read as its author meant; the message names file, entry and key."""


def registry_path(path: str | Path) -> Path | None:
    """The registry an input stands for: a dataset_info.json, or a folder holding one."""
    p = Path(path)
    if p.is_dir() and (p / REGISTRY).is_file():
        return p / REGISTRY
    return p if p.is_file() and p.name == REGISTRY else None


def load_registry(path: Path) -> dict:
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RegistryError(f"{path}: cannot read the dataset registry: {e}") from None
    if not isinstance(info, dict):
        raise RegistryError(f"{path}: expected an object of dataset entries, got {type(info).__name__}")
    return info


def dataset_specs(path: Path, names: list[str]) -> tuple[list[DatasetSpec], list[str]]:
    """The named entries of registry `path` as DatasetSpecs, and warnings. Raises RegistryError for an unknown
    name, a misspelt key, a hub entry, a missing file or a mapping that does not fit the formatting."""
    info = load_registry(path)
    if not names:
        raise RegistryError(f"{path}: name the datasets to read (--dataset NAME, comma-separated or repeated); "
                            f"local ones here: {', '.join(local_datasets(path, info)) or 'none'}")
    specs, warnings = [], []
    for name in names:
        if name not in info:
            close = difflib.get_close_matches(name, list(info), n=3)
            hint = f" (did you mean {', '.join(map(repr, close))}?)" if close else ""
            raise RegistryError(f"{path}: no dataset {name!r}{hint}")
        spec, warn = _spec(path, name, info[name])
        specs.append(spec)
        warnings += warn
    return specs, warnings


def local_datasets(path: Path, info: dict) -> list[str]:
    """Entries whose file_name exists beside the registry, with their kind ("name (ranking)")."""
    out = []
    for name, entry in info.items():
        if isinstance(entry, dict) and "file_name" in entry and (path.parent / str(entry["file_name"])).exists():
            kind = "ranking" if entry.get("ranking") else "kto" if "kto_tag" in (entry.get("columns") or {}) else "sft"
            out.append(f"{name} ({kind})")
    return out


def _spec(path: Path, name: str, entry: object) -> tuple[DatasetSpec, list[str]]:
    at = f"{path}: dataset '{name}'"
    if not isinstance(entry, dict):
        raise RegistryError(f"{at}: expected an object, got {type(entry).__name__}")
    for key in entry:
        if key not in ENTRY_KEYS:
            raise RegistryError(f"{at}: unknown key {key!r}{_suggest(key, ENTRY_KEYS)} (LLaMA-Factory ignores it "
                                "silently; danlu does not)")
    hub = [k for k in HUB_KEYS if k in entry]
    if hub:
        raise RegistryError(f"{at}: {hub[0]}={entry[hub[0]]!r} is a remote dataset; danlu never downloads: fetch it "
                            "yourself and give file_name (and remove the URL)")
    if "file_name" not in entry:
        raise RegistryError(f"{at}: no file_name")
    target = path.parent / str(entry["file_name"])
    if not target.exists():
        raise RegistryError(f"{at}: file_name {entry['file_name']!r} does not exist ({target})")
    formatting = entry.get("formatting", "alpaca")
    if formatting not in FORMATS:
        raise RegistryError(f"{at}: formatting {formatting!r} is not one of {', '.join(FORMATS)}")
    ranking = entry.get("ranking", False)
    if not isinstance(ranking, bool):
        raise RegistryError(f"{at}: ranking must be true or false, got {ranking!r}")
    columns = _mapping(entry, "columns", at)
    for key in columns:
        if key in MEDIA_COLUMNS:
            raise RegistryError(f"{at}: columns.{key}: danlu trains text models; multimodal data is not supported")
        if key not in COLUMNS[formatting]:
            other = [f for f in FORMATS if key in COLUMNS[f]]
            why = (f" belongs to {'/'.join(other)} formatting, and this entry's formatting is {formatting}"
                   + (" (the default: did you mean to set formatting?)" if "formatting" not in entry else "")
                   if other else _suggest(key, COLUMNS[formatting]))
            raise RegistryError(f"{at}: columns.{key}{why}")
    tags = _mapping(entry, "tags", at)
    if tags and formatting == "alpaca":
        raise RegistryError(f"{at}: tags apply to sharegpt/openai formatting, and this entry's formatting is alpaca")
    for key in tags:
        if key not in TAGS:
            raise RegistryError(f"{at}: tags.{key}: unknown tag{_suggest(key, TAGS)}")
    n = entry.get("num_samples")
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise RegistryError(f"{at}: num_samples must be a positive integer, got {n!r}")
    if entry.get("split", "train") != "train":
        raise RegistryError(f"{at}: split {entry['split']!r}: a local file is one split (train); give the file "
                            "of that split as file_name")
    warnings = [f"{at}: {k}={entry[k]!r} applies to hub datasets and is ignored for a local file"
                for k in ("subset", "folder") if k in entry]
    files = _files(target, at)
    if "file_sha1" in entry and target.is_file():
        sha1 = hashlib.sha1(target.read_bytes()).hexdigest()
        if sha1 != entry["file_sha1"]:
            warnings.append(f"{at}: file_sha1 does not match {target.name} (the file changed since it was registered)")
    return DatasetSpec(name=name, files=files, formatting=formatting, ranking=ranking, columns=columns, tags=tags,
                       num_samples=n, registry=path), warnings


def _mapping(entry: dict, key: str, at: str) -> dict:
    value = entry.get(key) or {}
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        raise RegistryError(f"{at}: {key} must map names to field names (strings), got {value!r}")
    return value


def _files(target: Path, at: str) -> list[Path]:
    if target.is_file():
        return [target]
    files = sorted(p for p in target.rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES)
    if not files:
        raise RegistryError(f"{at}: folder {target} holds no {'/'.join(DATA_SUFFIXES)} files")
    return files


def _suggest(key: str, allowed) -> str:
    close = difflib.get_close_matches(key, list(allowed), n=1)
    return f" (did you mean {close[0]!r}?)" if close else f" (allowed: {', '.join(allowed)})"
