"""What every source format's converter shares: the converted example, the row error, and the conversion of
tool calls and tool descriptions into danlu's canonical form (records.py's docstring):

    tool call:  {"name": str, "arguments": {...}, ["id": str]}
    tool:       {"name": str, ["description": str], ["parameters": {...}]}

Accepted on input: OpenAI's {"type": "function", "function": {...}} wrappers (and {"id", "type", "function"} tool
calls), arguments given as a JSON string, a single call or a list of calls, and the whole value as a JSON string
(LLaMA-Factory stores `function_call` turns and the `tools` column that way). Converters only restructure rows;
records.py validates the result, so each rule lives in one place.
"""

from __future__ import annotations

import json
from dataclasses import dataclass


class RowError(ValueError):
    """A row that cannot be used; the message names the field. `key` is the reason it is counted under (the
    message without the row's own values, so rejects group)."""

    def __init__(self, message: str, key: str | None = None):
        super().__init__(message)
        self.key = key or message


@dataclass
class Example:
    """One converted row: `messages` is the whole conversation (SFT) or the prompt turns (pairs, KTO)."""

    messages: list[dict]
    tools: list[dict] | None = None
    chosen: dict | None = None
    rejected: dict | None = None
    completion: dict | None = None
    desirable: bool | None = None

    @property
    def kind(self) -> str:
        if self.chosen is not None or self.rejected is not None:
            return "preference"
        return "kto" if self.completion is not None else "sft"


def _json_value(value, where: str):
    if isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError as e:
            raise RowError(f"{where}: not valid JSON ({e.msg} at column {e.colno}): {value[:80]!r}",
                           key=f"{where}: not valid JSON") from None
    return value


def tool_calls(value, where: str) -> list[dict]:
    """A call, a list of calls, or their JSON text -> canonical tool calls."""
    value = _json_value(value, where)
    calls = value if isinstance(value, list) else [value]
    out = []
    for j, call in enumerate(calls):
        at = f"{where}[{j}]" if isinstance(value, list) else where
        if not isinstance(call, dict):
            raise RowError(f"{at}: a tool call must be an object with 'name' and 'arguments', got {str(call)[:80]!r}")
        wrapped = isinstance(call.get("function"), dict)
        fn = call["function"] if wrapped else call
        args = fn.get("arguments", fn.get("parameters", {}))
        if isinstance(args, str):
            args = _json_value(args, f"{at}{'.function' if wrapped else ''}.arguments") if args.strip() else {}
        canonical = {"name": fn.get("name"), "arguments": args}
        if isinstance(call.get("id"), str) and call["id"]:
            canonical["id"] = call["id"]
        out.append(canonical)
    return out


def tool_list(value, where: str) -> list[dict] | None:
    """Tool descriptions (or their JSON text; "" and [] mean none) -> canonical tools, or None."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    value = _json_value(value, where)
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list):
        raise RowError(f"{where}: expected a list of tool descriptions, got {type(value).__name__}")
    tools = [t["function"] if isinstance(t, dict) and isinstance(t.get("function"), dict) else t for t in value]
    return tools or None
