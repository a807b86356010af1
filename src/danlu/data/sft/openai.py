"""OpenAI-style rows: a list of {"role", "content"} messages (danlu's own records are this format), with OpenAI's
tool calls, tool results and content parts; TRL's prompt / chosen / rejected and prompt / completion / label rows
(each a string or a list of messages) for preference data.

Converted: "developer" -> system and the legacy "function" result role -> tool; a list of text content parts ->
their text joined; OpenAI tool_calls / function_call -> canonical tool_calls (convert.py); content null on a
tool-calling turn -> "". Other message keys (loss_weight, name, tool_call_id, reasoning_content...) are kept.
"""

from __future__ import annotations

from danlu.data.sft.convert import Example, RowError, tool_calls, tool_list
from danlu.data.sft.spec import DatasetSpec

ROLE_ALIASES = {"developer": "system", "function": "tool"}


def convert(row: dict, spec: DatasetSpec) -> Example:
    col = spec.columns
    key = col["messages"]
    messages = _messages(row.get(key), key, role="user")
    system = row.get(col["system"]) if col.get("system") else None
    if system and not (messages and messages[0].get("role") == "system"):
        if not isinstance(system, str):
            raise RowError(f"{col['system']}: must be a string, got {type(system).__name__}")
        messages.insert(0, {"role": "system", "content": system})
    tools = tool_list(row.get(col["tools"] or "tools"), col["tools"] or "tools")
    if col.get("chosen") or col.get("rejected") or spec.ranking:
        sides = [_answer(row.get(col.get(s) or s), col.get(s) or s) for s in ("chosen", "rejected")]
        return Example(messages, tools, chosen=sides[0], rejected=sides[1])
    if col.get("kto_tag"):
        tag = row.get(col["kto_tag"])
        if not isinstance(tag, bool):
            raise RowError(f"{col['kto_tag']}: the KTO tag must be true or false, got {tag!r}")
        if col.get("completion"):
            completion = _answer(row.get(col["completion"]), col["completion"])
        elif messages:
            messages, completion = messages[:-1], messages[-1]
        else:
            raise RowError(f"{key}: no messages")
        return Example(messages, tools, completion=completion, desirable=tag)
    return Example(messages, tools)


def _messages(value, where: str, role: str) -> list[dict]:
    """A list of messages, or a string as one message of `role` (TRL's "standard" format)."""
    if isinstance(value, str):
        return [{"role": role, "content": value}]
    if not isinstance(value, list):
        raise RowError(f"{where}: missing or not a list of messages")
    return [_message(m, f"{where}[{j}]") for j, m in enumerate(value)]


def _answer(value, where: str) -> dict:
    """A pair's side or a KTO completion: one assistant message (a message, a one-message list, or a string)."""
    if value is None:
        raise RowError(f"{where}: missing")
    turns = _messages(value, where, role="assistant") if not isinstance(value, dict) else [_message(value, where)]
    if len(turns) != 1:
        raise RowError(f"{where}: {len(turns)} messages; an answer to compare is one assistant message")
    return turns[0]


def _message(m, where: str) -> dict:
    if not isinstance(m, dict):
        raise RowError(f"{where}: a message must be an object with 'role' and 'content', got {type(m).__name__}")
    out = dict(m)
    out["role"] = ROLE_ALIASES.get(m.get("role"), m.get("role"))
    content = m.get("content")
    if isinstance(content, list):
        parts = []
        for j, part in enumerate(content):
            if isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str):
                parts.append(part["text"])
            else:
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise RowError(f"{where}.content[{j}]: a {kind!r} part; danlu trains text models (text parts only)")
        out["content"] = "".join(parts)
    calls = m.get("tool_calls") or ([m["function_call"]] if m.get("function_call") else None)
    out.pop("function_call", None)
    if calls:
        out["tool_calls"] = tool_calls(calls, f"{where}.tool_calls")
        if out.get("content") is None:
            out["content"] = ""
    elif "tool_calls" in out and not out["tool_calls"]:
        del out["tool_calls"]
    return out
