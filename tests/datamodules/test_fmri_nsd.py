"""``fmri prepare-nsd`` on a miniature NSD written in NSD's own formats.

The fixture (:func:`synthesize_nsd`) draws its schedule forwards and tags every trial (voxel
(0,0,0) = nsdId, (0,0,1) = NSD trial number, brick pixel (0,0) = nsdId, captions name their
cocoId), so the reader's mapping is checked against what the files say, and the arithmetic
itself against literal values and against scipy's reading of the .mat.
"""

from __future__ import annotations

import json
import shutil

import h5py
import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from PIL import Image
from scipy.io import loadmat, savemat

from litbrain.datamodules import prepare_fmri
from litbrain.datamodules.fmri import nsd as nsd_reader
from litbrain.datamodules.fmri.nsd import (BRICK, COCO_DIR, EXPDESIGN, STIM_INFO, NsdDesign, betas_dir,
                                           prepare_nsd, read_expdesign, roi_path, trial_nsd_ids)
from litbrain.datamodules.fmri.nsd_synthetic import load_nsd_truth, synthesize_nsd
from litbrain.errors import DataError

TPS = 30
FIXTURE = dict(n_subjects=2, sessions=[4, 3], trials_per_session=TPS, n_shared=6, grid=(10, 12, 9), image_size=16,
               seed=0, progress=False)


@pytest.fixture(scope="module")
def nsd(tmp_path_factory):
    return synthesize_nsd(tmp_path_factory.mktemp("nsd") / "nsd", **FIXTURE)


@pytest.fixture(scope="module")
def raw(nsd):
    return prepare_nsd(nsd, nsd.parent / "raw", trials_per_session=TPS, progress=False)


def _table(path):
    return pd.read_csv(path, sep="\t", dtype={"stimulus_id": str, "caption": str})


def _embeddings(raw_dir, dim=4):
    ids = _table(raw_dir / "stimuli.tsv")["stimulus_id"].to_numpy().astype(str)
    rng = np.random.default_rng(0)
    (raw_dir / "embeddings").mkdir(exist_ok=True)
    np.savez(raw_dir / "embeddings" / "image.npz", ids=ids, embeddings=rng.standard_normal((ids.size, dim))
             .astype(np.float32))
    return raw_dir


# ----------------------------------------------------------------------------- the mapping
def test_trial_arithmetic_on_a_literal_design():
    # masterordering and subjectim are MATLAB's 1-based values; nsdIds come out 0-based.
    design = NsdDesign(masterordering=np.array([3, 1, 2, 2, 3, 1]),
                       subjectim=np.array([[11, 21, 31]] + [[41, 51, 61]] + [[1, 2, 3]] * 6),
                       sharedix=np.array([11]))
    assert trial_nsd_ids(design, subject=1, session=1, trials_per_session=3).tolist() == [30, 10, 20]
    assert trial_nsd_ids(design, subject=1, session=2, trials_per_session=3).tolist() == [20, 30, 10]
    assert trial_nsd_ids(design, subject=2, session=2, trials_per_session=3).tolist() == [50, 60, 40]
    assert trial_nsd_ids(design, subject=8, session=1, trials_per_session=2).tolist() == [2, 0]


def test_chosen_trials_land_with_their_nsdid_image_and_captions(nsd, raw):
    mat = loadmat(nsd / EXPDESIGN)
    mo, sim = mat["masterordering"].ravel().astype(int), mat["subjectim"].astype(int)
    n_images = h5py.File(nsd / BRICK, "r")["imgBrick"].shape[0]
    trials = _table(raw / "sub-01" / "trials.tsv")
    stimuli = _table(raw / "stimuli.tsv").set_index("stimulus_id")
    captions = _table(raw / "captions.tsv")
    info = pd.read_csv(nsd / STIM_INFO, index_col=0).set_index("nsdId")
    n_trials = 4 * TPS  # subj01 has 4 sessions
    shown = sim[0, mo[:n_trials] - 1] - 1
    chosen = [
        (1, "first trial: masterordering[0]"), (TPS, "last trial of session 1"), (TPS + 1, "first of session 2"),
        (n_trials, "last trial of the last session"),
        (int(np.flatnonzero(mo[:n_trials] == 1)[0]) + 1, "the subject's image 1 (first column of subjectim)"),
        (int(np.flatnonzero(mo[:n_trials] == sim.shape[1])[0]) + 1, "the subject's last image (last column)"),
        (int(np.flatnonzero(shown == 0)[0]) + 1, "nsdId 0: the brick's first row"),
        (int(np.flatnonzero(shown == n_images - 1)[0]) + 1, "the brick's last row"),
    ]
    with h5py.File(nsd / BRICK, "r") as brick:
        for g, why in chosen:
            s, t = (g - 1) // TPS + 1, (g - 1) % TPS + 1
            expected = int(sim[0, mo[g - 1] - 1]) - 1
            row = trials[(trials["session"] == s) & (trials["trial"] == t)].iloc[0]
            assert (row["nsd_id"], row["stimulus_id"], row["nsd_trial"]) == (expected, f"nsd{expected:05d}", g), why
            vol = np.asarray(nib.load(raw / "sub-01" / f"betas_session{s:02d}.nii.gz").dataobj[..., t - 1])
            assert (vol[0, 0, 0], vol[0, 0, 1]) == (expected, g), why  # the fixture's tag of what trial g showed
            png = np.asarray(Image.open(raw / stimuli.loc[row["stimulus_id"], "image"]))
            assert np.array_equal(png, brick["imgBrick"][expected]), why
            assert int(png[0, 0, 0]) * 256 + int(png[0, 0, 1]) == expected, why
            coco_id = int(info.loc[expected, "cocoId"])
            assert stimuli.loc[row["stimulus_id"], "coco_id"] == coco_id
            mine = captions.loc[captions["stimulus_id"] == row["stimulus_id"], "caption"].tolist()
            assert len(mine) == 5 and all(f"coco {coco_id}," in c and "\n" not in c for c in mine), why
    assert {0, n_images - 1} <= set(trials.loc[trials["nsd_trial"].isin([g for g, _ in chosen]), "nsd_id"])


def test_every_trial_matches_the_fixtures_tags_and_truth(nsd, raw):
    truth = load_nsd_truth(nsd)
    for k, sid in ((1, "sub-01"), (2, "sub-02")):
        trials = _table(raw / sid / "trials.tsv")
        assert trials["nsd_id"].tolist() == truth[f"subj{k:02d}.nsd_id"].tolist()
        assert trials["nsd_trial"].tolist() == truth[f"subj{k:02d}.g"].tolist()
        for s, rows in trials.groupby("session"):
            tags = np.asarray(nib.load(raw / sid / f"betas_session{s:02d}.nii.gz").dataobj[0, 0, :2, :])
            assert tags[0].tolist() == rows["nsd_id"].tolist() and tags[1].tolist() == rows["nsd_trial"].tolist()
    stim = _table(raw / "stimuli.tsv")
    shown = np.unique(np.concatenate([truth["subj01.nsd_id"], truth["subj02.nsd_id"]]))
    assert stim["nsd_id"].tolist() == shown.tolist()  # exactly the images the trials show, once each
    assert len(list((raw / "images").iterdir())) == shown.size


def test_the_shared_images_form_the_test_split_and_repeats_are_averaged_as_prepare_does(nsd, raw, tmp_path):
    work = tmp_path / "raw"
    shutil.copytree(raw, work, symlinks=True)
    prepared = prepare_fmri(_embeddings(work), tmp_path / "prepared", text_embeddings=None)
    mat = loadmat(nsd / EXPDESIGN)
    shared = set((mat["sharedix"].ravel().astype(int) - 1).tolist())
    ids = _table(prepared / "stimuli.tsv")["stimulus_id"].to_numpy()
    nsd_id = np.array([int(s[3:]) for s in ids])
    general = np.asanyarray(nib.load(nsd / roi_path(1)).dataobj)
    mask = general == 1  # -1 (outside the brain) and 0 are not in nsdgeneral
    truth = load_nsd_truth(nsd)
    sess, trial, shown = (truth[f"subj01.{k}"] for k in ("session", "trial", "nsd_id"))
    d = prepared / "sub-01"
    test_ids = nsd_id[np.load(d / "test_stimulus.npy")]
    assert set(test_ids.tolist()) == shared & set(shown.tolist()) and len(shared) == 6
    for split in ("train", "val"):
        assert not set(nsd_id[np.load(d / f"{split}_stimulus.npy")].tolist()) & shared

    # prepare's recipe by hand from NSD's own files: mask, /300, z-score each session with its training
    # trials' mean and std, then average the repeats of each test image
    train = set(zip(np.load(d / "train_session.npy").tolist(), np.load(d / "train_trial.npy").tolist()))
    betas_root = nsd / betas_dir(1)
    z = {}
    for s in np.unique(sess):
        x = np.asarray(nib.load(betas_root / f"betas_session{s:02d}.nii.gz").dataobj)[mask].T / 300.0
        tr = np.array([(int(s), t) in train for t in range(1, TPS + 1)])
        z[int(s)] = (x - x[tr].mean(0)) / x[tr].std(0)
    expected = np.stack([np.mean([z[int(s)][t - 1] for s, t, n in zip(sess, trial, shown) if n == img], axis=0)
                         for img in test_ids])
    got = np.load(d / "test_brain.npy").astype(np.float64)
    np.testing.assert_allclose(got, expected, atol=2e-3 * np.abs(expected).max())
    assert [int(np.sum(shown == img)) for img in test_ids] == [3] * len(test_ids)  # 3 repeats each were averaged
    # ncsnr is kept for the noise ceiling, in the prepared voxel order
    ijk = np.load(d / "voxel_ijk.npy")
    nc = np.load(d / "ncsnr.npy")
    np.testing.assert_array_equal(nc, truth["subj01.ncsnr"][tuple(ijk.T)])
    np.testing.assert_array_equal(nc, np.asanyarray(nib.load(betas_root / "ncsnr.nii.gz").dataobj)[mask])


def test_the_hdf5_betas_give_the_same_volumes_on_the_rois_grid(nsd, tmp_path):
    out = prepare_nsd(nsd, tmp_path / "raw", subjects=[2], sessions=[3], betas_format="hdf5", trials_per_session=TPS,
                      chunk_mb=0.01, progress=False)  # chunk_mb: several hdf5 reads per session
    got = nib.load(out / "sub-02" / "betas_session03.nii.gz")
    want = nib.load(nsd / betas_dir(2) / "betas_session03.nii.gz")
    assert not (out / "sub-02" / "betas_session03.nii.gz").is_symlink()
    assert got.get_data_dtype() == np.int16 and got.shape == want.shape
    np.testing.assert_array_equal(np.asarray(got.dataobj), np.asarray(want.dataobj))
    np.testing.assert_allclose(got.affine, nib.load(nsd / roi_path(2)).affine)


def test_any_subset_of_subjects_and_sessions(nsd, tmp_path):
    truth = load_nsd_truth(nsd)
    out = prepare_nsd(nsd, tmp_path / "raw", subjects=["subj02"], sessions=[1, 3], trials_per_session=TPS,
                      progress=False)
    assert sorted(p.name for p in out.iterdir() if p.name.startswith("sub-")) == ["sub-02"]
    trials = _table(out / "sub-02" / "trials.tsv")
    keep = np.isin(truth["subj02.session"], [1, 3])
    assert trials["session"].unique().tolist() == [1, 3]
    assert trials["nsd_id"].tolist() == truth["subj02.nsd_id"][keep].tolist()
    assert _table(out / "stimuli.tsv")["nsd_id"].tolist() == np.unique(truth["subj02.nsd_id"][keep]).tolist()
    assert sorted(p.name for p in (out / "sub-02").glob("betas_*")) == ["betas_session01.nii.gz",
                                                                       "betas_session03.nii.gz"]
    per = prepare_nsd(nsd, tmp_path / "per", subjects=[1, 2], sessions={"subj01": [2], "subj02": [1]},
                      trials_per_session=TPS, progress=False)
    assert _table(per / "sub-01" / "trials.tsv")["session"].unique().tolist() == [2]
    assert json.loads((per / "nsd.json").read_text())["parameters"]["sessions"] == {"sub-01": [2], "sub-02": [1]}


def test_another_roi_and_its_labels(nsd, tmp_path):
    out = prepare_nsd(nsd, tmp_path / "raw", subjects=[1], sessions=[1], roi="prf-visualrois", roi_labels=[1, 3],
                      trials_per_session=TPS, ncsnr=False, captions=False, progress=False)
    labels = np.asanyarray(nib.load(nsd / roi_path(1, roi="prf-visualrois")).dataobj)
    mask = np.asanyarray(nib.load(out / "sub-01" / "mask.nii.gz").dataobj)
    np.testing.assert_array_equal(mask, np.isin(labels, [1, 3]).astype(np.uint8))
    assert (labels == 2).any() and not mask[labels == 2].any() and not mask[labels == -1].any()
    assert not (out / "captions.tsv").exists() and not (out / "sub-01" / "ncsnr.nii.gz").exists()


def test_a_second_call_returns_at_once_and_other_parameters_are_refused(nsd, raw):
    before = (raw / "nsd.json").stat().st_mtime_ns
    assert prepare_nsd(nsd, raw, trials_per_session=TPS, progress=False) == raw
    assert (raw / "nsd.json").stat().st_mtime_ns == before
    with pytest.raises(DataError, match=r"raw: was written from other inputs or parameters; fix: pass --overwrite true"):
        prepare_nsd(nsd, raw, trials_per_session=TPS, image_size=8, progress=False)


def test_a_matlab_v73_expdesign_reads_the_same(nsd, tmp_path):
    mat = loadmat(nsd / EXPDESIGN)
    v73 = tmp_path / "nsd_expdesign.mat"
    with h5py.File(v73, "w") as f:  # v7.3 files are HDF5 with MATLAB's column-major arrays transposed
        for k in ("masterordering", "subjectim", "sharedix"):
            f[k] = mat[k].T
    a, b = read_expdesign(nsd / EXPDESIGN), read_expdesign(v73)
    for k in ("masterordering", "subjectim", "sharedix"):
        np.testing.assert_array_equal(getattr(a, k), getattr(b, k))
    assert a.subjectim.shape[0] == 8 and a.masterordering.ndim == 1


def test_the_brick_is_read_by_rows_a_chunk_at_a_time(tmp_path):
    class Recording:
        """imgBrick stand-in that records every read."""

        def __init__(self, data):
            self.data, self.shape, self.reads = data, data.shape, []

        def __getitem__(self, key):
            assert isinstance(key, slice) and key.step is None, key  # row ranges only
            self.reads.append((key.start, key.stop))
            return self.data[key]

    data = np.random.default_rng(0).integers(0, 255, (40, 8, 8, 3), dtype=np.uint8)
    brick = Recording(data)
    needed = np.array([0, 1, 2, 3, 4, 5, 6, 20, 21, 39])
    ids = [f"nsd{n:05d}" for n in needed]
    nsd_reader._write_images(brick, needed, ids, tmp_path / "images", None, chunk_mb=3 * 192 / (1 << 20),
                             progress=False)  # room for 3 rows per read
    assert brick.reads == [(0, 3), (3, 6), (6, 7), (20, 22), (39, 40)]  # needed rows only, <= 3 at a time
    for n, i in zip(needed, ids):
        assert np.array_equal(np.asarray(Image.open(tmp_path / "images" / f"{i}.png")), data[n])


# ----------------------------------------------------------------------------- bad input: one line each
@pytest.fixture
def broken(nsd, tmp_path):
    """A private copy of the miniature NSD to break."""
    return shutil.copytree(nsd, tmp_path / "nsd")


def _refused(root, out, match, **kw):
    with pytest.raises(DataError, match=match) as exc:
        prepare_nsd(root, out, **{"trials_per_session": TPS, "progress": False, **kw})
    msg = str(exc.value)
    assert "\n" not in msg and "; fix: " in msg, msg
    assert not out.exists() and not [p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}")]
    return msg


def test_bad_input_a_missing_session_file(broken, tmp_path):
    for ext in ("nii.gz", "hdf5"):
        (broken / betas_dir(1) / f"betas_session02.{ext}").unlink()
    _refused(broken, tmp_path / "out", r"^nsddata_betas/ppdata/subj01/func1pt8mm/betas_fithrf_GLMdenoise_RR/"
             r"betas_session02\.nii\.gz: not found \(session 2 of subj01 is asked for; present: 1, 3, 4\); fix: "
             r"download it, or leave session 2 out of sessions$", sessions=[1, 2])


def test_bad_input_an_expdesign_without_masterordering(broken, tmp_path):
    mat = loadmat(broken / EXPDESIGN)
    savemat(broken / EXPDESIGN, {k: mat[k] for k in ("subjectim", "sharedix", "basiccnt")})
    _refused(broken, tmp_path / "out", r"^nsddata/experiments/nsd/nsd_expdesign\.mat: no variable 'masterordering' "
             r"\(found: basiccnt, sharedix, subjectim\); fix: use NSD's own nsd_expdesign\.mat")


def test_bad_input_a_brick_without_imgbrick(broken, tmp_path):
    with h5py.File(broken / BRICK, "r") as f:
        images = f["imgBrick"][:]
    with h5py.File(broken / BRICK, "w") as f:
        f["images"] = images
    _refused(broken, tmp_path / "out", r"^nsddata_stimuli/stimuli/nsd/nsd_stimuli\.hdf5: no dataset 'imgBrick' "
             r"\(found: images\); fix: use NSD's nsd_stimuli\.hdf5")


def test_bad_input_a_cocoid_with_no_caption(broken, raw, tmp_path):
    row = _table(raw / "stimuli.tsv").query("coco_split == 'val2017'").iloc[0]
    path = broken / COCO_DIR / "captions_val2017.json"
    doc = json.loads(path.read_text())
    doc["annotations"] = [a for a in doc["annotations"] if a["image_id"] != row["coco_id"]]
    path.write_text(json.dumps(doc))
    _refused(broken, tmp_path / "out", rf"captions_val2017\.json: no caption for cocoId {row['coco_id']} \(nsdId "
             rf"{row['nsd_id']}, cocoSplit val2017 in nsddata/experiments/nsd/nsd_stim_info_merged\.csv\); fix: ")


def test_bad_input_an_roi_whose_grid_differs_from_the_betas(broken, tmp_path):
    path = broken / roi_path(2)
    img = nib.load(path)
    nib.save(nib.Nifti1Image(np.pad(np.asanyarray(img.dataobj), ((0, 1), (0, 0), (0, 0)), constant_values=-1),
                             img.affine), path)
    _refused(broken, tmp_path / "out", r"^nsddata/ppdata/subj02/func1pt8mm/roi/nsdgeneral\.nii\.gz: grid 11x12x9, "
             r".* differs from nsddata_betas/ppdata/subj02/func1pt8mm/betas_fithrf_GLMdenoise_RR/"
             r"betas_session01\.nii\.gz's 10x12x9, .*; fix: use the ROI of the betas' space")


def test_bad_input_a_csv_that_disagrees_with_the_design(broken, tmp_path):
    info = pd.read_csv(broken / STIM_INFO, index_col=0)
    info["subject1_rep0"] = info["subject1_rep1"]  # one repetition column shifted: trials no longer listed
    info.to_csv(broken / STIM_INFO)
    _refused(broken, tmp_path / "out", r"nsd_stim_info_merged\.csv: trial \d+ \(session \d, trial \d+\) of subj01 "
             r"shows nsdId \d+ by .*nsd_expdesign\.mat, but .* do not list it; fix: use the csv and the \.mat")


def test_the_verb_prints_one_line(broken, tmp_path, capsys):
    from litbrain.cli import main

    (broken / BRICK).unlink()
    with pytest.raises(SystemExit) as exc:
        main(["fmri", "prepare-nsd", "--nsd_dir", str(broken), "--out_dir", str(tmp_path / "out"),
              "--trials_per_session", str(TPS), "--progress", "false"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1
    assert err[0].startswith("litbrain fmri prepare-nsd: error: nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5: "
                             "not found; fix:"), err
