"""Classic baselines: closed-form ridge regression (voxels -> embeddings) and logistic regression (epochs -> words)."""

from __future__ import annotations

import numpy as np

from litbrain.nn.ridge import RidgeDecoder, fit_ridge

__all__ = ["RidgeDecoder", "fit_logistic", "fit_ridge"]


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
