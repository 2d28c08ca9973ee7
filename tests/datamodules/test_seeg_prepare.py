"""prepare_seeg: layout, z-scoring with training statistics only, idempotence, plain-file reader."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("mne_bids")

from litbrain.datamodules import prepare_seeg, read_seeg_file  # noqa: E402


def test_manifest_and_layout(tiny_seeg_prepared):
    m = json.loads((tiny_seeg_prepared / "manifest.json").read_text())
    assert m["kind"] == "seeg" and m["format_version"] == 1
    assert m["labels"] == [f"word{i:02d}" for i in range(1, 7)]
    assert m["sfreq"] == 250.0 and m["n_times"] == 250
    for sid, n_ch in zip(("sub-01", "sub-02", "sub-03"), (4, 5, 6)):
        info = m["subjects"][sid]
        assert info["n_channels"] == n_ch and set(info["regions"]) == {"vSMC", "STG"}
        assert all("-" in c for c in info["channels"])  # bipolar A1-A2 ...
        assert (info["n_train"], info["n_val"], info["n_test"]) == (48, 6, 6)
        labels = {}
        for split in ("train", "val", "test"):
            b = np.load(tiny_seeg_prepared / sid / f"{split}_brain.npy", mmap_mode="r")
            lab = np.load(tiny_seeg_prepared / sid / f"{split}_label.npy")
            assert b.dtype == np.float16 and b.shape == (info[f"n_{split}"], n_ch, 250)
            assert lab.dtype == np.int64 and lab.shape == (info[f"n_{split}"],)
            labels[split] = lab
        # split per label: 8 / 1 / 1 of each word's 10 trials
        assert np.bincount(labels["train"]).tolist() == [8] * 6
        assert np.bincount(labels["val"]).tolist() == [1] * 6 == np.bincount(labels["test"]).tolist()
        ch = pd.read_csv(tiny_seeg_prepared / sid / "channels.tsv", sep="\t")
        assert list(ch["name"]) == info["channels"]
    assert not [p for p in tiny_seeg_prepared.parent.iterdir() if p.name.startswith(".")]


def test_zscore_uses_training_stats_only(tiny_seeg_prepared):
    for sid in ("sub-01", "sub-03"):
        tr = np.load(tiny_seeg_prepared / sid / "train_brain.npy").astype(np.float64)
        np.testing.assert_allclose(tr.mean((0, 2)), 0.0, atol=2e-3)
        np.testing.assert_allclose(tr.std((0, 2)), 1.0, atol=2e-3)
        # val/test are scaled with the training statistics: not exactly 0/1
        te = np.load(tiny_seeg_prepared / sid / "test_brain.npy").astype(np.float64)
        assert np.abs(te.std((0, 2)) - 1.0).max() > 1e-3


def test_values_match_reference_and_training_stats(tiny_seeg_bids, tmp_path):
    """Unfiltered, monopolar: prepared rows == (raw epoch - train mean) / train std, by hand."""
    import mne
    from mne_bids import BIDSPath

    out = prepare_seeg(tiny_seeg_bids, tmp_path / "p", subjects=["sub-02"], regions=None, bipolar=False,
                       notch=None, l_freq=None, h_freq=None, tmax=1.0)
    d = out / "sub-02"
    m = json.loads((out / "manifest.json").read_text())
    epochs = {}
    for run in (1, 2):
        bp = BIDSPath(subject="02", task="words", run=run, datatype="ieeg", root=tiny_seeg_bids)
        x = mne.io.read_raw(bp.fpath, preload=True, verbose="error").get_data() * 1e6
        ev = pd.read_csv(bp.copy().update(suffix="events", extension=".tsv").fpath, sep="\t")
        for on in ev["onset"]:
            s = int(round(on * 250))
            epochs[(run - 1, round(on, 6))] = x[:, s:s + 250]
    rows = {}
    for split in ("train", "val", "test"):
        keys = zip(np.load(d / f"{split}_run.npy"), np.load(d / f"{split}_onset.npy"))
        rows[split] = np.stack([epochs[(int(r), round(float(o), 6))] for r, o in keys])
    mean = rows["train"].mean((0, 2))
    std = rows["train"].std((0, 2))
    assert m["subjects"]["sub-02"]["channels"] == [f"{c}" for c in pd.read_csv(d / "channels.tsv", sep="\t")["name"]]
    for split in ("train", "test"):
        want = (rows[split] - mean[None, :, None]) / std[None, :, None]
        got = np.load(d / f"{split}_brain.npy").astype(np.float64)
        np.testing.assert_allclose(got, want, atol=0.02, rtol=0.01)


def test_idempotent_and_overwrite(tiny_seeg_bids, tiny_seeg_prepared):
    from tests.conftest import TINY_SEEG_PREPARE

    mtime = (tiny_seeg_prepared / "manifest.json").stat().st_mtime_ns
    assert prepare_seeg(tiny_seeg_bids, tiny_seeg_prepared, **TINY_SEEG_PREPARE) == tiny_seeg_prepared
    assert (tiny_seeg_prepared / "manifest.json").stat().st_mtime_ns == mtime
    from litbrain.datamodules import DataError

    with pytest.raises(DataError, match="other inputs or parameters"):
        prepare_seeg(tiny_seeg_bids, tiny_seeg_prepared, **{**TINY_SEEG_PREPARE, "seed": 3})


def test_resample_and_mapping_file(tiny_seeg_bids, tmp_path):
    truth = np.load(tiny_seeg_bids / "truth.npz")
    mapping = tmp_path / "regions.tsv"
    with open(mapping, "w") as f:
        f.write("subject\tname\tregion\n")
        for n, r in zip(truth["sub-01.channels"], truth["sub-01.region"]):
            f.write(f"sub-01\t{n}\t{'motor' if r == 'vSMC' else r}\n")
    out = prepare_seeg(tiny_seeg_bids, tmp_path / "p", subjects=["sub-01"], regions=["motor"],
                       channel_regions=mapping, resample=125.0, h_freq=40.0, tmax=1.0)
    m = json.loads((out / "manifest.json").read_text())
    assert m["sfreq"] == 125.0 and m["n_times"] == 125
    assert m["subjects"]["sub-01"]["regions"] == ["motor", "motor"]
    assert np.load(out / "sub-01" / "train_brain.npy").shape == (48, 2, 125)


def _pyedflib_files():
    try:
        import pyedflib
    except ImportError:
        return []
    base = Path(pyedflib.__file__).parent
    return sorted(base.rglob("*.edf")) + sorted(base.rglob("*.bdf"))


@pytest.mark.parametrize("path", _pyedflib_files() or [None], ids=lambda p: p.name if p else "no-pyedflib")
def test_reader_on_pyedflib_files(path, tmp_path):
    if path is None:
        pytest.skip("pyedflib not installed")
    import pyedflib

    with pyedflib.EdfReader(str(path)) as f:
        labels = [x.strip() for x in f.getSignalLabels()]
        rates = [f.getSampleFrequency(i) for i in range(f.signals_in_file)]
        duration = f.getFileDuration()
    ev = tmp_path / "events.tsv"
    ev.write_text(f"onset\ttrial_type\n0.0\tstart\n{max(duration - 1.0, 0.0)}\tend\n")
    raw, events = read_seeg_file(path, events=ev, ch_types="seeg")
    labels = [x for x in labels if x not in ("EDF Annotations", "BDF Annotations")]  # not signals for MNE
    assert raw.ch_names == labels
    assert raw.info["sfreq"] == pytest.approx(max(rates))
    assert set(raw.get_channel_types()) == {"seeg"}
    assert list(events["trial_type"]) == ["start", "end"]
