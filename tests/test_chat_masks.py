"""Assistant-only loss masks, exact to the token, under real published chat templates (tests/chat_templates.py):
decode exactly the trained tokens of each sample and compare them with each answer + its end-of-turn token(s),
as each family writes them; nothing else may be trained. Plus the equivalences: danlu's ids are
apply_chat_template's, its masks are transformers' {% generation %} masks, and each turn's prompt tokens are
what render_prompt (the server) feeds."""

from __future__ import annotations

import pytest

from chat_templates import CHATML_GENERATION, FAMILIES, load_tokenizer
from danlu.tokenizer.chat import (DEFAULT_CHAT_TEMPLATE, ContextDependentTemplate, TemplateError,
                                  ensure_chat_template, render_prompt, render_sample, render_samples, render_turns,
                                  template_messages, template_tools)


@pytest.fixture(scope="module")
def tok_root(tmp_path_factory):
    return tmp_path_factory.mktemp("chat-tokenizers")


@pytest.fixture(scope="module")
def tokenizers(tok_root):
    cache = {}

    def get(family):
        if family not in cache:
            cache[family] = load_tokenizer(family, tok_root)
        return cache[family]

    return get


def answer(family: str, content: str, last: bool) -> str:
    """What `family`'s template writes for an assistant answer, up to and including its end-of-turn token."""
    return {
        "qwen2.5": content + "<|im_end|>",
        "llama3": content.strip() + "<|eot_id|>",
        "llama3.1": content.strip() + "<|eot_id|>",
        "llama2": " " + content.strip() + " </s>",
        "mistral-v0.3": " " + content.strip() + "</s>",
        # GLM-4 closes a turn with the next role token; at the end of a sample danlu appends eos
        "glm4": "\n" + content + ("<|endoftext|>" if last else "<|user|>"),
        "danlu": content + "<|end|>",
    }[family]


def runs(tok, sample) -> list[tuple[str, float]]:
    """(text, weight) of each maximal run of trained tokens; the text by decoding the sample up to the run's end
    minus up to its start (exact for byte-level and SentencePiece decoders alike)."""
    out, start = [], None
    weights = sample.weights + [0.0]
    for k, w in enumerate(weights):
        if start is not None and w != weights[start]:
            text = tok.decode(sample.ids[:k])[len(tok.decode(sample.ids[:start])):]
            out.append((text, weights[start]))
            start = None
        if start is None and w > 0:
            start = k
    return out


SYSTEM = {"role": "system", "content": "You are a helpful assistant for ops questions."}
CONVERSATION = [
    {"role": "user", "content": "How do I install a package? 你好"},
    {"role": "assistant", "content": "Use apt install NAME. 使用 apt 安装。", "loss_weight": 0.5},
    {"role": "user", "content": "And remove it?"},
    {"role": "assistant", "content": "apt remove NAME", "loss_weight": 0},
    {"role": "user", "content": "Thanks!"},
    {"role": "assistant", "content": "You are welcome."},
]


def expected_runs(family: str, messages: list[dict]) -> list[tuple[str, float]]:
    turns = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
    return [(answer(family, messages[i]["content"], last=i == turns[-1]), float(messages[i].get("loss_weight", 1)))
            for i in turns if messages[i].get("loss_weight", 1) != 0]


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("case", ["single", "system", "multi", "multi+system"])
def test_masks_train_exactly_each_answer_and_its_end_token(tokenizers, family, case):
    tok = tokenizers(family)
    messages = {"single": CONVERSATION[:2], "system": [SYSTEM] + CONVERSATION[:2], "multi": CONVERSATION,
                "multi+system": [SYSTEM] + CONVERSATION}[case]
    samples = render_samples(tok, messages)
    got = [r for s in samples for r in runs(tok, s)]
    assert got == expected_runs(family, messages)
    for s in samples:
        assert s.weights[0] == 0 and len(s.ids) == len(s.weights)
        assert s.labels == [t if w > 0 else -100 for t, w in zip(s.ids, s.weights)]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_last_turn_only(tokenizers, family):
    tok = tokenizers(family)
    messages = [SYSTEM] + CONVERSATION
    s = render_sample(tok, messages, assistant="last")
    assert runs(tok, s) == [(answer(family, messages[-1]["content"], last=True), 1.0)]


@pytest.mark.parametrize("family", ["qwen2.5", "llama3", "llama2", "glm4", "danlu"])
def test_train_on_prompt_trains_everything_but_zero_weight_turns(tokenizers, family):
    tok = tokenizers(family)
    plain = render_sample(tok, CONVERSATION)
    full = render_sample(tok, CONVERSATION, train_on_prompt=True)
    assert full.ids == plain.ids
    assert full.weights[0] == 0
    for w_plain, w_full in zip(plain.weights[1:], full.weights[1:]):
        assert w_full == w_plain if w_plain > 0 else w_full in (1.0, 0.0)
    masked = [k for k, w in enumerate(full.weights) if k > 0 and w == 0]
    text = tok.decode(full.ids[:masked[-1] + 1])[len(tok.decode(full.ids[:masked[0]])):]
    assert text == answer(family, "apt remove NAME", last=False)  # only the loss_weight 0 turn stays masked
    assert masked == list(range(masked[0], masked[-1] + 1))


@pytest.mark.parametrize("family", ["qwen2.5", "llama3", "llama3.1", "llama2", "glm4", "danlu"])
def test_ids_equal_apply_chat_template(tokenizers, family):
    tok = tokenizers(family)
    for messages in ([SYSTEM] + CONVERSATION, CONVERSATION[:2]):
        s = render_sample(tok, messages)
        ref = tok.apply_chat_template(template_messages(messages), tokenize=True, return_dict=True)["input_ids"]
        extra = [tok.eos_token_id] if family == "glm4" else []  # GLM-4 has no end-of-turn token at the very end
        assert s.ids == list(ref) + extra


@pytest.mark.parametrize("family", list(FAMILIES))
def test_each_turns_prompt_is_what_the_server_feeds(tokenizers, family):
    """Training and serving agree: a trained turn's context is exactly render_prompt's ids for it."""
    tok = tokenizers(family)
    messages = [SYSTEM] + CONVERSATION
    for i in (2, 4, 6):
        s = render_sample(tok, messages[: i + 1], assistant="last")
        prompt = render_prompt(tok, messages[:i])
        assert s.ids[: len(prompt)] == prompt
        assert all(w == 0 for w in s.weights[: len(prompt)])
        assert s.weights[len(prompt)] == messages[i].get("loss_weight", 1)


def test_masks_equal_transformers_generation_masks(tokenizers):
    tok = tokenizers("qwen2.5")
    messages = [SYSTEM] + [{k: v for k, v in m.items() if k != "loss_weight"} for m in CONVERSATION]
    ref = tok.apply_chat_template(messages, chat_template=CHATML_GENERATION, tokenize=True, return_dict=True,
                                  return_assistant_tokens_mask=True)
    s = render_sample(tok, messages, template=CHATML_GENERATION)
    assert s.ids == list(ref["input_ids"])
    assert [int(w > 0) for w in s.weights] == list(ref["assistant_masks"])


TOOLS = [{"name": "get_weather", "description": "Weather of a city",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}]
TOOL_CHAT = [SYSTEM, {"role": "user", "content": "Weather in Paris?"},
             {"role": "assistant", "content": "", "tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]},
             {"role": "tool", "content": '{"sky": "sunny"}'},
             {"role": "assistant", "content": "It is sunny in Paris."}]
TOOL_ANSWERS = {
    "qwen2.5": ['<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call><|im_end|>',
                "It is sunny in Paris.<|im_end|>"],
    "llama3.1": ['{"name": "get_weather", "parameters": {"city": "Paris"}}<|eot_id|>', "It is sunny in Paris.<|eot_id|>"],
    "mistral-v0.3": ['[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "000000000"}]</s>',
                     " It is sunny in Paris.</s>"],
    "danlu": ['<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call><|end|>',
              "It is sunny in Paris.<|end|>"],
}


@pytest.mark.parametrize("family", list(TOOL_ANSWERS))
def test_tool_calls_are_trained_as_the_template_writes_them(tokenizers, family):
    tok = tokenizers(family)
    samples = render_samples(tok, TOOL_CHAT, TOOLS)
    assert [text for s in samples for text, _ in runs(tok, s)] == TOOL_ANSWERS[family]
    assert "Weather of a city" in tok.decode(render_prompt(tok, TOOL_CHAT[:2], TOOLS))  # the tools are listed


def test_context_dependent_template_is_detected_and_split(tokenizers):
    """Mistral v0.3 puts the system prompt before the last user turn only: one sequence cannot hold every turn as
    served, so render_sample refuses and render_samples gives one sample per turn, each with its served prompt."""
    tok = tokenizers("mistral-v0.3")
    messages = [SYSTEM] + CONVERSATION
    with pytest.raises(ContextDependentTemplate, match="render_samples"):
        render_sample(tok, messages)
    samples = render_samples(tok, messages)
    assert len(samples) == 2  # the loss_weight 0 turn has no sample
    for s, i in zip(samples, (2, 6)):
        assert s.text.count(SYSTEM["content"]) == 1
        assert s.ids[: len(render_prompt(tok, messages[:i]))] == render_prompt(tok, messages[:i])
    assert render_turns(tok, messages)[0].ids == samples[0].ids


@pytest.mark.parametrize("family", ["qwen2.5", "llama2"])
def test_typed_special_tokens_stay_text(tokenizers, family):
    """A user (or an answer) that types the template's control tokens gets them as plain text, in training and
    in serving, while apply_chat_template would turn them into control ids."""
    tok = tokenizers(family)
    lit = "<|im_end|>" if family == "qwen2.5" else "</s>"
    messages = [{"role": "user", "content": f"Print {lit} literally"},
                {"role": "assistant", "content": f"Here it is: {lit}"}]
    control = tok.convert_tokens_to_ids(lit)
    s = render_sample(tok, messages)
    emitted = {"qwen2.5": 3, "llama2": 1}[family]  # the template's own: system, user, assistant turn ends / one eos
    assert s.ids.count(control) == emitted
    ref = tok.apply_chat_template(messages, tokenize=True, return_dict=True)["input_ids"]
    assert list(ref).count(control) == emitted + 2
    assert runs(tok, s) == [(answer(family, messages[1]["content"], last=True), 1.0)]
    prompt = render_prompt(tok, messages[:1])
    assert prompt.count(control) == emitted - 1 and s.ids[: len(prompt)] == prompt
    assert tok.decode(s.ids) == s.text or family == "llama2"  # (Llama 2's decoder adds a space after <s>)
    try:  # transformers >= 5.2x protects typed control tokens the same way when it tokenizes a prompt
        sanitized = tok.apply_chat_template(messages[:1], add_generation_prompt=True, tokenize=True,
                                            return_dict=True, sanitize_control_tokens=True)["input_ids"]
    except TypeError:
        return
    assert prompt == list(sanitized)


def test_answer_starting_with_newlines_is_not_merged_into_the_header(tokenizers):
    """ChatML's header ends with "\\n" and byte-level BPE merges "\\n\\n\\n": the boundary is forced, so the answer's
    own newlines are trained and the header's is not."""
    tok = tokenizers("qwen2.5")
    messages = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "\n\nfox"}]
    s = render_sample(tok, messages)
    assert runs(tok, s) == [("\n\nfox<|im_end|>", 1.0)]
    assert s.ids[: len(render_prompt(tok, messages[:1]))] == render_prompt(tok, messages[:1])


def test_glm4_tool_call_is_a_clear_error(tokenizers):
    with pytest.raises(TemplateError, match="writes nothing for assistant turn 2 .a tool call"):
        render_sample(tokenizers("glm4"), TOOL_CHAT[:3] + [{"role": "tool", "content": "x"},
                                                          {"role": "assistant", "content": "ok"}], TOOLS)


def test_template_without_end_of_turn_token(tokenizers):
    tok = tokenizers("qwen2.5")
    tpl = ("{% for m in messages %}{{ m['role'] + ': ' + m['content'] + '\n' }}{% endfor %}"
           "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}")
    s = render_sample(tok, CONVERSATION[:2], template=tpl)  # at the end of a sample: eos appended and trained
    assert s.ids[-1] == tok.eos_token_id and runs(tok, s) == [(CONVERSATION[1]["content"] + "\n<|im_end|>", 0.5)]
    with pytest.raises(TemplateError, match="no end-of-turn token"):
        render_sample(tok, CONVERSATION[:4], template=tpl)


def test_ensure_chat_template_installs_the_default_and_its_role_tokens(tok_root, tokenizers):
    import torch
    from transformers import AutoTokenizer

    from train_fixtures import tiny_llama

    torch.set_num_threads(1)
    folder = tok_root / "no-template"
    folder.mkdir(exist_ok=True)
    tok = tokenizers("qwen2.5")
    tok.backend_tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast", '
                                                  '"eos_token": "<|im_end|>"}', encoding="utf-8")
    bare = AutoTokenizer.from_pretrained(str(folder))
    assert not bare.chat_template
    before = len(bare)
    added = ensure_chat_template(bare)
    assert added == 5 and len(bare) == before + 5 and bare.chat_template == DEFAULT_CHAT_TEMPLATE
    assert ensure_chat_template(bare) == 0
    model = tiny_llama(vocab_size=before)
    model.resize_token_embeddings(len(bare))  # what the training stage does with the count
    s = render_sample(bare, CONVERSATION[:2])
    assert max(s.ids) < model.get_input_embeddings().weight.shape[0]
    assert bare.convert_tokens_to_ids("<|assistant|>") in s.ids
    assert runs(bare, s) == [(CONVERSATION[1]["content"] + "<|end|>", 0.5)]
    assert model(torch.tensor([s.ids])).logits.shape[1] == len(s.ids)


def test_openai_style_input_renders_like_canonical(tokenizers):
    tok = tokenizers("qwen2.5")
    openai_style = [dict(m) for m in TOOL_CHAT]
    openai_style[2] = {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]}
    wrapped = [{"type": "function", "function": t} for t in TOOLS]
    assert render_sample(tok, openai_style, wrapped).ids == render_sample(tok, TOOL_CHAT, TOOLS).ids
    assert template_tools(TOOLS) == wrapped and template_tools(wrapped) == wrapped


@pytest.mark.parametrize("family", list(FAMILIES))
def test_preference_pair_sides_share_the_served_prompt(tokenizers, family):
    """DPO / KTO: prompt + chosen and prompt + rejected, last turn only, start with the same prompt ids, the ones
    render_prompt serves, and train exactly their own answer."""
    tok = tokenizers(family)
    prompt = [SYSTEM] + [{k: v for k, v in m.items() if k != "loss_weight"} for m in CONVERSATION[:5]]
    chosen, rejected = ({"role": "assistant", "content": c} for c in ("Glad to help.", "Whatever."))
    a, b = (render_sample(tok, prompt + [side], assistant="last") for side in (chosen, rejected))
    served = render_prompt(tok, prompt)
    assert a.first_target == b.first_target == len(served)
    assert a.ids[: a.first_target] == b.ids[: b.first_target] == served
    assert runs(tok, a) == [(answer(family, chosen["content"], last=True), 1.0)]
    assert runs(tok, b) == [(answer(family, rejected["content"], last=True), 1.0)]
