import torch
import torch.nn.functional as F

from litbrain import losses


def _orthonormal(n, d, seed=0):
    q, _ = torch.linalg.qr(torch.randn(d, n, generator=torch.Generator().manual_seed(seed)))
    return q.T  # n orthonormal rows


def test_soft_clip_equals_hard_infonce_when_targets_are_orthogonal():
    # Orthogonal targets at low temperature make the soft labels one-hot.
    t = _orthonormal(6, 16)
    p = t + 0.3 * torch.randn(6, 16, generator=torch.Generator().manual_seed(1))
    soft = losses.soft_clip_loss(p, t, temperature=0.01)
    hard = losses.info_nce(p, t, temperature=0.01)
    torch.testing.assert_close(soft, hard, atol=1e-4, rtol=1e-4)


def test_soft_clip_matches_a_direct_computation_and_rewards_alignment():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(5, 3, 4, generator=g)
    p = torch.randn(5, 3, 4, generator=g)
    temp = 0.5
    pn, tn = F.normalize(p.flatten(1), dim=-1), F.normalize(t.flatten(1), dim=-1)
    soft = (tn @ tn.T / temp).softmax(-1)
    logits = pn @ tn.T / temp
    ref = 0.0
    for i in range(5):
        ref -= (soft[i] * logits[i].log_softmax(-1)).sum() / 10
        ref -= (soft[i] * logits[:, i].log_softmax(-1)).sum() / 10
    torch.testing.assert_close(losses.soft_clip_loss(p, t, temp), ref)
    assert losses.soft_clip_loss(t, t, temp) < losses.soft_clip_loss(t[torch.randperm(5, generator=g)], t, temp)


def test_mixco_mixes_only_selected_rows_as_convex_combinations():
    x = torch.randn(64, 10)
    mixed, perm, lam, selected = losses.mixco(x, beta=0.15, mix_fraction=0.5, generator=torch.Generator().manual_seed(0))
    assert sorted(perm.tolist()) == list(range(64))
    assert 10 < int(selected.sum()) < 54
    torch.testing.assert_close(mixed[~selected], x[~selected])
    expect = lam[:, None] * x + (1 - lam[:, None]) * x[perm]
    torch.testing.assert_close(mixed, expect)
    assert ((lam >= 0) & (lam <= 1)).all()


def test_mixco_nce_without_mixing_is_infonce():
    g = torch.Generator().manual_seed(0)
    p, t = torch.randn(8, 12, generator=g), torch.randn(8, 12, generator=g)
    perm = torch.randperm(8, generator=g)
    lam = torch.ones(8)
    torch.testing.assert_close(losses.mixco_nce(p, t, perm, lam, 0.1), losses.info_nce(p, t, 0.1))


def test_mixco_nce_credits_both_sources_of_a_mixed_row():
    t = _orthonormal(4, 8)
    perm = torch.tensor([1, 0, 3, 2])
    lam = torch.full((4,), 0.5)
    mixed_pred = 0.5 * t + 0.5 * t[perm]
    good = losses.mixco_nce(mixed_pred, t, perm, lam, 0.05)
    bad = losses.mixco_nce(t, t, perm, lam, 0.05)  # predicts only one source
    assert good < bad


def test_cosine_anneal_endpoints_and_midpoint():
    assert losses.cosine_anneal(0.004, 0.0075, 0.0) == 0.004
    assert abs(losses.cosine_anneal(0.004, 0.0075, 1.0) - 0.0075) < 1e-12
    assert abs(losses.cosine_anneal(0.004, 0.0075, 0.5) - 0.00575) < 1e-12
