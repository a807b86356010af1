"""Calls to an OpenAI-compatible judge: a concurrency limit, retries, a reply cache and token/cost accounting.

HTTP failures (429, 5xx, timeouts, dropped connections) are retried by the openai client itself, with
exponential backoff that honours the server's Retry-After; a reply that arrives but cannot be parsed is asked
again, up to `retries` times; what still fails is returned as a failure (never raised), so one bad item never
stops a run. Only parsed replies are cached (SQLite, keyed by endpoint model, messages, sampling settings and
the sample number), so a rerun pays only for what it has not got yet.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import sqlite3
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

from danlu.eval.config import JudgeConfig


@dataclass
class Usage:
    calls: int = 0  # HTTP requests that returned a reply
    cached: int = 0  # answers served from the cache (no request)
    malformed: int = 0  # replies that could not be parsed (each one asked again while retries last)
    http_errors: int = 0  # requests that failed after the client's own retries
    failures: int = 0  # asks that ended without a parsed reply
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)

    def cost(self, price_input: float, price_output: float) -> float:
        return (self.prompt_tokens * price_input + self.completion_tokens * price_output) / 1e6

    def as_dict(self, cfg: JudgeConfig) -> dict:
        return {**asdict(self), "seconds": round(self.seconds, 3),
                "cost": round(self.cost(cfg.price_input, cfg.price_output), 6)}


@dataclass
class Reply:
    parsed: Any  # what `parse` returned, or None on failure
    text: str | None
    error: str | None = None
    cached: bool = False


class ReplyCache:
    """SQLite table key -> reply text. One connection, used from the event loop's thread only."""

    def __init__(self, path: str | Path):
        self.path = Path(path).expanduser()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path)
        self.db.execute("CREATE TABLE IF NOT EXISTS replies (key TEXT PRIMARY KEY, reply TEXT, created REAL)")
        self.db.commit()

    def get(self, key: str) -> str | None:
        row = self.db.execute("SELECT reply FROM replies WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, reply: str) -> None:
        self.db.execute("INSERT OR REPLACE INTO replies VALUES (?, ?, ?)", (key, reply, time.time()))
        self.db.commit()

    def close(self) -> None:
        self.db.close()


def default_cache_path() -> Path:
    return Path(os.environ.get("DANLU_CACHE", "~/.cache/danlu")).expanduser() / "judge.sqlite"


class JudgeClient:
    def __init__(self, cfg: JudgeConfig):
        from openai import AsyncOpenAI

        self.cfg = cfg
        # local OpenAI-compatible servers usually need no key; the client insists on some string
        key = os.environ.get(cfg.api_key_env) or "none"
        self.client = AsyncOpenAI(base_url=cfg.base_url, api_key=key, max_retries=cfg.retries, timeout=cfg.timeout_s)
        self.cache = ReplyCache(cfg.cache or default_cache_path())
        self.sem = asyncio.Semaphore(cfg.concurrency)
        self.usage = Usage()

    def key(self, messages: list[dict], sample: int) -> str:
        ident = {"base_url": self.cfg.base_url, "model": self.cfg.model, "messages": messages,
                 "temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens, "sample": sample}
        return hashlib.sha256(json.dumps(ident, sort_keys=True, ensure_ascii=False).encode()).hexdigest()

    def _error(self, kind: str) -> None:
        self.usage.errors[kind] = self.usage.errors.get(kind, 0) + 1

    async def ask(self, messages: list[dict], parse: Callable[[str], Any], sample: int = 0) -> Reply:
        """A parsed reply for `messages` (sample number `sample` of repeated sampling), from the cache or the
        endpoint; on failure Reply.parsed is None and Reply.error says why."""
        import openai

        key = self.key(messages, sample)
        hit = self.cache.get(key)
        if hit is not None:
            try:
                parsed = parse(hit)
                self.usage.cached += 1
                return Reply(parsed, hit, cached=True)
            except ValueError:
                pass  # a cache written by an older parser: ask again
        text, error = None, None
        for _ in range(self.cfg.retries + 1):
            t0 = time.perf_counter()
            try:
                async with self.sem:
                    resp = await self.client.chat.completions.create(
                        model=self.cfg.model, messages=messages, temperature=self.cfg.temperature,
                        max_tokens=self.cfg.max_tokens)
            except openai.APIStatusError as e:  # the client already retried 429/5xx with backoff
                self.usage.http_errors += 1
                self._error(f"http {e.status_code}")
                error = f"HTTP {e.status_code}: {str(e)[:300]}"
                break
            except (openai.APIConnectionError, openai.APITimeoutError) as e:
                self.usage.http_errors += 1
                self._error(type(e).__name__)
                error = f"{type(e).__name__}: {str(e)[:300]}"
                break
            finally:
                self.usage.seconds += time.perf_counter() - t0
            self.usage.calls += 1
            if resp.usage is not None:
                self.usage.prompt_tokens += resp.usage.prompt_tokens or 0
                self.usage.completion_tokens += resp.usage.completion_tokens or 0
            text = resp.choices[0].message.content if resp.choices else None
            try:
                if text is None:
                    raise ValueError("the reply has no message content")
                parsed = parse(text)
            except ValueError as e:
                self.usage.malformed += 1
                self._error("malformed")
                error = f"malformed reply: {e}"
                continue
            self.cache.put(key, text)
            return Reply(parsed, text)
        self.usage.failures += 1
        return Reply(None, text, error)

    async def aclose(self) -> None:
        await self.client.close()
        self.cache.close()


def last_json_object(text: str) -> dict:
    """The last {...} in `text` that parses as a JSON object (judges often write reasons before it)."""
    decoder = json.JSONDecoder()
    found = None
    i = text.find("{")
    while i != -1:
        try:
            obj, end = decoder.raw_decode(text, i)
            if isinstance(obj, dict):
                found = obj
            i = text.find("{", end)
        except ValueError:
            i = text.find("{", i + 1)
    if found is None:
        raise ValueError("no JSON object in the reply")
    return found
