"""ShareGPT rows as LLaMA-Factory reads them: a list of turns whose role and text sit under `tags` (default
from/value with human/gpt/system/function_call/observation), optional `system` and `tools` columns. A
function_call turn becomes an assistant message with canonical tool_calls, an observation turn a "tool"
message. Ranking rows add `chosen` / `rejected` turns; KTO rows a boolean tag column, the last turn being the
judged answer."""

from __future__ import annotations

from danlu.data.sft.convert import Example, RowError, tool_calls, tool_list
from danlu.data.sft.spec import DatasetSpec


def convert(row: dict, spec: DatasetSpec) -> Example:
    col, tags = spec.columns, spec.tags
    key = col["messages"]
    turns = row.get(key)
    if not isinstance(turns, list):
        raise RowError(f"{key}: missing or not a list of turns")
    messages = [_message(t, f"{key}[{j}]", tags) for j, t in enumerate(turns)]
    system = row.get(col["system"]) if col.get("system") else None
    if system and not (messages and messages[0]["role"] == "system"):
        if not isinstance(system, str):
            raise RowError(f"{col['system']}: must be a string, got {type(system).__name__}")
        messages.insert(0, {"role": "system", "content": system})
    tools = tool_list(row.get(col["tools"]), col["tools"]) if col.get("tools") else None
    if spec.ranking:
        sides = []
        for side in ("chosen", "rejected"):
            k = col.get(side) or side
            if row.get(k) is None:
                raise RowError(f"{k}: missing (a ranking row needs chosen and rejected turns)")
            sides.append(_message(row[k], k, tags))
        return Example(messages, tools, chosen=sides[0], rejected=sides[1])
    if col.get("kto_tag"):
        tag = row.get(col["kto_tag"])
        if not isinstance(tag, bool):
            raise RowError(f"{col['kto_tag']}: the KTO tag must be true or false, got {tag!r}")
        if not messages:
            raise RowError(f"{key}: no turns")
        return Example(messages[:-1], tools, completion=messages[-1], desirable=tag)
    return Example(messages, tools)


def _message(turn, where: str, tags: dict) -> dict:
    if not isinstance(turn, dict):
        raise RowError(f"{where}: a turn must be an object with '{tags['role_tag']}' and '{tags['content_tag']}'")
    tag, content = turn.get(tags["role_tag"]), turn.get(tags["content_tag"])
    roles = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant", tags["system_tag"]: "system",
             tags["observation_tag"]: "tool", tags["function_tag"]: "function_call"}
    role = roles.get(tag)
    if role is None:
        known = ", ".join(f"{k}->{v}" for k, v in roles.items())
        raise RowError(f"{where}.{tags['role_tag']}: unknown role {tag!r} (this dataset's tags: {known}; set "
                       "`tags` in dataset_info.json for others)")
    if role == "function_call":
        return {"role": "assistant", "content": "", "tool_calls": tool_calls(content, f"{where}.{tags['content_tag']}")}
    return {"role": role, "content": content}
