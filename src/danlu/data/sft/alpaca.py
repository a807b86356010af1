"""Alpaca rows (instruction / input / output, optional system and history) as LLaMA-Factory reads them: the user
turn is the instruction and the input joined by a newline; `history` is a list of [question, answer] pairs before
it. Ranking rows carry `chosen` / `rejected` answer strings; KTO rows a boolean tag column."""

from __future__ import annotations

from danlu.data.sft.convert import Example, RowError, tool_list
from danlu.data.sft.spec import DatasetSpec


def convert(row: dict, spec: DatasetSpec) -> Example:
    col = spec.columns

    def text(role: str, required: bool = False) -> str | None:
        key = col.get(role)
        value = row.get(key) if key else None
        if value is None:
            if required:
                raise RowError(f"{key}: missing (the {role} column; map another field with columns.{role})")
            return None
        if not isinstance(value, str):
            raise RowError(f"{key}: must be a string, got {type(value).__name__}")
        return value

    messages = []
    system = text("system")
    if system:
        messages.append({"role": "system", "content": system})
    history = row.get(col["history"]) if col.get("history") else None
    if history:
        if not isinstance(history, list):
            raise RowError(f"{col['history']}: must be a list of [question, answer] pairs")
        for j, pair in enumerate(history):
            if not (isinstance(pair, (list, tuple)) and len(pair) == 2):
                raise RowError(f"{col['history']}[{j}]: must be a [question, answer] pair, got {str(pair)[:80]!r}")
            messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
    query = [t for t in (text("prompt"), text("query")) if t]
    messages.append({"role": "user", "content": "\n".join(query)})
    tools = tool_list(row.get(col["tools"]), col["tools"]) if col.get("tools") else None
    if spec.ranking:
        chosen, rejected = text("chosen", required=True), text("rejected", required=True)
        return Example(messages, tools, chosen={"role": "assistant", "content": chosen},
                       rejected={"role": "assistant", "content": rejected})
    answer = {"role": "assistant", "content": text("response", required=True)}
    if col.get("kto_tag"):
        tag = row.get(col["kto_tag"])
        if not isinstance(tag, bool):
            raise RowError(f"{col['kto_tag']}: the KTO tag must be true or false, got {tag!r}")
        return Example(messages, tools, completion=answer, desirable=tag)
    return Example(messages + [answer], tools)
