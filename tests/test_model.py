"""Model creation, document masking and the packed-batch loss."""

from __future__ import annotations

import pytest
import torch

from danlu.config import ConfigError, validate
from danlu.model.attention import DOCUMENT_ATTENTION, document_attention, document_causal_mask, document_ids, document_spans
from danlu.model.create import ModelSpec, create_model
from danlu.train.objectives import causal_lm, lm_logits
from tokstore_helpers import make_tokenizer
from train_fixtures import one_thread, pack_rows, random_docs, tiny_llama


_one_thread = pytest.fixture(autouse=True, scope="module")(one_thread)


def test_document_ids_restart_where_positions_restart():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1], [3, 4, 0, 1, 2, 3, 0, 1]])
    assert document_ids(pos).tolist() == [[1, 1, 1, 2, 2, 3, 4, 4], [1, 1, 2, 2, 2, 2, 3, 3]]
    m = document_causal_mask(pos)[0, 0]
    assert m.shape == (8, 8) and m.dtype == torch.bool
    assert m[4, 3] and not m[3, 2] and not m[3, 4] and not m[7, 5] and m[7, 6]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_doc_mask_logits_equal_each_document_run_alone(attn):
    model = tiny_llama(attn=attn).eval()
    docs = random_docs(6, seed=1, lo=4, hi=20)
    row = pack_rows(docs, 128)[0]
    batch = {k: v[None] for k, v in row.items()}
    n = sum(len(d) for d in docs)
    with torch.no_grad():
        packed = lm_logits(model, batch, doc_mask=True)[0, :n]
        alone = torch.cat([model(input_ids=torch.tensor([d])).logits[0] for d in docs])
        unmasked = lm_logits(model, batch, doc_mask=False)[0, :n]
    assert torch.allclose(packed, alone, atol=1e-5)
    assert not torch.allclose(unmasked, alone, atol=1e-2)  # without the mask, later documents see earlier ones


def _tiny(arch: str):
    if arch == "llama":
        return tiny_llama()
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    return Qwen2ForCausalLM(Qwen2Config(vocab_size=320, hidden_size=64, intermediate_size=176, num_hidden_layers=2,
                                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256))


def _loss_and_grads(model, batch):
    model.zero_grad()
    objective = causal_lm(doc_mask=True)
    loss = objective.loss_sum(model, batch) / objective.count(batch)
    loss.backward()
    return float(loss), {n: p.grad.clone() for n, p in model.named_parameters()}


def test_document_spans_are_where_positions_restart():
    pos = torch.tensor([[0, 1, 2, 0, 1, 0, 0, 1], [3, 4, 0, 1, 2, 3, 0, 1]])
    assert document_spans(pos) == [[(0, 3), (3, 5), (5, 6), (6, 8)], [(0, 2), (2, 6), (6, 8)]]


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_per_document_attention_equals_the_document_mask_in_loss_and_gradients(arch, monkeypatch):
    """Training on CPU runs one SDPA call per document (danlu.model.attention.document_attention) instead of
    SDPA over the whole row with a 4D mask: same loss and gradients, one-token documents and padding included,
    with activation checkpointing too (its recomputation happens after the forward, inside the same block)."""
    model = _tiny(arch).train()
    docs = random_docs(24, seed=3, lo=1, hi=30)
    rows = pack_rows(docs, 96)
    batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    assert any(len(d) == 1 for d in docs) and len(rows) > 2
    masked_loss, masked_grads = _loss_and_grads(model, batch)
    ids = batch["input_ids"][:1, :40]
    with torch.no_grad():
        plain = model(input_ids=ids).logits

    import danlu.train.objectives as objectives

    def no_mask(*args, **kwargs):
        raise AssertionError("a 4D mask was built inside document_attention")

    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    with document_attention(model, torch.device("cpu")):
        assert model.config._attn_implementation == DOCUMENT_ATTENTION
        monkeypatch.setattr(objectives, "document_causal_mask", no_mask)
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                            lambda q, *a, **k: calls.append(q.shape[2]) or sdpa(q, *a, **k))
        loss, grads = _loss_and_grads(model, batch)
        monkeypatch.undo()
        spans = document_spans(batch["position_ids"])  # one call per document and layer, each its own length
        assert calls == [e - s for row in spans for s, e in row] * model.config.num_hidden_layers
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        ckpt_loss, ckpt_grads = _loss_and_grads(model, batch)
        model.activation_checkpointing_disable()
        with torch.no_grad():  # a forward without spans (generation, evaluation) is plain SDPA
            assert torch.allclose(model(input_ids=ids).logits, plain, atol=1e-6)
    assert model.config._attn_implementation == "sdpa"
    for got, got_grads in ((loss, grads), (ckpt_loss, ckpt_grads)):
        assert got == pytest.approx(masked_loss, abs=1e-6)
        for name, g in masked_grads.items():
            assert torch.allclose(got_grads[name], g, atol=1e-6), name
    with document_attention(model, torch.device("meta")):  # other devices keep the mask
        assert model.config._attn_implementation == "sdpa"


def test_per_document_attention_in_bf16_pads_documents_to_a_few_lengths_and_keeps_the_loss(monkeypatch):
    """In bf16 each document is padded to a multiple of 64 (torch's CPU flash-attention keeps a kernel per length
    it sees in reduced precision): the loss stays that of the masked forward in the same precision."""
    model = tiny_llama().train()
    rows = pack_rows(random_docs(24, seed=4, lo=1, hi=70), 160)
    batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        masked, _ = _loss_and_grads(model, batch)
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention
    with document_attention(model, torch.device("cpu")), torch.autocast("cpu", dtype=torch.bfloat16):
        monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention",
                            lambda q, *a, **k: calls.append(q.shape[2]) or sdpa(q, *a, **k))
        loss, _ = _loss_and_grads(model, batch)
    lengths = [e - s for row in document_spans(batch["position_ids"]) for s, e in row]
    assert calls == [-(-n // 64) * 64 for n in lengths] * model.config.num_hidden_layers
    assert loss == pytest.approx(masked, rel=2e-3)


def test_packed_loss_is_token_weighted_mean_of_document_losses():
    """Token-weighted: loss = sum of all target-token losses / number of targets, i.e. the per-document mean
    losses weighted by each document's target count (a document's first token has no target)."""
    model = tiny_llama().eval()
    docs = random_docs(12, seed=2, lo=3, hi=25)
    rows = pack_rows(docs, 64)
    batch = {k: torch.stack([r[k] for r in rows]) for k in rows[0]}
    objective = causal_lm(doc_mask=True)
    with torch.no_grad():
        packed = float(objective.loss_sum(model, batch)) / objective.count(batch)
        per_doc, counts = [], []
        for d in docs:
            logits = model(input_ids=torch.tensor([d])).logits[0, :-1]
            per_doc.append(float(torch.nn.functional.cross_entropy(logits, torch.tensor(d[1:]))))
            counts.append(len(d) - 1)
    weighted = sum(l * c for l, c in zip(per_doc, counts)) / sum(counts)
    assert objective.count(batch) == sum(counts)
    assert packed == pytest.approx(weighted, abs=1e-5)
    # the plain per-document mean is a different quantity (short documents would count as much as long ones)
    assert abs(sum(per_doc) / len(per_doc) - weighted) > 1e-4
    with torch.no_grad():
        unmasked = float(causal_lm(doc_mask=False).loss_sum(model, batch)) / objective.count(batch)
    assert abs(unmasked - weighted) > 1e-4


def test_create_model_from_preset_and_dims(tmp_path):
    tok = make_tokenizer(tmp_path / "tok", vocab_size=320)
    model = create_model(ModelSpec(preset="tiny", tokenizer=str(tok)))
    cfg = model.config
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.num_key_value_heads) == (64, 2, 2)
    assert cfg.vocab_size == 320 and cfg.eos_token_id is not None and cfg._attn_implementation == "sdpa"
    spec = ModelSpec(tokenizer=str(tok), hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=1,
                     intermediate_size=64)
    assert create_model(spec).config.num_attention_heads == 4
    # continued pretraining: a local HF folder loads as it is
    model.save_pretrained(tmp_path / "m")
    again = create_model(ModelSpec(path=str(tmp_path / "m")))
    ids = torch.tensor([[3, 4, 5]])
    assert torch.equal(again(ids).logits, model(ids).logits)


@pytest.mark.parametrize("spec,needle", [
    ({"preset": "huge", "tokenizer": "t"}, "model.preset"),
    ({"hidden_size": 64, "tokenizer": "t"}, "model.num_heads"),
    ({"preset": "tiny"}, "model.tokenizer"),
    ({"path": "p", "preset": "tiny"}, "model.path"),
])
def test_model_spec_errors_name_the_key(spec, needle):
    with pytest.raises(ConfigError) as e:
        validate(spec, ModelSpec, "cfg.yaml")
    assert needle in str(e.value) and "cfg.yaml" in str(e.value)


def test_bad_head_counts_are_rejected(tmp_path):
    tok = make_tokenizer(tmp_path / "tok", vocab_size=320)
    spec = ModelSpec(tokenizer=str(tok), hidden_size=64, num_layers=1, num_heads=4, num_kv_heads=3,
                     intermediate_size=64)
    with pytest.raises(ValueError, match="num_kv_heads"):
        create_model(spec)


def test_fused_cross_entropy_equals_torch():
    from danlu.train.objectives import cross_entropy_sum

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 37, generator=g, dtype=torch.float64, requires_grad=True)
    labels = torch.randint(0, 37, (50,), generator=g)
    labels[::7] = -100
    ours = cross_entropy_sum(logits, labels) * 0.3
    (g1,) = torch.autograd.grad(ours, logits)
    ref = torch.nn.functional.cross_entropy(logits, labels, ignore_index=-100, reduction="sum") * 0.3
    (g2,) = torch.autograd.grad(ref, logits)
    assert torch.allclose(ours, ref) and torch.allclose(g1, g2)
    assert torch.autograd.gradcheck(lambda x: cross_entropy_sum(x, labels), (logits.detach().requires_grad_(),))
