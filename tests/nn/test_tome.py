"""ToMe baseline (issue 5): bipartite soft matching, size-weighted merging, r schedules."""

import math

import pytest
import torch

from litbrain.nn.tome import (
    bipartite_soft_matching,
    max_merges,
    merge_wavg,
    proportional_attention_bias,
    tome_schedule,
)


def test_merges_the_most_similar_pair_and_keeps_cls_first():
    # A = tokens 0, 2, 4; B = tokens 1, 3. Token 4 equals token 1: the strongest edge.
    metric = torch.tensor([[[1.0, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [0, 1, 0]]])
    merge, unmerge = bipartite_soft_matching(metric, r=1)
    x = torch.arange(5.0).view(1, 5, 1)
    out = merge(x, mode="mean")
    # unmerged A (0, 2) in order, then B (1 merged with 4, 3)
    assert out.flatten().tolist() == [0.0, 2.0, 2.5, 3.0]
    back = unmerge(out)
    assert back.flatten().tolist() == [0.0, 2.5, 2.0, 3.0, 2.5]


def test_cls_is_protected_unless_asked_not_to():
    # token 0 (CLS) is identical to token 1: the best edge, but protected
    metric = torch.tensor([[[1.0, 0], [1, 0], [0, 1], [0.6, 0.8]]])
    x = torch.randn(1, 4, 3)
    merge, _ = bipartite_soft_matching(metric, r=1, protect_cls=True)
    out = merge(x)
    assert torch.equal(out[:, 0], x[:, 0])  # CLS untouched and still first
    merge, _ = bipartite_soft_matching(metric, r=1, protect_cls=False)
    out = merge(x)
    assert not any(torch.equal(out[:, i], x[:, 0]) for i in range(out.shape[1]))  # CLS folded into token 1


@pytest.mark.parametrize("protected", [0, 1, 2])
def test_merge_wavg_conserves_mass_and_size(protected):
    torch.manual_seed(0)
    B, N, D = 3, 17, 8
    x = torch.randn(B, N, D)
    size = torch.rand(B, N) * 3 + 1
    merge, unmerge = bipartite_soft_matching(torch.randn(B, N, 5), r=6, num_protected=protected)
    y, s = merge_wavg(merge, x, size)
    assert y.shape == (B, N - 6, D) and s.shape == (B, N - 6)
    torch.testing.assert_close((y * s[..., None]).sum(1), (x * size[..., None]).sum(1))
    torch.testing.assert_close(s.sum(1), size.sum(1))
    if protected:
        assert torch.allclose(y[:, 0], x[:, 0])  # CLS stays first
    for i in range(protected):  # protected tokens are never merged
        torch.testing.assert_close(unmerge(y)[:, i], x[:, i])
        torch.testing.assert_close(unmerge(s)[:, i], size[:, i])


def test_merge_wavg_default_size_counts_patches():
    torch.manual_seed(1)
    x = torch.randn(2, 10, 4)
    merge, _ = bipartite_soft_matching(x, r=3)
    y, s = merge_wavg(merge, x)
    assert s.sum(1).tolist() == [10.0, 10.0]
    assert y.shape == (2, 7, 4)


def test_r_is_capped_and_zero_is_identity():
    x = torch.randn(1, 7, 4)
    merge, _ = bipartite_soft_matching(x, r=100)  # CLS protected: A = 0,2,4,6 -> 3 mergeable
    assert merge(x).shape[1] == 7 - 3 == 7 - max_merges(7, 1)
    merge, unmerge = bipartite_soft_matching(x, r=0)
    assert merge(x) is x and unmerge(x) is x


def test_bad_arguments():
    with pytest.raises(ValueError, match="r=-1"):
        bipartite_soft_matching(torch.randn(1, 4, 2), r=-1)
    with pytest.raises(ValueError, match="metric"):
        bipartite_soft_matching(torch.randn(4, 2), r=1)


def test_proportional_attention_bias_is_log_size_and_masks_padding():
    size = torch.tensor([[1.0, 4.0, 0.0]])
    mask = torch.tensor([[True, True, False]])
    bias = proportional_attention_bias(size, mask)
    assert bias.shape == (1, 1, 1, 3)
    assert bias[0, 0, 0, 0] == 0 and math.isclose(bias[0, 0, 0, 1].item(), math.log(4), rel_tol=1e-6) and bias[0, 0, 0, 2] == -math.inf


def test_schedule_reaches_keep_exactly():
    sched = tome_schedule(197, 12, keep=49)
    assert sum(sched) == 196 - 49
    assert max(sched) - min(sched) <= 1 + max(sched) // 4  # spread, not front-loaded
    assert tome_schedule(17, 4, r=5) == [5, 5, 3, 1]  # capped by the free tokens of set A
    assert tome_schedule(17, 4, r=0) == [0, 0, 0, 0]


@pytest.mark.parametrize("keep", [0, -3, 17])
def test_schedule_rejects_bad_budgets(keep):
    with pytest.raises(ValueError, match="keep="):
        tome_schedule(17, 4, keep=keep)


def test_schedule_rejects_unreachable_budget_and_ambiguous_arguments():
    with pytest.raises(ValueError, match="unreachable"):
        tome_schedule(17, 1, keep=1)
    with pytest.raises(ValueError, match="exactly one"):
        tome_schedule(17, 4, keep=4, r=2)


def _prefixed_vits():
    from timm.models.deit import VisionTransformerDistilled
    from timm.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    kw = dict(img_size=36, patch_size=4, embed_dim=32, depth=4, num_heads=2)
    return {"4 registers": VisionTransformer(reg_tokens=4, class_token=True, **kw).eval(),
            "distilled DeiT": VisionTransformerDistilled(**kw).eval()}


@pytest.mark.parametrize("name", ["4 registers", "distilled DeiT"])
def test_every_prefix_token_stays_in_front_and_unmerged_through_all_layers(name, monkeypatch):
    """Several layers of ToMe on a ViT with more than one prefix token (CLS + 4 registers: 5; CLS +
    distillation token: 2): at every merge each prefix token i ends up alone at position i."""
    import litbrain.nn.vision_reduction as vr

    vit = _prefixed_vits()[name]
    P = vit.num_prefix_tokens
    seen = []
    real = vr.bipartite_soft_matching

    def spy(metric, r, **kw):
        merge, unmerge = real(metric, r, **kw)
        B, N, _ = metric.shape
        for i in range(P):  # where does prefix token i go, and does anything join it?
            onehot = torch.zeros(B, N)
            onehot[:, i] = 1.0
            seen.append((merge(onehot).clone(), i, N - r, kw.get("num_protected")))
        return merge, unmerge

    monkeypatch.setattr(vr, "bipartite_soft_matching", spy)
    out = vr.VisionTokenReducer(vit, method="tome", keep=20)(torch.randn(2, 3, 36, 36))
    layers = {n for _, _, n, _ in seen}
    assert len(layers) >= 3  # merges happened in several layers
    for merged, i, n_out, protected in seen:
        assert protected == P and merged.shape[1] == n_out
        want = torch.zeros_like(merged)
        want[:, i] = 1.0
        assert torch.equal(merged, want), (name, i, n_out)
    assert out.tokens.shape[1] == 20 and torch.equal(out.size.sum(1), torch.full((2,), 81.0))


@pytest.mark.parametrize("name", ["4 registers", "distilled DeiT"])
def test_mustdrop_merges_patches_only_and_keeps_the_prefix_tokens_in_front(name, monkeypatch):
    import litbrain.nn.vision_reduction as vr

    vit = _prefixed_vits()[name]
    got = []
    real = vr.window_merge
    monkeypatch.setattr(vr, "window_merge", lambda x, *a, **kw: (got.append(x.shape[1]), real(x, *a, **kw))[1])
    out = vr.VisionTokenReducer(vit, method="mustdrop", keep=20)(torch.randn(2, 3, 36, 36))
    assert got == [81]  # the window merge saw the 81 patches, none of the prefix tokens
    assert torch.equal(out.size.sum(1), torch.full((2,), 81.0)) and int(out.mask.sum(1).max()) <= 20
