"""The generation engine: KV cache == no cache, continuous batching == one at a time, sampling against
transformers' own logits processors, stop handling, streaming of split Chinese characters, logprobs,
cancellation, failure isolation, the bounded queue, metrics, LoRA adapters."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from serve_fixtures import (CHATS, TEXT_LINE, TEXT_PROMPT, _one_thread, greedy_no_cache,  # noqa: F401  (fixtures)
                            models)

from danlu.serve.detok import IncrementalDetokenizer, StopMatcher
from danlu.serve.engine import Engine, EngineOverloaded
from danlu.serve.loader import load_model
from danlu.serve.sampling import RowState, SamplingParams, _filtered_probs, prompt_logprob_entries, sample
from danlu.tokenizer.chat import render_prompt, stop_token_ids

GREEDY = dict(temperature=0, ignore_eos=True)


@pytest.fixture(scope="module")
def random_lm(models):
    return load_model(models["random"])


@pytest.fixture(scope="module")
def memo_lm(models):
    return load_model(models["memo"])


def prompts_of(lm, n: int = 6) -> list[list[int]]:
    words = ["apt install the package", "kernel", "mount the disk and boot grub", "a", "root shell log of the daemon",
             "network service config file path is"]
    return [lm.tokenizer.encode(w) for w in words[:n]]


def chat_ids(lm, text: str) -> list[int]:
    return render_prompt(lm.tokenizer, [{"role": "user", "content": text}], template=lm.template)


def test_kv_cache_greedy_equals_no_cache(random_lm):
    """Batched engine decoding with the KV cache gives the tokens of full recomputation, token for token."""
    engine = Engine(random_lm)
    prompts = prompts_of(random_lm)
    outs = engine.generate_many(prompts, SamplingParams(max_tokens=24, **GREEDY))
    for prompt, out in zip(prompts, outs):
        assert out.choices[0].token_ids == greedy_no_cache(random_lm.model, prompt, 24)
        assert out.choices[0].finish_reason == "length"
    assert engine.peak_batch == len(prompts)


def test_continuous_batching_equals_one_at_a_time(random_lm):
    """Requests that join a running batch between steps (and leave it at different lengths) get the same
    greedy tokens as each request run alone."""
    prompts = prompts_of(random_lm)
    lengths = [5, 30, 12, 20, 3, 16]
    alone = [Engine(random_lm).generate(p, SamplingParams(max_tokens=n, **GREEDY)).choices[0].token_ids
             for p, n in zip(prompts, lengths)]
    engine = Engine(random_lm)
    collected: dict[int, list[int]] = {i: [] for i in range(len(prompts))}
    reqs = {}

    def submit(i):
        reqs[i] = engine.submit(prompts[i], SamplingParams(max_tokens=lengths[i], **GREEDY),
                                sink=lambda ev, i=i: collected[i].extend(ev.token_ids))

    submit(0), submit(1)
    for _ in range(3):
        engine.step()
    submit(2), submit(3)  # join mid-run: request 0 has finished meanwhile, 1 is running
    engine.step()
    engine.step()
    submit(4), submit(5)
    while not all(r.done.is_set() for r in reqs.values()):
        engine.step()
    assert [collected[i] for i in range(len(prompts))] == alone
    assert engine.peak_batch >= 3


def test_background_thread_serves_concurrent_clients(random_lm):
    engine = Engine(random_lm, max_batch=8).start()
    try:
        prompts = prompts_of(random_lm)
        results = [None] * len(prompts)

        def client(i):
            results[i] = engine.generate(prompts[i], SamplingParams(max_tokens=10, **GREEDY)).choices[0].token_ids

        threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert results == [greedy_no_cache(random_lm.model, p, 10) for p in prompts]
    finally:
        engine.stop()


def test_memorised_chat_replies_and_stop_tokens(memo_lm):
    """Greedy chat through the model's template stops at <|end|> with exactly the memorised reply."""
    engine = Engine(memo_lm)
    stops = stop_token_ids(memo_lm.tokenizer)
    for user, reply in CHATS:
        out = engine.generate(chat_ids(memo_lm, user), SamplingParams(max_tokens=120, temperature=0), stops)
        assert (out.choices[0].text, out.choices[0].finish_reason) == (reply, "stop")
        assert out.metrics.completion_tokens == len(out.choices[0].token_ids)
    out = engine.generate(memo_lm.tokenizer.encode(TEXT_PROMPT), SamplingParams(max_tokens=120, temperature=0))
    assert TEXT_PROMPT + out.choices[0].text == TEXT_LINE and out.choices[0].finish_reason == "stop"


def test_chinese_streams_without_replacement_characters(memo_lm):
    """Each Chinese character is 3 byte tokens here; no streamed piece may hold U+FFFD or half a character."""
    ids = memo_lm.tokenizer.encode("丹炉", add_special_tokens=False)
    assert len(ids) == 6  # the characters really are split over byte tokens
    engine = Engine(memo_lm)
    user, reply = CHATS[0]
    pieces = [ev.text for ev in engine.stream(chat_ids(memo_lm, user), SamplingParams(max_tokens=120, temperature=0),
                                              stop_token_ids(memo_lm.tokenizer))]
    assert "".join(pieces) == reply
    assert all("\ufffd" not in p for p in pieces)
    assert sum(1 for p in pieces if p) > 5  # it really streamed


def test_incremental_detokenizer_round_trips_mixed_text(memo_lm):
    tok = memo_lm.tokenizer
    text = "Run apt install 软件包；重启服务。 done ✓ 🚀"
    detok = IncrementalDetokenizer(tok, tok.encode("hello"))
    pieces = [detok.add(t) for t in tok.encode(text, add_special_tokens=False)] + [detok.flush()]
    assert "".join(pieces) == text and not any("\ufffd" in p for p in pieces)


def test_stop_strings_are_cut_and_never_streamed(memo_lm):
    engine = Engine(memo_lm)
    user, reply = CHATS[1]  # "Run apt install 软件包 as root."
    params = SamplingParams(max_tokens=120, temperature=0, stop=["软件", "zzz"])
    pieces = [ev for ev in engine.stream(chat_ids(memo_lm, user), params, stop_token_ids(memo_lm.tokenizer))]
    assert "".join(e.text for e in pieces) == "Run apt install "
    assert pieces[-1].finish_reason == "stop"
    # a stop string that arrives split over several tokens is held back, never half-sent
    matcher = StopMatcher(["as root"])
    released = [matcher.push(d) for d in ["Run ", "a", "s r", "oo", "t."]]
    assert [r[0] for r in released] == ["Run ", "", "", "", ""] and released[-1][1]


def test_max_tokens_and_context_limit(random_lm):
    engine = Engine(random_lm)
    prompt = prompts_of(random_lm, 1)[0]
    out = engine.generate(prompt, SamplingParams(max_tokens=1000, **GREEDY))
    assert len(prompt) + len(out.choices[0].token_ids) == random_lm.max_model_len
    assert out.choices[0].finish_reason == "length"
    with pytest.raises(ValueError, match="outside the vocabulary"):
        engine.submit([10**6], SamplingParams())
    with pytest.raises(ValueError, match="context"):
        engine.submit([5] * random_lm.max_model_len, SamplingParams())


def test_logprobs_match_the_model_distribution(random_lm):
    engine = Engine(random_lm)
    prompt = prompts_of(random_lm, 1)[0]
    out = engine.generate(prompt, SamplingParams(max_tokens=6, logprobs=3, prompt_logprobs=2, **GREEDY))
    toks = out.choices[0].token_ids
    with torch.inference_mode():
        ref = torch.log_softmax(random_lm.model(input_ids=torch.tensor([prompt + toks])).logits[0].float(), -1)
    for k, entry in enumerate(out.choices[0].logprobs):
        pos = len(prompt) - 1 + k
        assert entry.token_id == toks[k]
        assert entry.logprob == pytest.approx(float(ref[pos, toks[k]]), abs=1e-4)
        assert entry.top[0][0] == toks[k] and len(entry.top) == 3  # greedy: the chosen token is the top one
    assert out.prompt_logprobs[0] is None and len(out.prompt_logprobs) == len(prompt)
    for t in range(1, len(prompt)):
        assert out.prompt_logprobs[t].logprob == pytest.approx(float(ref[t - 1, prompt[t]]), abs=1e-4)
    chunked = prompt_logprob_entries(ref[: len(prompt)].exp().log(), prompt, 2, chunk=2)  # chunks of 2 positions
    assert [(e.token_id, len(e.top)) for e in chunked[1:]] == [(e.token_id, 2) for e in out.prompt_logprobs[1:]]
    assert [e.logprob for e in chunked[1:]] == pytest.approx([e.logprob for e in out.prompt_logprobs[1:]], abs=1e-4)
    echo_only = engine.generate(prompt, SamplingParams(max_tokens=0, prompt_logprobs=1))
    assert echo_only.choices[0].token_ids == [] and echo_only.choices[0].finish_reason == "length"
    assert [e.logprob for e in echo_only.prompt_logprobs[1:]] == pytest.approx(
        [e.logprob for e in out.prompt_logprobs[1:]], abs=1e-5)


def test_seeded_sampling_is_reproducible_in_any_batch(random_lm):
    prompt = prompts_of(random_lm, 1)[0]
    params = SamplingParams(max_tokens=12, temperature=1.5, top_p=0.95, top_k=50, seed=7, n=3, ignore_eos=True)
    alone = Engine(random_lm).generate(prompt, params)
    engine = Engine(random_lm)
    crowd = engine.generate_many([prompt] + prompts_of(random_lm, 4), params)[0]
    assert [c.token_ids for c in crowd.choices] == [c.token_ids for c in alone.choices]
    assert len({tuple(c.token_ids) for c in alone.choices}) > 1  # the n choices are different draws
    greedy = Engine(random_lm).generate(prompt, SamplingParams(max_tokens=12, **GREEDY)).choices[0].token_ids
    assert Engine(random_lm).generate(prompt, SamplingParams(max_tokens=12, top_k=1, ignore_eos=True,
                                                             seed=3)).choices[0].token_ids == greedy


def test_top_k_top_p_keep_what_transformers_keeps():
    from transformers.generation.logits_process import TopKLogitsWarper, TopPLogitsWarper

    torch.manual_seed(0)
    logits = torch.randn(4, 50) * 3
    settings = [(5, 1.0), (0, 0.7), (10, 0.5), (0, 0.99)]
    rows = [RowState(SamplingParams(temperature=0.8, top_k=k, top_p=p), [1], 50, torch.device("cpu"))
            for k, p in settings]
    probs, order = _filtered_probs(logits, rows)
    kept = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, order, probs > 0)
    for i, (k, p) in enumerate(settings):
        x = logits[i:i + 1] / 0.8
        if k:
            x = TopKLogitsWarper(k)(None, x)
        if p < 1:
            x = TopPLogitsWarper(p)(None, x)
        assert torch.equal(kept[i], torch.isfinite(x[0])), settings[i]


def test_penalties_match_transformers_and_openai(random_lm):
    """repetition_penalty: transformers' generate with the same penalty, token for token; presence/frequency:
    the OpenAI formula logit - count*frequency - (count>0)*presence."""
    prompt = prompts_of(random_lm, 1)[0]
    out = Engine(random_lm).generate(prompt, SamplingParams(max_tokens=15, repetition_penalty=1.5, **GREEDY))
    ref = random_lm.model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                                   max_new_tokens=15, do_sample=False, repetition_penalty=1.5, eos_token_id=None,
                                   pad_token_id=0)
    assert out.choices[0].token_ids == ref[0, len(prompt):].tolist()

    logits = torch.tensor([[2.0, 1.9, 1.0, 0.5]])
    row = RowState(SamplingParams(temperature=0, presence_penalty=0.3, frequency_penalty=0.2), [3], 4,
                   torch.device("cpu"))
    for t in (0, 0, 1):
        row.observe(t)
    # token 0: 2.0 - 2*0.2 - 0.3 = 1.3; token 1: 1.9 - 0.2 - 0.3 = 1.4 -> token 1 wins
    assert sample(logits, [row])[0] == [1]

    forced = Engine(random_lm).generate(prompt, SamplingParams(max_tokens=5, logit_bias={42: 100}, **GREEDY))
    assert forced.choices[0].token_ids == [42] * 5
    with pytest.raises(ValueError, match="logit_bias"):
        Engine(random_lm).submit(prompt, SamplingParams(logit_bias={10 ** 6: 1.0}))


def test_cancel_frees_the_slot(random_lm):
    engine = Engine(random_lm).start()
    try:
        prompt = prompts_of(random_lm, 1)[0]
        stream = engine.stream(prompt, SamplingParams(max_tokens=200, **GREEDY))
        got = [next(stream) for _ in range(3)]
        stream.close()  # the consumer goes away (as a disconnected client does)
        deadline = time.time() + 10
        while engine._seqs and time.time() < deadline:
            time.sleep(0.01)
        assert not engine._seqs and len(got) == 3
        assert engine.metrics.requests.labels(random_lm.name, "abort")._value.get() == 1
        assert engine.generate(prompt, SamplingParams(max_tokens=4, **GREEDY)).choices[0].finish_reason == "length"
    finally:
        engine.stop()


def test_a_failing_request_fails_alone(random_lm, monkeypatch):
    """A consumer that raises, and a prefill that fails inside the model, end their own requests only."""
    engine = Engine(random_lm)
    prompts = prompts_of(random_lm, 3)
    poison = 7
    real_forward = random_lm.model.forward

    def forward(*args, **kwargs):
        ids = kwargs.get("input_ids")
        if ids is not None and ids.shape[1] > 1 and ((ids == poison).sum(dim=1) >= 4).any():
            raise RuntimeError("kernel failure")
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(random_lm.model, "forward", forward)

    def bad_sink(ev):
        raise ConnectionError("client gone")

    good = [engine.submit(p, SamplingParams(max_tokens=8, **GREEDY)) for p in prompts]
    from danlu.serve.engine import Collector

    cols = [Collector(1) for _ in prompts]
    for r, c in zip(good, cols):
        r.sink = c
    broken = engine.submit(prompts[0], SamplingParams(max_tokens=8, **GREEDY), sink=bad_sink)
    failing = Collector(1)
    poisoned = engine.submit([poison] * 4, SamplingParams(max_tokens=8, **GREEDY), sink=failing)
    while not all(r.done.is_set() for r in good + [broken, poisoned]):
        engine.step()
    monkeypatch.undo()
    for p, c in zip(prompts, cols):
        assert c.choices[0].token_ids == greedy_no_cache(random_lm.model, p, 8)
    assert failing.choices[0].finish_reason == "error" and "kernel failure" in failing.choices[0].error
    assert broken.sink_broken


def test_bounded_queue_rejects_when_full(random_lm):
    engine = Engine(random_lm, max_queue=2)
    engine.submit([5, 6], SamplingParams(max_tokens=2))
    engine.submit([5, 6], SamplingParams(max_tokens=2))
    with pytest.raises(EngineOverloaded):
        engine.submit([5, 6], SamplingParams(max_tokens=2))


def test_metrics_per_request_and_prometheus(random_lm):
    engine = Engine(random_lm)
    outs = engine.generate_many(prompts_of(random_lm, 3), SamplingParams(max_tokens=5, **GREEDY))
    m = outs[0].metrics
    assert m.prompt_tokens == len(prompts_of(random_lm, 1)[0]) and m.completion_tokens == 5
    assert 0 <= m.queue_time <= m.ttft <= m.e2e and m.tpot > 0
    summary = engine.metrics.summary()
    assert summary["requests"] == 3 and summary["completion_tokens"] == 15 and summary["ttft_s"]["p99"] > 0
    text = engine.metrics.prometheus_text().decode()
    assert 'danlu_time_to_first_token_seconds_count{model_name="random"} 3.0' in text
    assert 'danlu_generation_tokens_total{model_name="random"} 15.0' in text


def test_invalid_sampling_params_name_the_field():
    with pytest.raises(ValueError, match="top_p"):
        SamplingParams(top_p=0)
    with pytest.raises(ValueError, match="temperature"):
        SamplingParams(temperature=-1)
    with pytest.raises(ValueError, match="logprobs"):
        SamplingParams(logprobs=50)


def test_lora_adapter_folder_and_bf16(models, tmp_path):
    """An adapter folder is served merged onto its base and decodes as the unmerged PeftModel does."""
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(models["random"]))
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    peft_model.save_pretrained(str(tmp_path / "adapter"))
    lm = load_model(tmp_path / "adapter", base=str(models["random"]))
    assert lm.base_path == str(models["random"]) and lm.template is not None  # tokenizer + template from the base
    prompt = prompts_of(lm, 1)[0]
    ref_model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(str(models["random"])),
                                          str(tmp_path / "adapter")).eval()
    out = Engine(lm).generate(prompt, SamplingParams(max_tokens=12, **GREEDY))
    assert out.choices[0].token_ids == greedy_no_cache(ref_model, prompt, 12)
    plain = greedy_no_cache(AutoModelForCausalLM.from_pretrained(str(models["random"])), prompt, 12)
    assert out.choices[0].token_ids != plain  # the adapter really changed the model

    bf16 = load_model(models["memo"], dtype="bfloat16")
    assert next(bf16.model.parameters()).dtype == torch.bfloat16
    user, reply = CHATS[1]
    got = Engine(bf16).generate(chat_ids(bf16, user), SamplingParams(max_tokens=80, temperature=0),
                                stop_token_ids(bf16.tokenizer))
    assert got.choices[0].finish_reason in ("stop", "length") and got.choices[0].token_ids
