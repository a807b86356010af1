"""The OpenAI-compatible HTTP API over the engine (FastAPI): /v1/models, /v1/chat/completions,
/v1/completions (echo + prompt logprobs, so lm-eval's `local-completions` can score through it), SSE streaming
in OpenAI's chunk format, /tokenize, /detokenize and /tokenizer_info (vLLM's, which lm-eval probes), /health
and /metrics (Prometheus).

Every failure a client can cause is a 4xx with an OpenAI error body: malformed JSON, a field of the wrong
type, an over-long prompt, an unknown model, a missing API key; a full queue is a 503 and too many concurrent
requests a 429. A request that fails inside the engine fails alone (a 500 for that request, or an error event
in its stream); a client that disconnects cancels its generation.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from danlu.serve.detok import IncrementalDetokenizer
from danlu.serve.engine import Engine, EngineOverloaded, Event
from danlu.serve.protocol import (ChatCompletionRequest, CompletionRequest, DetokenizeRequest, StreamChunks,
                                  TokenizeRequest, chat_logprobs, completion_logprobs, error_body, new_id, usage)
from danlu.serve.sampling import SamplingParams
from danlu.serve.tokens import TokenNames

log = logging.getLogger("danlu.serve")
PROTECTED = ("/v1/", "/tokenize", "/detokenize", "/tokenizer_info")
DISCONNECT_POLL_S = 0.5


def failed(ev: Event) -> str | None:
    """Why a choice ended without an answer: an engine error, or cancelled by an engine that stopped."""
    if ev.finish_reason == "error":
        return ev.error or "error"
    if ev.finish_reason == "abort":
        return "cancelled (the engine stopped)"
    return None


class ApiError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.body = status, error_body(message, type, param, code)


class Slot:
    """One in-flight HTTP request and its engine requests: held until its response is done (a stream that
    never started is let go once its engine requests finish)."""

    def __init__(self, stream: bool):
        self.stream, self.started, self.closed = stream, False, False
        self.requests: list = []

    def held(self) -> bool:
        if self.closed:
            return False
        return not (self.stream and not self.started and all(r.done.is_set() for r in self.requests))

    def release(self) -> None:
        self.closed = True
        for r in self.requests:
            if not r.done.is_set():
                r.cancel()

    def __getitem__(self, i):
        return self.requests[i]

    def __len__(self) -> int:
        return len(self.requests)

    def __iter__(self):
        return iter(self.requests)


@dataclass
class Limits:
    """What the server accepts (None: the model's context decides)."""

    api_key: str | None = None
    max_prompt_tokens: int | None = None
    max_tokens: int | None = None
    max_concurrent: int = 256


def create_app(engine: Engine, limits: Limits | None = None) -> FastAPI:
    """The API app over a (started or not yet started) engine; the app starts the engine's thread on startup
    and stops it on shutdown if it started it."""
    from danlu.tokenizer.chat import render_prompt, stop_token_ids

    limits = limits or Limits()
    loaded, tok = engine.loaded, engine.tokenizer
    names = TokenNames(tok)
    chat_stops = stop_token_ids(tok)
    active: list[Slot] = []  # the in-flight HTTP requests

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        started_here = not engine.alive
        if started_here:
            engine.start()
        yield
        if started_here:
            engine.stop()

    app = FastAPI(title="danlu", version="1", lifespan=lifespan)

    # ------------------------------------------------------------------------------------------ errors
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError):
        return JSONResponse(e.body, status_code=e.status)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError):
        problems, param = [], None
        for err in e.errors():
            loc = [str(x) for x in err.get("loc", ()) if x != "body"]
            if err.get("type") == "json_invalid":
                problems.append(f"the request body is not valid JSON ({err.get('ctx', {}).get('error', err['msg'])})")
                continue
            param = param or (".".join(loc) or None)
            problems.append(f"{'.'.join(loc) or 'body'}: {err['msg']}")
        return JSONResponse(error_body("; ".join(problems) or "invalid request", param=param), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, e: StarletteHTTPException):
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return JSONResponse(error_body(str(e.detail), kind), status_code=e.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception):
        log.exception("unexpected error")
        return JSONResponse(error_body(f"internal error: {e}", "server_error"), status_code=500)

    @app.middleware("http")
    async def _auth(request: Request, call_next):
        if limits.api_key and request.url.path.startswith(PROTECTED):
            header = request.headers.get("authorization", "")
            given = header[7:] if header.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(given.encode(), limits.api_key.encode()):
                return JSONResponse(error_body("Incorrect or missing API key (send 'Authorization: Bearer KEY')",
                                               code="invalid_api_key"), status_code=401)
        return await call_next(request)

    # ---------------------------------------------------------------------------------------- helpers
    def check_model(name: str | None, body=None) -> None:
        if body is not None and body.ignored_fields():
            log.warning("ignoring unknown request fields: %s", ", ".join(body.ignored_fields()))
        if name is not None and name != loaded.name:
            raise ApiError(404, f"The model `{name}` does not exist; this server serves `{loaded.name}`",
                           param="model", code="model_not_found")

    def max_tokens_for(prompt_len: int, requested: int | None, prompt_param: str = "messages") -> int:
        limit = limits.max_prompt_tokens or loaded.max_model_len - 1
        if prompt_len > limit:
            raise ApiError(400, f"the prompt has {prompt_len} tokens; this server accepts at most {limit}",
                           param=prompt_param, code="context_length_exceeded")
        room = loaded.max_model_len - prompt_len
        cap = limits.max_tokens or loaded.max_model_len
        if requested is None:
            return max(1, min(cap, room))
        if requested > cap:
            raise ApiError(400, f"max_tokens {requested} exceeds this server's limit of {cap}", param="max_tokens")
        if requested > room:
            raise ApiError(400, f"This model's maximum context length is {loaded.max_model_len} tokens. However, "
                           f"you requested {prompt_len + requested} tokens ({prompt_len} in the prompt, {requested} "
                           "in the completion). Please reduce the prompt or max_tokens.",
                           param="max_tokens", code="context_length_exceeded")
        return requested

    def submit(prompts: list[list[int]], params: SamplingParams, stop_ids: list[int] | None, stream: bool):
        active[:] = [s for s in active if s.held()]
        if len(active) >= limits.max_concurrent:
            raise ApiError(429, f"too many concurrent requests (limit {limits.max_concurrent}); retry later",
                           type="rate_limit_exceeded")
        slot = Slot(stream)
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        try:
            for i, ids in enumerate(prompts):
                slot.requests.append(engine.submit(ids, params, sink=lambda ev, i=i: loop.call_soon_threadsafe(
                    events.put_nowait, (i, ev)), stop_ids=stop_ids))
        except (EngineOverloaded, ValueError) as e:
            slot.release()
            if isinstance(e, EngineOverloaded):
                raise ApiError(503, str(e), type="server_overloaded") from None
            raise ApiError(400, str(e), param="prompt") from None
        active.append(slot)
        return slot, events

    async def next_event(events: asyncio.Queue, request: Request | None = None):
        """The next (prompt index, event); None if the client went away. Never waits on a dead engine."""
        while True:
            try:
                return await asyncio.wait_for(events.get(), timeout=DISCONNECT_POLL_S)
            except asyncio.TimeoutError:
                if request is not None and await request.is_disconnected():
                    return None
                if not engine.alive:
                    raise ApiError(503, "the generation engine is not running", type="server_error") from None

    async def collect(group, events: asyncio.Queue, request: Request, n: int) -> list[list[Event]] | None:
        """Every event of every choice, the group released after; None if the client went away meanwhile (its
        requests are cancelled). A choice that failed in the engine is the request's 500."""
        per_choice: list[list[Event]] = [[] for _ in range(len(group) * n)]
        finished = 0
        try:
            while finished < len(per_choice):
                got = await next_event(events, request)
                if got is None:
                    return None
                i, ev = got
                per_choice[i * n + ev.index].append(ev)
                finished += ev.finish_reason is not None
        finally:
            group.release()
        err = next((failed(evs[-1]) for evs in per_choice if evs and failed(evs[-1])), None)
        if err is not None:
            raise ApiError(500, f"generation failed: {err}", type="server_error")
        return per_choice

    # ------------------------------------------------------------------------------------------- routes
    @app.get("/health")
    async def health():
        if not engine.alive:
            return JSONResponse({"status": "engine not running"}, status_code=503)
        return {"status": "ok", "model": loaded.name}

    @app.get("/metrics")
    async def metrics():
        from prometheus_client import CONTENT_TYPE_LATEST

        return Response(engine.metrics.prometheus_text(), media_type=CONTENT_TYPE_LATEST)

    def model_card() -> dict:
        return {"id": loaded.name, "object": "model", "created": int(time.time()), "owned_by": "danlu",
                "root": loaded.path, "parent": loaded.base_path, "max_model_len": loaded.max_model_len}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        check_model(model_id)
        return model_card()

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        check_model(body.model, body)
        if body.top_logprobs is not None and not body.logprobs:
            raise ApiError(400, "top_logprobs requires logprobs: true", param="top_logprobs")
        messages = [m.as_template_message() for m in body.messages]
        if body.tools and "tools" not in (loaded.template or getattr(tok, "chat_template", None) or ""):
            raise ApiError(400, "this model's chat template has no tool support; tools cannot be passed", param="tools")
        try:
            ids = render_prompt(tok, messages, tools=body.tools, template=loaded.template)
        except Exception as e:  # jinja's TemplateError and raise_exception() in templates
            raise ApiError(400, f"messages: the chat template rejected them: {e}", param="messages") from None
        top = body.top_logprobs or 0
        params = sampling_params(body, max_tokens_for(len(ids), body.requested_max_tokens()),
                                 logprobs=top if body.logprobs else None)
        group, events = submit([ids], params, chat_stops, body.stream)
        if body.stream:
            include = bool(body.stream_options and body.stream_options.include_usage)
            return sse(chat_stream(group, events, params.n, top, include))
        per_choice = await collect(group, events, request, params.n)
        if per_choice is None:
            return Response(status_code=499)
        choices = []
        for idx, evs in enumerate(per_choice):
            entries = [lp for ev in evs for lp in ev.logprobs]
            choices.append({"index": idx, "message": {"role": "assistant", "content": "".join(e.text for e in evs),
                                                      "refusal": None},
                            "logprobs": chat_logprobs(entries, top, names) if body.logprobs else None,
                            "finish_reason": evs[-1].finish_reason})
        r = group[0]
        return {"id": new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()),
                "model": loaded.name, "system_fingerprint": None, "choices": choices,
                "usage": usage(r.metrics.prompt_tokens, r.metrics.completion_tokens)}

    async def chat_stream(group, events, n, top, include_usage):
        chunks = StreamChunks("chat", loaded.name, include_usage)
        group.started = True
        try:
            for i in range(n):
                yield chunks.choice(i, role=True)
            finished = 0
            while finished < n:
                _, ev = await next_event(events)
                if failed(ev):
                    yield chunks.error(error_body(f"generation failed: {failed(ev)}", "server_error"))
                    return
                lp = chat_logprobs(ev.logprobs, top, names) if group[0].params.logprobs is not None else None
                if ev.text or (lp and lp["content"]):
                    yield chunks.choice(ev.index, ev.text, logprobs=lp)
                if ev.finish_reason:
                    finished += 1
                    yield chunks.choice(ev.index, None, finish_reason=ev.finish_reason)
            if include_usage:
                yield chunks.usage(group[0].metrics.prompt_tokens, group[0].metrics.completion_tokens)
            yield chunks.DONE
        except ApiError as e:  # the engine went away mid-stream: say so in the stream
            yield chunks.error(e.body)
        finally:
            group.release()

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request):
        check_model(body.model, body)
        if body.suffix:
            raise ApiError(400, "suffix is not supported", param="suffix")
        if body.best_of not in (None, body.n):
            raise ApiError(400, "best_of other than n is not supported", param="best_of")
        try:
            raw = body.prompts()
        except ValueError as e:
            raise ApiError(400, str(e), param="prompt") from None
        prompts = [tok.encode(p) if isinstance(p, str) else p for p in raw]
        for ids in prompts:
            if not ids:
                raise ApiError(400, "prompt: a prompt encodes to no tokens", param="prompt")
            bad = next((t for t in ids if not 0 <= t < engine.vocab_size), None)
            if bad is not None:
                raise ApiError(400, f"prompt: token id {bad} is outside the vocabulary (0..{engine.vocab_size - 1})",
                               param="prompt")
        for ids in prompts:
            max_tokens_for(len(ids), body.max_tokens or None, "prompt")
        max_tokens = body.max_tokens
        params = sampling_params(body, max_tokens, logprobs=body.logprobs,
                                 prompt_logprobs=body.logprobs if body.echo and body.logprobs is not None else None)
        echo_texts = [p if isinstance(p, str) else tok.decode(p, skip_special_tokens=False) for p in raw]
        group, events = submit(prompts, params, None, body.stream)
        if body.stream:
            include = bool(body.stream_options and body.stream_options.include_usage)
            return sse(completion_stream(group, events, body, echo_texts, include))
        per_choice = await collect(group, events, request, params.n)
        if per_choice is None:
            return Response(status_code=499)
        choices = []
        for idx, evs in enumerate(per_choice):
            req = group[idx // params.n]
            text = "".join(e.text for e in evs)
            logprobs = None
            if body.logprobs is not None:
                entries = [lp for ev in evs for lp in ev.logprobs]
                start = len(echo_texts[idx // params.n]) if body.echo else 0
                lp_offsets = Offsets(tok, req.prompt_ids, start).take([e.token_id for e in entries])
                if body.echo:
                    entries = list(req.prompt_logprobs or []) + entries
                    lp_offsets = Offsets(tok, []).take(req.prompt_ids) + lp_offsets
                logprobs = completion_logprobs(entries, names, lp_offsets)
            if body.echo:
                text = echo_texts[idx // params.n] + text
            choices.append({"index": idx, "text": text, "logprobs": logprobs, "finish_reason": evs[-1].finish_reason})
        return {"id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()), "model": loaded.name,
                "system_fingerprint": None, "choices": choices,
                "usage": usage(sum(r.metrics.prompt_tokens for r in group),
                               sum(r.metrics.completion_tokens for r in group))}

    async def completion_stream(group, events, body: CompletionRequest, echo_texts, include_usage):
        chunks = StreamChunks("completion", loaded.name, include_usage)
        n = body.n
        trackers: dict[int, Offsets] = {}
        group.started = True
        try:
            finished, total = 0, len(group) * n
            while finished < total:
                i, ev = await next_event(events)
                idx, req = i * n + ev.index, group[i]
                if failed(ev):
                    yield chunks.error(error_body(f"generation failed: {failed(ev)}", "server_error"))
                    return
                text, entries, offs = ev.text, list(ev.logprobs), []
                if idx not in trackers:  # the first chunk of a choice carries the echoed prompt
                    trackers[idx] = Offsets(tok, req.prompt_ids, len(echo_texts[i]) if body.echo else 0)
                    if body.echo:
                        text = echo_texts[i] + text
                        entries = list(req.prompt_logprobs or []) + entries
                        offs = Offsets(tok, []).take(req.prompt_ids)
                lp = None
                if body.logprobs is not None:
                    offs += trackers[idx].take([e.token_id for e in ev.logprobs])
                    lp = completion_logprobs(entries, names, offs)
                if text or (lp and lp["tokens"]):
                    yield chunks.choice(idx, text, logprobs=lp)
                if ev.finish_reason:
                    finished += 1
                    yield chunks.choice(idx, "", finish_reason=ev.finish_reason)
            if include_usage:
                yield chunks.usage(sum(r.metrics.prompt_tokens for r in group),
                                   sum(r.metrics.completion_tokens for r in group))
            yield chunks.DONE
        except ApiError as e:
            yield chunks.error(e.body)
        finally:
            group.release()

    @app.post("/tokenize")
    async def tokenize(body: TokenizeRequest):
        check_model(body.model)
        if (body.prompt is None) == (body.messages is None):
            raise ApiError(400, "give exactly one of prompt or messages", param="prompt")
        if body.prompt is not None:
            ids = tok.encode(body.prompt, add_special_tokens=body.add_special_tokens)
        else:
            try:
                ids = render_prompt(tok, [m.as_template_message() for m in body.messages], template=loaded.template)
            except Exception as e:
                raise ApiError(400, f"messages: the chat template rejected them: {e}", param="messages") from None
        return {"count": len(ids), "max_model_len": loaded.max_model_len, "tokens": ids,
                "token_strs": [names.text(t) for t in ids]}

    @app.post("/detokenize")
    async def detokenize(body: DetokenizeRequest):
        check_model(body.model)
        bad = next((t for t in body.tokens if not 0 <= t < engine.vocab_size), None)
        if bad is not None:
            raise ApiError(400, f"tokens: id {bad} is outside the vocabulary", param="tokens")
        return {"prompt": tok.decode(body.tokens, clean_up_tokenization_spaces=False)}

    @app.get("/tokenizer_info")
    async def tokenizer_info():
        return {"tokenizer_class": type(tok).__name__, "eos_token": tok.eos_token, "bos_token": tok.bos_token,
                "pad_token": tok.pad_token, "unk_token": tok.unk_token,
                "chat_template": loaded.template or getattr(tok, "chat_template", None),
                "model_max_length": loaded.max_model_len, "vocab_size": len(tok)}

    return app


def sampling_params(body, max_tokens: int, **logprobs) -> SamplingParams:
    try:
        return body.sampling(max_tokens, **logprobs)
    except ValueError as e:
        raise ApiError(400, str(e)) from None


class Offsets:
    """Character offsets of tokens in the text they decode to (the completions API's text_offset)."""

    def __init__(self, tokenizer, context: list[int], start: int = 0):
        self.detok, self.pos = IncrementalDetokenizer(tokenizer, context), start

    def take(self, ids: list[int]) -> list[int]:
        out = []
        for t in ids:
            out.append(self.pos)
            self.pos += len(self.detok.add(t))
        return out


def sse(chunks) -> StreamingResponse:
    return StreamingResponse(chunks, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
