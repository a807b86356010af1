"""A dataset to import: its files, source format and column/tag mapping, with LLaMA-Factory's defaults (its
`dataset_info.json` fields mean the same here), and the format detection for files given without a registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

FORMATS = ("alpaca", "sharegpt", "openai")

# LLaMA-Factory's column names per format (`columns` in dataset_info.json) and their defaults
COLUMNS = {
    "alpaca": {"prompt": "instruction", "query": "input", "response": "output", "history": None, "system": None,
               "tools": None, "chosen": None, "rejected": None, "kto_tag": None},
    "sharegpt": {"messages": "conversations", "system": None, "tools": None, "chosen": None, "rejected": None,
                 "kto_tag": None},
    "openai": {"messages": "messages", "system": None, "tools": None, "chosen": None, "rejected": None,
               "kto_tag": None, "completion": None},
}
MEDIA_COLUMNS = ("images", "videos", "audios")
# sharegpt role tags (`tags` in dataset_info.json) and their defaults
TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
        "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system"}


@dataclass
class DatasetSpec:
    name: str  # the registry's dataset name, or the file's stem
    files: list[Path]
    formatting: str  # alpaca | sharegpt | openai
    ranking: bool = False
    columns: dict[str, str | None] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    num_samples: int | None = None
    registry: Path | None = None  # the dataset_info.json it came from

    def __post_init__(self):
        self.columns = {**COLUMNS[self.formatting], **self.columns}
        self.tags = {**TAGS, **self.tags}

    @property
    def kind(self) -> str:
        """What the registry declares: ranking pairs, KTO (a kto_tag column), or SFT."""
        if self.ranking:
            return "preference"
        return "kto" if self.columns.get("kto_tag") else "sft"

    def where(self) -> str:
        return f"{self.registry}: dataset '{self.name}'" if self.registry else str(self.files[0])


def detect_format(row: dict) -> tuple[str, dict, dict]:
    """(formatting, columns, tags) for a row of a file given without a registry, from its fields: alpaca
    (instruction/output), sharegpt (conversations or messages of from/value turns), OpenAI/TRL messages
    (role/content), danlu's own records included. Raises ValueError when no format fits."""
    columns: dict = {}
    for key in ("chosen", "rejected", "completion"):
        if key in row:
            columns[key] = key
    kto = next((k for k in ("kto_tag", "label", "desirable") if isinstance(row.get(k), bool)), None)
    if kto:
        columns["kto_tag"] = kto
    for key in ("system", "tools"):
        if key in row and not isinstance(row.get(key), dict):
            columns[key] = key
    for key in ("conversations", "messages"):
        turns = row.get(key)
        if isinstance(turns, list) and turns and isinstance(turns[0], dict):
            if "from" in turns[0] or "value" in turns[0]:
                return "sharegpt", {"messages": key, **columns}, {}
            return "openai", {"messages": key, **columns}, {}
    if "instruction" in row or "output" in row:
        if "history" in row:
            columns["history"] = "history"
        return "alpaca", columns, {}
    if "prompt" in row:  # TRL's prompt / chosen / rejected or prompt / completion / label
        return "openai", {"messages": "prompt", **columns}, {}
    raise ValueError(f"no known format fits the fields {sorted(row)[:12]} (alpaca: instruction/input/output; "
                     "sharegpt: conversations of from/value; openai: messages of role/content; TRL: prompt/...); "
                     "give --format, or a dataset_info.json")
