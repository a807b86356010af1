"""Where each record's task_type comes from, most specific first: the record's own (danlu records), a field of
the row (optionally mapped through a table, e.g. {"brainstorm": "creative/brainstorm"}), the dataset's or
file's entry in `task_types` (--task-type NAME=TYPE), the default (--task-type TYPE). A record with none is
rejected with records.py's message saying how to give one; there is no silent "default" task type."""

from __future__ import annotations

from pathlib import Path

from danlu.config import ConfigError, load_yaml

HOW = ("; with danlu data sft/pref: --task-type TYPE (every input), --task-type DATASET=TYPE (one dataset or file), "
       "or --task-type-field FIELD (read it from the rows)")


class TaskTypes:
    def __init__(self, default: str | None, per_dataset: dict[str, str], field: str | None,
                 mapping: str | dict | None, known: set[str]):
        unknown = sorted(set(per_dataset) - known)
        if unknown:
            raise ConfigError(f"task_types names {', '.join(map(repr, unknown))}, which are neither a dataset nor a "
                              f"file being read (known: {', '.join(sorted(known))})")
        self.default, self.per_dataset, self.field = default, per_dataset, field
        self.mapping = _load_mapping(mapping) if mapping is not None else None
        if self.mapping is not None and not field:
            raise ConfigError("task_type_map maps the values of a field: give task_type_field too")

    def resolve(self, row: dict, own: object, dataset: str, path: Path) -> tuple[object, str | None]:
        """(task_type, problem): the record's task_type (validated later by records.py), or why the row's value
        cannot be used."""
        if own not in (None, ""):
            return own, None
        if self.field and row.get(self.field) not in (None, ""):
            value = row[self.field]
            if self.mapping is None:
                return value, None
            if str(value) not in self.mapping:
                return None, (f"{self.field}: value {str(value)[:40]!r} is not in the task_type_map (which maps "
                              f"{len(self.mapping)} values); add it there")
            return self.mapping[str(value)], None
        for key in (dataset, path.name, path.stem):
            if key in self.per_dataset:
                return self.per_dataset[key], None
        return self.default, None


def _load_mapping(mapping: str | dict) -> dict[str, str]:
    data = load_yaml(mapping) if isinstance(mapping, str) else mapping
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ConfigError(f"task_type_map {mapping if isinstance(mapping, str) else ''}: expected a mapping of field "
                          "values to task types")
    return {str(k): v for k, v in data.items()}
