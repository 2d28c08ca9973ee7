"""The synthetic BIDS-iEEG generator: real BIDS through mne-bids, and a known oracle."""

import json

import numpy as np
import pandas as pd
import pytest

mne_bids = pytest.importorskip("mne_bids")

from litbrain.datamodules import (  # noqa: E402
    DataError,
    load_seeg_truth,
    seeg_oracle_accuracy,
    synthesize_seeg,
)


def test_bids_round_trip(tiny_seeg_bids):
    from mne_bids import BIDSPath, read_raw_bids

    truth = np.load(tiny_seeg_bids / "truth.npz")
    for s, n_ch in zip(("01", "02", "03"), (8, 9, 10)):
        for run in (1, 2):
            bp = BIDSPath(subject=s, task="words", run=run, datatype="ieeg", root=tiny_seeg_bids)
            raw = read_raw_bids(bp, verbose="error")
            assert raw.info["sfreq"] == 250.0 and len(raw.ch_names) == n_ch
            assert set(raw.get_channel_types()) == {"seeg"}
            assert raw.info["line_freq"] == 50.0
            assert raw.ch_names == list(truth[f"sub-{s}.channels"])
            # events -> annotations with the words as descriptions, 6 words x 5 trials per run
            desc = list(raw.annotations.description)
            assert len(desc) == 30 and sorted(set(desc)) == [f"word{i:02d}" for i in range(1, 7)]
            ev = pd.read_csv(bp.copy().update(suffix="events", extension=".tsv").fpath, sep="\t")
            np.testing.assert_allclose(raw.annotations.onset, ev["onset"], atol=1e-3)
            # electrodes.tsv -> montage positions in the template frame
            pos = raw.get_montage().get_positions()
            assert pos["coord_frame"] == "mni_tal" and len(pos["ch_pos"]) == n_ch
            chans = pd.read_csv(bp.copy().update(suffix="channels", extension=".tsv").fpath, sep="\t")
            assert (chans["type"] == "SEEG").all() and list(chans["name"]) == raw.ch_names
        el = pd.read_csv(next((tiny_seeg_bids / f"sub-{s}").rglob("*_electrodes.tsv")), sep="\t")
        assert {"name", "x", "y", "z", "group", "region"} <= set(el.columns)
        assert list(el["region"]) == list(truth[f"sub-{s}.region"])
        assert (el["region"].isin(["vSMC", "STG"])).sum() == n_ch - 4


def test_oracle_well_above_chance(tiny_seeg_bids):
    t = load_seeg_truth(tiny_seeg_bids)
    assert t["chance"] == pytest.approx(1 / 6)
    for sub in ("sub-01", "sub-02", "sub-03"):
        acc = seeg_oracle_accuracy(tiny_seeg_bids, sub)
        assert 0.5 < acc <= 1.0 and acc > 3 * t["chance"]
    assert seeg_oracle_accuracy(tiny_seeg_bids) == pytest.approx(t["oracle_accuracy"])
    with pytest.raises(DataError, match="no subject 'sub-09'"):
        seeg_oracle_accuracy(tiny_seeg_bids, "sub-09")


def test_oracle_61_words(tmp_path):
    """The default 61-word task: oracle far above chance (1/61), one small subject, short epochs."""
    root = synthesize_seeg(tmp_path / "b61", n_subjects=1, n_channels=8, region_channels=6, n_words=61,
                           trials_per_word=1, runs=1, sfreq=200.0, epoch_s=1.0, oracle_trials=4)
    t = json.loads((root / "truth.json").read_text())
    assert t["chance"] == pytest.approx(1 / 61)
    assert t["oracle_accuracy"] > 10 / 61


def test_idempotent_and_bad_args(tiny_seeg_bids):
    from tests.conftest import TINY_SEEG

    assert synthesize_seeg(tiny_seeg_bids, **TINY_SEEG) == tiny_seeg_bids  # same params: no-op
    with pytest.raises(DataError, match="already exists with other parameters"):
        synthesize_seeg(tiny_seeg_bids, **{**TINY_SEEG, "seed": 1})
    with pytest.raises(DataError, match="need >= 6"):
        synthesize_seeg(tiny_seeg_bids.parent / "x", n_subjects=1, n_channels=5, region_channels=4)
