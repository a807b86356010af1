"""The LLM judge against a real OpenAI-compatible HTTP server started here on localhost, spoken to with the
real openai client: its replies are scripted per question, including 429s, malformed replies, a judge that
always picks the first position, and replies that never parse."""

from __future__ import annotations

import json
import re
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from danlu.eval.config import JudgeConfig, JudgeDimension
from danlu.eval.judge import run_judge
from test_eval_fixtures import assert_self_contained


class ScriptedJudge:
    """POST /v1/chat/completions answered by `script(prompt, n)` -> (status, reply text), n = how many times this
    prompt was asked before. Counts every request it receives."""

    def __init__(self, script):
        self.script = script
        self.seen: Counter = Counter()
        self.requests = 0
        self.lock = threading.Lock()
        judge = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                prompt = body["messages"][-1]["content"]
                with judge.lock:
                    judge.requests += 1
                    n = judge.seen[prompt]
                    judge.seen[prompt] += 1
                status, text = judge.script(prompt, n)
                if status != 200:
                    payload = json.dumps({"error": {"message": text, "type": "rate_limit"}}).encode()
                    self.send_response(status)
                    self.send_header("retry-after-ms", "5")
                else:
                    payload = json.dumps({
                        "id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                        "choices": [{"index": 0, "finish_reason": "stop",
                                     "message": {"role": "assistant", "content": text}}],
                        "usage": {"prompt_tokens": len(prompt), "completion_tokens": len(text),
                                  "total_tokens": len(prompt) + len(text)}}).encode()
                    self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()


def answers(path: Path, rows: list[tuple[str, str, str, str]]) -> Path:
    """A gen-style answers.jsonl from (id, task_type, question, answer) with a fixed reference."""
    with open(path, "w", encoding="utf-8") as f:
        for rid, tt, q, a in rows:
            f.write(json.dumps({"id": rid, "task_type": tt, "messages": [{"role": "user", "content": q}],
                                "reference": "用 apt install 安装", "answer": a}, ensure_ascii=False) + "\n")
    return path


def between(text: str, start: str, end: str) -> str:
    return text.split(start, 1)[1].split(end, 1)[0]


DIMS = [JudgeDimension(name="correctness", weight=3.0), JudgeDimension(name="safety", weight=1.0)]


def pointwise_script(prompt: str, n: int):
    answer = between(prompt, "[AI助手的答案开始]", "[AI助手的答案结束]")
    if "第一个" in prompt and n == 0:
        return 429, "slow down"
    if "坏格式一次" in answer and n == 0:
        return 200, "我觉得还行，大概 7 分吧"
    if "永远坏格式" in answer:
        return 200, "无法评价 {correctness: seven}"
    c = 9 if "好答案" in answer else 3
    return 200, f"理由：对比参考答案……\n{{\"correctness\": {c}, \"safety\": 10}}"


def test_pointwise_scores_weights_retries_cache_and_failures(tmp_path):
    src = answers(tmp_path / "answers.jsonl", [
        ("q1", "qa", "第一个问题：怎么安装软件包？", "好答案：apt install"),
        ("q2", "qa", "怎么卸载？", "坏答案"),
        ("q3", "ops", "怎么更新？", "好答案 坏格式一次"),
        ("q4", "ops", "怎么重启？", "永远坏格式"),
    ])
    with open(src, "a", encoding="utf-8") as f:
        f.write("{broken\n")
    with ScriptedJudge(pointwise_script) as server:
        cfg = JudgeConfig(answers=str(src), base_url=server.url, model="judge-x", dimensions=DIMS,
                          cache=str(tmp_path / "cache.sqlite"), retries=2, price_input=1.0, price_output=2.0)
        rep = run_judge(tmp_path / "j1", cfg, progress=False)
        first_requests = server.requests
        res = json.loads((tmp_path / "j1" / "results.json").read_text())
        items = {json.loads(x)["id"]: json.loads(x) for x in open(tmp_path / "j1" / "judgments.jsonl")}
        assert items["q1"]["usability"] == pytest.approx((3 * 9 + 10) / 4)  # weighted by the dimension weights
        assert items["q2"]["usability"] == pytest.approx((3 * 3 + 10) / 4)
        assert items["q3"]["scores"]["correctness"] == 9  # a malformed reply was asked again, then parsed
        assert "usability" not in items["q4"] and "malformed" in items["q4"]["samples"][0]["error"]
        assert rep["counts"] == {"unit": "samples", "in": 5, "kept": 3, "filtered": {},
                                 "rejected": {"judge failed": 1, "invalid JSON at column #: Expecting property name "
                                              "enclosed in double quotes": 1}}
        u = res["usage"]
        # q1: 429 retried by the client (1 HTTP error absorbed, 1 reply); q3: 2 replies; q4: 1 + 2 retries
        assert u["calls"] == 1 + 1 + 2 + 3 and u["malformed"] == 1 + 3 and u["failures"] == 1
        assert first_requests == u["calls"] + 1  # the 429 reached the server but returned no reply
        assert u["cost"] == pytest.approx((u["prompt_tokens"] * 1.0 + u["completion_tokens"] * 2.0) / 1e6)
        assert res["by_task_type"]["qa"]["items"] == 2 and res["by_task_type"]["ops"]["items"] == 1

        # a rerun pays only for what failed: every parsed reply comes from the cache
        rep2 = run_judge(tmp_path / "j2", cfg, progress=False)
        assert rep2["usage"]["cached"] == 3 and rep2["usage"]["calls"] == 3  # only q4 asked again (1 + 2 retries)
        assert server.requests - first_requests == 3
        assert json.loads((tmp_path / "j2" / "results.json").read_text())["by_task_type"]["qa"] == \
            res["by_task_type"]["qa"]
    html = (tmp_path / "j1" / "index.html").read_text()
    assert_self_contained(html)
    assert "Lowest-scored answers" in html and "q2" in html


def pairwise_script(prompt: str, n: int):
    one = between(prompt, "[助手1的回答开始]", "[助手1的回答结束]")
    two = between(prompt, "[助手2的回答开始]", "[助手2的回答结束]")
    if "偏心" in prompt:  # this judge always prefers whatever is shown first
        return 200, '先出现的更好。{"winner": "1"}'
    if "好" in one and "好" not in two:
        return 200, '助手1更好 {"winner": "1"}'
    if "好" in two and "好" not in one:
        return 200, '{"winner": "2"} 因为……'
    return 200, '{"winner": "tie"}'


def test_pairwise_swaps_positions_and_reports_position_bias(tmp_path):
    a = answers(tmp_path / "a.jsonl", [("p1", "qa", "问题一", "好的回答"), ("p2", "qa", "问题二", "差"),
                                       ("p3", "qa", "问题三（偏心）", "随便"), ("p4", "ops", "问题四", "一样"),
                                       ("p5", "ops", "只有A有", "好")])
    b = answers(tmp_path / "b.jsonl", [("p1", "qa", "问题一", "差"), ("p2", "qa", "问题二", "好的回答"),
                                       ("p3", "qa", "问题三（偏心）", "随便说说"), ("p4", "ops", "问题四", "一样")])
    with ScriptedJudge(pairwise_script) as server:
        cfg = JudgeConfig(answers=str(a), against=str(b), mode="pairwise", base_url=server.url,
                          cache=str(tmp_path / "c.sqlite"))
        rep = run_judge(tmp_path / "pw", cfg, progress=False)
        assert server.requests == 8  # 4 pairs x 2 orders
    out = {json.loads(x)["id"]: json.loads(x) for x in open(tmp_path / "pw" / "judgments.jsonl")}
    assert out["p1"]["outcome"] == "A" and out["p2"]["outcome"] == "B" and out["p4"]["outcome"] == "tie"
    # the biased judge picked position 1 in both orders: that is no verdict on the content
    assert out["p3"]["outcome"] == "inconsistent" and out["p3"]["position_biased"]
    allrow = json.loads((tmp_path / "pw" / "results.json").read_text())["by_task_type"]["(all)"]
    assert allrow["position_bias_rate"] == pytest.approx(1 / 4)
    assert allrow["win_rate_a"] == pytest.approx((1 + 0.5 * 2) / 4)
    assert rep["counts"]["filtered"] == {"no answer from the other model": 1}
    assert rep["counts"]["in"] == 5 and rep["counts"]["kept"] == 4


def test_judge_config_errors_name_the_problem(tmp_path):
    from danlu.config import ConfigError, build_config

    with pytest.raises(ConfigError, match="judge.against"):
        build_config(JudgeConfig, {"answers": "x", "mode": "pairwise"}, source="cfg.yaml")
    with pytest.raises(ConfigError, match="unknown key 'dimension'"):
        build_config(JudgeConfig, {"answers": "x", "dimension": []}, source="cfg.yaml")
    bad = tmp_path / "p.jinja"
    bad.write_text("{{ question ", encoding="utf-8")
    with ScriptedJudge(pointwise_script) as server:
        with pytest.raises(ValueError, match=re.escape(str(bad))):
            run_judge(tmp_path / "x", JudgeConfig(answers=str(answers(tmp_path / "a.jsonl", [("1", "qa", "q", "a")])),
                                                  base_url=server.url, prompt=str(bad),
                                                  cache=str(tmp_path / "c.sqlite")), progress=False)


def test_concurrency_limit_is_respected(tmp_path):
    import time

    state = {"now": 0, "max": 0}
    lock = threading.Lock()

    def slow(prompt: str, n: int):
        with lock:
            state["now"] += 1
            state["max"] = max(state["max"], state["now"])
        time.sleep(0.05)
        with lock:
            state["now"] -= 1
        return 200, '{"correctness": 5, "safety": 5}'

    src = answers(tmp_path / "a.jsonl", [(f"q{i}", "qa", f"问题{i}", "答") for i in range(8)])
    with ScriptedJudge(slow) as server:
        rep = run_judge(tmp_path / "j", JudgeConfig(answers=str(src), base_url=server.url, dimensions=DIMS,
                                                    concurrency=3, cache=str(tmp_path / "c.sqlite")), progress=False)
    assert rep["counts"]["kept"] == 8 and 1 < state["max"] <= 3  # in flight together, never more than the limit
