"""The OpenAI API's request bodies (as pydantic models) and response / stream-chunk shapes.

Fields follow the OpenAI reference; a few vLLM extensions that clients send (top_k, repetition_penalty,
stop_token_ids, ignore_eos, skip_special_tokens) are accepted too. Unknown fields are ignored with a warning in
the server log, as vLLM does (clients send extras such as `user` metadata), but a known field of the wrong type or range is a 400 naming the field; options that
cannot be honoured (suffix, non-text response formats, non-text content parts, best_of > n) are refused
rather than silently dropped.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field, StrictBool, field_validator

from danlu.serve.sampling import MAX_LOGPROBS, SamplingParams, TokenLogprob
from danlu.serve.tokens import TokenNames


class _Body(BaseModel):
    model_config = ConfigDict(extra="allow")  # kept aside and logged as ignored (clients send extras)

    def ignored_fields(self) -> list[str]:
        return sorted(self.model_extra or {})


class StreamOptions(_Body):
    include_usage: StrictBool = False


class _SamplingFields(_Body):
    model: str
    temperature: Optional[float] = Field(None, ge=0, le=2)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=128)
    stream: StrictBool = False
    stream_options: Optional[StreamOptions] = None
    stop: Optional[Union[str, list[str]]] = None
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    seed: Optional[int] = None
    user: Optional[str] = None
    logit_bias: Optional[dict[int, float]] = None  # token id (JSON string keys) -> bias
    # vLLM extensions
    top_k: Optional[int] = Field(None, ge=-1)
    repetition_penalty: Optional[float] = Field(None, gt=0)
    stop_token_ids: Optional[list[int]] = None
    ignore_eos: StrictBool = False
    skip_special_tokens: StrictBool = True

    @field_validator("stop")
    @classmethod
    def _stops(cls, v):
        if isinstance(v, list) and len(v) > 16:
            raise ValueError("at most 16 stop sequences")
        return v

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def sampling(self, max_tokens: int, logprobs: int | None, prompt_logprobs: int | None = None) -> SamplingParams:
        return SamplingParams(
            max_tokens=max_tokens, temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p, top_k=self.top_k or 0,
            repetition_penalty=self.repetition_penalty or 1.0, presence_penalty=self.presence_penalty,
            frequency_penalty=self.frequency_penalty, seed=self.seed, logit_bias=dict(self.logit_bias or {}),
            n=self.n, stop=self.stop_list(),
            stop_token_ids=list(self.stop_token_ids or []), ignore_eos=self.ignore_eos, logprobs=logprobs,
            prompt_logprobs=prompt_logprobs, skip_special_tokens=self.skip_special_tokens)


class TextPart(_Body):
    type: Literal["text"]
    text: str


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Optional[Union[str, list[TextPart]]] = None
    name: Optional[str] = None
    tool_calls: Optional[list[dict[str, Any]]] = None
    tool_call_id: Optional[str] = None

    def as_template_message(self) -> dict:
        """The message as chat templates take it: text content, `developer` read as `system`."""
        content = self.content if isinstance(self.content, str) or self.content is None else \
            "".join(p.text for p in self.content)
        msg: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role, "content": content or ""}
        for key in ("name", "tool_calls", "tool_call_id"):
            if getattr(self, key) is not None:
                msg[key] = getattr(self, key)
        return msg


class ResponseFormat(_Body):
    type: Literal["text"]


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    logprobs: StrictBool = False
    top_logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)
    tools: Optional[list[dict[str, Any]]] = None
    response_format: Optional[ResponseFormat] = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_SamplingFields):
    prompt: Union[str, list[str], list[int], list[list[int]]]
    max_tokens: int = Field(16, ge=0)
    echo: StrictBool = False
    logprobs: Optional[int] = Field(None, ge=0, le=MAX_LOGPROBS)
    suffix: Optional[str] = None
    best_of: Optional[int] = Field(None, ge=1)

    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: a string or token ids."""
        p = self.prompt
        if isinstance(p, str):
            return [p]
        if not p:
            raise ValueError("prompt: must not be empty")
        if all(isinstance(x, int) for x in p):
            return [list(p)]
        return list(p)


class TokenizeRequest(_Body):
    model: Optional[str] = None
    prompt: Optional[str] = None
    messages: Optional[list[ChatMessage]] = None
    add_special_tokens: StrictBool = True


class DetokenizeRequest(_Body):
    model: Optional[str] = None
    tokens: list[int]


# ------------------------------------------------------------------------------------------------ responses
def error_body(message: str, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


def usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def chat_logprobs(entries: list[TokenLogprob], k: int, names: TokenNames) -> dict:
    def item(tok: int, lp: float) -> dict:
        return {"token": names.text(tok), "logprob": lp, "bytes": list(names.bytes(tok))}

    return {"content": [{**item(e.token_id, e.logprob), "top_logprobs": [item(t, v) for t, v in e.top[:k]]}
                        for e in entries], "refusal": None}


def completion_logprobs(entries: list[TokenLogprob | None], names: TokenNames, text_offsets: list[int]) -> dict:
    """The legacy completions format; an entry of None (the first prompt token) has no logprob. Each
    top_logprobs map holds the k most likely tokens and the chosen one (as vLLM's does)."""
    tokens, token_lps, tops = [], [], []
    for e in entries:
        if e is None:
            tokens.append(None)
            token_lps.append(None)
            tops.append(None)
            continue
        tokens.append(names.text(e.token_id))
        token_lps.append(e.logprob)
        top: dict[str, float] = {}
        for t, v in [*e.top, (e.token_id, e.logprob)]:
            name = names.text(t)
            top[name] = max(v, top.get(name, float("-inf")))
        tops.append(top)
    return {"tokens": tokens, "token_logprobs": token_lps, "top_logprobs": tops, "text_offset": text_offsets}


class StreamChunks:
    """SSE chunks of one streamed response in OpenAI's exact format (chat.completion.chunk / text_completion)."""

    def __init__(self, kind: Literal["chat", "completion"], model: str, include_usage: bool):
        self.kind, self.model, self.include_usage = kind, model, include_usage
        self.id = new_id("chatcmpl" if kind == "chat" else "cmpl")
        self.created = int(time.time())

    def _chunk(self, choices: list[dict], **extra) -> str:
        obj = {"id": self.id, "object": "chat.completion.chunk" if self.kind == "chat" else "text_completion",
               "created": self.created, "model": self.model, "system_fingerprint": None, "choices": choices}
        if self.include_usage:
            obj["usage"] = None
        obj.update(extra)
        return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"

    def choice(self, index: int, text: str | None = None, finish_reason: str | None = None,
               logprobs: dict | None = None, role: bool = False) -> str:
        if self.kind == "chat":
            delta: dict = {"role": "assistant", "content": ""} if role else ({} if text is None else {"content": text})
            body = {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}
        else:
            body = {"index": index, "text": text or "", "logprobs": logprobs, "finish_reason": finish_reason}
        return self._chunk([body])

    def usage(self, prompt_tokens: int, completion_tokens: int) -> str:
        return self._chunk([], usage=usage(prompt_tokens, completion_tokens))

    @staticmethod
    def error(body: dict) -> str:
        return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

    DONE = "data: [DONE]\n\n"
