"""Classic baselines: closed-form ridge regression (voxels -> embeddings) and logistic regression (epochs -> words)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch

__all__ = ["RidgeDecoder", "fit_logistic", "fit_ridge"]


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


def fit_logistic(xtr: np.ndarray, ytr: np.ndarray, xval: np.ndarray, yval: np.ndarray,
                 cs: tuple[float, ...] = (1e-3, 1e-2, 1e-1, 1.0), seed: int = 0):
    """Standardised multinomial logistic regression; C picked on the validation epochs."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    best, best_acc = None, -1.0
    for c in cs:
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=300, random_state=seed))
        clf.fit(xtr, ytr)
        acc = float((clf.predict(xval) == yval).mean()) if len(yval) else 0.0
        if acc > best_acc:
            best, best_acc = clf, acc
    return best
