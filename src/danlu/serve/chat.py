"""`danlu chat`: an interactive terminal chat with history, a system prompt and streamed replies, on a model
folder directly (the same engine, template and sampling as the server) or against a running `danlu serve` (or
any OpenAI-compatible server) through the openai client.

Commands inside the chat: /reset (forget the history), /save [FILE] (the conversation as JSON, messages in
danlu's SFT record shape), /system TEXT (a new system prompt; resets), /help, /exit.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Iterator, Literal, Optional

from pydantic import Field

from danlu.config import StrictModel, build_config

HELP = "/reset  forget the conversation    /save [FILE]  save it as JSON    /system TEXT  new system prompt\n" \
       "/help   this text                  /exit  leave (or Ctrl-D)"


class ChatConfig(StrictModel):
    model: str  # a model folder, or the URL of an OpenAI-compatible server (http://host:port[/v1])
    system: Optional[str] = None
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0)
    repetition_penalty: float = Field(1.0, gt=0)
    max_tokens: Optional[int] = Field(None, ge=1)  # None: as long as the model's context allows
    seed: Optional[int] = None
    # a model folder
    base: Optional[str] = None
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    device: str = "auto"
    chat_template: Optional[str] = None
    # a server
    served_model: Optional[str] = None  # default: the server's first model
    api_key: Optional[str] = None


def chat_config(model: str, *, sets=(), **options) -> ChatConfig:
    return build_config(ChatConfig, None, fields=dict(options, model=str(model)), sets=sets, source="chat")


def is_url(model: str) -> bool:
    return model.startswith(("http://", "https://"))


class LocalChat:
    """Replies from a model folder through danlu's engine, stepped in this thread."""

    def __init__(self, cfg: ChatConfig):
        from danlu.serve.engine import Engine
        from danlu.serve.loader import load_model
        from danlu.tokenizer.chat import stop_token_ids

        self.cfg = cfg
        self.loaded = load_model(cfg.model, base=cfg.base, dtype=cfg.dtype, device=cfg.device,
                                 chat_template_file=cfg.chat_template)
        self.engine = Engine(self.loaded, max_batch=1)
        self.stops = stop_token_ids(self.loaded.tokenizer)
        self.name = self.loaded.name

    def reply(self, messages: list[dict]) -> Iterator[str]:
        from danlu.serve.sampling import SamplingParams
        from danlu.tokenizer.chat import render_prompt

        ids = render_prompt(self.loaded.tokenizer, messages, template=self.loaded.template)
        room = self.loaded.max_model_len - len(ids)
        if room <= 0:
            raise ValueError(f"the conversation has {len(ids)} tokens, the model's context is "
                             f"{self.loaded.max_model_len}: /reset to start over")
        c = self.cfg
        params = SamplingParams(max_tokens=min(c.max_tokens or room, room), temperature=c.temperature, top_p=c.top_p,
                                top_k=c.top_k, repetition_penalty=c.repetition_penalty, seed=c.seed)
        for ev in self.engine.stream(ids, params, self.stops):
            if ev.error:
                raise RuntimeError(f"generation failed: {ev.error}")
            if ev.text:
                yield ev.text


class RemoteChat:
    """Replies from a running server through the openai client (streamed)."""

    def __init__(self, cfg: ChatConfig):
        import openai

        base = cfg.model.rstrip("/")
        self.client = openai.OpenAI(base_url=base if base.endswith("/v1") else base + "/v1",
                                    api_key=cfg.api_key or "none")
        self.cfg = cfg
        self.name = cfg.served_model or self.client.models.list().data[0].id

    def reply(self, messages: list[dict]) -> Iterator[str]:
        c = self.cfg
        extra = {k: v for k, v in (("top_k", c.top_k), ("repetition_penalty", c.repetition_penalty))
                 if v not in (0, 1.0)}
        stream = self.client.chat.completions.create(model=self.name, messages=messages, stream=True,
                                                     temperature=c.temperature, top_p=c.top_p,
                                                     max_tokens=c.max_tokens, seed=c.seed, extra_body=extra or None)
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                yield chunk.choices[0].delta.content


def open_chat(cfg: ChatConfig):
    return RemoteChat(cfg) if is_url(cfg.model) else LocalChat(cfg)


def chat_loop(backend, system: str | None, read: Callable[[str], str], write: Callable[[str], None],
              save_dir: Path = Path(".")) -> list[dict]:
    """The read-reply loop; returns the conversation at exit. `read` raises EOFError at the end of input."""
    history: list[dict] = []
    write(f"danlu chat: {backend.name}. {HELP}\n")
    while True:
        try:
            line = read("> ").strip()
        except (EOFError, KeyboardInterrupt):
            write("\n")
            return history
        if not line:
            continue
        if line.startswith("/"):
            cmd, _, arg = line.partition(" ")
            if cmd in ("/exit", "/quit"):
                return history
            if cmd == "/reset":
                history = []
                write("(conversation cleared)\n")
            elif cmd == "/system":
                system, history = (arg.strip() or None), []
                write(f"(system prompt {'set' if system else 'removed'}; conversation cleared)\n")
            elif cmd == "/save":
                path = Path(arg.strip()) if arg.strip() else save_dir / f"chat-{time.strftime('%Y%m%d-%H%M%S')}.json"
                path.write_text(json.dumps({"model": backend.name, "messages": _with_system(system, history)},
                                           ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
                write(f"(saved {len(history)} messages to {path})\n")
            elif cmd == "/help":
                write(HELP + "\n")
            else:
                write(f"unknown command {cmd}; /help lists them\n")
            continue
        history.append({"role": "user", "content": line})
        reply = []
        try:
            for piece in backend.reply(_with_system(system, history)):
                reply.append(piece)
                write(piece)
        except KeyboardInterrupt:  # stop this reply, keep what came
            write(" [interrupted]")
        except Exception as e:
            history.pop()
            write(f"\nerror: {e}\n")
            continue
        write("\n")
        history.append({"role": "assistant", "content": "".join(reply)})


def _with_system(system: str | None, history: list[dict]) -> list[dict]:
    return ([{"role": "system", "content": system}] if system else []) + history
