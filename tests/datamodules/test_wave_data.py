"""WAVE data: the synthetic world's format, nilearn parcellation vs a direct computation, determinism, windows."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from litbrain.datamodules.wave.prepare import parcellate_run, prepare_wave, read_bold
from litbrain.datamodules.wave.synthetic import bold_name
from tests.helpers.wave import TINY_WAVE


def test_the_world_is_fmriprep_derivatives_with_tr_in_the_header_and_events_inside_the_runs(tiny_wave_raw):
    import nibabel as nib

    func = tiny_wave_raw / "sub-01" / "func"
    img = nib.load(func / bold_name("sub-01", "images", 1))
    assert img.ndim == 4 and img.header.get_zooms()[3] == 2.0 and img.header.get_xyzt_units() == ("mm", "sec")
    ev = pd.read_csv(func / "sub-01_task-images_run-1_events.tsv", sep="\t")
    assert list(ev.columns) == ["onset", "duration", "stimulus_id"]
    assert (ev["onset"] + ev["duration"]).max() <= img.shape[3] * 2.0
    assert (func / bold_name("sub-01", "rest", 1)).is_file()
    conf = pd.read_csv(func / "sub-01_task-images_run-1_desc-confounds_timeseries.tsv", sep="\t")
    assert len(conf) == img.shape[3] and {"trans_x", "rot_z", "cosine00"} <= set(conf.columns)
    truth = json.loads((tiny_wave_raw / "truth.json").read_text())
    assert abs(sum(truth["network_weights"].values()) - 1) < 1e-9
    dims = [d for v in truth["network_dims"].values() for d in v]
    assert sorted(dims) == list(range(TINY_WAVE["latent_dim"]))  # disjoint blocks covering every latent dim


def test_nilearn_parcellation_equals_the_mean_of_the_sphere_voxels_after_the_same_cleaning(tmp_path):
    """Direct computation: voxels within the radius of the seed (plus its nearest voxel), averaged; then
    one least-squares regression on [1, t, confounds] (= nilearn's detrend then confound projection) and
    z-scoring with the sample s.d."""
    import nibabel as nib

    from litbrain.datamodules.wave.atlas import grid_mask

    m = grid_mask(10.0)
    mask = np.asarray(m.dataobj) != 0
    rng = np.random.default_rng(0)
    T = 25
    data = np.zeros(mask.shape + (T,))
    data[mask] = 50 + rng.standard_normal((mask.sum(), T)) + np.linspace(0, 3, T)
    img = nib.Nifti1Image(data, m.affine)
    seeds = np.array([[-2.0, -90.0, 2.0], [40.0, 20.0, 30.0], [-45.0, -60.0, 30.0]])
    conf = rng.standard_normal((T, 2))
    radius = 12.0
    got = parcellate_run(img, 2.0, seeds, radius, m, conf)

    ijk = np.argwhere(mask)
    xyz = ijk @ m.affine[:3, :3].T + m.affine[:3, 3]
    design = np.c_[np.ones(T), np.arange(T), conf]
    for p, s in enumerate(seeds):
        near = np.round(np.linalg.inv(m.affine) @ np.r_[s, 1])[:3].astype(int)
        sel = (((xyz - s) ** 2).sum(1) <= radius ** 2) | (ijk == near).all(1)
        assert 1 < sel.sum() < 40
        raw = data[tuple(ijk[sel].T)].mean(0)
        resid = raw - design @ np.linalg.lstsq(design, raw, rcond=None)[0]
        want = (resid - resid.mean()) / resid.std(ddof=1)
        np.testing.assert_allclose(got[:, p], want, atol=1e-5)


def test_prepare_is_deterministic_and_writes_shards_coords_and_networks(tiny_wave_raw, tiny_wave_prepared, tmp_path):
    again = prepare_wave(tiny_wave_raw, tmp_path / "again", radius=8.0)
    files = sorted(p.relative_to(tiny_wave_prepared) for p in tiny_wave_prepared.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    for f in files:
        assert (tiny_wave_prepared / f).read_bytes() == (again / f).read_bytes(), f
    x = np.load(tiny_wave_prepared / "sub-01" / "task-images_run-1.npy")
    assert x.dtype == np.float16 and x.shape[1] == 300
    np.testing.assert_allclose(x.astype(np.float64).mean(0), 0, atol=2e-3)  # z-scored per run
    np.testing.assert_allclose(x.astype(np.float64).std(0, ddof=1), 1, atol=2e-3)
    parcels = pd.read_csv(tiny_wave_prepared / "parcels.tsv", sep="\t")
    assert len(parcels) == 300 and {"Visual", "DefaultMode", "DorsalAttention"} <= set(parcels["network"])
    # a re-run with the same inputs is a no-op (the fingerprint matches)
    stamp = (tiny_wave_prepared / "manifest.json").stat().st_mtime_ns
    prepare_wave(tiny_wave_raw, tiny_wave_prepared, radius=8.0)
    assert (tiny_wave_prepared / "manifest.json").stat().st_mtime_ns == stamp


def test_windows_follow_the_events_and_the_label_fraction(tiny_wave_prepared):
    from litbrain.datamodules.wave.datamodule import WaveDataModule

    dm = WaveDataModule(str(tiny_wave_prepared), mode="events", event_window=5, val_fraction=0.0)
    b = next(iter(dm.test_dataloader()))
    assert b["bold"].shape[1:] == (5, 300) and b["image_embedding"].shape[1] == 16
    ev = pd.read_csv(tiny_wave_prepared / "events.tsv", sep="\t")
    row = ev[ev["split"] == "test"].iloc[0]
    x = np.load(tiny_wave_prepared / row["subject"] / f"{row['run']}.npy").astype(np.float32)
    start = int(round(row["onset"] / 2.0))
    np.testing.assert_array_equal(b["bold"][0].numpy(), x[start:start + 5])
    assert len(dm.dataset("test")) == 2 * TINY_WAVE["n_test"]
    full = len(dm.dataset("train"))
    part = WaveDataModule(str(tiny_wave_prepared), mode="events", label_fraction=0.25, val_fraction=0.0)
    assert len(part.labelled_runs) == 1 and 0 < len(part.dataset("train")) < full  # 1 of the 4 training runs
    few = WaveDataModule(str(tiny_wave_prepared), mode="events", label_fraction=0.25, batch_size=10_000)
    assert len(few.train_dataloader()) == 1  # fewer labelled events than a batch: one batch, not none
    pre = WaveDataModule(str(tiny_wave_prepared), mode="pretrain", window=20)
    w = pre.dataset("train")
    assert w[0]["bold"].shape == (20, 300) and "stimulus" not in w[0]
    runs = {(i[0], i[1]) for i in pre._items["pretrain"]}
    assert ("sub-01", "task-rest_run-1") in runs and ("sub-01", "task-images_run-3") not in runs  # no test run


def test_sphere_voxels_are_nilearns():
    from nilearn.maskers.nifti_spheres_masker import apply_mask_and_get_affinity

    from litbrain.datamodules.wave.atlas import grid_mask, seitzman_atlas, sphere_voxels

    m = grid_mask(8.0)
    coords = seitzman_atlas()["coords"][::10]
    mine = sphere_voxels(coords, m, 8.0)
    _, A = apply_mask_and_get_affinity([tuple(c) for c in coords], None, 8.0, True, mask_img=m)
    flat = np.flatnonzero(np.asarray(m.dataobj) != 0)
    A = A.tocsr()
    for i, v in enumerate(mine):
        np.testing.assert_array_equal(v, np.sort(flat[A.indices[A.indptr[i]:A.indptr[i + 1]]]))


def test_spontaneous_activity_is_shared_within_networks_along_the_loadings_the_truth_records(tiny_wave_raw,
                                                                                           tiny_wave_prepared):
    """Uninformative networks carry only spontaneous activity: their parcels' covariance (prepared series of all
    runs) follows the recorded spontaneous loadings; informative networks follow their stimulus loadings."""
    from litbrain.datamodules.wave.prepare import read_wave_manifest
    from litbrain.datamodules.wave.synthetic import load_wave_truth

    truth = load_wave_truth(tiny_wave_raw)
    runs = read_wave_manifest(tiny_wave_prepared)["subjects"]
    x = np.vstack([np.load(tiny_wave_prepared / s / f"{r}.npy").astype(np.float64) for s in runs for r in runs[s]])
    cov = np.cov(x.T)
    load = np.hstack([truth["loadings"], truth["spontaneous_loadings"]])
    pred, net = load @ load.T, truth["networks"].astype(str)

    def agreement(names):
        a, b = [], []
        for k in names:
            m = net == k
            iu = np.triu_indices(int(m.sum()), 1)
            a.append(cov[np.ix_(m, m)][iu])
            b.append(pred[np.ix_(m, m)][iu])
        return float(np.corrcoef(np.concatenate(a), np.concatenate(b))[0, 1])

    quiet = truth["spontaneous"]["uninformative_networks"]
    assert set(quiet) == set(net) - set(truth["network_dims"]) and truth["spontaneous"]["amplitude"] > 0
    assert agreement(quiet) > 0.1  # ~0.24 measured; 0 +- 0.02 were it independent per parcel (2630 pairs)
    assert agreement(truth["network_dims"]) > 0.5
