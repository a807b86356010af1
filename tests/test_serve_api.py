"""The OpenAI-compatible server, started on localhost and spoken to with the official `openai` client (sync and
async) and raw HTTP for what a client library would never send."""

from __future__ import annotations

import asyncio
import json
import time

import httpx2 as httpx
import openai
import pytest
import torch

from serve_fixtures import CHATS, TEXT_LINE, TEXT_PROMPT, _one_thread, models  # noqa: F401  (pytest fixtures)

from danlu.serve.server import ServerThread, serve_config

KEY = "sk-danlu-test"


@pytest.fixture(scope="module")
def server(models):
    torch.set_num_threads(1)
    srv = ServerThread(serve_config(models["memo"], port=0, api_key=KEY, max_tokens=200, max_batch=16)).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=60)


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def raw(server, method: str, path: str, **kw) -> httpx.Response:
    headers = kw.pop("headers", {"Authorization": f"Bearer {KEY}"})
    return httpx.request(method, server.base_url.removesuffix("/v1") + path, headers=headers, timeout=30, **kw)


def test_models_health_and_metrics(server, client):
    assert [m.id for m in client.models.list().data] == ["memo"]
    assert client.models.retrieve("memo").id == "memo"
    assert raw(server, "GET", "/health", headers={}).json()["status"] == "ok"
    assert "danlu_time_to_first_token_seconds" in raw(server, "GET", "/metrics", headers={}).text


def test_chat_completion(client):
    for question, reply in CHATS:
        r = client.chat.completions.create(model="memo", messages=user(question), temperature=0)
        assert r.choices[0].message.content == reply and r.choices[0].finish_reason == "stop"
        assert r.object == "chat.completion" and r.usage.completion_tokens > 0
        assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_streaming_chinese_never_sends_replacement_characters(client):
    question, reply = CHATS[0]
    stream = client.chat.completions.create(model="memo", messages=user(question), temperature=0, stream=True,
                                            stream_options={"include_usage": True})
    chunks = list(stream)
    deltas = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert "".join(deltas) == reply and len(deltas) > 5
    assert not any("\ufffd" in d for d in deltas)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > len(deltas)  # 3 byte tokens a char


def test_sse_wire_format(server):
    """Exactly OpenAI's framing: `data: {json}` events separated by blank lines, ending with `data: [DONE]`."""
    body = {"model": "memo", "messages": user(CHATS[1][0]), "temperature": 0, "stream": True}
    with httpx.stream("POST", server.base_url + "/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        text = r.read().decode()
    events = [e for e in text.split("\n\n") if e]
    assert all(e.startswith("data: ") for e in events) and events[-1] == "data: [DONE]"
    objs = [json.loads(e[6:]) for e in events[:-1]]
    assert {o["object"] for o in objs} == {"chat.completion.chunk"} and len({o["id"] for o in objs}) == 1
    assert set(objs[1]["choices"][0]) == {"index", "delta", "logprobs", "finish_reason"}
    assert objs[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}


def test_chat_logprobs_n_and_seed(client, models):
    r = client.chat.completions.create(model="memo", messages=user(CHATS[1][0]), temperature=0, logprobs=True,
                                       top_logprobs=2)
    content = r.choices[0].logprobs.content
    assert b"".join(bytes(c.bytes) for c in content).decode() == CHATS[1][1]
    assert content[0].token == "R" and any(c.token.startswith("bytes:\\x") for c in content)  # split characters
    assert all(c.top_logprobs[0].token == c.token and len(c.top_logprobs) == 2 for c in content)
    a = client.chat.completions.create(model="memo", messages=user("你好"), temperature=1.5, n=3, seed=11,
                                       max_tokens=12)
    b = client.chat.completions.create(model="memo", messages=user("你好"), temperature=1.5, n=3, seed=11,
                                       max_tokens=12)
    assert [c.message.content for c in a.choices] == [c.message.content for c in b.choices]
    assert [c.index for c in a.choices] == [0, 1, 2]
    forced = client.completions.create(model="memo", prompt="apt", max_tokens=4, temperature=0,
                                       logit_bias={"300": 100})
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(models["memo"]))
    assert forced.choices[0].text == tok.decode([300] * 4) and forced.usage.completion_tokens == 4


def test_completions_echo_logprobs_score_the_prompt(server, client, models):
    """What lm-eval's local-completions sends for loglikelihood: token ids, echo, max_tokens 1, logprobs 1."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(models["memo"]))
    ids = tok.encode(TEXT_LINE)[:12]
    r = client.completions.create(model="memo", prompt=ids, max_tokens=1, echo=True, logprobs=1, temperature=0)
    lp = r.choices[0].logprobs
    assert lp.token_logprobs[0] is None and len(lp.token_logprobs) == len(ids) + 1
    model = AutoModelForCausalLM.from_pretrained(str(models["memo"])).eval()
    with torch.inference_mode():
        ref = torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    for t in range(1, len(ids)):
        assert lp.token_logprobs[t] == pytest.approx(float(ref[t - 1, ids[t]]), abs=1e-4)
        assert max(lp.top_logprobs[t].values()) == pytest.approx(float(ref[t - 1].max()), abs=1e-4)
    assert r.choices[0].text.startswith(tok.decode(ids, skip_special_tokens=False))
    assert lp.text_offset[:2] == [0, 0]  # <|bos|> takes no characters

    plain = client.completions.create(model="memo", prompt=TEXT_PROMPT, max_tokens=60, temperature=0)
    assert TEXT_PROMPT + plain.choices[0].text == TEXT_LINE and plain.choices[0].finish_reason == "stop"
    batch = client.completions.create(model="memo", prompt=[TEXT_PROMPT, "debian"], max_tokens=5, temperature=0)
    first = batch.choices[0].text.rstrip("\ufffd")  # cut after 5 tokens: maybe inside a character
    assert [c.index for c in batch.choices] == [0, 1] and plain.choices[0].text.startswith(first) and first


def test_completions_streaming_with_stop(client):
    stream = client.completions.create(model="memo", prompt=TEXT_PROMPT, max_tokens=60, temperature=0, stream=True,
                                       stop=["source"])
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks)
    assert text == TEXT_LINE[len(TEXT_PROMPT):TEXT_LINE.index("source")]
    assert chunks[-1].choices[0].finish_reason == "stop" and chunks[-1].object == "text_completion"


BAD_REQUESTS = [
    ("/v1/chat/completions", "{not json", 400, None),
    ("/v1/chat/completions", "[1, 2]", 400, None),
    ("/v1/chat/completions", {"model": "memo", "messages": user("x"), "temperature": "hot"}, 400, "temperature"),
    ("/v1/chat/completions", {"model": "memo", "messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"model": "memo", "messages": [{"role": "robot", "content": "x"}]}, 400, None),
    ("/v1/chat/completions", {"model": "memo", "messages": user("x"), "n": "many"}, 400, "n"),
    ("/v1/chat/completions", {"model": "memo", "messages": user("x"), "max_tokens": 10_000}, 400, "max_tokens"),
    ("/v1/chat/completions", {"model": "memo", "messages": user("x"), "top_logprobs": 2}, 400, "top_logprobs"),
    ("/v1/chat/completions", {"model": "memo", "messages": user("x"), "stream": "yes"}, 400, "stream"),
    ("/v1/chat/completions", {"model": "memo", "messages": user("x"),
                              "response_format": {"type": "json_object"}}, 400, None),
    ("/v1/chat/completions", {"model": "gpt-4", "messages": user("x")}, 404, "model"),
    ("/v1/completions", {"model": "memo", "prompt": [10 ** 7]}, 400, "prompt"),
    ("/v1/completions", {"model": "memo", "prompt": "x", "logit_bias": {"99999": 5}}, 400, "logit_bias"),
    ("/v1/completions", {"model": "memo", "prompt": "x", "logit_bias": {"5": 500}}, 400, "logit_bias"),
    ("/v1/completions", {"model": "memo", "prompt": "x " * 400}, 400, "prompt"),
    ("/v1/completions", {"model": "memo", "prompt": "x", "suffix": "y"}, 400, "suffix"),
    ("/v1/completions", {"model": "memo"}, 400, "prompt"),
    ("/v1/nothing-here", {}, 404, None),
]


@pytest.mark.parametrize("path,body,status,param", BAD_REQUESTS)
def test_bad_requests_get_4xx_with_an_openai_error_body(server, path, body, status, param):
    kw = {"content": body} if isinstance(body, str) else {"json": body}
    r = raw(server, "POST", path, headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
            **kw)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"]
    if param:
        assert err["param"] == param or param in err["message"]


def test_errors_through_the_openai_client(server, client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=user("x"))
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="memo", prompt="apt " * 300)
    assert e.value.code == "context_length_exceeded"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server.base_url, api_key="wrong", max_retries=0).models.list()
    assert raw(server, "GET", "/v1/models", headers={}).status_code == 401
    assert client.chat.completions.create(model="memo", messages=user(CHATS[0][0]), temperature=0).choices[
        0].message.content == CHATS[0][1]  # the server is fine afterwards


def test_sixteen_concurrent_clients(server):
    """16 requests at once through the async client, half streamed: all correct, and they shared batches."""
    async def one(i, aclient):
        question, reply = CHATS[i % len(CHATS)]
        if i % 2:
            stream = await aclient.chat.completions.create(model="memo", messages=user(question), temperature=0,
                                                           stream=True)
            text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        else:
            r = await aclient.chat.completions.create(model="memo", messages=user(question), temperature=0)
            text = r.choices[0].message.content
        return text == reply

    async def main():
        async with openai.AsyncOpenAI(base_url=server.base_url, api_key=KEY, max_retries=0, timeout=120) as aclient:
            return await asyncio.gather(*(one(i, aclient) for i in range(16)))

    peak_before = server.engine.peak_batch
    server.engine.peak_batch = 0
    assert all(asyncio.run(main()))
    assert server.engine.peak_batch >= 4
    server.engine.peak_batch = max(peak_before, server.engine.peak_batch)


def aborted(server) -> float:
    for line in raw(server, "GET", "/metrics", headers={}).text.splitlines():
        if line.startswith("danlu_requests_total") and 'finish_reason="abort"' in line:
            return float(line.split()[-1])
    return 0.0


def test_client_disconnect_cancels_generation(server):
    before = aborted(server)
    body = {"model": "memo", "messages": user("apt"), "max_tokens": 200, "ignore_eos": True, "stream": True}
    with httpx.stream("POST", server.base_url + "/chat/completions", json=body,
                      headers={"Authorization": f"Bearer {KEY}"}, timeout=30) as r:
        lines = r.iter_lines()
        for _ in range(3):
            next(lines)
    deadline = time.time() + 15
    while aborted(server) == before and time.time() < deadline:
        time.sleep(0.05)
    assert aborted(server) == before + 1
    while server.engine._seqs and time.time() < deadline:
        time.sleep(0.05)
    assert not server.engine._seqs


def test_tokenizer_endpoints_that_lm_eval_probes(server, models):
    from lm_eval.utils import check_remote_tokenizer_support
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(models["memo"]))
    r = raw(server, "POST", "/tokenize", json={"prompt": "apt 软件包", "add_special_tokens": False}).json()
    assert r["tokens"] == tok.encode("apt 软件包", add_special_tokens=False) and r["count"] == len(r["tokens"])
    assert raw(server, "POST", "/detokenize", json={"tokens": r["tokens"]}).json()["prompt"] == "apt 软件包"
    info = raw(server, "GET", "/tokenizer_info").json()
    assert info["eos_token"] == "<|eos|>" and "<|assistant|>" in info["chat_template"]
    chat = raw(server, "POST", "/tokenize", json={"messages": user("hi")}).json()
    assert tok.decode(chat["tokens"], skip_special_tokens=False).endswith("<|user|>hi<|end|><|assistant|>")
    assert check_remote_tokenizer_support(server.base_url + "/completions", auth_token=KEY)


def test_concurrency_limit_answers_429(models):
    """With room for 2 in-flight requests, 8 sent at once: the extra ones get 429 (never a 5xx), the rest 200."""
    from concurrent.futures import ThreadPoolExecutor

    with ServerThread(serve_config(models["memo"], port=0, max_concurrent=2)) as srv:
        body = {"model": "memo", "messages": user("apt"), "max_tokens": 200, "ignore_eos": True}
        with ThreadPoolExecutor(8) as pool:
            codes = list(pool.map(lambda _: httpx.post(srv.base_url + "/chat/completions", json=body,
                                                       timeout=60).status_code, range(8)))
        assert set(codes) == {200, 429} and codes.count(200) >= 2, codes
        ok = httpx.post(srv.base_url + "/chat/completions", json=body, timeout=60)
        assert ok.status_code == 200  # slots are given back


def test_a_dead_engine_answers_503_instead_of_hanging(models):
    with ServerThread(serve_config(models["memo"], port=0)) as srv:
        srv.engine.stop()
        base = srv.base_url.removesuffix("/v1")
        assert httpx.get(base + "/health", timeout=10).status_code == 503
        body = {"model": "memo", "messages": user("apt"), "max_tokens": 5}
        t0 = time.time()
        r = httpx.post(srv.base_url + "/chat/completions", json=body, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["message"] and time.time() - t0 < 10
        with httpx.stream("POST", srv.base_url + "/chat/completions", json={**body, "stream": True},
                          timeout=30) as s:
            events = [e for e in s.read().decode().split("\n\n") if e]
        assert "error" in json.loads(events[-1][6:])
