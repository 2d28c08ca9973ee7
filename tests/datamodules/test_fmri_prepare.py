import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from litbrain.datamodules import DataError, prepare_fmri

from tests.helpers.fmri_rawkit import simple_spec, write_raw


def _reference(raw: Path, prep: Path, sid: str, divisor=300.0, zscore=True):
    """In-memory re-implementation: per-row expected values of train/val/test."""
    mask = np.asarray(nib.load(raw / sid / "mask.nii.gz").dataobj) != 0
    trials = pd.read_csv(raw / sid / "trials.tsv", sep="\t", dtype={"stimulus_id": str})
    stim_ids = pd.read_csv(prep / "stimuli.tsv", sep="\t", dtype={"stimulus_id": str})["stimulus_id"].tolist()
    index = {s: i for i, s in enumerate(stim_ids)}
    train_stims = set(np.load(prep / sid / "train_stimulus.npy").tolist())
    z_of = {}  # (session, trial) -> z-scored row
    for sess, g in trials.groupby("session"):
        img = nib.load(next((raw / sid).glob(f"betas_session{sess:02d}.nii*")))
        data = np.asarray(img.dataobj, dtype=np.float64)
        if img.get_data_dtype().kind == "i" and img.dataobj.slope == 1 and img.dataobj.inter == 0:
            data = data / divisor
        x = data[mask].T[g["trial"].to_numpy() - 1]
        is_train = np.array([index[s] in train_stims for s in g["stimulus_id"]])
        if zscore:
            x = (x - x[is_train].mean(0)) / x[is_train].std(0)
        for t, row in zip(g["trial"], x):
            z_of[(sess, t)] = row
    return trials, index, z_of


def test_manifest_and_layout(tiny_raw, tiny_prepared):
    m = json.loads((tiny_prepared / "manifest.json").read_text())
    assert m["format_version"] == 1
    assert list(m["subjects"]) == ["sub-01", "sub-02", "sub-03"]
    assert m["image_embedding_shape"] == [16] and m["text_embedding_dim"] == 8 and m["n_stimuli"] == 330
    assert isinstance(m["fingerprint"], str) and m["fingerprint"]
    counts = {s: v["n_voxels"] for s, v in m["subjects"].items()}
    assert len(set(counts.values())) == 3  # different voxel counts per subject
    stim = pd.read_csv(tiny_prepared / "stimuli.tsv", sep="\t", dtype={"stimulus_id": str})
    assert len(stim) == 330 and stim["stimulus_id"].is_unique
    assert np.load(tiny_prepared / "image_embedding.npy").shape == (330, 16)
    assert np.load(tiny_prepared / "text_embedding.npy").dtype == np.float32
    for sid, info in m["subjects"].items():
        d = tiny_prepared / sid
        for split in ("train", "val", "test"):
            b = np.load(d / f"{split}_brain.npy", mmap_mode="r")
            s = np.load(d / f"{split}_stimulus.npy")
            assert b.dtype == np.float16 and b.shape == (info[f"n_{split}"], info["n_voxels"])
            assert s.dtype == np.int64 and s.shape == (info[f"n_{split}"],)
        assert np.load(d / "train_session.npy").dtype == np.int32
        assert np.load(d / "voxel_ijk.npy").shape == (info["n_voxels"], 3)
        assert np.load(d / "affine.npy").shape == (4, 4)
        # splits: test = shared stimuli, val and train disjoint by stimulus, nothing shared in train/val
        shared = stim["shared"].to_numpy().astype(bool)
        tr, va, te = (np.load(d / f"{k}_stimulus.npy") for k in ("train", "val", "test"))
        assert shared[te].all() and not shared[tr].any() and not shared[va].any()
        assert not set(tr) & set(va)
        assert len(np.unique(va)) == len(va) and len(np.unique(te)) == len(te)  # one row per stimulus
        assert info["n_test"] == 30 and info["n_val"] == 10 and info["n_train"] == 90
    assert not [p for p in tiny_prepared.parent.iterdir() if p.name.startswith(".")]  # no temp left


def test_values_zscore_repeats_and_voxel_order(tmp_path, rng):
    spec, stimuli = simple_spec(rng)
    raw = write_raw(tmp_path / "raw", {"sub-01": spec}, stimuli)
    prep = prepare_fmri(raw, tmp_path / "prep", val_fraction=0.25)
    d = prep / "sub-01"
    # voxel order = C order of the mask
    np.testing.assert_array_equal(np.load(d / "voxel_ijk.npy"), np.argwhere(spec["mask"]))
    trials, index, z_of = _reference(raw, prep, "sub-01")
    # train rows: individual trials in (session, trial) order
    sess, trial = np.load(d / "train_session.npy"), np.load(d / "train_trial.npy")
    assert np.all(np.diff(sess.astype(np.int64) * 1000 + trial) > 0)
    train = np.load(d / "train_brain.npy").astype(np.float64)
    expect = np.stack([z_of[(s, t)] for s, t in zip(sess, trial)])
    np.testing.assert_allclose(train, expect, atol=4e-3, rtol=2e-3)
    # per-session training statistics => every session's train rows have mean 0, std 1
    for s in np.unique(sess):
        np.testing.assert_allclose(train[sess == s].mean(0), 0, atol=5e-3)
        np.testing.assert_allclose(train[sess == s].std(0), 1, atol=5e-3)
    # val/test rows: mean of the z-scored repeats, sorted by stimulus index
    for split in ("val", "test"):
        stim = np.load(d / f"{split}_stimulus.npy")
        assert np.all(np.diff(stim) > 0)
        got = np.load(d / f"{split}_brain.npy").astype(np.float64)
        for row, si in enumerate(stim):
            keys = [(s, t) for s, t, sid in trials.itertuples(index=False) if index[sid] == si]
            if split == "test":
                assert len(keys) == 3  # shown once per session
            np.testing.assert_allclose(got[row], np.mean([z_of[k] for k in keys], 0), atol=4e-3, rtol=2e-3)


def test_zscore_uses_training_trials_only(tmp_path, rng):
    # test (shared) trials are 1000x larger: if they entered the statistics, train rows would
    # no longer have mean 0 / std 1 and test rows would be small
    spec, stimuli = simple_spec(rng, int16=False, test_scale=1000.0)
    raw = write_raw(tmp_path / "raw", {"sub-01": spec}, stimuli)
    prep = prepare_fmri(raw, tmp_path / "prep", val_fraction=0.25)
    d = prep / "sub-01"
    train = np.load(d / "train_brain.npy").astype(np.float64)
    sess = np.load(d / "train_session.npy")
    for s in np.unique(sess):
        np.testing.assert_allclose(train[sess == s].mean(0), 0, atol=5e-3)
        np.testing.assert_allclose(train[sess == s].std(0), 1, atol=5e-3)
    test = np.load(d / "test_brain.npy").astype(np.float64)
    assert np.abs(test).mean() > 100  # huge, as the raw test trials are
    trials, index, z_of = _reference(raw, prep, "sub-01")
    stim = np.load(d / "test_stimulus.npy")
    keys = [(s, t) for s, t, sid in trials.itertuples(index=False) if index[sid] == stim[0]]
    np.testing.assert_allclose(test[0], np.mean([z_of[k] for k in keys], 0), rtol=2e-3)


def test_int16_divisor_float_and_scaled_ints(tmp_path, rng):
    shape = (3, 4, 2)
    mask = np.ones(shape, bool)
    stimuli = [("a", 1), ("b", 0), ("c", 0), ("d", 0), ("e", 0)]
    trials = [(1, t + 1, s) for t, s in enumerate(["a", "b", "c", "d", "e"])]
    vol = rng.integers(-3000, 3000, size=shape + (5,))
    subs = {
        "sub-01": {"mask": mask, "sessions": {1: vol}, "trials": trials, "int16": True},  # raw ints: /divisor
        "sub-02": {"mask": mask, "sessions": {1: vol / 7.0}, "trials": trials, "int16": False},  # float: as is
        "sub-03": {"mask": mask, "sessions": {1: vol}, "trials": trials, "int16": True, "slope": 0.5},  # scaled
    }
    raw = write_raw(tmp_path / "raw", subs, stimuli)
    for divisor in (300.0, 100.0):
        prep = prepare_fmri(raw, tmp_path / f"prep{divisor}", val_fraction=0.25, zscore=False, int16_divisor=divisor)
        expect_scale = {"sub-01": 1 / divisor, "sub-02": 1 / 7.0, "sub-03": 0.5}
        for sid, scale in expect_scale.items():
            d = prep / sid
            trial = np.load(d / "train_trial.npy")
            got = np.load(d / "train_brain.npy").astype(np.float64)
            expect = vol.reshape(-1, 5).T[trial - 1] * scale  # all-ones mask: C order flatten
            np.testing.assert_allclose(got, expect, rtol=1e-3, atol=1e-3)


def test_idempotent_and_fingerprint(tmp_path, rng):
    spec, stimuli = simple_spec(rng)
    raw = write_raw(tmp_path / "raw", {"sub-01": spec}, stimuli)
    out = prepare_fmri(raw, tmp_path / "prep", val_fraction=0.25)
    files = sorted(p for p in out.rglob("*") if p.is_file())
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    assert prepare_fmri(raw, tmp_path / "prep", val_fraction=0.25) == out
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes  # nothing rewritten
    with pytest.raises(DataError, match="other inputs or parameters.*--overwrite true"):
        prepare_fmri(raw, tmp_path / "prep", val_fraction=0.5)
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes
    # the fingerprint is the inputs' content: a re-copy (new mtimes, same bytes) is already prepared ...
    copy = Path(shutil.copytree(raw, tmp_path / "copy"))
    os.utime(copy / "sub-01" / "trials.tsv", ns=(1, 1))
    shutil.rmtree(raw)
    copy.rename(raw)
    assert prepare_fmri(raw, tmp_path / "prep", val_fraction=0.25) == out
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes
    # ... and one changed byte of a betas file (same size, same mtime) is not
    betas = next((raw / "sub-01").glob("betas_session*.nii*"))
    st = betas.stat()
    data = bytearray(betas.read_bytes())
    data[-5] ^= 0x01
    betas.write_bytes(bytes(data))
    os.utime(betas, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(DataError, match="other inputs or parameters"):
        prepare_fmri(raw, tmp_path / "prep", val_fraction=0.25)
    prepare_fmri(raw, tmp_path / "prep", val_fraction=0.5, overwrite=True)
    assert json.loads((out / "manifest.json").read_text())["parameters"]["val_fraction"] == 0.5
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prep", "raw"]
    # a non-prepared folder is never clobbered without overwrite
    (tmp_path / "other").mkdir()
    with pytest.raises(DataError, match="not a prepared dataset"):
        prepare_fmri(raw, tmp_path / "other")


def test_val_split_seeded_by_stimulus(tmp_path, rng):
    spec, stimuli = simple_spec(rng)
    raw = write_raw(tmp_path / "raw", {"sub-01": spec}, stimuli)
    a = np.load(prepare_fmri(raw, tmp_path / "a", val_fraction=0.25, seed=0) / "sub-01" / "val_stimulus.npy")
    b = np.load(prepare_fmri(raw, tmp_path / "b", val_fraction=0.25, seed=0) / "sub-01" / "val_stimulus.npy")
    c = np.load(prepare_fmri(raw, tmp_path / "c", val_fraction=0.25, seed=1) / "sub-01" / "val_stimulus.npy")
    np.testing.assert_array_equal(a, b)
    assert len(a) == 5 and set(a.tolist()) != set(c.tolist())


def test_chunked_streaming_gives_identical_output(tmp_path, rng):
    spec, stimuli = simple_spec(rng)
    raw = write_raw(tmp_path / "raw", {"sub-01": spec}, stimuli)
    big = prepare_fmri(raw, tmp_path / "big", val_fraction=0.25)
    small = prepare_fmri(raw, tmp_path / "small", val_fraction=0.25, chunk_mb=1e-4)  # one volume per read
    for f in ("train_brain.npy", "val_brain.npy", "test_brain.npy"):
        np.testing.assert_array_equal(np.load(big / "sub-01" / f), np.load(small / "sub-01" / f))


def test_subject_selection_and_no_text(tmp_path, tiny_raw):
    out = prepare_fmri(tiny_raw, tmp_path / "p", subjects=["sub-03", "sub-01"], text_embeddings=None)
    m = json.loads((out / "manifest.json").read_text())
    assert list(m["subjects"]) == ["sub-03", "sub-01"] and m["text_embedding_dim"] is None
    assert not (out / "text_embedding.npy").exists() and not (out / "sub-02").exists()


def _wheel_file(module: str, rel: str) -> Path:
    import importlib.util

    spec = importlib.util.find_spec(module)
    if spec is None:
        pytest.skip(f"{module} not installed")
    p = Path(spec.submodule_search_locations[0]) / rel
    if not p.is_file():
        pytest.skip(f"{p} not shipped")
    return p


def test_real_wheel_niftis(tmp_path):
    """Real NIfTIs shipped in wheels: nitime's fmri1/2 (int16, LSP orientation), nibabel's
    functional.nii (int16 with scl_slope/inter) + a mask from resampled_anat_moved.nii, example4d
    (NIfTI-1 gz, 2 volumes) and example_nifti2 (NIfTI-2)."""
    fmri1 = _wheel_file("nitime", "data/fmri1.nii.gz")
    fmri2 = _wheel_file("nitime", "data/fmri2.nii.gz")
    functional = _wheel_file("nibabel", "tests/data/functional.nii")
    anat = _wheel_file("nibabel", "tests/data/resampled_anat_moved.nii")
    ex4d = _wheel_file("nibabel", "tests/data/example4d.nii.gz")
    nifti2 = _wheel_file("nibabel", "tests/data/example_nifti2.nii.gz")

    def mask_like(path, thresh=None, src=None):
        img = nib.load(path)
        if src is not None:
            data = np.asarray(nib.load(src).dataobj, dtype=np.float64)  # holds NaNs outside the head
            m = np.nan_to_num(data, nan=-np.inf) > np.nanpercentile(data, thresh)
        else:
            mean = np.asarray(img.dataobj, dtype=np.float64).mean(-1)
            m = mean > np.percentile(mean, 60)
        out = tmp_path / f"mask_{path.name.split('.')[0]}.nii.gz"
        nib.save(nib.Nifti1Image(m.astype(np.uint8), img.affine), out)
        return out, m

    n_stim = 120
    stimuli = [(f"img{i:03d}", 1 if i < 6 else 0) for i in range(n_stim)]
    subjects = {}
    # sub-01: nitime, 2 sessions x 40 volumes
    m1, _ = mask_like(fmri1)
    tr, k = [], 6
    for sess in (1, 2):
        for t in range(40):
            if t < 6:
                stim = f"img{t:03d}"  # shared, once per session
            else:
                stim, k = f"img{k:03d}", k + 1
            tr.append((sess, t + 1, stim))
    subjects["sub-01"] = {"mask": m1, "sessions": {1: fmri1, 2: fmri2}, "trials": tr}
    # sub-02: functional.nii (20 volumes, scaled int16), mask from a real anatomical image
    m2, mask2 = mask_like(functional, thresh=50, src=anat)
    tr2 = [(1, t + 1, f"img{t % 6:03d}" if t < 6 else f"img{80 + t:03d}") for t in range(20)]
    subjects["sub-02"] = {"mask": m2, "sessions": {1: functional}, "trials": tr2}
    # sub-03 / sub-04: example4d / example_nifti2 (2 volumes per file) used for 4 sessions each;
    # session 4 holds only val/test trials -> pooled training statistics
    for sid, src, base in (("sub-03", ex4d, 100), ("sub-04", nifti2, 110)):
        m, _ = mask_like(src)
        trs = [(1, 1, f"img{base:03d}"), (1, 2, f"img{base + 1:03d}"), (2, 1, f"img{base + 2:03d}"),
               (2, 2, f"img{base + 3:03d}"), (3, 1, f"img{base + 4:03d}"), (3, 2, f"img{base + 5:03d}"),
               (4, 1, "img000"), (4, 2, f"img{base + 6:03d}")]
        subjects[sid] = {"mask": m, "sessions": {s: src for s in (1, 2, 3, 4)}, "trials": trs}
    raw = write_raw(tmp_path / "raw", subjects, stimuli)
    prep = prepare_fmri(raw, tmp_path / "prep", val_fraction=0.15)
    man = json.loads((prep / "manifest.json").read_text())
    assert list(man["subjects"]) == ["sub-01", "sub-02", "sub-03", "sub-04"]
    for sid, info in man["subjects"].items():
        assert info["n_train"] > 0 and info["n_val"] > 0 and info["n_test"] > 0
        for split in ("train", "val", "test"):
            x = np.load(prep / sid / f"{split}_brain.npy").astype(np.float32)
            assert np.isfinite(x).all()
    # sub-01 and sub-02: values match an in-memory reference (int16/300 for nitime, slope for functional)
    for sid in ("sub-01", "sub-02"):
        trials, index, z_of = _reference(raw, prep, sid)
        d = prep / sid
        got = np.load(d / "train_brain.npy").astype(np.float64)
        exp = np.stack([z_of[(s, t)] for s, t in zip(np.load(d / "train_session.npy"), np.load(d / "train_trial.npy"))])
        np.testing.assert_allclose(got, exp, atol=2e-2, rtol=5e-3)
    np.testing.assert_array_equal(np.load(prep / "sub-02" / "voxel_ijk.npy"), np.argwhere(mask2))
    np.testing.assert_allclose(np.load(prep / "sub-01" / "affine.npy"), nib.load(fmri1).affine)
    assert nib.aff2axcodes(nib.load(fmri1).affine) != nib.aff2axcodes(nib.load(functional).affine)
