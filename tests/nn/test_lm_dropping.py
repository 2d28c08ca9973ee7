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
    decode_step,
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


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_proportional_attention_weighs_a_merged_token_as_its_copies(attn):
    """A vision token of size 3 with ``size`` given == the same token present 3 times (same rotary id).

    Exact in a 1-layer LM: the text queries see 3 identical keys/values there, and softmax over
    ``k`` equal logits is one logit ``+ log k``. Checked for the prefill logits and one decoding
    step on the cache, with left padding; without ``size`` the merged sequence differs.
    """
    lm = _lm(attn=attn, layers=1)
    g = torch.Generator().manual_seed(3)
    D, copies, pad = 32, 3, 2
    vis, text, bos = torch.randn(5, D, generator=g), torch.randn(4, D, generator=g), torch.randn(1, D, generator=g)

    def seq(rep):  # [pad pad] <bos> v0 v1 v2*rep v3 v4 text (left-padded, as in generation); copies share v2's id
        e = torch.cat([torch.zeros(pad, D), bos, vis[:2], vis[2:3].expand(rep, -1), vis[3:], text])[None]
        pos = [0] * pad + [0, 1, 2] + [3] * rep + [4, 5] + [6, 7, 8, 9]
        kind = [KIND_PAD] * pad + [KIND_TEXT] + [KIND_VISION] * (4 + rep) + [KIND_TEXT] * 4
        size = [1.0] * (pad + 3) + [float(copies) if rep == 1 else 1.0] * rep + [1.0] * 6
        am = torch.tensor([[0] * pad + [1] * (e.shape[1] - pad)])
        return e, am, torch.tensor([kind]), torch.tensor([pos]), torch.tensor([size])

    e_d, am_d, k_d, p_d, _ = seq(copies)
    e_m, am_m, k_m, p_m, s_m = seq(1)
    nxt = torch.tensor([7])
    with torch.no_grad():
        dense = prefill(lm, e_d, am_d, k_d, position_ids=p_d, use_cache=True, logits_mode="last")
        merged = prefill(lm, e_m, am_m, k_m, position_ids=p_m, use_cache=True, logits_mode="last", size=s_m)
        plain = prefill(lm, e_m, am_m, k_m, position_ids=p_m, use_cache=True, logits_mode="last")
        ones = prefill(lm, e_m, am_m, k_m, position_ids=p_m, logits_mode="last", size=torch.ones_like(s_m))
        steps = {name: decode_step(lm, out.cache, nxt, out.next_position, e.shape[1])
                 for name, out, e in (("dense", dense, e_d), ("merged", merged, e_m), ("plain", plain, e_m))}
    assert torch.equal(ones.logits, plain.logits)  # all sizes 1: untouched, bit for bit
    for got, want, other in ((merged.logits, dense.logits, plain.logits), (steps["merged"], steps["dense"], steps["plain"])):
        err = (got - want).abs().max()
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        assert (other - want).abs().max() > 50 * err  # without size the merged token is under-weighted


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
