import pytest
import torch

from litbrain.nn import VectorQuantizer
from litbrain.nn.vector_quantizer import kmeans


def _clusters(n_per=50, k=8, dim=4, spread=0.05, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = 3 * torch.randn(k, dim, generator=g)
    x = centers.repeat_interleave(n_per, 0) + spread * torch.randn(k * n_per, dim, generator=g)
    return x, centers


def test_kmeans_finds_well_separated_clusters():
    x, centers = _clusters()
    found = kmeans(x, 8, iters=20, generator=torch.Generator().manual_seed(1))
    # every true centre has a found centre next to it
    assert torch.cdist(centers, found).min(1).values.max() < 0.5


def test_quantizer_returns_nearest_code_and_straight_through_gradient():
    vq = VectorQuantizer(n_codes=16, dim=4, kmeans_init=False, normalize=False).eval()
    z = torch.randn(3, 5, 4, requires_grad=True)
    q, idx, loss = vq(z)
    expected = torch.cdist(z.detach().reshape(-1, 4), vq.codebook).argmin(1).reshape(3, 5)
    assert torch.equal(idx, expected)
    assert torch.allclose(q, vq.codebook[idx])
    q.sum().backward()
    assert torch.allclose(z.grad, torch.ones_like(z))  # straight-through: identity gradient
    assert loss > 0


def test_kmeans_init_then_ema_moves_codes_to_the_data():
    x, centers = _clusters(k=8)
    vq = VectorQuantizer(n_codes=8, dim=4, decay=0.9, dead_after=0, normalize=False).train()
    assert not bool(vq.initialised)
    for _ in range(30):
        vq(x[torch.randperm(len(x))])
    assert bool(vq.initialised)
    # After k-means init + EMA, the codebook sits on the cluster centres.
    assert torch.cdist(centers, vq.codebook).min(1).values.max() < 0.3
    vq.reset_usage()
    vq.eval()(x)
    assert vq.usage() == 1.0
    assert vq.perplexity() == pytest.approx(8.0, rel=0.05)


def test_dead_codes_are_restarted_on_encoder_outputs():
    x, _ = _clusters(k=4)
    vq = VectorQuantizer(n_codes=32, dim=4, decay=0.5, kmeans_init=False, dead_after=3, normalize=False).train()
    vq.codebook.mul_(0).add_(100.0)  # every code far away: all but one would stay dead forever
    vq.ema_sum.copy_(vq.codebook)
    for _ in range(40):
        vq(x[torch.randperm(len(x))[:64]])
    vq.reset_usage()
    vq.eval()(x)
    assert vq.usage() > 4 / 32  # without restarts exactly one code would be used
    assert torch.cdist(vq.codebook, x).min(1).values.median() < 1.0


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="decay"):
        VectorQuantizer(decay=1.0)
    with pytest.raises(ValueError, match="last dim"):
        VectorQuantizer(n_codes=4, dim=3)(torch.randn(2, 5))


def test_normalised_codes_match_by_cosine_and_stay_on_the_unit_sphere():
    vq = VectorQuantizer(n_codes=16, dim=4).train()
    z = torch.randn(64, 4) * 5
    for _ in range(5):
        vq(z)
    assert torch.allclose(vq.codebook.norm(dim=1), torch.ones(16), atol=1e-5)
    idx = vq.eval().indices(z * 3.0)  # scale does not change a cosine match
    assert torch.equal(idx, (torch.nn.functional.normalize(z, dim=1) @ vq.codebook.t()).argmax(1))
