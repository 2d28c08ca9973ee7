"""Retrieval and identification metrics for brain decoding (MindEye protocol).

Directions are named by what is queried and what is searched:
``brain_to_image``: each brain embedding retrieves its image among the pool;
``image_to_brain``: each image retrieves its brain sample. MindEye's own code names these
the other way round (its ``batchwise_cosine_similarity`` returns the transpose); we don't.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics import Metric
from torchmetrics.utilities import dim_zero_cat


def _flat_normed(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.flatten(1).float(), dim=-1)


def similarity_matrix(brain: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
    """Cosine similarities ``S[i, j] = cos(brain_i, image_j)`` on flattened embeddings."""
    return _flat_normed(brain) @ _flat_normed(image).T


def top1_retrieval(
    brain: torch.Tensor,
    image: torch.Tensor,
    pool_size: int = 300,
    draws: int = 30,
    seed: int = 0,
) -> dict[str, float]:
    """Top-1 retrieval among ``pool_size`` random test samples, averaged over ``draws`` draws.

    Row ``i`` of ``brain`` and of ``image`` belong to the same stimulus. With fewer samples
    than ``pool_size`` the whole set is one pool (and ``draws`` re-draws the same pool).
    Returns ``brain_to_image``, ``image_to_brain`` and the ``chance`` level, as fractions.
    """
    if brain.shape[0] != image.shape[0]:
        raise ValueError(f"brain has {brain.shape[0]} rows but image has {image.shape[0]}")
    n = brain.shape[0]
    if n == 0:
        raise ValueError("top1_retrieval: no samples; fix: evaluate on a non-empty split")
    pool = min(pool_size, n)
    sim = similarity_matrix(brain, image)
    g = torch.Generator().manual_seed(seed)
    b2i = i2b = 0.0
    target = torch.arange(pool)
    for _ in range(draws):
        idx = torch.randperm(n, generator=g)[:pool]
        s = sim[idx][:, idx].cpu()
        b2i += (s.argmax(dim=1) == target).float().mean().item()
        i2b += (s.argmax(dim=0) == target).float().mean().item()
    return {"brain_to_image": b2i / draws, "image_to_brain": i2b / draws, "chance": 1.0 / pool}


def retrieval_score(pred: torch.Tensor, target: torch.Tensor, pool_size: int = 300, draws: int = 5, seed: int = 0) -> float:
    """brain->image + image->brain top-1 (:func:`top1_retrieval`): the score that picks penalties on val."""
    r = top1_retrieval(pred, target, pool_size, draws, seed)
    return r["brain_to_image"] + r["image_to_brain"]


def two_way_identification(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Fraction of (i, j != i) pairs where corr(pred_i, target_i) > corr(pred_i, target_j)."""
    p = pred.flatten(1).float()
    t = target.flatten(1).float()
    p = (p - p.mean(1, keepdim=True)) / (p.std(1, keepdim=True) + 1e-8)
    t = (t - t.mean(1, keepdim=True)) / (t.std(1, keepdim=True) + 1e-8)
    corr = p @ t.T / (p.shape[1] - 1)
    n = corr.shape[0]
    if n < 2:
        raise ValueError("two_way_identification needs at least 2 samples")
    correct = (corr.diagonal()[:, None] > corr).float().sum(1)  # the diagonal never counts itself
    return (correct / (n - 1)).mean().item()


class RetrievalMetrics(Metric):
    """Accumulates brain and image embeddings over an epoch (all ranks) and reports
    top-1 retrieval both ways and 2-way identification."""

    full_state_update = False

    def __init__(self, pool_size: int = 300, draws: int = 30, seed: int = 0, **kwargs) -> None:
        super().__init__(**kwargs)
        self.pool_size = pool_size
        self.draws = draws
        self.seed = seed
        self.add_state("brain", default=[], dist_reduce_fx="cat")
        self.add_state("image", default=[], dist_reduce_fx="cat")

    def update(self, brain: torch.Tensor, image: torch.Tensor) -> None:
        self.brain.append(brain.detach().flatten(1).float())
        self.image.append(image.detach().flatten(1).float())

    def compute(self) -> dict[str, torch.Tensor]:
        brain, image = dim_zero_cat(self.brain), dim_zero_cat(self.image)
        out = top1_retrieval(brain, image, self.pool_size, self.draws, self.seed)
        out["two_way_identification"] = two_way_identification(brain, image)
        return {k: torch.tensor(v) for k, v in out.items()}
