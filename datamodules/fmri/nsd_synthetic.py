"""A miniature Natural Scenes Dataset in NSD's own formats, with a known stimulus for every trial.

:func:`synthesize_nsd` writes the files :func:`~litbrain.datamodules.fmri.nsd.prepare_nsd` reads,
with the libraries NSD's users read them with: ``nsd_expdesign.mat`` through ``scipy.io.savemat``
(MATLAB v5, doubles, 1-based), ``nsd_stim_info_merged.csv`` through pandas (the unnamed index
column first, as NSD's), the betas, ROIs and ncsnr through nibabel (int16 x300, no scaling;
ROI -1 outside the brain), the ``.hdf5`` betas variant and the ``imgBrick`` through h5py, and
COCO's ``captions_{train,val}2017.json``. The structure is NSD's, the sizes are small:
``n_shared`` shared images first in every subject's ``subjectim`` row (NSD: 1000), each subject's
own images disjoint from the others', every image shown 3 times along one ``masterordering``
of ``3 * n_subject_images`` trials (NSD: 30000 = 40 sessions x 750).

The schedule is drawn forwards -- subjectim and masterordering first, then each trial's image --
and every trial is tagged so a reader's mapping can be checked without redoing its arithmetic:

* voxel (0, 0, 0) of each volume (outside the brain: ROI -1) holds the trial's nsdId (0-based),
  voxel (0, 0, 1) its NSD trial number ``g`` (1-based);
* pixel (0, 0) of each brick row holds its nsdId as (nsdId // 256, nsdId % 256, 255);
* every COCO caption of an image says ``coco <cocoId>``;
* nsdId 0 is a shared image and nsdId ``n_images - 1`` subject 1's last own image, so the first
  and last brick rows are among those subject 1 sees.

Responses are a receptive-field model of the image itself: voxel ``v`` has a Gaussian receptive
field and colour weights over a 16 x 16 version of the image, giving ``s_v(image)`` (unit
variance over the subject's images); ``beta = offset[s,v] + gain[s,v] * (a_v * s_v + noise * eps)``, stored
as int16 ``round(300 * beta)``, with ``a_v`` larger inside nsdgeneral. NSD's noise-ceiling SNR
is then known: ``ncsnr_v = a_v / noise`` (written as ``ncsnr.nii.gz``). ``litbrain_truth.npz``
(beside the NSD folders, not an NSD file) holds each subject's trial table (session, trial,
nsdId, g) and ``a``/``ncsnr``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from litbrain.errors import DataError
from litbrain.utils.io import atomic_dir

from .nsd import BRICK, COCO_DIR, EXPDESIGN, N_NSD_SUBJECTS, STIM_INFO, betas_dir, roi_path, session_file

__all__ = ["synthesize_nsd", "load_nsd_truth", "TRUTH_FILE"]

TRUTH_FILE = "litbrain_truth.npz"
_REPEATS = 3  # NSD shows every image 3 times
_RF_SIDE = 16  # receptive fields live on a 16 x 16 version of each image
_COLOURS = ("red", "green", "blue")


def _brain_and_rois(shape: tuple[int, int, int], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """NSD-style labels: nsdgeneral (-1 outside an ellipsoid brain, 0 inside, 1 = a posterior ROI) and a
    3-label prf-visualrois-like file (1..3 inside the ROI by depth, -1 outside the brain)."""
    ii, jj, kk = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    c = (np.array(shape) - 1) / 2.0
    r = (np.array(shape) - 2) / 2.0  # leaves corner (0, 0, *) outside the brain for the tag voxels
    brain = ((ii - c[0]) / r[0]) ** 2 + ((jj - c[1]) / r[1]) ** 2 + ((kk - c[2]) / r[2]) ** 2 <= 1.0
    roi = brain & (jj < c[1] + rng.uniform(-1.0, 1.0))  # the back half, its edge subject-specific
    general = np.where(brain, 0, -1).astype(np.int16)
    general[roi] = 1
    visual = np.where(brain, 0, -1).astype(np.int16)
    depth = np.minimum(2, (kk * 3) // shape[2])
    visual[roi] = (1 + depth[roi]).astype(np.int16)
    return general, visual


def _images(first: int, z: np.ndarray, size: int) -> np.ndarray:
    """Images of nsdIds first.. (len(z), size, size, 3) uint8: blobs and gratings (the synthetic fMRI
    world's renderer), pixel (0, 0) tagged with the nsdId."""
    from .synthetic import _render

    out = _render(z, size)
    ids = np.arange(first, first + len(z))
    out[:, 0, 0, 0] = ids // 256
    out[:, 0, 0, 1] = ids % 256
    out[:, 0, 0, 2] = 255
    return out


def _rf_features(images: np.ndarray) -> np.ndarray:
    """(n, 16*16*3) float: each image area-averaged to 16 x 16, centred."""
    from PIL import Image

    small = np.stack([np.asarray(Image.fromarray(im).resize((_RF_SIDE, _RF_SIDE), Image.Resampling.BOX))
                      for im in images]).astype(np.float64) / 255.0
    return small.reshape(len(images), -1) - 0.5


def _receptive_fields(n_vox: int, rng: np.random.Generator) -> np.ndarray:
    """(16*16*3, n_vox): a Gaussian receptive field times random colour weights per voxel."""
    lin = np.linspace(-1, 1, _RF_SIDE)
    yy, xx = np.meshgrid(lin, lin, indexing="ij")
    cx, cy = rng.uniform(-0.7, 0.7, n_vox), rng.uniform(-0.7, 0.7, n_vox)
    sig = rng.uniform(0.2, 0.6, n_vox)
    g = np.exp(-((xx[..., None] - cx) ** 2 + (yy[..., None] - cy) ** 2) / (2 * sig ** 2))  # (16, 16, V)
    g /= g.sum((0, 1), keepdims=True)
    w = rng.standard_normal((3, n_vox))
    return (g[:, :, None, :] * w[None, None]).reshape(-1, n_vox)


def synthesize_nsd(
    out_dir: str | os.PathLike,
    n_subjects: int = 2,
    sessions: int | Sequence[int] = 3,
    trials_per_session: int = 30,
    n_shared: int = 6,
    grid: Sequence[int] = (10, 12, 9),
    image_size: int = 32,
    noise: float = 1.0,
    betas_format: Literal["nifti", "hdf5", "both"] = "both",
    captions_per_image: int = 5,
    seed: int = 0,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Write a miniature NSD tree (NSD's files and formats) with a known stimulus for every trial.

    Args:
        out_dir: The NSD root to create (nsddata/, nsddata_betas/, nsddata_stimuli/ + litbrain_truth.npz).
        n_subjects: Subjects with betas (subj01 ...); subjectim always has NSD's 8 rows.
        sessions: Sessions of the design (the longest subject's count), or one count per subject
            (NSD: 40, 40, 32, 30, 40, 32, 40, 30); the design has ``max(sessions)`` sessions.
        trials_per_session: Trials per session file (NSD: 750); ``max(sessions) * trials_per_session``
            must be a multiple of 3 (every image is shown 3 times).
        n_shared: Images every subject sees (NSD's shared1000); fewer than the images per subject.
        grid: Volume grid (X, Y, Z) of betas, ROIs and ncsnr.
        image_size: Side of the brick's images in pixels (NSD: 425).
        noise: Measurement noise relative to a unit-variance signal (ncsnr = a_v / noise).
        betas_format: Session files to write: ``nifti`` (.nii.gz), ``hdf5`` or ``both`` (NSD ships both).
        captions_per_image: COCO captions per image (COCO: 5).
        seed: Random seed; the same arguments give identical files.
        progress: A progress bar on stderr while writing sessions.
        overwrite: Replace ``out_dir`` if it exists (same arguments: returns at once).

    Returns:
        The NSD root.
    """
    out = Path(out_dir)
    sess = [int(sessions)] * int(n_subjects) if isinstance(sessions, int) else [int(s) for s in sessions]
    params = {"n_subjects": int(n_subjects), "sessions": sess, "trials_per_session": int(trials_per_session),
              "n_shared": int(n_shared), "grid": [int(g) for g in grid], "image_size": int(image_size),
              "noise": float(noise), "betas_format": betas_format, "captions_per_image": int(captions_per_image),
              "seed": int(seed)}
    if out.exists() and not overwrite:
        try:
            if json.loads((out / "litbrain_fixture.json").read_text()).get("parameters") == params:
                return out
        except (OSError, ValueError):
            pass
        raise DataError(f"{out}: already exists with other parameters; fix: pass overwrite=True or another out_dir")
    if not 1 <= n_subjects <= N_NSD_SUBJECTS or len(sess) != n_subjects or min(sess) < 1:
        raise DataError(f"synthesize_nsd: n_subjects={n_subjects} (1-8) with sessions={sessions} (one count >= 1 "
                        f"per subject); fix: correct them")
    n_trials = max(sess) * int(trials_per_session)
    if n_trials % _REPEATS:
        raise DataError(f"synthesize_nsd: {max(sess)} sessions x {trials_per_session} trials is no multiple of 3; "
                        f"fix: change trials_per_session")
    n_per = n_trials // _REPEATS
    if not 1 <= n_shared < n_per:
        raise DataError(f"synthesize_nsd: n_shared={n_shared} must be in [1, {n_per}) (images per subject); fix: "
                        f"lower it")
    if betas_format not in ("nifti", "hdf5", "both"):
        raise DataError(f"synthesize_nsd: betas_format={betas_format!r}; fix: nifti, hdf5 or both")
    shape = tuple(int(g) for g in grid)
    if len(shape) != 3 or min(shape) < 4:
        raise DataError(f"synthesize_nsd: grid={list(grid)} must be 3 sides >= 4; fix: e.g. [10, 12, 9]")
    n_own = n_per - n_shared
    n_images = n_shared + N_NSD_SUBJECTS * n_own  # NSD: 1000 + 8 x 9000 = 73000
    if n_images > 32767:
        raise DataError(f"synthesize_nsd: {n_images} images do not fit the int16 tag voxel; fix: fewer trials")

    ss = np.random.SeedSequence(int(seed))
    r_design, r_img, r_coco, *r_sub = [np.random.default_rng(s) for s in ss.spawn(3 + N_NSD_SUBJECTS)]

    # ---- design: shared images, then each subject's own block; nsdId 0 shared, n_images-1 subj01's last
    others = r_design.permutation(np.arange(1, n_images - 1))
    shared = np.sort(np.concatenate([[0], others[:n_shared - 1]]))
    pool = others[n_shared - 1:]
    own = [np.concatenate([pool[:n_own - 1], [n_images - 1]])]
    own += [pool[n_own - 1 + i * n_own: n_own - 1 + (i + 1) * n_own] for i in range(N_NSD_SUBJECTS - 1)]
    shared_order = r_design.permutation(shared)
    subjectim0 = np.stack([np.concatenate([shared_order, r_design.permutation(o)]) for o in own])  # 0-based nsdId
    master0 = r_design.permutation(np.repeat(np.arange(n_per), _REPEATS))  # 0-based subject-image index

    # ---- stimulus info: cocoIds, splits
    coco_ids = r_coco.choice(np.arange(1, 600_000), size=n_images, replace=False)
    coco_split = np.where(r_coco.random(n_images) < 0.85, "train2017", "val2017")

    with atomic_dir(out, overwrite=overwrite) as tmp:
        import h5py
        import nibabel as nib
        import pandas as pd
        from scipy.io import savemat

        (tmp / EXPDESIGN).parent.mkdir(parents=True)
        savemat(tmp / EXPDESIGN, {
            "masterordering": (master0 + 1)[None].astype(np.float64),  # MATLAB doubles, 1-based
            "subjectim": (subjectim0 + 1).astype(np.float64),
            "sharedix": (shared + 1)[None].astype(np.float64),
            "basiccnt": np.zeros((3, max(sess)), dtype=np.float64),  # present in NSD's file; unused here
        }, format="5", do_compression=True)

        # trial tables, per subject, in the forward direction: g -> subject image -> nsdId
        tables = {}
        for k in range(1, n_subjects + 1):
            g = np.arange(1, sess[k - 1] * int(trials_per_session) + 1)
            nsd = subjectim0[k - 1][master0[g - 1]]
            tables[k] = {"session": (g - 1) // int(trials_per_session) + 1,
                         "trial": (g - 1) % int(trials_per_session) + 1, "nsd_id": nsd, "g": g}

        cols = {"cocoId": coco_ids, "cocoSplit": coco_split, "cropBox": ["(0, 0, 0.1, 0.1)"] * n_images,
                "loss": np.zeros(n_images), "nsdId": np.arange(n_images), "flagged": False, "BOLD5000": False,
                "shared1000": np.isin(np.arange(n_images), shared)}
        for k in range(1, N_NSD_SUBJECTS + 1):
            cols[f"subject{k}"] = np.isin(np.arange(n_images), subjectim0[k - 1]).astype(int)
        for k in range(1, N_NSD_SUBJECTS + 1):
            reps = np.zeros((n_images, _REPEATS), dtype=np.int64)
            if k in tables:
                seen = np.zeros(n_images, dtype=np.int64)
                for n, g in zip(tables[k]["nsd_id"].tolist(), tables[k]["g"].tolist()):
                    reps[n, seen[n]] = g
                    seen[n] += 1
            for r in range(_REPEATS):
                cols[f"subject{k}_rep{r}"] = reps[:, r]
        pd.DataFrame(cols).to_csv(tmp / STIM_INFO)  # index column first, unnamed, as NSD's

        # ---- brick (row = nsdId), written a block of rows at a time, and each image's 16 x 16 features
        side = int(image_size)
        (tmp / BRICK).parent.mkdir(parents=True)
        feats = np.empty((n_images, _RF_SIDE * _RF_SIDE * 3), dtype=np.float32)
        latent = r_img.standard_normal((n_images, 12))
        block = max(1, (32 << 20) // (side * side * 3 * 8))  # the renderer works in float64
        with h5py.File(tmp / BRICK, "w") as f:
            ds = f.create_dataset("imgBrick", shape=(n_images, side, side, 3), dtype=np.uint8,
                                  chunks=(1, side, side, 3))
            for a in range(0, n_images, block):
                imgs = _images(a, latent[a:a + block], side)
                ds[a:a + len(imgs)] = imgs
                feats[a:a + len(imgs)] = _rf_features(imgs)

        # ---- COCO captions (plus images NSD does not use, as the real files have)
        coco = tmp / COCO_DIR
        coco.mkdir(parents=True)
        extra = r_coco.choice(np.arange(600_000, 700_000), size=max(3, n_images // 10), replace=False)
        ann_id = 1
        for split in ("train2017", "val2017"):
            mine = coco_ids[coco_split == split].tolist() + [int(e) for e in extra if (e % 2 == 0) == (split ==
                                                                                                      "train2017")]
            anns = []
            for cid in mine:
                colour = _COLOURS[int(cid) % 3]
                for j in range(int(captions_per_image)):
                    anns.append({"image_id": int(cid), "id": ann_id,
                                 "caption": f"A {colour} scene, coco {int(cid)}, caption {j + 1}.\n"})
                    ann_id += 1
            doc = {"info": {"description": "litbrain miniature COCO captions", "version": "1.0"}, "licenses": [],
                   "images": [{"id": int(c), "file_name": f"{int(c):012d}.jpg", "height": int(image_size),
                               "width": int(image_size)} for c in mine], "annotations": anns}
            (coco / f"captions_{split}.json").write_text(json.dumps(doc))

        # ---- subjects: ROIs, ncsnr, betas session by session
        truth: dict[str, np.ndarray] = {"n_images": np.array(n_images), "shared": shared,
                                        "subjectim0": subjectim0, "master0": master0}
        voxel = np.diag([1.8, 1.8, 1.8, 1.0])
        voxel[:3, 3] = -0.9 * (np.array(shape) - 1)
        from tqdm.auto import tqdm

        bar = tqdm(total=sum(sess), desc="nsd fixture sessions", unit="session", disable=not progress, leave=False)
        for k in range(1, n_subjects + 1):
            rng = r_sub[k - 1]
            general, visual = _brain_and_rois(shape, rng)
            rdir = tmp / roi_path(k, roi="nsdgeneral")
            rdir.parent.mkdir(parents=True)
            nib.save(nib.Nifti1Image(general, voxel), rdir)
            nib.save(nib.Nifti1Image(visual, voxel), rdir.parent / "prf-visualrois.nii.gz")
            brain = general.ravel() >= 0
            V = int(brain.sum())
            amp = np.where(general.ravel()[brain] == 1, rng.uniform(0.6, 1.6, V), 0.1)
            rf = _receptive_fields(V, rng).astype(np.float32)
            seen = feats[subjectim0[k - 1]] @ rf  # unit variance over the subject's images
            mu, sd = seen.mean(0), seen.std(0) + 1e-6
            del seen
            ncsnr = np.zeros(general.size, dtype=np.float32)
            ncsnr[brain] = amp / float(noise)
            bdir = tmp / betas_dir(k)
            bdir.mkdir(parents=True)
            nib.save(nib.Nifti1Image(ncsnr.reshape(shape), voxel), bdir / "ncsnr.nii.gz")
            t = tables[k]
            base = rng.normal(0.0, 1.0, V)
            for s in range(1, sess[k - 1] + 1):
                rows = t["session"] == s
                nsd, g = t["nsd_id"][rows], t["g"][rows]
                offset = base + rng.normal(0.0, 0.5) + 0.2 * rng.standard_normal(V)
                gain = np.exp(rng.normal(0.0, 0.2) + 0.1 * rng.standard_normal(V))
                sig = (feats[nsd] @ rf - mu) / sd
                beta = offset + gain * (amp * sig + float(noise) * rng.standard_normal((nsd.size, V)))
                vols = np.zeros((nsd.size, general.size), dtype=np.int16)
                vols[:, brain] = np.clip(np.round(300.0 * beta), -32768, 32767)
                vols = vols.reshape((nsd.size,) + shape)
                vols[:, 0, 0, 0] = nsd  # tags, outside the brain
                vols[:, 0, 0, 1] = g
                if betas_format in ("nifti", "both"):
                    img = nib.Nifti1Image(np.ascontiguousarray(vols.transpose(1, 2, 3, 0)), voxel)
                    img.header.set_slope_inter(np.nan, np.nan)  # NSD: raw int16 x300, no scaling stored
                    nib.save(img, bdir / session_file(s, "nifti"))
                if betas_format in ("hdf5", "both"):
                    with h5py.File(bdir / session_file(s, "hdf5"), "w") as f:  # h5py sees (T, Z, Y, X)
                        f.create_dataset("betas", data=vols.transpose(0, 3, 2, 1))
                bar.update(1)
            for key, val in t.items():
                truth[f"subj{k:02d}.{key}"] = val
            truth[f"subj{k:02d}.ncsnr"] = ncsnr.reshape(shape)
            truth[f"subj{k:02d}.amplitude"] = amp
        bar.close()
        np.savez(tmp / TRUTH_FILE, **truth)
        (tmp / "litbrain_fixture.json").write_text(json.dumps(
            {"generator": "litbrain.datamodules.fmri.nsd_synthetic.synthesize_nsd", "parameters": params,
             "n_images": n_images, "images_per_subject": n_per, "n_trials_design": n_trials}, indent=1))
    return out


def load_nsd_truth(nsd_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """The fixture's ``litbrain_truth.npz``: per subject ``subjXX.{session, trial, nsd_id, g, ncsnr, amplitude}``."""
    path = Path(nsd_dir) / TRUTH_FILE
    if not path.is_file():
        raise DataError(f"{path}: not found; fix: the truth exists only for trees written by synthesize_nsd")
    with np.load(path, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}
