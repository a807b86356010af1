"""`danlu serve` and `danlu chat` as users run them: the real command in a subprocess, the chat loop on a
model folder and against a server, vLLM's command line and its absence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import httpx2 as httpx
import pytest
from typer.testing import CliRunner

from serve_fixtures import CHATS, _one_thread, models  # noqa: F401  (pytest fixtures)

from danlu.cli import app
from danlu.serve.server import ServerThread, free_port, serve_config
from danlu.serve.vllm import vllm_args, vllm_available


def test_chat_on_a_model_folder_with_reset_and_save(models, tmp_path):
    question, reply = CHATS[0]
    save = tmp_path / "conv.json"
    script = (f"{question}\n/save {save}\n/reset\n/save {tmp_path / 'empty.json'}\n"
              f"/system be brief\n/save {tmp_path / 'system.json'}\n/exit\n")
    result = CliRunner().invoke(app, ["chat", str(models["memo"]), "--temperature", "0"], input=script)
    assert result.exit_code == 0, result.output
    assert reply in result.output
    saved = json.loads(save.read_text(encoding="utf-8"))
    assert saved["messages"] == [{"role": "user", "content": question}, {"role": "assistant", "content": reply}]
    assert json.loads((tmp_path / "empty.json").read_text())["messages"] == []
    assert json.loads((tmp_path / "system.json").read_text())["messages"] == [{"role": "system",
                                                                               "content": "be brief"}]


def test_chat_against_a_running_server_keeps_history(models, tmp_path):
    with ServerThread(serve_config(models["memo"], port=0)) as srv:
        script = f"{CHATS[1][0]}\n{CHATS[2][0]}\n/save {tmp_path / 'c.json'}\n"
        result = CliRunner().invoke(app, ["chat", srv.base_url.removesuffix("/v1"), "--temperature", "0"],
                                    input=script)
    assert result.exit_code == 0, result.output
    assert CHATS[1][1] in result.output
    roles = [m["role"] for m in json.loads((tmp_path / "c.json").read_text())["messages"]]
    assert roles == ["user", "assistant", "user", "assistant"]


def test_danlu_serve_command_end_to_end(models):
    """The installed `danlu serve` in its own process: listens, answers a chat request, stops on SIGTERM."""
    port = free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "danlu.cli", "serve", str(models["memo"]), "--port", str(port),
                             "--served-model-name", "ops", "--api-key", "k", "--set", "log_level=warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.2)
            assert proc.poll() is None, proc.stdout.read()
        r = httpx.post(url + "/v1/chat/completions", headers={"Authorization": "Bearer k"}, timeout=30,
                       json={"model": "ops", "messages": [{"role": "user", "content": CHATS[0][0]}],
                             "temperature": 0})
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == CHATS[0][1]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert proc.returncode in (0, -15), out  # uvicorn re-raises SIGTERM after its graceful shutdown


def test_bad_serve_options_are_clear_errors(models):
    r = CliRunner().invoke(app, ["serve", str(models["memo"]), "--set", "max_batch=0"])
    assert r.exit_code != 0 and "max_batch" in str(r.exception or r.output)
    r = CliRunner().invoke(app, ["serve", str(models["memo"]), "--set", "batch_size=4"])
    assert r.exit_code != 0 and "batch_size" in str(r.exception or r.output)


@pytest.mark.skipif(vllm_available(), reason="vLLM is installed here")
def test_engine_vllm_without_vllm_says_how_to_get_it(models):
    r = CliRunner().invoke(app, ["serve", str(models["memo"]), "--engine", "vllm"])
    assert r.exit_code == 2 and "pip install vllm" in r.output


def test_vllm_gets_the_same_folder_template_and_flags(models, tmp_path):
    args, warnings = vllm_args(serve_config(models["memo"], port=9000, api_key="k", max_batch=8, max_tokens=64,
                                            served_model_name="ops"))
    flags = dict(zip(args[::2], args[1::2]))
    assert flags["--model"] == str(models["memo"]) and flags["--served-model-name"] == "ops"
    assert flags["--chat-template"] == str(models["memo"] / "chat_template.jinja")
    assert flags["--max-num-seqs"] == "8" and flags["--api-key"] == "k" and flags["--port"] == "9000"
    assert any("max_tokens" in w for w in warnings)

    # a LoRA adapter folder: vLLM serves the base with the adapter under the served name
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(models["random"])),
                                LoraConfig(r=4, target_modules=["q_proj"]))
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    args, _ = vllm_args(serve_config(tmp_path / "adapter", base=str(models["random"])))
    assert args[args.index("--model") + 1] == str(models["random"]) and "--enable-lora" in args
    assert args[args.index("--lora-modules") + 1] == f"adapter={tmp_path / 'adapter'}"

    # a model folder without any template: vLLM gets danlu's default, as the built-in engine would use
    from danlu.tokenizer.chat import DEFAULT_CHAT_TEMPLATE

    bare = tmp_path / "bare"
    bare.mkdir()
    for f in models["random"].iterdir():
        if f.name != "chat_template.jinja":
            (bare / f.name).write_bytes(f.read_bytes())
    args, _ = vllm_args(serve_config(bare), template_dir=tmp_path)
    assert (tmp_path / "chat_template.jinja").read_text() == DEFAULT_CHAT_TEMPLATE
    assert args[args.index("--chat-template") + 1] == str(tmp_path / "chat_template.jinja")
