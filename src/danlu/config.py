"""YAML -> typed config objects, validated up front.

Every stage describes its options as a pydantic model with `extra="forbid"`, so a misspelt key is an error
that names the file, the key path and the keys (or values) that are allowed; nothing is silently ignored.
A stage's defaults live in its model only. `build_config` is the one way a command assembles its config: the
YAML file's values, then the flags the user gave, then `--set key.sub=value` overrides, validated together,
with each error attributed to where its value came from.
"""

from __future__ import annotations

import typing
from pathlib import Path
from typing import Any, Iterable, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

M = TypeVar("M", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, values are validated on assignment."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ConfigError(ValueError):
    """A config file (or dict) that does not match its schema; the message says where and what is allowed."""


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The model classes an annotation can hold (through Optional, list, dict, Annotated and unions)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    out: list[type[BaseModel]] = []
    for arg in typing.get_args(annotation) or ():
        out += [m for m in _models(arg) if m not in out]
    return out


def _tagged(models: list[type[BaseModel]], part: Any) -> list[type[BaseModel]]:
    """The members of a union that pydantic's error location names by `part`: a discriminated union names the
    member by its tag (`op: Literal["length"]` -> "length"), a plain union by its class name."""
    out = []
    for m in models:
        if part == m.__name__ or any(typing.get_origin(f.annotation) is typing.Literal and
                                     typing.get_args(f.annotation) == (part,) for f in m.model_fields.values()):
            out.append(m)
    return out


def _walk(model: type[BaseModel], loc: tuple, prefix: bool = False) -> tuple[type[BaseModel] | None, tuple]:
    """The model class found at `loc` inside `model` (to list the keys allowed there), and `loc` as the user
    wrote it: without the union tags pydantic inserts (steps.1.length.min_chars -> steps.1.min_chars)."""
    candidates: list[type[BaseModel]] = [model]
    path: list = []
    for i, part in enumerate(loc):
        if isinstance(part, int):
            path.append(part)
            continue
        inner = prefix or i < len(loc) - 1  # a tag is always followed by the member's own key
        tagged = _tagged(candidates, part) if inner and not any(part in c.model_fields for c in candidates) else []
        if tagged:
            candidates = tagged
            continue
        path.append(part)
        field = next((c.model_fields[part] for c in candidates if part in c.model_fields), None)
        if field is None:
            return (candidates[0] if len(candidates) == 1 else None), tuple(path)
        candidates = _models(field.annotation)
        if not candidates:
            return None, tuple(path)
    return (candidates[0] if len(candidates) == 1 else None), tuple(path)


def format_validation_error(err: ValidationError, model: type[BaseModel], source: str,
                            overridden: dict[tuple, str] | None = None) -> str:
    """One line per problem; a problem in a key set by `--set` (`overridden`: key path -> the item) names it."""
    overridden = {tuple(str(p) for p in path): item for path, item in (overridden or {}).items()}
    lines = [f"{source}: invalid configuration ({err.error_count()} problem(s))"]
    for e in err.errors():
        parent, written = _walk(model, tuple(e["loc"]))
        key = ".".join(str(p) for p in written) or "<top level>"
        loc = tuple(str(p) for p in written)
        origin = next((item for path, item in overridden.items() if loc[: len(path)] == path), None)
        where = f" (from --set {origin})" if origin else ""
        if e["type"] == "extra_forbidden":
            parent, _ = _walk(model, tuple(e["loc"])[:-1], prefix=True)
            allowed = sorted(parent.model_fields) if parent else []
            lines.append(f"  - unknown key '{key}'{where}; allowed keys here: {', '.join(allowed)}")
        elif e["type"] == "missing":
            lines.append(f"  - missing required key '{key}'")
        else:
            lines.append(f"  - key '{key}'{where}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def validate(data: Any, model: type[M], source: str = "<config>") -> M:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level, got {type(data).__name__}")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, model, source)) from None


class _StrictLoader(yaml.SafeLoader):
    """safe_load that refuses a key given twice in one mapping (PyYAML lets the last one win silently)."""


def _mapping_without_duplicates(loader: _StrictLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        line = key_node.start_mark.line + 1
        if key in seen:
            raise ConfigError(f"{loader.name}: key {key!r} is given twice (lines {seen[key]} and {line}); "
                              "keep one")
        seen[key] = line
    loader.flatten_mapping(node)
    return dict(loader.construct_pairs(node, deep=deep))


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def load_yaml(path: str | Path, stage: str | None = None) -> Any:
    """Parse a YAML file (duplicate keys are an error). With `stage`, a `stage:` key as run folders write it in
    config.yaml is accepted when it names that stage and removed, so a run's config.yaml can be fed back."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"{path}: cannot read config: {e.strerror or e}") from None
    loader = _StrictLoader(text)
    loader.name = str(path)
    try:
        data = loader.get_single_data()
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    finally:
        loader.dispose()
    if stage is not None and isinstance(data, dict) and "stage" in data:
        if data["stage"] != stage:
            raise ConfigError(f"{path}: this config is for stage {data['stage']!r}, not {stage!r}")
        data = {k: v for k, v in data.items() if k != "stage"}
    return data


def parse_sets(items: Iterable[str]) -> dict:
    """["optim.lr=1e-3", "train.max_steps=10"] -> nested dict; values are parsed as YAML (numbers, bools, lists)."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        parts = key.split(".")
        if not sep or not all(parts):
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. optim.lr=1e-3")
        node = out
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {p!r} was already set to a value, not a section")
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: the value is not valid YAML: {e}") from None
    return out


def merge(base: Any, over: dict) -> Any:
    """`over` wins; nested mappings are merged key by key, and a numeric key addresses an item of a list
    (`steps.2.threshold=0.9` sets the third step's threshold)."""
    if isinstance(base, list):
        merged_list = list(base)
        for k, v in over.items():
            if not (isinstance(k, str) and k.isdigit() and int(k) < len(merged_list)):
                raise ConfigError(f"--set: {k!r} is not an item number of a list of {len(merged_list)}")
            i = int(k)
            merged_list[i] = merge(merged_list[i], v) if isinstance(v, dict) and isinstance(
                merged_list[i], (dict, list)) else v
        return merged_list
    merged = dict(base)
    for k, v in over.items():
        merged[k] = merge(merged[k], v) if isinstance(v, dict) and isinstance(merged.get(k), (dict, list)) else v
    return merged


def build_config(model: type[M], data: Any = None, *, fields: dict | None = None, sets: Iterable[str] = (),
                 source: str = "<config>") -> M:
    """The one way a stage's config is assembled: `data` (a YAML file's mapping, or None), then `fields` (flags
    or keyword arguments; None means not given, so the model's default applies), then `--set` items."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of keys at the top level, got {type(data).__name__}")
    sets = list(sets)
    overrides = parse_sets(sets)
    merged = merge(merge(data, {k: v for k, v in (fields or {}).items() if v is not None}), overrides)
    where = {tuple(i.partition("=")[0].split(".")): i for i in sets}
    try:
        return model.model_validate(merged)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, model, source, where)) from None


def load_config(path: str | Path, model: type[M], overrides: dict | None = None, sets: Iterable[str] = (),
                stage: str | None = None) -> M:
    """Read a YAML file into `model`; `overrides` (e.g. from CLI flags; None = not given) and then `sets`
    (`--set KEY=VALUE` items) win over the file's values."""
    return build_config(model, load_yaml(path, stage), fields=overrides, sets=sets, source=str(path))


def to_yaml(cfg: BaseModel | dict) -> str:
    data = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else cfg
    return yaml.safe_dump(data, allow_unicode=True, sort_keys=False)
