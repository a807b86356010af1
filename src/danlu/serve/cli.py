"""`danlu serve` and `danlu chat`. Flags default to None (not given): ServeConfig / ChatConfig hold the defaults,
and `--set key=value` overrides any of their fields. Heavy imports happen inside the commands."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import List, Optional

import typer

from danlu.cliutil import sets_option


def serve_cmd(
    model: str = typer.Argument(..., help="Model folder, merged export, or LoRA adapter folder."),
    base: Optional[str] = typer.Option(None, "--base", help="Base model folder of a LoRA adapter."),
    served_model_name: Optional[str] = typer.Option(None, "--served-model-name", help="Name clients ask for "
                                                    "(default: the folder's name)."),
    engine: Optional[str] = typer.Option(None, "--engine", help="danlu (built in) or vllm (GPU; pip install vllm)."),
    host: Optional[str] = typer.Option(None, "--host", help="Address to listen on (default 127.0.0.1)."),
    port: Optional[int] = typer.Option(None, "--port", help="Port (default 8000)."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="DANLU_API_KEY",
                                          help="Require 'Authorization: Bearer KEY' (or set DANLU_API_KEY)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="auto|float32|bfloat16|float16."),
    device: Optional[str] = typer.Option(None, "--device", help="auto|cpu|cuda|cuda:1 ..."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch CPU threads (default: one per core)."),
    max_model_len: Optional[int] = typer.Option(None, "--max-model-len", help="Context length to serve."),
    max_prompt_tokens: Optional[int] = typer.Option(None, "--max-prompt-tokens", help="Longest prompt accepted."),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Most tokens one request may ask for."),
    max_concurrent: Optional[int] = typer.Option(None, "--max-concurrent", help="In-flight requests; more get 429."),
    max_batch: Optional[int] = typer.Option(None, "--max-batch", help="Sequences decoded together."),
    chat_template: Optional[Path] = typer.Option(None, "--chat-template", help="A .jinja file overriding the "
                                                 "model's template."),
    set_: List[str] = sets_option(),
) -> None:
    """Serve a model over an OpenAI-compatible API (/v1/chat/completions, /v1/completions, /v1/models, /metrics)."""
    from danlu.serve.server import serve, serve_config

    cfg = serve_config(model, sets=set_, base=base, served_model_name=served_model_name, engine=engine, host=host,
                       port=port, api_key=api_key, dtype=dtype, device=device, threads=threads,
                       max_model_len=max_model_len, max_prompt_tokens=max_prompt_tokens, max_tokens=max_tokens,
                       max_concurrent=max_concurrent, max_batch=max_batch,
                       chat_template=str(chat_template) if chat_template else None)
    try:
        serve(cfg)
    except RuntimeError as e:  # vLLM missing
        typer.secho(f"error: {e}", err=True, fg="red")
        raise typer.Exit(2)


def chat_cmd(
    model: str = typer.Argument(..., help="Model folder, or a server URL such as http://127.0.0.1:8000."),
    system: Optional[str] = typer.Option(None, "--system", help="System prompt."),
    temperature: Optional[float] = typer.Option(None, "--temperature", help="0 is greedy (default 0.7)."),
    top_p: Optional[float] = typer.Option(None, "--top-p"),
    top_k: Optional[int] = typer.Option(None, "--top-k"),
    repetition_penalty: Optional[float] = typer.Option(None, "--repetition-penalty"),
    max_tokens: Optional[int] = typer.Option(None, "--max-tokens", help="Longest reply (default: what the context allows)."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    base: Optional[str] = typer.Option(None, "--base", help="Base model folder of a LoRA adapter."),
    dtype: Optional[str] = typer.Option(None, "--dtype"),
    device: Optional[str] = typer.Option(None, "--device"),
    chat_template: Optional[Path] = typer.Option(None, "--chat-template"),
    served_model: Optional[str] = typer.Option(None, "--served-model", help="Model name on the server."),
    api_key: Optional[str] = typer.Option(None, "--api-key", envvar="DANLU_API_KEY"),
    set_: List[str] = sets_option(),
) -> None:
    """Chat with a model in the terminal (streamed; /reset, /save, /system, /exit)."""
    from danlu.serve.chat import chat_config, chat_loop, open_chat

    cfg = chat_config(model, sets=set_, system=system, temperature=temperature, top_p=top_p, top_k=top_k,
                      repetition_penalty=repetition_penalty, max_tokens=max_tokens, seed=seed, base=base,
                      dtype=dtype, device=device, chat_template=str(chat_template) if chat_template else None,
                      served_model=served_model, api_key=api_key)
    backend = open_chat(cfg)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    def read(prompt: str) -> str:
        if sys.stdin.isatty():
            try:
                import readline  # noqa: F401  (line editing and history for input())
            except ImportError:
                pass
            return input(prompt)
        write(prompt)
        line = sys.stdin.readline()
        if not line:
            raise EOFError
        return line

    chat_loop(backend, cfg.system, read, write)
