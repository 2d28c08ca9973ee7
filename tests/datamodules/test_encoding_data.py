"""The encoding world and prepare: descriptions beside captions, repeats kept for the noise ceiling, ROI labels,
an oracle that is the true forward model."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from litbrain.datamodules import EncodingDataModule, encoding_oracle
from litbrain.errors import DataError
from litbrain.evaluation.noise_ceiling import ncsnr_from_repeats, noise_ceiling, summarize_scores, voxel_correlation


def test_the_world_writes_a_detailed_description_for_every_stimulus(tiny_encoding_raw):
    stim = pd.read_csv(tiny_encoding_raw / "stimuli.tsv", sep="\t", dtype=str)
    desc = pd.read_csv(tiny_encoding_raw / "descriptions.tsv", sep="\t", dtype=str)
    caps = pd.read_csv(tiny_encoding_raw / "captions.tsv", sep="\t", dtype=str)
    assert list(desc["stimulus_id"]) == list(stim["stimulus_id"])
    # detailed: longer than any caption, and with the stimulus' numbers in it
    assert desc["description"].str.len().min() > caps["caption"].str.len().max()
    assert desc["description"].str.contains(r"x=[+-]\d\.\d\d").all()
    with np.load(tiny_encoding_raw / "embeddings" / "description.npz") as f:
        assert list(f["ids"]) == list(stim["stimulus_id"]) and f["embeddings"].shape == (len(stim), 12)


def test_prepare_keeps_the_repeats_whose_means_are_the_test_rows(tiny_encoding_prepared):
    info = json.loads((tiny_encoding_prepared / "encoding.json").read_text())
    for s in ("sub-01", "sub-02", "sub-03"):
        d = tiny_encoding_prepared / s
        trials = np.load(d / "repeats_brain.npy").astype(np.float64)
        stim = np.load(d / "repeats_stimulus.npy")
        test, test_stim = np.load(d / "test_brain.npy").astype(np.float64), np.load(d / "test_stimulus.npy")
        assert trials.shape == (40 * 3, test.shape[1]) and info["subjects"][s]["n_repeated_stimuli"] == 40
        means = np.stack([trials[stim == k].mean(0) for k in test_stim])
        np.testing.assert_allclose(means, test, atol=3e-3)  # the same z-scoring as prepare's test rows
        roi = np.load(d / "roi.npy")
        assert set(np.unique(roi)) == {1, 2, 3} and info["subjects"][s]["roi_names"] == {"1": "V1", "2": "V2",
                                                                                         "3": "V3"}
        mask = nib.load(tiny_encoding_prepared.parent / "raw" / s / "mask.nii.gz")
        assert tuple(info["subjects"][s]["grid_shape"]) == mask.shape


def test_the_oracle_is_the_true_forward_model_and_reaches_the_noise_ceiling(tiny_encoding_raw, tiny_encoding_prepared):
    d = tiny_encoding_prepared / "sub-01"
    test = np.load(d / "test_brain.npy").astype(np.float64)
    oracle = encoding_oracle(tiny_encoding_raw, tiny_encoding_prepared, "sub-01")
    nc = noise_ceiling(ncsnr_from_repeats(np.load(d / "repeats_brain.npy"), np.load(d / "repeats_stimulus.npy"),
                                          unit_variance=False), 3)
    r = voxel_correlation(oracle, test)
    summary = summarize_scores(r, nc)
    # its r^2 is, on average, the explainable variance: the normalised score is near 100 (sampling noise of 40 images)
    assert summary["mean_score"] > 80 and summary["median_score"] > 95
    shuffled = voxel_correlation(oracle[::-1], test)
    assert summarize_scores(shuffled, nc)["mean_score"] < 10


def test_the_datamodule_refuses_a_folder_not_prepared_for_encoding(tiny_prepared):
    with pytest.raises(DataError, match="encoding.json: missing or unreadable; fix: prepare the data with"):
        EncodingDataModule(str(tiny_prepared))
