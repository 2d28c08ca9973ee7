import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from litbrain.datamodules import (
    DataError,
    load_truth,
    prepare_fmri,
    synthesize_fmri,
    synthetic_oracle,
    true_image_embedding,
)
from PIL import Image


def _top1(pred, target):
    p = pred.reshape(len(pred), -1)
    t = target.reshape(len(target), -1)
    p = p / np.linalg.norm(p, axis=1, keepdims=True)
    t = t / np.linalg.norm(t, axis=1, keepdims=True)
    s = p @ t.T
    n = np.arange(len(s))
    return float((s.argmax(1) == n).mean()), float((s.argmax(0) == n).mean())


def test_raw_layout(tiny_raw):
    stim = pd.read_csv(tiny_raw / "stimuli.tsv", sep="\t", dtype={"stimulus_id": str})
    assert list(stim.columns) == ["stimulus_id", "image", "shared"] and len(stim) == 330
    assert stim["shared"].sum() == 30
    im = Image.open(tiny_raw / stim["image"][0])
    assert im.size == (16, 16) and im.mode == "RGB"
    caps = pd.read_csv(tiny_raw / "captions.tsv", sep="\t", dtype={"stimulus_id": str})
    assert set(caps["stimulus_id"]) == set(stim["stimulus_id"]) and len(caps) == 660
    with np.load(tiny_raw / "embeddings" / "image.npz") as f:
        assert f["embeddings"].shape == (330, 16) and f["embeddings"].dtype == np.float32
        np.testing.assert_array_equal(f["ids"], stim["stimulus_id"].to_numpy())
    shapes, counts = set(), set()
    for s in ("sub-01", "sub-02", "sub-03"):
        mask = np.asarray(nib.load(tiny_raw / s / "mask.nii.gz").dataobj) != 0
        shapes.add(mask.shape)
        counts.add(int(mask.sum()))
        img = nib.load(tiny_raw / s / "betas_session01.nii.gz")
        assert img.get_data_dtype() == np.int16 and img.dataobj.slope == 1 and img.shape[:3] == mask.shape
        trials = pd.read_csv(tiny_raw / s / "trials.tsv", sep="\t", dtype={"stimulus_id": str})
        assert len(trials) == 190 and trials["session"].max() == 4
        shared = set(stim["stimulus_id"][stim["shared"] == 1])
        assert (trials["stimulus_id"].isin(shared).sum()) == 90  # 30 shared x 3 repeats
        # shared repeats spread over sessions (trials shuffled)
        assert trials[trials["stimulus_id"].isin(shared)]["session"].nunique() > 1
    assert len(shapes) == 3 and len(counts) == 3


def test_int16_values_follow_the_truth(tiny_raw):
    truth = load_truth(tiny_raw)
    ijk = truth["sub-02.voxel_ijk"]
    img = nib.load(tiny_raw / "sub-02" / "betas_session02.nii.gz")
    data = np.asarray(img.dataobj)[ijk[:, 0], ijk[:, 1], ijk[:, 2]].T / 300.0  # (t, V)
    trials = pd.read_csv(tiny_raw / "sub-02" / "trials.tsv", sep="\t", dtype={"stimulus_id": str})
    ids = list(truth["ids"])
    t2 = trials[trials["session"] == 2]
    z = truth["z"][[ids.index(s) for s in t2["stimulus_id"]]]
    signal = z @ truth["sub-02.mixing"].T
    x = (data[t2["trial"].to_numpy() - 1] - truth["sub-02.offset"][1]) / truth["sub-02.gain"][1]
    resid = x - signal
    assert abs(resid.std() - float(truth["noise"])) < 0.1 * float(truth["noise"])
    assert abs(resid.mean()) < 0.05 * float(truth["noise"])


def test_deterministic(tmp_path):
    kw = dict(n_subjects=2, n_stimuli=40, n_shared=5, trials_per_session=20, n_voxels=60, latent_dim=4,
              image_embedding_shape=(3, 4), text_embedding_dim=None, image_size=8)
    a = synthesize_fmri(tmp_path / "a", **kw)
    b = synthesize_fmri(tmp_path / "b", **kw)
    c = synthesize_fmri(tmp_path / "c", seed=1, **kw)
    assert (a / "sub-02" / "trials.tsv").read_text() == (b / "sub-02" / "trials.tsv").read_text()
    assert (a / "sub-02" / "trials.tsv").read_text() != (c / "sub-02" / "trials.tsv").read_text()
    np.testing.assert_array_equal(np.asarray(nib.load(a / "sub-01" / "betas_session02.nii.gz").dataobj),
                                  np.asarray(nib.load(b / "sub-01" / "betas_session02.nii.gz").dataobj))
    assert not (a / "embeddings" / "text.npz").exists()
    # Same parameters again: a no-op that leaves the files untouched; other parameters: an error.
    mtime = (a / "sub-01" / "betas_session02.nii.gz").stat().st_mtime_ns
    assert synthesize_fmri(tmp_path / "a", **kw) == a
    assert (a / "sub-01" / "betas_session02.nii.gz").stat().st_mtime_ns == mtime
    with pytest.raises(DataError, match="already exists with other parameters"):
        synthesize_fmri(tmp_path / "a", **{**kw, "noise": 2.0})
    # token-shaped targets survive prepare; per-token L2 normalised
    prep = prepare_fmri(a, tmp_path / "pa", val_fraction=0.2)
    emb = np.load(prep / "image_embedding.npy")
    assert emb.shape == (40, 3, 4)
    np.testing.assert_allclose(np.linalg.norm(emb, axis=-1), 1, rtol=1e-5)


def test_embedding_function_is_nonlinear(tiny_raw):
    truth = load_truth(tiny_raw)
    z = np.random.default_rng(0).standard_normal((2000, truth["z"].shape[1]))
    e = true_image_embedding(z, truth)
    w, *_ = np.linalg.lstsq(np.c_[z, np.ones(len(z))], e, rcond=None)
    r2 = 1 - ((np.c_[z, np.ones(len(z))] @ w - e) ** 2).sum() / ((e - e.mean(0)) ** 2).sum()
    assert 0.5 < r2 < 0.97  # mostly linear, but a linear map leaves a clear remainder


@pytest.mark.parametrize("subject", ["sub-01", "sub-03"])
def test_oracle_beats_shuffled(tiny_raw, tiny_prepared, subject):
    stim = np.load(tiny_prepared / subject / "test_stimulus.npy")
    target = np.load(tiny_prepared / "image_embedding.npy")[stim]
    pred = synthetic_oracle(tiny_raw, tiny_prepared, subject, split="test")
    assert pred.shape == target.shape == (30, 16) and pred.dtype == np.float32
    fwd, bwd = _top1(pred, target)
    shuf = _top1(pred[np.random.default_rng(0).permutation(len(pred))], target)
    assert fwd >= 0.6 and bwd >= 0.6  # chance = 1/30
    assert max(shuf) <= 0.2
    cos = (pred * target).sum(1)
    cos_shuf = (pred * target[np.random.default_rng(1).permutation(len(target))]).sum(1)
    assert cos.mean() > 0.85 and cos.mean() - cos_shuf.mean() > 0.3
    # train rows (single trials) are decoded less well than repeat-averaged test rows, but far above chance
    tr = synthetic_oracle(tiny_raw, tiny_prepared, subject, split="train")
    tstim = np.load(tiny_prepared / subject / "train_stimulus.npy")
    assert tr.shape == (90, 16)
    assert (tr * np.load(tiny_prepared / "image_embedding.npy")[tstim]).sum(1).mean() > 0.7
