"""sEEG bad input: one clear DataError each (file named + a fix), nothing half-written."""

import shutil

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("mne_bids")

from litbrain.datamodules import DataError, prepare_seeg  # noqa: E402

KW = dict(l_freq=1.0, h_freq=100.0, tmax=1.0)


@pytest.fixture
def bids(tiny_seeg_bids, tmp_path):
    """A private copy of sub-01 of the tiny dataset (tests modify it)."""
    root = tmp_path / "bids"
    shutil.copytree(tiny_seeg_bids, root, ignore=shutil.ignore_patterns("sub-02", "sub-03"))
    return root


def _run(root, n=1, suffix="ieeg", ext=".vhdr"):
    return root / "sub-01" / "ieeg" / f"sub-01_task-words_run-{n}_{suffix}{ext}"


def _fails(root, tmp_path, match, **kw):
    with pytest.raises(DataError, match=match):
        prepare_seeg(root, tmp_path / "prep", **{**KW, **kw})
    assert not (tmp_path / "prep").exists()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]


def test_channels_tsv_missing(bids, tmp_path):
    _run(bids, 2, "channels", ".tsv").unlink()
    _fails(bids, tmp_path, r"run-2_channels\.tsv: channels\.tsv missing .*fix:")


def test_channels_tsv_names_absent_channel(bids, tmp_path):
    p = _run(bids, 1, "channels", ".tsv")
    df = pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False)
    df.loc[0, "name"] = "Z9"
    df.to_csv(p, sep="\t", index=False)
    _fails(bids, tmp_path, r"run-1_channels\.tsv: names channel\(s\) Z9 absent from the recording .*fix:")


def test_sampling_rates_differ(bids, tmp_path):
    vhdr = _run(bids, 2)
    text = vhdr.read_text()
    assert "SamplingInterval=4000" in text  # 250 Hz in microseconds
    vhdr.write_text(text.replace("SamplingInterval=4000", "SamplingInterval=2000"))
    _fails(bids, tmp_path, r"sub-01: sampling rates differ between runs \(.*run-1_ieeg\.vhdr: 250 Hz, "
                           r".*run-2_ieeg\.vhdr: 500 Hz\).*fix:")


def test_events_outside_recording(bids, tmp_path):
    p = _run(bids, 1, "events", ".tsv")
    df = pd.read_csv(p, sep="\t", dtype=str, keep_default_na=False)
    df.loc[3, "onset"] = "9999.0"
    df.to_csv(p, sep="\t", index=False)
    _fails(bids, tmp_path, r"run-1_events\.tsv: 1 event\(s\) outside the recording .*file line 5 "
                           r"\(onset 9999\.000 s\).*fix:")


def test_region_no_channel_carries(bids, tmp_path):
    _fails(bids, tmp_path, r"sub-01: no bipolar channel carries region 'Broca' \(labels in .*electrodes\.tsv: "
                           r".*STG.*\).*fix:", regions=["vSMC", "Broca"])


def test_nan_segment(bids, tmp_path):
    eeg = _run(bids, 1, "ieeg", ".eeg")
    n_ch = 8
    x = np.memmap(eeg, dtype="<f4", mode="r+").reshape(-1, n_ch)  # BrainVision: multiplexed float32
    x[500:520, 0] = np.nan
    x.flush()
    del x
    _fails(bids, tmp_path, r"run-1_ieeg\.vhdr: 20 NaN/inf sample\(s\) \(first in channel A1, 2\.000-2\.076 s\).*fix:")


def test_low_pass_above_nyquist_is_named(bids, tmp_path):
    _fails(bids, tmp_path, r"h_freq=200 Hz is not below the Nyquist frequency \(125 Hz\).*fix: set h_freq below 125",
           h_freq=200.0)
