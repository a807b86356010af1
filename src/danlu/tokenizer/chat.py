"""Chat templates, in one place: SFT, DPO, evaluation and the server all turn messages into token ids here.

A model's own template (its `chat_template.jinja`, or `chat_template` in tokenizer_config.json: Qwen's ChatML,
Llama 3, Llama 2, Mistral, GLM-4...) renders its conversations; a tokenizer without one gets danlu's default
template below (`ensure_chat_template` installs it and adds its role tokens).

Training samples (`render_sample`) get a loss weight per token that is exact for any template, without
`{% generation %}` markers (real templates lack them). For each assistant turn i the template renders
    A = messages[:i] + the generation prompt     (what the model is given at inference)
    B = messages[:i+1]                            (the conversation ending with the turn)
and the turn's text is B minus A: the answer, the end-of-turn token(s) and whatever the template writes after them.
The target is the text up to the last end-of-turn token (so "<|im_end|>" is learned, the "\\n" after it and the
next turn's header are not). Templates that close a turn only by the next turn's role token (GLM-4's <|user|>,
<|observation|>) get that token as the target, and at the end of a sample, where nothing follows, the eos token.
A template that renders earlier turns differently once later turns follow (Mistral v0.3 moves the system
prompt to the last user turn; Qwen3 drops earlier reasoning) cannot train all turns in one sequence:
`render_sample` raises ContextDependentTemplate and `render_samples` then gives one sample per turn, each the
turn's real inference prompt followed by its answer.

The text is tokenized once (ids equal `apply_chat_template`'s) with token boundaries forced where a target
starts or ends (segments.py). Content that spells a special token ("<|im_end|>" typed by a user) is encoded as
plain text, never as the control token, both here and in `render_prompt`, so training and serving agree.
"""

from __future__ import annotations

import bisect
import json
import re
import weakref
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from danlu.tokenizer.segments import encode_with_cuts

# Default chat template for models danlu trains from scratch: <|bos|><|user|>...<|end|><|assistant|>...<|end|>.
# Tools (if any) are listed in a system turn; a tool call is written <tool_call>{"name", "arguments"}</tool_call>.
DEFAULT_CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% if tools %}"
    "{{ '<|system|>' }}"
    "{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] + '\\n\\n' }}{% endif %}"
    "{{ 'Tools you can call, by answering <tool_call>{\"name\": ..., \"arguments\": {...}}</tool_call>:' }}"
    "{% for tool in tools %}{{ '\\n' + ((tool.function if tool.function is defined else tool) | tojson) }}"
    "{% endfor %}"
    "{{ '<|end|>' }}"
    "{% endif %}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant', 'tool'] %}"
    "{{ raise_exception('unknown role: ' + message['role']) }}{% endif %}"
    "{% if not (tools and loop.first and message['role'] == 'system') %}"
    "{{ '<|' + message['role'] + '|>' + message['content'] }}"
    "{% for call in message.tool_calls or [] %}"
    "{% set call = call.function if call.function is defined else call %}"
    "{{ '<tool_call>' + ({'name': call.name, 'arguments': call.arguments} | tojson) + '</tool_call>' }}"
    "{% endfor %}"
    "{{ '<|end|>' }}"
    "{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>' }}{% endif %}"
)
DEFAULT_ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>", "<|tool|>", "<|end|>"]

# Tokens that end an assistant turn in the common templates (besides the tokenizer's eos): generation stops there.
END_OF_TURN_TOKENS = ("<|end|>", "<|im_end|>", "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|endoftext|>",
                      "</s>", "<|user|>", "<|observation|>", "<end_of_turn>")

# Placeholders for typed special tokens while rendering: plane-15 private-use characters no text contains.
_PLACEHOLDER_BASE = 0xF0000
_PLACEHOLDER = re.compile("[\U000F0000-\U000FFFFD]")


class TemplateError(ValueError):
    """A conversation the chat template cannot render, or renders in a way no loss mask can follow."""


class ContextDependentTemplate(TemplateError):
    """The template renders an earlier turn differently once later turns follow (see the module docstring)."""


def chat_template(tokenizer_dir: str | Path) -> str | None:
    """The template a tokenizer folder ships: chat_template.jinja, else tokenizer_config.json's chat_template
    (a string, or a list of named templates, of which "default" is taken), else None."""
    folder = Path(tokenizer_dir)
    jinja = folder / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text(encoding="utf-8")
    cfg_path = folder / "tokenizer_config.json"
    if cfg_path.exists():
        tpl = json.loads(cfg_path.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(tpl, list):
            named = {t.get("name"): t.get("template") for t in tpl if isinstance(t, dict)}
            tpl = named.get("default") or next(iter(named.values()), None)
        if isinstance(tpl, str) and tpl.strip():
            return tpl
    return None


def resolve_template(tokenizer, template: str | None = None) -> str:
    """`template`, else the tokenizer's own (the "default" one of several), else danlu's default."""
    own = getattr(tokenizer, "chat_template", None)
    if isinstance(own, dict):
        own = own.get("default") or next(iter(own.values()), None)
    return template or own or DEFAULT_CHAT_TEMPLATE


def ensure_chat_template(tokenizer, template: str | None = None) -> int:
    """Give `tokenizer` a chat template to save with the model: `template` if given, else its own, else danlu's
    default. When the default is used its role tokens are added as special tokens; returns how many tokens were
    added, so the caller can resize the model's embeddings (`model.resize_token_embeddings(len(tokenizer))`)."""
    if template is None and getattr(tokenizer, "chat_template", None):
        return 0
    tokenizer.chat_template = template or DEFAULT_CHAT_TEMPLATE
    if tokenizer.chat_template != DEFAULT_CHAT_TEMPLATE:
        return 0
    from tokenizers import AddedToken

    vocab = tokenizer.get_vocab()
    missing = [t for t in DEFAULT_ROLE_TOKENS if t not in vocab]
    if not missing:
        return 0
    return tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in missing], special_tokens=True)


# --- messages as templates expect them ------------------------------------------------------------------------


def template_messages(messages: list[dict]) -> list[dict]:
    """danlu's messages (records.py) in the form chat templates read: tool calls as
    {"type": "function", "function": {"name", "arguments": {...}}, "id"} (what transformers documents; Qwen, Llama
    3.1, Mistral and GLM templates read it), with a 9-character id where a call has none (Mistral requires one)
    and the matching tool_call_id on the tool results that follow; no empty "tool_calls" key (Llama 3.1 takes its
    presence for a call); loss_weight dropped. OpenAI-style input is accepted too (JSON-string arguments parsed)."""
    out, pending, n_calls = [], [], 0
    for m in messages:
        t = {k: v for k, v in m.items() if k not in ("loss_weight", "tool_calls")}
        if m.get("tool_calls"):
            t["tool_calls"], pending = [], []
            for call in m["tool_calls"]:
                fn = call.get("function", call)
                args = fn.get("arguments", {})
                if isinstance(args, str):
                    try:
                        args = json.loads(args)
                    except ValueError:
                        pass  # a template shows it as the string it is
                call_id = call.get("id") or f"{n_calls:09d}"
                n_calls += 1
                t["tool_calls"].append({"type": "function", "id": call_id,
                                        "function": {"name": fn.get("name"), "arguments": args}})
                pending.append(call_id)
        elif m.get("role") == "tool" and "tool_call_id" not in m and pending:
            t["tool_call_id"] = pending.pop(0)
        out.append(t)
    return out


def template_tools(tools: list[dict] | None) -> list[dict] | None:
    """Tool descriptions as {"type": "function", "function": {...}} (danlu stores the inner description)."""
    if not tools:
        return None
    return [t if t.get("type") == "function" and "function" in t else {"type": "function", "function": t}
            for t in tools]


def render_text(tokenizer, messages: list[dict], tools: list[dict] | None = None, template: str | None = None,
                *, add_generation_prompt: bool = False) -> str:
    """The template's text for `messages` (danlu's or the templates' own form)."""
    return _render(tokenizer, resolve_template(tokenizer, template), template_messages(messages),
                   template_tools(tools), add_generation_prompt)


def _render(tokenizer, tpl: str, messages: list[dict], tools: list[dict] | None, gen: bool) -> str:
    try:
        return tokenizer.apply_chat_template(messages, tools=tools, chat_template=tpl, add_generation_prompt=gen,
                                             tokenize=False)
    except Exception as e:  # jinja's raise_exception, or a template reading a field this conversation lacks
        raise TemplateError(f"the chat template cannot render this conversation: {type(e).__name__}: {e}") from e


def render_prompt(tokenizer, messages: list[dict], tools: list[dict] | None = None,
                  template: str | None = None) -> list[int]:
    """Token ids of `messages` followed by the template's assistant header (what generation continues from).
    `template` overrides the tokenizer's own (and danlu's default when it has none). Special tokens typed in a
    content are encoded as text, as in training (`render_sample`)."""
    conv = _Conversation(tokenizer, messages, tools, template)
    text, plain, _ = conv.expand(conv.render(len(conv.messages), gen=True))
    return encode_with_cuts(tokenizer, text, [], plain)[0]


def stop_token_ids(tokenizer) -> list[int]:
    """The eos id plus every end-of-turn token of the common templates that this vocabulary has."""
    ids = []
    if tokenizer.eos_token_id is not None:
        ids.append(int(tokenizer.eos_token_id))
    vocab = tokenizer.get_vocab()
    ids += [vocab[t] for t in END_OF_TURN_TOKENS if t in vocab]
    return sorted(set(ids))


# --- training samples -----------------------------------------------------------------------------------------


@dataclass
class RenderedSample:
    """One training sequence. `weights[i]` is the loss weight of token `ids[i]` as a prediction target (predicted
    from ids[:i]; the HF label convention, so weights[0] is always 0): 0 = not trained, else the turn's
    loss_weight (1 by default). `text` is the rendered text the ids encode (plus an appended eos where the
    template has no end-of-turn token)."""

    ids: list[int]
    weights: list[float]
    text: str = field(repr=False)

    @property
    def labels(self) -> list[int]:
        """Aligned with `ids`, -100 where the weight is 0 (what `train.objectives.causal_lm` reads)."""
        return [t if w > 0 else -100 for t, w in zip(self.ids, self.weights)]

    @property
    def n_targets(self) -> int:
        return sum(1 for w in self.weights if w > 0)

    @property
    def first_target(self) -> int:
        """Index of the first trained token (for assistant="last": the prompt's length), or len(ids) if none."""
        return next((i for i, w in enumerate(self.weights) if w > 0), len(self.ids))


def render_sample(tokenizer, messages: list[dict], tools: list[dict] | None = None, template: str | None = None, *,
                  assistant: Literal["all", "last"] = "all", train_on_prompt: bool = False) -> RenderedSample:
    """`messages` (an SFT record's; a pair's prompt + chosen, or + rejected; a KTO prompt + completion) as ids with
    per-token loss weights, exact to the token for any template.

    assistant="all": every assistant turn is a target (scaled by its loss_weight; 0 masks it); raises
    ContextDependentTemplate for templates that rewrite earlier turns (use `render_samples`).
    assistant="last": only the final message, which must be an assistant turn (earlier turns are prompt).
    train_on_prompt: every other token is a target too, with weight 1 (assistant turns keep their loss_weight).
    """
    conv = _Conversation(tokenizer, messages, tools, template)
    n = len(conv.messages)
    turns = [i for i, m in enumerate(conv.messages) if m.get("role") == "assistant"]
    if assistant == "last":
        if not turns or turns[-1] != n - 1:
            raise TemplateError("assistant='last' needs a conversation that ends with an assistant turn")
        prompt, turn = conv.turn(n - 1)
        text = prompt + turn
        regions = [conv.answer_region(n - 1, len(prompt), turn, "")]
    elif assistant == "all":
        text = conv.render(n, gen=False)
        regions = []
        for i in turns:
            prompt, whole = conv.render(i, gen=True), conv.render(i + 1, gen=False)
            if not whole.startswith(prompt):
                conv._check_rendered(i, whole)
            if not (whole.startswith(prompt) and text.startswith(whole)):
                raise ContextDependentTemplate(
                    f"the chat template renders turn {i} differently once later turns follow (it moves or drops "
                    f"earlier text, e.g. the system prompt or earlier reasoning), so one sequence cannot train every "
                    f"turn: use render_samples (one sample per turn) or assistant='last'")
            regions.append(conv.answer_region(i, len(prompt), whole[len(prompt):], text[len(whole):]))
    else:
        raise ValueError(f"assistant must be 'all' or 'last', got {assistant!r}")
    return conv.encode(text, regions, base=1.0 if train_on_prompt else 0.0)


def render_turns(tokenizer, messages: list[dict], tools: list[dict] | None = None, template: str | None = None, *,
                 train_on_prompt: bool = False) -> list[RenderedSample]:
    """One sample per assistant turn with a non-zero loss_weight: the conversation up to that turn, trained on
    that turn only (each turn with exactly the prompt it gets at inference)."""
    return [render_sample(tokenizer, messages[: i + 1], tools, template, assistant="last",
                          train_on_prompt=train_on_prompt)
            for i, m in enumerate(messages) if m.get("role") == "assistant" and m.get("loss_weight", 1) != 0]


def render_samples(tokenizer, messages: list[dict], tools: list[dict] | None = None, template: str | None = None,
                   *, assistant: Literal["all", "last"] = "all", train_on_prompt: bool = False) -> list[RenderedSample]:
    """What SFT trains on for one record: one sample (`render_sample`), or for a context-dependent template and
    assistant="all", one sample per turn (`render_turns`)."""
    try:
        return [render_sample(tokenizer, messages, tools, template, assistant=assistant,
                              train_on_prompt=train_on_prompt)]
    except ContextDependentTemplate:
        return render_turns(tokenizer, messages, tools, template, train_on_prompt=train_on_prompt)


@dataclass
class _Region:
    start: int  # character offsets in the neutralised text
    end: int
    weight: float
    append_eos: bool = False


class _Conversation:
    """One conversation's renders, with the special tokens typed in its contents swapped for placeholders (so
    neither the template's end-of-turn search nor the tokenizer mistakes them for control tokens)."""

    def __init__(self, tokenizer, messages: list[dict], tools: list[dict] | None, template: str | None):
        self.tokenizer = tokenizer
        self.template = resolve_template(tokenizer, template)
        self.tools = template_tools(tools)
        self.weights = [float(m.get("loss_weight", 1)) for m in messages]
        self.literals: list[str] = []
        self.stops, self._specials = _token_facts(tokenizer)
        self.messages = [self._neutralise(m) for m in template_messages(messages)]

    def _neutralise(self, m: dict) -> dict:
        content, specials = m.get("content"), self._specials
        if not isinstance(content, str) or specials is None or not specials.search(content) \
                or _PLACEHOLDER.search(content):
            return m

        def swap(match: re.Match) -> str:
            self.literals.append(match.group(0))
            return chr(_PLACEHOLDER_BASE + len(self.literals) - 1)

        return {**m, "content": specials.sub(swap, content)}

    def render(self, n: int, gen: bool) -> str:
        return _render(self.tokenizer, self.template, self.messages[:n], self.tools, gen)

    def turn(self, i: int) -> tuple[str, str]:
        """(prompt, turn text) of assistant message i: what the model is given, what the template writes for the
        turn. Where the conversation ending with the turn does not extend its prompt (a template that moves the
        system prompt), the turn text comes from the same conversation without its system turns."""
        prompt, whole = self.render(i, gen=True), self.render(i + 1, gen=False)
        if whole.startswith(prompt):
            return prompt, whole[len(prompt):]
        self._check_rendered(i, whole)
        rest = [m for m in self.messages[: i + 1] if m.get("role") != "system"]
        p0 = _render(self.tokenizer, self.template, rest[:-1], self.tools, True)
        w0 = _render(self.tokenizer, self.template, rest, self.tools, False)
        if rest[:-1] and w0.startswith(p0):
            return prompt, w0[len(p0):]
        raise TemplateError(f"the chat template's generation prompt for turn {i} (ending {prompt[-40:]!r}) is not "
                            f"how the conversation ending with that turn begins, so the answer's start cannot be "
                            f"found")

    def _check_rendered(self, i: int, whole: str) -> None:
        """A template that writes nothing for assistant turn i (GLM-4 skips a message without content, so a pure
        tool call vanishes) gets a clear error instead of a mask over the wrong text."""
        if i and whole == self.render(i, gen=False):
            what = " (a tool call: this template does not render tool_calls)" if self.messages[i].get("tool_calls") \
                else ""
            raise TemplateError(f"the chat template writes nothing for assistant turn {i}{what}")

    def answer_region(self, i: int, at: int, turn: str, after: str) -> _Region:
        """The target part of turn text `turn` (at offset `at`; followed in the sample by `after`): from its start
        to the end of the last end-of-turn token after the answer; else the next turn's opening stop token
        (GLM-4); else, at the end of the sample, an appended eos."""
        core = self.messages[i].get("content", "").strip()
        k = turn.find(core) if core else -1
        search_from = k + len(core) if k >= 0 else 0
        ends = [turn.rfind(s, search_from) + len(s) for s in self.stops if turn.rfind(s, search_from) >= 0]
        w = self.weights[i]
        if ends:
            return _Region(at, at + max(ends), w)
        if not after:
            if self.tokenizer.eos_token_id is None:
                raise TemplateError("the chat template ends assistant turns with no end-of-turn token and the "
                                    "tokenizer has no eos token to end the answer with")
            return _Region(at, at + len(turn), w, append_eos=True)
        for s in self.stops:
            if after.startswith(s):
                return _Region(at, at + len(turn) + len(s), w)
        raise TemplateError(f"the chat template ends assistant turn {i} with no end-of-turn token (the turn renders "
                            f"as {turn[-60:]!r}, followed by {after[:40]!r}): the model could not learn to stop; "
                            f"use a template with one, e.g. danlu's default")

    def expand(self, text: str) -> tuple[str, list[tuple[int, int]], callable]:
        """The real text (placeholders back to the typed literals), the literals' spans in it, and a function
        mapping an offset in `text` to the real text."""
        if not self.literals:
            return text, [], lambda p: p
        parts, spans, at_src, shifts_at, shifts = [], [], 0, [], [0]
        out_len = 0
        for m in _PLACEHOLDER.finditer(text):
            lit = self.literals[ord(m.group(0)) - _PLACEHOLDER_BASE]
            parts.append(text[at_src:m.start()])
            out_len += m.start() - at_src
            spans.append((out_len, out_len + len(lit)))
            parts.append(lit)
            out_len += len(lit)
            at_src = m.end()
            shifts_at.append(m.end())
            shifts.append(shifts[-1] + len(lit) - 1)
        parts.append(text[at_src:])

        def real(p: int) -> int:
            return p + shifts[bisect.bisect_right(shifts_at, p)]

        return "".join(parts), spans, real

    def encode(self, text: str, regions: list[_Region], base: float) -> RenderedSample:
        real_text, plain, real = self.expand(text)
        starts_r = [real(r.start) for r in regions]
        ends_r = [real(r.end) for r in regions]
        ids, starts = encode_with_cuts(self.tokenizer, real_text, sorted(set(starts_r + ends_r)), plain)
        at = np.asarray(starts, dtype=np.int64)
        k = np.searchsorted(np.asarray(starts_r, dtype=np.int64), at, side="right") - 1  # the region a token starts in
        # k == -1 (before every region) indexes the appended sentinels: end 0 (never inside), weight `base`
        inside = (k >= 0) & (at < np.asarray(ends_r + [0], dtype=np.int64)[k])
        region_w = np.asarray([r.weight for r in regions] + [base], dtype=np.float64)
        weights = np.where(inside, region_w[k], base).tolist()
        if regions and regions[-1].append_eos:
            ids.append(int(self.tokenizer.eos_token_id))
            weights.append(regions[-1].weight)
        if weights:
            weights[0] = 0.0
        return RenderedSample(ids=ids, weights=weights, text=real_text)


_FACTS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _token_facts(tokenizer) -> tuple[list[str], re.Pattern | None]:
    """The stop tokens' strings and a regex of the special tokens (what the tokenizer would turn into control
    ids anywhere in a text), cached per tokenizer (get_vocab is slow) until its vocabulary grows."""
    size = len(tokenizer)
    cached = _FACTS.get(tokenizer)
    if cached is None or cached[0] != size:
        stops = [tokenizer.convert_ids_to_tokens(i) for i in stop_token_ids(tokenizer)]
        specials = sorted({t.content for t in getattr(tokenizer, "added_tokens_decoder", {}).values() if t.special},
                          key=len, reverse=True)
        cached = (size, stops, re.compile("|".join(map(re.escape, specials))) if specials else None)
        _FACTS[tokenizer] = cached
    return cached[1], cached[2]
