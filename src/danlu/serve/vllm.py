"""`danlu serve --engine vllm`: the same model folder, chat template and flags, served by vLLM's own
OpenAI-compatible server, so clients do not change when a deployment outgrows the built-in engine.

danlu's flags map onto vLLM's; the few vLLM has no equivalent for are named in a warning rather than dropped
silently. A LoRA adapter folder is served through vLLM's LoRA support on its base (`--enable-lora`).
"""

from __future__ import annotations

import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

from danlu.serve.server import ServeConfig

INSTALL_HINT = ("vLLM is not installed. It needs Linux and an NVIDIA (or AMD ROCm) GPU; install it into this "
                "environment with `pip install vllm` (it brings its own CUDA build of torch, so use a separate "
                "virtual environment from a CPU-only danlu install), or serve with the built-in engine "
                "(`--engine danlu`).")
NO_VLLM_EQUIVALENT = ("max_prompt_tokens", "max_tokens", "max_concurrent", "max_queue")


def vllm_args(cfg: ServeConfig, template_dir: str | Path | None = None) -> tuple[list[str], list[str]]:
    """vLLM server arguments for `cfg`, and warnings for settings vLLM has no flag for."""
    from danlu.model.adapters import model_folder
    from danlu.serve.loader import adapter_base
    from danlu.tokenizer.chat import DEFAULT_CHAT_TEMPLATE, chat_template

    folder = model_folder(cfg.model)  # a danlu training run: its model/
    name = cfg.served_model_name or Path(cfg.model).name
    adapter = (folder / "adapter_config.json").exists()
    weights = adapter_base(folder, cfg.base) if adapter else folder
    args = ["--model", str(weights), "--host", cfg.host, "--port", str(cfg.port), "--dtype", cfg.dtype,
            "--seed", str(cfg.seed), "--max-num-seqs", str(cfg.max_batch),
            "--max-num-batched-tokens", str(cfg.max_prefill_tokens),
            # sampling defaults are the request's, as in danlu, not the model's generation_config.json
            "--generation-config", "vllm"]
    if adapter:
        rank = json.loads((folder / "adapter_config.json").read_text(encoding="utf-8")).get("r", 16)
        args += ["--served-model-name", f"{name}-base", "--enable-lora", "--lora-modules", f"{name}={folder}",
                 "--max-lora-rank", str(max(8, int(rank)))]
        if any((folder / f).exists() for f in ("tokenizer.json", "tokenizer_config.json")):
            args += ["--tokenizer", str(folder)]
    else:
        args += ["--served-model-name", name]
    if cfg.max_model_len:
        args += ["--max-model-len", str(cfg.max_model_len)]
    if cfg.api_key:
        args += ["--api-key", cfg.api_key]
    template = Path(cfg.chat_template) if cfg.chat_template else None
    tok_dir = folder if adapter and (folder / "tokenizer_config.json").exists() else weights
    if template is None and (tok_dir / "chat_template.jinja").exists():
        template = tok_dir / "chat_template.jinja"
    if template is None and chat_template(tok_dir) is None:  # danlu's default applies: hand it to vLLM too
        template = Path(template_dir or tempfile.mkdtemp(prefix="danlu-vllm-")) / "chat_template.jinja"
        template.write_text(DEFAULT_CHAT_TEMPLATE, encoding="utf-8")
    if template is not None:
        args += ["--chat-template", str(template)]
    warnings = [f"{k}={getattr(cfg, k)} has no vLLM equivalent and is not applied" for k in NO_VLLM_EQUIVALENT
                if getattr(cfg, k) != ServeConfig.model_fields[k].default]
    if cfg.device != "auto":
        warnings.append(f"device={cfg.device}: vLLM picks its own device")
    return args, warnings


def vllm_available() -> bool:
    return importlib.util.find_spec("vllm") is not None


def exec_vllm(cfg: ServeConfig) -> None:
    """Replace this process with vLLM's server (signals and exit code are then vLLM's own)."""
    if not vllm_available():
        raise RuntimeError(INSTALL_HINT)
    args, warnings = vllm_args(cfg)
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)
    argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", *args]
    print("danlu serve --engine vllm: " + " ".join(a if a != cfg.api_key else "***" for a in argv), flush=True)
    os.execv(sys.executable, argv)
