"""The record contracts between stages (DESIGN.md in ../shared, summarised in the README's "Records" section).
Plain dicts on disk, one JSON object per line; this module builds, checks, reads and views them.

- Document:   {"id", "text", "source", "path", "format", "meta": {...}}
- SFT:        {"id", "messages": [{"role", "content", ["loss_weight"], ["tool_calls"]}], "task_type", "tags": [...],
               "source"}
- Preference: {"id", "messages" (the prompt turns), "chosen", "rejected" (assistant messages), "task_type", "source"}
- KTO:        {"id", "messages" (the prompt turns), "completion" (an assistant message), "desirable": bool, "task_type",
               "source"} (unpaired preference data: one answer judged good or bad)

Tools, in one canonical form (importers convert the others, e.g. OpenAI's {"type": "function", "function": {...}}
wrappers and JSON-string arguments; tokenizer/chat.py turns them into what chat templates expect):
- an assistant message may carry "tool_calls": [{"name": str, "arguments": {...}, ["id": str]}] (content may be "");
- a tool's result is a "tool" message (optional "name", "tool_call_id");
- the tools a conversation could call are a record-level "tools": [{"name", ["description"], ["parameters"]}] list
  (JSON-schema function descriptions).

Checks return a problem naming the field ("messages[2].role: ...") or None; `read_records` turns a problem into a
BadLine that also names the file and line, so every error a user sees says where to look.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Iterable, Iterator, Literal

from danlu.jsonl import BadLine, read_jsonl

DOC_FIELDS = ("id", "text", "source", "path", "format", "meta")
ROLES = ("system", "user", "assistant", "tool")
Kind = Literal["document", "sft", "preference", "kto"]


def stable_id(*parts: object, length: int = 16) -> str:
    """An id derived only from its parts (e.g. relative path + position), so reruns give the same ids."""
    h = hashlib.blake2b("\x1f".join(str(p) for p in parts).encode("utf-8", "surrogateescape"),  # danlu.names
                        digest_size=length // 2)
    return h.hexdigest()


def record_id(record: dict, path: str | Path, line: int) -> str:
    """The record's own "id", or one derived from where it was read: the file's absolute path (two x.jsonl in
    different folders must not collide; a relative spelling must not change it) and its line number."""
    rid = record.get("id")
    if isinstance(rid, int) and not isinstance(rid, bool):
        return str(rid)  # other tools number their records
    return rid if isinstance(rid, str) and rid else stable_id(str(Path(path).resolve()), line)


def document(text: str, source: str, path: str, fmt: str, position: int | str = 0, meta: dict | None = None) -> dict:
    """`meta` is a dict, not keyword arguments: an input record's own fields (a JSONL "source" or "path") land
    there and must not collide with the parameters."""
    return {
        "id": stable_id(source, path, position),
        "text": text,
        "source": source,
        "path": path,
        "format": fmt,
        "meta": dict(meta or {}),
    }


# --- checks ---------------------------------------------------------------------------------------------------


def kind_of(record: dict) -> Kind:
    """Which contract a record follows, from its fields."""
    if "chosen" in record or "rejected" in record:
        return "preference"
    if "completion" in record:
        return "kto"
    return "sft" if "messages" in record else "document"


def document_problem(record: dict) -> str | None:
    if "text" not in record:
        return "missing field 'text'"
    if not isinstance(record["text"], str):
        return f"field 'text' must be str, got {type(record['text']).__name__}"
    return None


def message_problem(m: object, where: str) -> str | None:
    """One message: an object with a known role and string content (an assistant turn may carry tool_calls)."""
    if not isinstance(m, dict):
        return f"{where} must be an object with 'role' and 'content', got {type(m).__name__}"
    role = m.get("role")
    if not isinstance(role, str):
        return f"{where}.role missing or not a string"
    if role not in ROLES:
        return f"{where}.role: unknown role {role!r} (allowed: {', '.join(ROLES)})"
    if not isinstance(m.get("content"), str):
        got = "missing" if "content" not in m else f"{type(m['content']).__name__}, not a string"
        return f"{where}.content {got}"
    weight = m.get("loss_weight")
    if weight is not None and (isinstance(weight, bool) or not isinstance(weight, (int, float)) or weight < 0):
        return f"{where}.loss_weight must be a number >= 0 (0 masks the turn), got {weight!r}"
    calls = m.get("tool_calls")
    if calls is not None:
        if role != "assistant" or not isinstance(calls, list):
            return f"{where}.tool_calls must be a list on an assistant message"
        for j, call in enumerate(calls):
            problem = tool_call_problem(call, f"{where}.tool_calls[{j}]")
            if problem:
                return problem
    for key in ("name", "tool_call_id"):
        if role == "tool" and key in m and not isinstance(m[key], str):
            return f"{where}.{key} must be a string"
    return None


def tool_call_problem(call: object, where: str) -> str | None:
    """One tool call in danlu's canonical form: {"name": str, "arguments": {...}, ["id": str]}."""
    if not isinstance(call, dict) or not isinstance(call.get("name"), str) or not call["name"]:
        return (f"{where} must be {{'name': str, 'arguments': {{...}}}} (danlu's canonical form; the importers "
                f"convert OpenAI's {{'type': 'function', 'function': {{...}}}}), got {str(call)[:80]}")
    if not isinstance(call.get("arguments"), dict):
        return f"{where}.arguments must be a JSON object, got {type(call.get('arguments')).__name__}"
    extra = sorted(set(call) - {"name", "arguments", "id"})
    if extra or ("id" in call and not isinstance(call["id"], str)):
        return f"{where}: unexpected keys {extra} (allowed: name, arguments, id as a string)"
    return None


def tools_problem(record: dict) -> str | None:
    """The optional record-level "tools": a list of {"name", ["description"], ["parameters"]} descriptions."""
    tools = record.get("tools")
    if tools is None:
        return None
    if not isinstance(tools, list):
        return f"field 'tools' must be a list of tool descriptions, got {type(tools).__name__}"
    for i, t in enumerate(tools):
        if not isinstance(t, dict) or not isinstance(t.get("name"), str) or not t["name"]:
            return f"tools[{i}] must be an object with a 'name' (a JSON-schema function description)"
        if "parameters" in t and not isinstance(t["parameters"], dict):
            return f"tools[{i}].parameters must be a JSON schema object"
    return None


def task_type_problem(record: dict) -> str | None:
    tt = record.get("task_type")
    if tt is None or tt == "":
        return ("missing field 'task_type' (every SFT sample needs one, e.g. 'qa' or 'reasoning/commonsense': "
                "give it in the record, map it from a field, or pass a default for the file)")
    if not isinstance(tt, str) or len(tt.split("/")) > 2 or not all(p.strip() for p in tt.split("/")):
        return f"field 'task_type' must be a name with at most two levels ('a' or 'a/b'), got {tt!r}"
    return None


def sft_problem(record: dict, strict: bool = False) -> str | None:
    """Structure (non-empty messages, known roles, string contents); `strict` (what SFT training needs) adds
    a task_type, tags as a list of strings, the role order, and non-empty assistant answers."""
    problem = _messages_problem(record, "field 'messages' must be a non-empty list")
    if problem:
        return problem
    messages = record["messages"]
    if not strict:
        return None
    problem = task_type_problem(record)
    if problem:
        return problem
    tags = record.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        return f"field 'tags' must be a list of strings, got {tags!r}"
    return tools_problem(record) or turn_order_problem(messages)


def turn_order_problem(messages: list[dict], prompt_only: bool = False) -> str | None:
    """System turns only at the start; after them a user turn; a user (or tool) turn is answered by an assistant
    turn; a tool turn follows an assistant turn that called a tool; the conversation ends with an assistant
    answer (or, for `prompt_only`, the prompt of a preference pair, with a user or tool turn)."""
    prev = None
    for i, m in enumerate(messages):
        role = m["role"]
        if role == "system":
            if prev not in (None, "system"):
                return f"messages[{i}].role: a system turn must come before every other turn"
        elif role == "user":
            if prev == "user":
                return f"messages[{i}].role: two user turns in a row (messages[{i - 1}] is unanswered)"
            if prev == "tool":
                return f"messages[{i}].role: a user turn right after a tool result (the assistant must answer it)"
        elif role == "assistant":
            if prev in (None, "system"):
                return f"messages[{i}].role: the conversation starts with an assistant turn; a user turn must come first"
            if prev == "assistant":
                return f"messages[{i}].role: two assistant turns in a row"
            if not m["content"].strip() and not m.get("tool_calls") and m.get("loss_weight", 1) != 0:
                return f"messages[{i}].content: empty assistant answer"
        elif role == "tool":
            if prev not in ("assistant", "tool"):
                return f"messages[{i}].role: a tool result must follow the assistant turn that called the tool"
            if prev == "assistant" and not messages[i - 1].get("tool_calls"):
                return (f"messages[{i}].role: a tool result after an assistant turn that calls no tool "
                        f"(messages[{i - 1}] has no tool_calls)")
        prev = role
    if prompt_only:
        if prev not in ("user", "tool"):
            return "messages: the prompt must end with a user (or tool) turn for the answers to follow"
    elif prev != "assistant":
        return f"messages[{len(messages) - 1}].role: the conversation must end with an assistant answer, not {prev!r}"
    return None


def _messages_problem(record: dict, empty: str) -> str | None:
    """`record["messages"]`: a non-empty list (else `empty`) of valid messages."""
    messages = record.get("messages")
    if not isinstance(messages, list) or not messages:
        return empty
    for i, m in enumerate(messages):
        problem = message_problem(m, f"messages[{i}]")
        if problem:
            return problem
    return None


def _prompt_problem(record: dict) -> str | None:
    """The prompt turns of a preference or KTO record."""
    return _messages_problem(record, "field 'messages' (the prompt turns) must be a non-empty list")


def _answer_problem(record: dict, field: str, strict: bool) -> str | None:
    """`record[field]`: one valid assistant message (non-empty when strict)."""
    m = record.get(field)
    if m is None:
        return f"missing field '{field}'"
    problem = message_problem(m, field)
    if problem:
        return problem
    if m["role"] != "assistant":
        return f"{field}.role must be 'assistant', got {m['role']!r}"
    if strict and not m["content"].strip() and not m.get("tool_calls"):
        return f"{field}.content: empty answer"
    return None


def _strict_prompt_problem(record: dict) -> str | None:
    return task_type_problem(record) or tools_problem(record) or \
        turn_order_problem(record["messages"], prompt_only=True)


def preference_problem(record: dict, strict: bool = False) -> str | None:
    """Prompt messages plus `chosen` and `rejected` assistant messages that differ."""
    problem = _prompt_problem(record) or _answer_problem(record, "chosen", strict) or \
        _answer_problem(record, "rejected", strict)
    if problem or not strict:
        return problem
    if record["chosen"]["content"] == record["rejected"]["content"] and \
            record["chosen"].get("tool_calls") == record["rejected"].get("tool_calls"):
        return "chosen and rejected are identical: the pair teaches nothing"
    return _strict_prompt_problem(record)


def kto_problem(record: dict, strict: bool = False) -> str | None:
    """Prompt messages, one assistant `completion` and whether it is `desirable` (KTO's unpaired format)."""
    problem = _prompt_problem(record) or _answer_problem(record, "completion", strict)
    if problem:
        return problem
    if not isinstance(record.get("desirable"), bool):
        return f"field 'desirable' must be true or false, got {record.get('desirable')!r}"
    return _strict_prompt_problem(record) if strict else None


def problem(record: dict, kind: Kind, strict: bool = False) -> str | None:
    if kind == "sft":
        return sft_problem(record, strict)
    if kind == "preference":
        return preference_problem(record, strict)
    if kind == "kto":
        return kto_problem(record, strict)
    return document_problem(record)


# --- reading and viewing ----------------------------------------------------------------------------------------


def read_records(files: Iterable[Path], kind: Literal["auto", "document", "sft", "preference", "kto"] = "auto",
                 strict: bool = False) -> Iterator[tuple[Path, int, dict | BadLine, Kind]]:
    """(file, line, record or BadLine, kind) for every non-blank line; `auto` takes each record's kind from its
    fields (kind_of). A record that breaks its contract comes back as a BadLine naming file, line and field."""
    for path in files:
        for lineno, rec in read_jsonl(path):
            if isinstance(rec, BadLine):
                yield path, lineno, rec, "document" if kind == "auto" else kind
                continue
            k: Kind = kind_of(rec) if kind == "auto" else kind
            why = problem(rec, k, strict)
            if why:
                yield path, lineno, BadLine(str(path), lineno, why, json.dumps(rec, ensure_ascii=False)), k
            else:
                yield path, lineno, rec, k


def record_text(record: dict, kind: Kind) -> str:
    """The text a record stands for (what filters judge and statistics count): a document's text, or the
    message contents of an SFT record (with a preference pair's two answers, a KTO record's completion) joined by
    blank lines."""
    if kind == "document":
        return record["text"]
    parts = [m["content"] for m in record["messages"]]
    if kind == "preference":
        parts += [record["chosen"]["content"], record["rejected"]["content"]]
    if kind == "kto":
        parts.append(record["completion"]["content"])
    return "\n\n".join(parts)


def dedup_text(record: dict, kind: Kind) -> str:
    """What deduplication compares: the text, or the turns with their roles (the same words said by another
    role are another sample)."""
    if kind == "document":
        return record["text"]
    turns = [f"{m['role']}: {m['content']}" for m in record["messages"]]
    if kind == "preference":
        turns += [f"chosen: {record['chosen']['content']}", f"rejected: {record['rejected']['content']}"]
    if kind == "kto":
        turns.append(f"{'desirable' if record['desirable'] else 'undesirable'}: {record['completion']['content']}")
    return "\n".join(turns)
