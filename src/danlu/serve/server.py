"""`danlu serve`: its options (ServeConfig, the only place their defaults live), and running the API with
uvicorn, in the foreground or on a background thread of this process (notebooks, tests, benchmarks)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Iterable, Literal, Optional

from pydantic import Field

from danlu.config import StrictModel, build_config


class ServeConfig(StrictModel):
    model: str  # a model folder, a merged export, or a LoRA adapter folder
    base: Optional[str] = None  # an adapter's base model folder (default: its adapter_config.json's)
    served_model_name: Optional[str] = None  # the `model` clients send (default: the folder's name)
    engine: Literal["danlu", "vllm"] = "danlu"
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_key: Optional[str] = None  # clients must send `Authorization: Bearer KEY`
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    device: str = "auto"
    threads: Optional[int] = Field(None, ge=1)  # torch CPU threads (default: torch's, one per core)
    max_model_len: Optional[int] = Field(None, ge=2)  # default: the model's max_position_embeddings
    max_prompt_tokens: Optional[int] = Field(None, ge=1)  # default: max_model_len - 1
    max_tokens: Optional[int] = Field(None, ge=1)  # the most a request may ask for (default: max_model_len)
    max_concurrent: int = Field(256, ge=1)  # in-flight HTTP requests; more get 429
    max_batch: int = Field(32, ge=1)  # sequences decoded together
    max_queue: int = Field(512, ge=1)  # requests waiting for a batch slot; more get 503
    max_prefill_tokens: int = Field(4096, ge=1)  # prompt tokens prefilled in one scheduling round
    chat_template: Optional[str] = None  # a .jinja file overriding the model's own template
    seed: int = 0  # of the engine's generator (requests without a seed draw from it)
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"


def serve_config(model: str, *, sets: Iterable[str] = (), data: dict | None = None, **options) -> ServeConfig:
    return build_config(ServeConfig, data, fields=dict(options, model=str(model)), sets=sets, source="serve")


def build_engine(cfg: ServeConfig):
    import torch

    from danlu.serve.engine import Engine
    from danlu.serve.loader import load_model

    if cfg.threads:
        torch.set_num_threads(cfg.threads)  # the engine thread takes the setting of the thread that starts it

    loaded = load_model(cfg.model, base=cfg.base, dtype=cfg.dtype, device=cfg.device, name=cfg.served_model_name,
                        max_model_len=cfg.max_model_len, chat_template_file=cfg.chat_template)
    return Engine(loaded, max_batch=cfg.max_batch, max_queue=cfg.max_queue,
                  max_prefill_tokens=cfg.max_prefill_tokens, seed=cfg.seed)


def build_app(cfg: ServeConfig, engine=None):
    from danlu.serve.api import Limits, create_app

    engine = engine or build_engine(cfg)
    limits = Limits(api_key=cfg.api_key, max_prompt_tokens=cfg.max_prompt_tokens, max_tokens=cfg.max_tokens,
                    max_concurrent=cfg.max_concurrent)
    return create_app(engine, limits), engine


def serve(cfg: ServeConfig) -> None:
    """Run the server in the foreground until interrupted (vLLM's own server for engine: vllm)."""
    if cfg.engine == "vllm":
        from danlu.serve.vllm import exec_vllm

        exec_vllm(cfg)
        return
    import uvicorn

    app, engine = build_app(cfg)
    print(f"danlu serve: {engine.loaded.name} ({engine.loaded.path}) on {engine.device}, "
          f"http://{cfg.host}:{cfg.port}/v1", flush=True)
    uvicorn.run(app, host=cfg.host, port=cfg.port, log_level=cfg.log_level, timeout_graceful_shutdown=5)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class ServerThread:
    """The API on a background thread of this process: `with ServerThread(cfg) as srv: srv.base_url`."""

    def __init__(self, cfg: ServeConfig, engine=None):
        import uvicorn

        if cfg.port == 0:
            cfg = cfg.model_copy(update={"port": free_port(cfg.host)})
        self.cfg = cfg
        self.app, self.engine = build_app(cfg, engine)
        config = uvicorn.Config(self.app, host=cfg.host, port=cfg.port, log_level="warning", lifespan="on",
                                timeout_graceful_shutdown=2)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, name="danlu-serve", daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://{self.cfg.host}:{self.cfg.port}/v1"

    def start(self, timeout: float = 30) -> "ServerThread":
        self.thread.start()
        deadline = time.time() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.time() > deadline:
                raise RuntimeError(f"the server did not start on {self.cfg.host}:{self.cfg.port}")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def __enter__(self) -> "ServerThread":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
