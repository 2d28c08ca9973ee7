"""Noise ceiling and encoding scores equal a direct numpy computation of the NSD and Algonauts 2023 formulas."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import pearsonr

from litbrain.errors import DataError
from litbrain.evaluation.noise_ceiling import (
    ncsnr_from_repeats,
    noise_ceiling,
    noise_normalized_score,
    summarize_scores,
    voxel_correlation,
)


@pytest.fixture
def fixed_case():
    """20 images x 3 repeats x 6 voxels of z-scored-like betas; voxel 5 is pure noise of variance > 1 (no signal)."""
    rng = np.random.default_rng(42)
    n_img, n_rep, n_vox = 20, 3, 6
    signal = rng.standard_normal((n_img, 1, n_vox)) * np.array([0.9, 0.8, 0.6, 0.4, 0.2, 0.0])
    betas = signal + rng.standard_normal((n_img, n_rep, n_vox)) * np.array([0.45, 0.6, 0.8, 0.9, 0.95, 1.3])
    pred = signal[:, 0] + rng.standard_normal((n_img, n_vox)) * 0.3
    pred[:, 0] = 2 * betas.mean(1)[:, 0] + 1  # perfect up to an affine map: r = 1, score capped at 100
    pred[:, 3] = -pred[:, 3]  # a voxel predicted with the wrong sign: r < 0 -> score 0
    return betas, pred


def _nsd_by_hand(betas):
    # NSD (Allen et al. 2022): noise sd from the repeat variance averaged over images; signal = 1 - noise var.
    noise_var = np.mean(np.var(betas, axis=1, ddof=1), axis=0)
    ncsnr = np.sqrt(np.clip(1.0 - noise_var, 0, None)) / np.sqrt(noise_var)
    return ncsnr, 100 * ncsnr ** 2 / (ncsnr ** 2 + 1 / betas.shape[1])


def test_ncsnr_and_ceiling_equal_the_nsd_formulas(fixed_case):
    betas, _ = fixed_case
    n_img, n_rep, n_vox = betas.shape
    trials = betas.reshape(n_img * n_rep, n_vox)
    stim = np.repeat(np.arange(n_img), n_rep)
    perm = np.random.default_rng(0).permutation(stim.size)  # trial order must not matter
    ncsnr = ncsnr_from_repeats(trials[perm], stim[perm])
    want_ncsnr, want_nc = _nsd_by_hand(betas)
    np.testing.assert_allclose(ncsnr, want_ncsnr, rtol=1e-10)
    np.testing.assert_allclose(noise_ceiling(ncsnr, n_rep), want_nc, rtol=1e-10)
    # a mixed number of trials per image: 1/n is the mean of 1/n_i (NSD's (A/3 + B/2 + C/1)/(A+B+C))
    np.testing.assert_allclose(noise_ceiling(ncsnr, [3, 3, 2, 1]),
                               100 * ncsnr ** 2 / (ncsnr ** 2 + (2 / 3 + 1 / 2 + 1) / 4), rtol=1e-10)
    # betas that are not z-scored: the repeat trials' own variance takes the place of 1
    own = ncsnr_from_repeats(trials, stim, unit_variance=False)
    noise_var = np.mean(np.var(betas, axis=1, ddof=1), axis=0)
    total = np.var(betas.reshape(-1, n_vox), axis=0, ddof=1)
    np.testing.assert_allclose(own, np.sqrt(np.clip(total - noise_var, 0, None)) / np.sqrt(noise_var), rtol=1e-10)
    # stimuli shown once do not enter the noise estimate
    extra = np.vstack([trials, np.full((1, n_vox), 50.0)])
    np.testing.assert_allclose(ncsnr_from_repeats(extra, np.r_[stim, n_img]), want_ncsnr, rtol=1e-10)


def test_scores_equal_the_algonauts_formula_and_a_no_signal_voxel_is_reported_not_divided(fixed_case):
    betas, pred = fixed_case
    target = betas.mean(1)
    r = voxel_correlation(pred, target)
    np.testing.assert_allclose(r, [pearsonr(pred[:, v], target[:, v])[0] for v in range(r.size)], rtol=1e-10)
    _, nc = _nsd_by_hand(betas)
    assert nc[5] == 0.0  # the pure-noise voxel has no ceiling
    with np.errstate(divide="raise", invalid="raise"):  # no division by zero anywhere
        score = noise_normalized_score(r, nc)
        summary = summarize_scores(r, nc, labels=np.array([1, 1, 1, 2, 2, 2]), names={1: "V1", 2: "V2"})
    ok = np.arange(5)
    want = np.minimum(100 * np.clip(r[ok], 0, None) ** 2 / (nc[ok] / 100), 100)  # Algonauts 2023
    np.testing.assert_allclose(score[ok], want, rtol=1e-10)
    assert score[3] == 0.0 and np.isnan(score[5])
    assert (score[ok] <= 100).all() and score[0] == 100.0  # well-predicted voxel: capped
    assert summary["n_without_ceiling"] == 1
    np.testing.assert_allclose(summary["mean_score"], want.mean())
    np.testing.assert_allclose(summary["median_score"], np.median(want))
    np.testing.assert_allclose(summary["mean_r"], r.mean())
    assert summary["per_roi"]["V2"]["n_without_ceiling"] == 1
    np.testing.assert_allclose(summary["per_roi"]["V1"]["mean_score"], want[:3].mean())


def test_no_repeats_means_no_ceiling_in_one_line():
    with pytest.raises(DataError, match="no stimulus was shown more than once, so there is no noise ceiling"):
        ncsnr_from_repeats(np.zeros((4, 2)), np.arange(4))
    r_only = summarize_scores(np.array([0.5, 0.1]))
    assert "mean_score" not in r_only and r_only["mean_r"] == pytest.approx(0.3)
