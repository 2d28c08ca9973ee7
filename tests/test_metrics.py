import torch

from litbrain.metrics import RetrievalMetrics, top1_retrieval, two_way_identification


def test_directions_are_named_by_query():
    # brain_i always finds image_i, but image_1 finds brain_2: the two directions differ.
    e = torch.eye(4)
    image = e[:3]
    brain = torch.stack([e[0], e[1] + 1.2 * e[3], 0.75 * e[2] + 0.7 * e[1]])
    out = top1_retrieval(brain, image, pool_size=3, draws=1)
    assert out["brain_to_image"] == 1.0
    assert abs(out["image_to_brain"] - 2 / 3) < 1e-6
    assert abs(out["chance"] - 1 / 3) < 1e-9


def test_perfect_and_random_embeddings():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 32, generator=g)
    perfect = top1_retrieval(x, x, pool_size=300, draws=5)
    assert perfect["brain_to_image"] == 1.0 and perfect["image_to_brain"] == 1.0
    rand = top1_retrieval(torch.randn(400, 32, generator=g), x, pool_size=300, draws=30)
    assert rand["brain_to_image"] < 0.03 and rand["image_to_brain"] < 0.03
    assert abs(perfect["chance"] - 1 / 300) < 1e-12


def test_two_way_identification():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(200, 16, generator=g)
    assert two_way_identification(x, x) == 1.0
    r = two_way_identification(torch.randn(200, 16, generator=g), x)
    assert 0.45 < r < 0.55


def test_retrieval_metric_accumulates_batches():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(50, 8, generator=g)
    m = RetrievalMetrics(pool_size=300, draws=2)
    for chunk in x.split(16):
        m.update(chunk, chunk)
    out = m.compute()
    assert out["brain_to_image"].item() == 1.0
    assert abs(out["chance"].item() - 1 / 50) < 1e-6
