"""Closed-form ridge regression (voxels -> embeddings): the classic baseline and the fMRI decoder's linear stage.

Lives in ``nn`` so the decoder task can fit its ridge adapters with the same code the evaluation's
baseline uses (``litbrain.evaluation.baselines`` re-exports it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

__all__ = ["RidgeDecoder", "fit_ridge", "fit_ridge_folds"]


@dataclass
class RidgeDecoder:
    """``y = (x - x_mean) @ weight + y_mean``, fitted in closed form."""

    weight: torch.Tensor
    x_mean: torch.Tensor
    y_mean: torch.Tensor
    alpha: float

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.weight.dtype)
        return (x - self.x_mean) @ self.weight + self.y_mean


def fit_ridge(
    x: torch.Tensor,
    y: torch.Tensor,
    alphas: Sequence[float] = tuple(10.0 ** k for k in range(-3, 4)),
    x_val: torch.Tensor | None = None,
    y_val: torch.Tensor | None = None,
    score: Callable[[torch.Tensor, torch.Tensor], float] | None = None,
) -> RidgeDecoder:
    """Ridge regression for every ``alpha`` from one eigendecomposition; keep the best on val.

    ``alphas`` are relative to the mean eigenvalue of the centred Gram matrix, so one grid
    fits any voxel count or scaling. ``score(pred, target)`` (higher is better) picks alpha
    on ``(x_val, y_val)``; without it, negative MSE does. The primal form is used when there
    are more samples than features, the dual (kernel) form otherwise.
    """
    x = x.double()
    y = y.flatten(1).double()
    x_mean, y_mean = x.mean(0), y.mean(0)
    xc, yc = x - x_mean, y - y_mean
    n, d = xc.shape
    primal = n >= d
    gram = xc.T @ xc if primal else xc @ xc.T
    evals, evecs = torch.linalg.eigh(gram)
    evals = evals.clamp_min(0)
    scale = evals.mean().clamp_min(1e-12)
    proj = evecs.T @ (xc.T @ yc if primal else yc)

    def weight_for(alpha: float) -> torch.Tensor:
        inv = 1.0 / (evals + alpha * scale)
        if primal:
            return evecs @ (inv[:, None] * proj)
        return xc.T @ (evecs @ (inv[:, None] * proj))

    if x_val is None or len(alphas) == 1:
        a = float(alphas[len(alphas) // 2] if x_val is None else alphas[0])
        return RidgeDecoder(weight_for(a), x_mean, y_mean, a)
    score = score or (lambda p, t: -torch.mean((p - t) ** 2).item())
    best: RidgeDecoder | None = None
    best_score = -float("inf")
    for a in alphas:
        cand = RidgeDecoder(weight_for(a), x_mean, y_mean, float(a))
        s = score(cand.predict(x_val.double()), y_val.flatten(1).double())
        if s > best_score:
            best, best_score = cand, s
    assert best is not None
    return best


def fit_ridge_folds(x: torch.Tensor, y: torch.Tensor, groups: np.ndarray, alpha: float, n_folds: int = 5,
                    seed: int = 0) -> tuple[list[RidgeDecoder], np.ndarray]:
    """Ridge at one ``alpha`` on each of ``n_folds`` complements, folds grouped by ``groups``.

    Rows with the same group (the repeats of one stimulus) share a fold, so each row's
    out-of-fold prediction ``maps[fold[row]].predict(x[row])`` comes from a map that never saw
    that stimulus. Returns the maps and the fold of every row.
    """
    groups = np.asarray(groups)
    uniq, inverse = np.unique(groups, return_inverse=True)
    k = int(min(max(n_folds, 2), uniq.size))
    group_fold = np.random.default_rng(seed).permutation(uniq.size) % k
    fold = group_fold[inverse]
    return [fit_ridge(x[fold != f], y[fold != f], [alpha]) for f in range(k)], fold
