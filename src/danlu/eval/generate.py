"""Text generation for gen, diagnostics and judge candidates, behind one small function.

`generate(lm, prompts, options)` takes prompts as token ids (rendered by danlu.tokenizer.chat) and returns the
new token ids of each answer, cut at the first stop token. Two backends (`options.backend`):
- engine: danlu.serve.engine, the serving engine (continuous batching over a KV cache), so an eval decodes
  exactly as `danlu serve` will; `auto` picks it whenever danlu.serve is installed;
- hf: Hugging Face `generate`, batched with left padding (prompts sorted by length so a batch pads little).
Greedy decoding gives the same tokens on both (tested). The settings are only those given here: a model's
generation_config.json (a default temperature, repetition penalty...) is not applied, so two models are
evaluated under the same decoding.
"""

from __future__ import annotations

from danlu.eval.config import GenerationOptions


def generate(lm, prompts: list[list[int]], options: GenerationOptions, progress: bool = True,
             desc: str = "generate") -> list[list[int]]:
    backend = options.backend
    if backend == "auto":
        try:
            import danlu.serve.engine  # noqa: F401
            backend = "engine"
        except ImportError:
            backend = "hf"
    if backend == "engine":
        return engine_generate(lm, prompts, options)
    return hf_generate(lm, prompts, options, progress, desc)


def engine_generate(lm, prompts: list[list[int]], options: GenerationOptions) -> list[list[int]]:
    from danlu.serve.engine import Engine
    from danlu.serve.loader import LoadedModel as ServedModel
    from danlu.serve.sampling import SamplingParams

    from danlu.tokenizer.chat import stop_token_ids

    stops = stop_token_ids(lm.tokenizer)
    served = ServedModel(model=lm.model, tokenizer=lm.tokenizer, template=None, name=lm.path.name, path=str(lm.path),
                         base_path=None, max_model_len=lm.max_length, eos_token_ids=stops)
    engine = Engine(served, max_batch=options.batch_size, max_queue=max(1, len(prompts)), seed=options.seed)
    params = SamplingParams(max_tokens=options.max_new_tokens,
                            temperature=options.temperature if options.do_sample else 0.0,
                            top_p=options.top_p if options.do_sample else 1.0, seed=options.seed)
    out = []
    for c in engine.generate_many([list(p) for p in prompts], params, stop_ids=stops):
        choice = c.choices[0]
        if choice.error:
            raise RuntimeError(f"generation failed: {choice.error}")
        ids = list(choice.token_ids)
        out.append(ids[: next((k for k, t in enumerate(ids) if t in stops), len(ids))])
    return out


def hf_generate(lm, prompts: list[list[int]], options: GenerationOptions, progress: bool = True,
                desc: str = "generate") -> list[list[int]]:
    import torch
    from tqdm import tqdm
    from transformers import GenerationConfig

    from danlu.tokenizer.chat import stop_token_ids

    tok, model = lm.tokenizer, lm.model
    stops = stop_token_ids(tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (stops[0] if stops else 0)
    gen_cfg = GenerationConfig(max_new_tokens=options.max_new_tokens, do_sample=options.do_sample,
                               temperature=options.temperature if options.do_sample else None,
                               top_p=options.top_p if options.do_sample else None, top_k=None,
                               eos_token_id=stops or None, pad_token_id=pad)
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    outputs: list[list[int]] = [[] for _ in prompts]
    torch.manual_seed(options.seed)
    bar = tqdm(total=len(prompts), desc=desc, disable=not progress)
    with torch.no_grad():
        for start in range(0, len(order), options.batch_size):
            idx = order[start: start + options.batch_size]
            width = max(len(prompts[i]) for i in idx)
            ids = torch.full((len(idx), width), pad, dtype=torch.long)
            mask = torch.zeros((len(idx), width), dtype=torch.long)
            for j, i in enumerate(idx):  # left padding: every prompt ends where generation starts
                ids[j, width - len(prompts[i]):] = torch.tensor(prompts[i])
                mask[j, width - len(prompts[i]):] = 1
            out = model.generate(input_ids=ids.to(lm.device), attention_mask=mask.to(lm.device),
                                 generation_config=gen_cfg)
            for j, i in enumerate(idx):
                new = out[j, width:].tolist()
                cut = next((k for k, t in enumerate(new) if t in stops), len(new))
                outputs[i] = new[:cut]
            bar.update(len(idx))
    bar.close()
    return outputs


def decode(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode(ids, skip_special_tokens=True).strip()
