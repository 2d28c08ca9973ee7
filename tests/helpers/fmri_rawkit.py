"""Helpers for hand-made raw fMRI datasets with known values."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_raw(root: Path, subjects: dict, stimuli: list[tuple[str, int]], emb_shape=(4,), text_dim: int | None = 3,
              affine: np.ndarray | None = None) -> Path:
    """Write a raw dataset.

    ``subjects``: {sid: {"mask": 3D array, "sessions": {n: 4D array or path to copy},
    "trials": [(session, trial, stimulus_id), ...], "int16": bool (store unscaled int16),
    "slope": float | None}}.
    Embedding of stimulus i = i + arange(prod(emb_shape)) / 100 (so rows are recognisable).
    """
    import shutil

    import nibabel as nib

    root.mkdir(parents=True, exist_ok=True)
    aff = np.eye(4) if affine is None else affine
    (root / "images").mkdir(exist_ok=True)
    with open(root / "stimuli.tsv", "w") as f:
        f.write("stimulus_id\timage\tshared\n")
        for sid, sh in stimuli:
            f.write(f"{sid}\timages/{sid}.png\t{sh}\n")
    with open(root / "captions.tsv", "w") as f:
        f.write("stimulus_id\tcaption\n")
        for sid, _ in stimuli:
            f.write(f"{sid}\ta picture of {sid}\n")
    (root / "embeddings").mkdir(exist_ok=True)
    ids = np.array([s for s, _ in stimuli])
    n = len(ids)
    emb = (np.arange(n)[:, None] + np.arange(int(np.prod(emb_shape)))[None] / 100).reshape((n,) + tuple(emb_shape))
    np.savez(root / "embeddings" / "image.npz", ids=ids, embeddings=emb.astype(np.float32))
    if text_dim:
        np.savez(root / "embeddings" / "text.npz", ids=ids,
                 embeddings=(np.arange(n)[:, None] * 10 + np.arange(text_dim)).astype(np.float32))
    for sid, spec in subjects.items():
        d = root / sid
        d.mkdir(exist_ok=True)
        mask = spec["mask"]
        if isinstance(mask, (str, Path)):
            shutil.copy(mask, d / "mask.nii.gz")
        else:
            nib.save(nib.Nifti1Image(np.asarray(mask).astype(np.uint8), spec.get("affine", aff)), d / "mask.nii.gz")
        for sess, data in spec["sessions"].items():
            p = d / f"betas_session{sess:02d}.nii.gz"
            if isinstance(data, (str, Path)):
                shutil.copy(data, p if str(data).endswith(".gz") else p.with_suffix(""))  # keep .nii / .nii.gz
                continue
            if spec.get("int16", False):
                img = nib.Nifti1Image(np.asarray(data).astype(np.int16), spec.get("affine", aff))
                img.header.set_slope_inter(spec.get("slope"), 0.0 if spec.get("slope") else None)
            else:
                img = nib.Nifti1Image(np.asarray(data).astype(np.float32), spec.get("affine", aff))
            nib.save(img, p)
        with open(d / "trials.tsv", "w") as f:
            f.write("session\ttrial\tstimulus_id\n")
            for sess, trial, stim in spec["trials"]:
                f.write(f"{sess}\t{trial}\t{stim}\n")
    return root


def simple_spec(rng: np.random.Generator, n_sessions=3, n_trials=12, shape=(4, 5, 3), n_own=20, n_shared=4,
                int16=True, test_scale=1.0):
    """One subject: ``n_sessions`` sessions of ``n_trials`` volumes; stimuli s000.. (first n_shared shared,
    each shown once per session); float values ~N(5, 2) per voxel/session (x300 as int16 if ``int16``).
    ``test_scale`` multiplies the shared-stimulus volumes (extreme test trials)."""
    stimuli = [(f"s{i:03d}", 1 if i < n_shared else 0) for i in range(n_shared + n_own)]
    mask = np.zeros(shape, bool)
    mask[1:3, 1:4, :] = True
    mask[0, 0, 0] = True
    own = [f"s{i:03d}" for i in range(n_shared, n_shared + n_own)]
    trials, sessions, k = [], {}, 0
    for sess in range(1, n_sessions + 1):
        order = [f"s{i:03d}" for i in range(n_shared)]
        while len(order) < n_trials:
            order.append(own[k % n_own])
            k += 1
        order = [order[j] for j in rng.permutation(len(order))]
        vol = rng.normal(5.0 + sess, 2.0 + sess, size=shape + (n_trials,))
        for t, s in enumerate(order):
            if int(s[1:]) < n_shared:
                vol[..., t] *= test_scale
            trials.append((sess, t + 1, s))
        sessions[sess] = np.round(vol * 300) if int16 else vol
    return {"mask": mask, "sessions": sessions, "trials": trials, "int16": int16}, stimuli
