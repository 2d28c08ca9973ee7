"""Noise ceilings from repeated presentations (NSD) and noise-normalised encoding scores (Algonauts 2023).

NSD (Allen et al. 2022), per voxel, on betas z-scored per session:

* noise variance ``s2_noise`` = the variance across repeats of each image (ddof=1), averaged over
  the images shown at least twice;
* signal variance ``s2_signal`` = ``max(1 - s2_noise, 0)`` (z-scored betas have unit variance; for
  betas that are not z-scored, the variance of all the repeat trials takes the place of 1);
* ``ncsnr = sqrt(s2_signal) / sqrt(s2_noise)``;
* the noise ceiling of an average of ``n`` trials, in percent of variance explained,
  ``NC = 100 * ncsnr^2 / (ncsnr^2 + 1/n)``; with a different ``n`` per image, ``1/n`` is the mean
  of ``1/n_i`` over the scored images (NSD's ``(A/3 + B/2 + C/1) / (A + B + C)``).

Algonauts 2023, per voxel over the held-out images: Pearson ``r`` between prediction and the
(averaged) measured response, ``r < 0 -> 0``, and the noise-normalised score
``100 * r^2 / (NC / 100)`` (r^2 as a percentage of the explainable variance), capped at 100.
A voxel whose ceiling is (near) zero has nothing to explain: its score is NaN, it is counted in
``n_without_ceiling`` and left out of the means, never divided by.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from litbrain.errors import DataError

__all__ = ["MIN_CEILING", "ncsnr_from_repeats", "noise_ceiling", "voxel_correlation", "noise_normalized_score",
           "summarize_scores"]

# Ceilings below this (percent of variance) count as "no signal": no score is computed for the voxel.
MIN_CEILING = 1e-3


def ncsnr_from_repeats(trials: np.ndarray, stimulus: np.ndarray, unit_variance: bool = True,
                       where: str = "repeats") -> np.ndarray:
    """NSD's noise-ceiling SNR per voxel from single-trial betas ``trials`` (T, V) of repeated stimuli.

    ``stimulus`` (T,) names each trial's stimulus; stimuli shown once are ignored. ``unit_variance``:
    the betas are z-scored (NSD), so the total variance is 1; otherwise it is the variance of the trials.
    """
    x = np.asarray(trials, dtype=np.float64)
    stim = np.asarray(stimulus)
    if x.ndim != 2 or stim.shape != (x.shape[0],):
        raise DataError(f"{where}: trials {x.shape} and stimulus {stim.shape} do not line up; fix: one stimulus per "
                        f"trial row")
    uniq, inv, counts = np.unique(stim, return_inverse=True, return_counts=True)
    rep = counts >= 2
    if not rep.any():
        raise DataError(f"{where}: no stimulus was shown more than once, so there is no noise ceiling; fix: score "
                        f"without it (r only) or add repeated presentations")
    keep = rep[inv]
    x, inv = x[keep], inv[keep]
    groups = np.flatnonzero(rep)
    remap = np.full(uniq.size, -1)
    remap[groups] = np.arange(groups.size)
    g = remap[inv]
    n = counts[groups].astype(np.float64)
    sums = np.zeros((groups.size, x.shape[1]))
    np.add.at(sums, g, x)
    means = sums / n[:, None]
    sq = np.zeros_like(sums)
    np.add.at(sq, g, (x - means[g]) ** 2)
    noise_var = (sq / (n[:, None] - 1)).mean(0)  # variance across repeats, averaged over images
    total = 1.0 if unit_variance else x.var(0, ddof=1)
    signal_var = np.maximum(total - noise_var, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.sqrt(signal_var) / np.sqrt(noise_var)
    out[noise_var <= 0] = np.inf  # noiseless voxel: ceiling 100
    out[(noise_var <= 0) & (signal_var <= 0)] = 0.0
    return out


def noise_ceiling(ncsnr: np.ndarray, n: float | Sequence[int] | np.ndarray) -> np.ndarray:
    """``100 * ncsnr^2 / (ncsnr^2 + 1/n)`` percent; ``n`` trials averaged (or one count per scored image)."""
    s2 = np.asarray(ncsnr, dtype=np.float64) ** 2
    inv_n = float(np.mean(1.0 / np.asarray(n, dtype=np.float64)))
    with np.errstate(invalid="ignore"):
        nc = 100.0 * s2 / (s2 + inv_n)
    nc[np.isinf(s2)] = 100.0
    return nc


def voxel_correlation(pred: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Pearson r per voxel (column) over images (rows); a constant column gives r = 0."""
    p = np.asarray(pred, dtype=np.float64)
    t = np.asarray(target, dtype=np.float64)
    if p.shape != t.shape or p.ndim != 2:
        raise DataError(f"predictions {p.shape} and responses {t.shape}: need the same (images, voxels) shape; fix: "
                        f"predict every voxel of every scored image")
    p = p - p.mean(0)
    t = t - t.mean(0)
    den = np.sqrt((p * p).sum(0) * (t * t).sum(0))
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (p * t).sum(0) / den
    r[~(den > 0)] = 0.0
    return r


def noise_normalized_score(r: np.ndarray, nc: np.ndarray, min_ceiling: float = MIN_CEILING) -> np.ndarray:
    """Algonauts 2023: ``100 * max(r, 0)^2 / (NC / 100)`` capped at 100; NaN where ``NC < min_ceiling``."""
    r = np.maximum(np.asarray(r, dtype=np.float64), 0.0)
    nc = np.asarray(nc, dtype=np.float64)
    ok = nc >= min_ceiling
    out = np.full(r.shape, np.nan)
    out[ok] = np.minimum(100.0 * r[ok] ** 2 / (nc[ok] / 100.0), 100.0)
    return out


def _stats(r: np.ndarray, score: np.ndarray | None) -> dict[str, Any]:
    out: dict[str, Any] = {"n_voxels": int(r.size), "mean_r": float(np.mean(r)), "median_r": float(np.median(r))}
    if score is not None:
        ok = np.isfinite(score)
        out["n_without_ceiling"] = int((~ok).sum())
        out["mean_score"] = float(np.mean(score[ok])) if ok.any() else float("nan")
        out["median_score"] = float(np.median(score[ok])) if ok.any() else float("nan")
    return out


def summarize_scores(r: np.ndarray, nc: np.ndarray | None = None, labels: np.ndarray | None = None,
                     names: dict[int, str] | None = None) -> dict[str, Any]:
    """Mean and median r (and noise-normalised score with a ceiling) over voxels, and per ROI label.

    ``labels`` (V,) integer ROI labels (0 = unlabelled, skipped in the per-ROI table); ``names``
    maps labels to ROI names. Without ``nc`` only r is summarised (no noise ceiling).
    """
    r = np.asarray(r, dtype=np.float64)
    score = noise_normalized_score(r, nc) if nc is not None else None
    out = _stats(r, score)
    if labels is not None:
        labels = np.asarray(labels)
        per = {}
        for lab in sorted(int(v) for v in np.unique(labels) if v != 0):
            sel = labels == lab
            name = (names or {}).get(lab, f"roi-{lab}")
            per[name] = _stats(r[sel], score[sel] if score is not None else None)
        out["per_roi"] = per
    return out
