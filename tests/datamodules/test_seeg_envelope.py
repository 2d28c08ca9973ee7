"""The sEEG generator's high-gamma envelope coding and timing jitter (issue 14)."""

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("mne_bids")

from litbrain.datamodules import DataError, prepare_seeg, synthesize_seeg  # noqa: E402

# synthesize_seeg(**SMALL) before envelope coding existed (commit 4f3af49): SHA-256 over every file's
# relative path and bytes, in sorted order, with the writers' own version stamps blanked (MNE-BIDS's
# "Version" in dataset_description.json, pybv's "Written using" line): those change with the installed
# libraries, not with litbrain (the two generators give equal trees under any one set of versions).
# The bytes also depend on the CPU: numpy's SIMD transcendental functions round differently with and
# without AVX-512, so there is one hash per CPU kind this suite runs on, each checked by running commit
# 4f3af49's datamodules/seeg/synthetic.py on that kind of machine.
SMALL = dict(n_subjects=1, n_channels=8, region_channels=6, n_words=4, trials_per_word=2, runs=1, sfreq=200.0,
             epoch_s=1.0, oracle_trials=2, seed=3)
SMALL_SHA256 = {
    "5a6aaa444317b083d630c84737a78ec156887c5dfd9f8d8f2b35e7b4a61caf7f": "AMD EPYC with AVX-512 (avx512_bf16)",
    "a0a6b887073b07995b2732aed70b85018d1d919d7ed847e92e9d273130a0bc04": "AMD EPYC with AVX2 only",
}

# Words only in the high-gamma envelope: no low-frequency code (snr 0), random carrier phase, +-50 ms onsets.
ENVELOPE = dict(n_subjects=1, n_channels=8, region_channels=6, n_words=6, trials_per_word=30, runs=1, sfreq=400.0,
                epoch_s=1.0, snr=0.0, envelope_snr=0.25, onset_jitter_s=0.05, jitter_steps=5, oracle_trials=20, seed=0)


def _unstamped(p: Path) -> bytes:
    data = p.read_bytes()
    if p.name == "dataset_description.json":
        data = re.sub(rb'"Version": "[^"]*"', b'"Version": ""', data)
    elif p.suffix == ".vhdr":
        data = re.sub(rb"; Written using pybv [^\r\n]*", b"; Written using pybv", data)
    return data


def tree_sha256(root: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(str(p.relative_to(root)).encode())
            h.update(_unstamped(p))
    return h.hexdigest()


def test_envelope_coding_off_writes_the_files_of_before_byte_for_byte(tmp_path):
    assert tree_sha256(synthesize_seeg(tmp_path / "b", **SMALL)) in SMALL_SHA256


@pytest.fixture(scope="module")
def envelope_world(tmp_path_factory):
    root = synthesize_seeg(tmp_path_factory.mktemp("hg") / "bids", **ENVELOPE)
    prepared = prepare_seeg(root, root.parent / "prepared", l_freq=1.0, h_freq=180.0, tmin=0.0, tmax=1.0)
    sub = prepared / "sub-01"
    x = np.concatenate([np.load(sub / f"{s}_brain.npy").astype(np.float32) for s in ("train", "val", "test")])
    y = np.concatenate([np.load(sub / f"{s}_label.npy") for s in ("train", "val", "test")])
    return root, x, y


def _cv_accuracy(features: np.ndarray, y: np.ndarray) -> float:
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=500))
    return float(cross_val_score(clf, features, y, cv=5).mean())


def test_words_live_in_the_envelope_a_linear_model_on_voltage_cannot_read(envelope_world):
    from scipy.signal import butter, sosfiltfilt

    root, x, y = envelope_world
    truth = json.loads((root / "truth.json").read_text())
    sub = truth["subjects"]["sub-01"]
    assert sub["oracle_quadrature_changed"] == 0  # the phase integral has converged: exact Bayes decisions
    oracle, chance = truth["oracle_accuracy"], truth["chance"]
    linear = _cv_accuracy(x.reshape(len(x), -1), y)
    hg = sosfiltfilt(butter(4, [70, 150], btype="band", fs=400.0, output="sos"), x, axis=-1)
    envelope = (hg ** 2).reshape(*x.shape[:2], -1, 20).mean(-1)  # high-gamma power in 50 ms bins
    power = _cv_accuracy(np.log(envelope).reshape(len(x), -1), y)
    print(f"oracle {oracle:.3f}  high-gamma power + logistic {power:.3f}  logistic on voltage {linear:.3f}  chance {chance:.3f}")
    assert oracle >= 0.95
    assert power >= 0.6 and power <= oracle + 3 * sub["oracle_se"] + 0.05
    assert linear < 2 * chance  # the class means of the voltage carry (almost) nothing


def test_envelope_arguments_are_checked(tmp_path):
    with pytest.raises(DataError, match="Nyquist"):
        synthesize_seeg(tmp_path / "x", **{**SMALL, "envelope_snr": 0.2})  # 200 Hz: high gamma above Nyquist
    with pytest.raises(DataError, match="jitter_steps"):
        synthesize_seeg(tmp_path / "y", **{**SMALL, "onset_jitter_s": 0.05, "jitter_steps": 0})
