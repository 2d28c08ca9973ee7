"""MustDrop stages 2-3 and FastV inside Llama-family causal LMs (tiny local configs)."""

from __future__ import annotations

import pytest
import torch

from litbrain.nn.lm_dropping import (
    KIND_PAD,
    KIND_TEXT,
    KIND_VISION,
    AttentionWeightsUnavailableError,
    DropPolicy,
    UnsupportedLMError,
    generate,
    prefill,
    scatter_to_full,
)

torch.set_num_threads(1)
V = 40
NV, NT = 12, 5  # vision tokens, question tokens


def _lm(kind: str = "llama", attn: str = "eager", layers: int = 4):
    import transformers as tf

    common = dict(hidden_size=32, num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
                  intermediate_size=64, vocab_size=V)
    if kind == "llama":
        cfg = tf.LlamaConfig(**common)
        cls = tf.LlamaForCausalLM
    elif kind == "qwen2":
        cfg = tf.Qwen2Config(**common)
        cls = tf.Qwen2ForCausalLM
    else:
        cfg = tf.MistralConfig(**common, sliding_window=None)
        cls = tf.MistralForCausalLM
    cfg._attn_implementation = attn
    torch.manual_seed(0)
    return cls(cfg).eval()


def _inputs(B: int = 3, seed: int = 1):
    """``<bos> vision question`` left-padded by 0/2/1 tokens; sample 1 has fewer vision tokens."""
    g = torch.Generator().manual_seed(seed)
    L = 1 + NV + NT
    emb = torch.randn(B, L, 32, generator=g)
    am = torch.ones(B, L, dtype=torch.long)
    am[1, :3] = 0
    am[2, :1] = 0
    kind = torch.full((B, L), KIND_TEXT)
    kind[:, 1 : 1 + NV] = KIND_VISION
    kind[am == 0] = KIND_PAD
    key = torch.zeros(B, L, dtype=torch.bool)
    key[:, 5] = True  # one key token per sample
    return emb, am, kind, key


def _hf_logits(lm, emb, am):
    pos = (am.cumsum(1) - 1).clamp(min=0)
    return lm(inputs_embeds=emb, attention_mask=am, position_ids=pos).logits


@pytest.mark.parametrize("arch", ["llama", "qwen2", "mistral"])
def test_disabled_dropping_is_bit_exact(arch):
    lm = _lm(arch)
    emb, am, kind, key = _inputs()
    ref = _hf_logits(lm, emb, am)
    assert torch.equal(prefill(lm, emb, am, kind, key).logits, ref)
    keep_all = [
        DropPolicy("mustdrop", layers=(1, 2), global_thr=0.0, individual_thr=0.0),  # thresholds that keep all
        DropPolicy("mustdrop", layers=(1, 2), global_thr=1e-9, individual_thr=1e-9),
        DropPolicy("fastv", layers=(1,), budget=NV),  # budget = every vision token
    ]
    for pol in keep_all:
        out = prefill(lm, emb, am, kind, key, policy=pol)
        assert torch.equal(out.logits, ref), pol


def test_generate_dense_equals_hf_greedy():
    lm = _lm()
    emb, am, kind, key = _inputs()
    toks, _ = generate(lm, emb, am, kind, key, policy=DropPolicy("mustdrop", layers=(1,), global_thr=0, individual_thr=0),
                       max_new_tokens=4)
    # reference: HF forward re-run on the growing sequence, greedy
    e, m, ref = emb, am, []
    for _ in range(4):
        nxt = _hf_logits(lm, e, m)[:, -1].argmax(-1)
        ref.append(nxt)
        e = torch.cat([e, lm.model.embed_tokens(nxt)[:, None]], 1)
        m = torch.cat([m, torch.ones_like(m[:, :1])], 1)
    assert torch.equal(toks, torch.stack(ref, 1))


def _replay(lm, emb, am, kind, key, toks, keep, mask_fn=None):
    """Prefill of prompt + generated tokens with the drop decisions replayed: logits (B, T, V) at the generated steps."""
    B, L, _ = emb.shape
    T = toks.shape[1]
    e = torch.cat([emb, lm.model.embed_tokens(toks[:, :-1])], 1)
    m = torch.cat([am, torch.ones(B, T - 1, dtype=torch.long)], 1)
    k = torch.cat([kind, torch.full((B, T - 1), KIND_TEXT)], 1)
    ky = torch.cat([key, torch.zeros(B, T - 1, dtype=torch.bool)], 1)
    fk = {i: torch.cat([v, torch.ones(B, T - 1, dtype=torch.bool)], 1) for i, v in keep.items()}
    r = prefill(lm, e, m, k, ky, forced_keep=fk, mask_fn=mask_fn)
    return scatter_to_full(r.logits, r.order, r.valid, L + T - 1)[:, L - 1 :]


def _decode_logits(lm, emb, am, kind, key, policy, T):
    """Logits of every greedy step of ``generate`` (prefill + compact-cache decoding)."""
    from litbrain.nn import lm_dropping as D

    steps = []
    real = D.decode_step

    def spy(*a, **k):
        out = real(*a, **k)
        steps.append(out)
        return out

    D.decode_step = spy
    try:
        toks, out = generate(lm, emb, am, kind, key, policy=policy, max_new_tokens=T)
    finally:
        D.decode_step = real
    return toks, out, steps


def test_stage2_drops_and_compact_cache_decoding_equals_replayed_prefill():
    lm = _lm()
    emb, am, kind, key = _inputs()
    pol = DropPolicy("mustdrop", layers=(0, 1), global_thr=0.07, individual_thr=0.09)
    toks, out, steps = _decode_logits(lm, emb, am, kind, key, pol, 4)
    kept = out.vision_per_layer  # (layers, B)
    assert (kept[2] < kept[0]).any(), "thresholds should drop some vision tokens"
    assert len(set(kept[2].tolist())) > 1, "samples keep different counts (padding path)"
    assert out.keep[1][:, 5].all(), "key tokens are never dropped"
    # pruned layers' caches hold only the kept tokens
    assert torch.equal(out.cache.vision_counts()[3][:], kept[3])
    ref = _replay(lm, emb, am, kind, key, toks, out.keep)
    assert torch.equal(ref.argmax(-1), toks)
    for t, lg in enumerate(steps, start=1):
        torch.testing.assert_close(lg, ref[:, t], atol=1e-5, rtol=1e-5)


def test_stage3_output_aware_cache_equals_masked_replay():
    lm = _lm()
    emb, am, kind, key = _inputs()
    B, L, _ = emb.shape
    pol = DropPolicy("mustdrop", layers=(0,), global_thr=0.03, individual_thr=0.05, stage3=True, output_thr=1.0)
    toks, out, steps = _decode_logits(lm, emb, am, kind, key, pol, 4)
    cache = out.cache
    before = out.vision_per_layer
    after = [((cache.kind[i] == KIND_VISION) & cache.valid[i]).sum(1) for i in range(4)]
    assert torch.equal(after[0], before[0])  # the drop layer's own cache: untouched
    assert all((after[i] <= before[i]).all() for i in (1, 2, 3))  # output-aware compaction of pruned layers
    assert any((after[i] < before[i]).any() for i in (1, 2, 3))
    for i in range(4):  # key tokens survive every compaction
        assert ((cache.order[i] == 5) & cache.valid[i]).sum() == B

    def restrict(i, mask, order, valid):
        # generated-token queries (order >= L) see only the prompt tokens left in layer i's cache
        seen = torch.zeros(B, L + 8, dtype=torch.bool)
        seen.scatter_(1, cache.order[i].clamp(max=L + 7), cache.valid[i])
        seen[:, L:] = True
        allowed = torch.gather(seen, 1, order)  # (B, L') over keys
        q_gen = order >= L
        blocked = q_gen[:, :, None] & ~allowed[:, None, :]
        return mask.masked_fill(blocked[:, None], torch.finfo(mask.dtype).min)

    ref = _replay(lm, emb, am, kind, key, toks, out.keep, mask_fn=restrict)
    for t, lg in enumerate(steps, start=1):
        torch.testing.assert_close(lg, ref[:, t], atol=1e-5, rtol=1e-5)


def test_fastv_budget_and_gradients_flow_through_kept_tokens():
    lm = _lm()
    emb, am, kind, key = _inputs()
    emb.requires_grad_(True)
    out = prefill(lm, emb, am, kind, key, policy=DropPolicy("fastv", layers=(1,), budget=4))
    assert out.vision_per_layer[:2].tolist() == [[12, 10, 12]] * 2
    assert out.vision_per_layer[2:].tolist() == [[4, 4, 4]] * 2
    out.logits[..., 0].sum().backward()
    assert emb.grad is not None and torch.isfinite(emb.grad).all() and emb.grad.abs().sum() > 0
    # MustDrop with a budget keeps at most budget tokens, key tokens included
    out = prefill(lm, emb.detach(), am, kind, key, policy=DropPolicy("mustdrop", layers=(1,), budget=3))
    assert out.vision_per_layer[2].tolist() == [3, 3, 3] and out.keep[1][:, 5].all()


def test_sdpa_attention_cannot_drop_clear_error():
    lm = _lm(attn="sdpa")
    emb, am, kind, key = _inputs()
    # dense still works and equals HF's own sdpa forward
    torch.testing.assert_close(prefill(lm, emb, am, kind, key).logits, _hf_logits(lm, emb, am))
    with pytest.raises(AttentionWeightsUnavailableError, match="attn_implementation='eager'"):
        prefill(lm, emb, am, kind, key, policy=DropPolicy("mustdrop", layers=(1,)))
    with pytest.raises(AttentionWeightsUnavailableError, match="eager"):
        prefill(lm, emb, am, kind, key, policy=DropPolicy("fastv", layers=(1,), budget=3))


def test_unsupported_architecture_clear_error():
    import transformers as tf

    gpt2 = tf.GPT2LMHeadModel(tf.GPT2Config(n_embd=32, n_layer=2, n_head=2, vocab_size=V))
    emb, am, kind, key = _inputs()
    with pytest.raises(UnsupportedLMError, match="not supported for vision-token dropping.*llama"):
        prefill(gpt2, emb, am, kind, key)


@pytest.mark.parametrize("kw, msg", [
    ({"method": "fastv"}, "needs budget"),
    ({"method": "mustdrop", "budget": 0}, "must be > 0"),
    ({"method": "typo"}, "unknown"),
])
def test_bad_policy(kw, msg):
    with pytest.raises(ValueError, match=msg):
        DropPolicy(**kw)
