"""Sizes for the data report: tokens when a tokenizer is given (each record rendered with its chat template, the
way SFT/DPO training will render it, so a record the template cannot render is caught here, not mid-training),
else characters."""

from __future__ import annotations

from pathlib import Path

from danlu.tokenizer.chat import ensure_chat_template, render_sample, render_samples


class Meter:
    def __init__(self, tokenizer: str | None, chat_template: str | None):
        self.unit = "tokens" if tokenizer else "characters"
        self.default_template = False
        if tokenizer is None:
            return
        from transformers import AutoTokenizer

        from danlu.data.chunk import load_counter

        self.tok = AutoTokenizer.from_pretrained(tokenizer)
        self.template = Path(chat_template).read_text(encoding="utf-8") if chat_template else None
        if self.template is None and not getattr(self.tok, "chat_template", None):
            self.default_template = True
            ensure_chat_template(self.tok)  # in memory only: what training would install
        self._count = load_counter(tokenizer)

    def lengths(self, texts: list[str]) -> list[int]:
        if self.unit == "characters":
            return [len(t) for t in texts]
        return self._count(texts) if texts else []

    def sft(self, record: dict) -> tuple[int, int]:
        """(size, trained tokens) of an SFT record; raises tokenizer.chat.TemplateError."""
        if self.unit == "characters":
            return sum(len(m["content"]) for m in record["messages"]), 0
        samples = render_samples(self.tok, record["messages"], record.get("tools"), self.template)
        return sum(len(s.ids) for s in samples), sum(s.n_targets for s in samples)

    def answer(self, record: dict, answer: dict) -> int:
        """Size of a prompt + one answer (a pair's side, a KTO completion) as trained."""
        if self.unit == "characters":
            return sum(len(m["content"]) for m in record["messages"]) + len(answer["content"])
        return len(render_sample(self.tok, record["messages"] + [answer], record.get("tools"), self.template,
                                 assistant="last").ids)
