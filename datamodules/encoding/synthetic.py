"""Synthetic world for encoding models (image -> voxels) with detailed descriptions and a known forward model.

:func:`synthesize_encoding` writes the fMRI synthetic world of :func:`~litbrain.datamodules.synthesize_fmri`
(NIfTI betas, masks, trial tables with repeated shared test stimuli, images, captions, image
embeddings: the same raw layout ``prepare`` reads) and adds what an encoding model needs::

    <raw>/descriptions.tsv           stimulus_id, description   detailed one-sentence descriptions (the
                                     LLM-VEM stand-in for miniGPT-4), written beside captions.tsv
    <raw>/embeddings/description.npz ids, embeddings (N, description_dim)   their "text encoder" embeddings
    <raw>/sub-XX/mask.nii.gz         relabelled: 1, 2, 3 = three ROIs (slabs along the first grid axis)
    <raw>/sub-XX/roi_labels.tsv      label, name
    <raw>/encoding_truth.npz         description_W, and the parameters

The fMRI world's forward model is ``beta = offset + gain * (mixing @ z + noise * eps)``; z-scoring
per session removes offset and gain, so the oracle's prediction of a voxel's response to stimulus
``n`` is ``mixing[v] @ z_n`` (:func:`encoding_oracle`): the best achievable r under the noise, its
noise-normalised score is ~100. Image embeddings are a nonlinear function of ``z`` (ridge on them
falls short of the oracle); description embeddings ``normalize(description_W @ z)`` are linear in
the detailed stimulus parameters, as a long description spells them out.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Sequence

import numpy as np

from litbrain.errors import DataError
from ..io import synthetic_is_current
from litbrain.utils.io import atomic_dir

from ..fmri.synthetic import _COLOURS, _visual_params, load_truth, synthesize_fmri

__all__ = ["synthesize_encoding", "encoding_oracle", "describe"]

ROI_NAMES = ("V1", "V2", "V3")


def describe(z: np.ndarray) -> list[str]:
    """Detailed descriptions of the stimuli with latent features ``z`` (n, L): every rendered parameter in words."""
    p = _visual_params(np.asarray(z, dtype=np.float64))
    out = []
    for i in range(z.shape[0]):
        colour = _COLOURS[int(np.argmax(p["blob"][i]))]
        r, g, b = p["blob"][i]
        br, bg, bb = p["bg"][i]
        out.append(
            f"a {colour} disc (rgb {r:.2f} {g:.2f} {b:.2f}) of radius {p['radius'][i]:.2f} centred at "
            f"x={p['cx'][i]:+.2f}, y={p['cy'][i]:+.2f}, in front of a grating at {math.degrees(p['theta'][i]):.0f} "
            f"degrees with {p['freq'][i]:.1f} cycles and contrast {p['contrast'][i]:.2f}, on a background of "
            f"rgb {br:.2f} {bg:.2f} {bb:.2f}")
    return out


def _relabel_mask(sub_dir: Path) -> None:
    """Split the subject's ROI into three slabs along the first axis (labels 1..3) and name them."""
    import nibabel as nib

    img = nib.load(sub_dir / "mask.nii.gz")
    mask = np.asarray(img.dataobj) != 0
    ijk = np.argwhere(mask)
    cuts = np.quantile(ijk[:, 0], [1 / 3, 2 / 3])
    lab = np.zeros(mask.shape, dtype=np.uint8)
    lab[tuple(ijk.T)] = 1 + np.digitize(ijk[:, 0], cuts)
    nib.save(nib.Nifti1Image(lab, img.affine), sub_dir / "mask.nii.gz")
    with open(sub_dir / "roi_labels.tsv", "w") as f:
        f.write("label\tname\n" + "".join(f"{k + 1}\t{n}\n" for k, n in enumerate(ROI_NAMES)))


def synthesize_encoding(
    out_dir: str | os.PathLike,
    n_subjects: int = 2,
    n_stimuli: int = 2100,
    n_shared: int = 100,
    repeats: int = 3,
    trials_per_session: int = 250,
    n_voxels: int | Sequence[int] = 600,
    latent_dim: int = 8,
    image_embedding_dim: int = 64,
    description_dim: int = 32,
    noise: float = 1.0,
    image_size: int = 32,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic encoding dataset (fMRI world + descriptions + ROI labels); return its path.

    Args:
        out_dir: Destination (built beside it, then renamed into place).
        n_subjects: Subjects ``sub-01`` ...; each has its own grid, mask, ROIs and forward model.
        n_stimuli: Stimuli, shared test stimuli included; the others are split between subjects.
        n_shared: Stimuli every subject sees ``repeats`` times: the test set and its noise ceiling.
        repeats: Presentations of each shared stimulus (1 = no noise ceiling can be computed).
        trials_per_session: Trials per session file.
        n_voxels: Approximate ROI voxels (one int, growing 15% per subject, or one per subject).
        latent_dim: Dimension of the latent stimulus features ``z``.
        image_embedding_dim: Width of the cached image features (a nonlinear function of ``z``).
        description_dim: Width of the description embeddings (linear in ``z``, normalised).
        noise: Single-trial noise s.d. relative to a signal of about unit variance.
        image_size: Side of the PNG stimuli.
        seed: Random seed; same arguments = identical files.
        overwrite: Replace ``out_dir`` if it holds another dataset.
    """
    out = Path(out_dir)
    params = {k: v for k, v in locals().items() if k not in ("out_dir", "overwrite", "out")}
    params = json.loads(json.dumps(params, default=list))
    if synthetic_is_current(out, params, "encoding.json", overwrite):
        return out
    if description_dim < 1:
        raise DataError(f"synthesize_encoding: description_dim={description_dim}; fix: a positive width")
    with atomic_dir(out, overwrite=overwrite) as tmp:
        world = synthesize_fmri(tmp / "_fmri", n_subjects=n_subjects, n_stimuli=n_stimuli, n_shared=n_shared,
                                repeats=repeats, trials_per_session=trials_per_session, n_voxels=n_voxels,
                                latent_dim=latent_dim, image_embedding_shape=(image_embedding_dim,),
                                text_embedding_dim=None, noise=noise, image_size=image_size, seed=seed)
        for p in world.iterdir():
            os.replace(p, tmp / p.name)
        shutil.rmtree(world)
        truth = load_truth(tmp)
        z, ids = truth["z"], truth["ids"]
        rng = np.random.default_rng([int(seed), 7])
        W = rng.standard_normal((int(description_dim), z.shape[1])) / math.sqrt(z.shape[1])
        emb = z @ W.T
        emb /= np.linalg.norm(emb, axis=1, keepdims=True) + 1e-12
        np.savez(tmp / "embeddings" / "description.npz", ids=ids, embeddings=emb.astype(np.float32))
        with open(tmp / "descriptions.tsv", "w") as f:
            f.write("stimulus_id\tdescription\n")
            for sid, text in zip(ids, describe(z)):
                f.write(f"{sid}\t{text}\n")
        for sub in truth["subjects"]:
            _relabel_mask(tmp / str(sub))
        np.savez(tmp / "encoding_truth.npz", description_W=W)
        (tmp / "encoding.json").write_text(json.dumps({"generator": "litbrain.datamodules.synthesize_encoding",
                                                       "parameters": params}, indent=1))
    return out


def encoding_oracle(raw_dir: str | os.PathLike, prepared_dir: str | os.PathLike, subject: str,
                    split: str = "test") -> np.ndarray:
    """The true forward model's responses ``mixing @ z`` (rows of the prepared split, prepared voxel order)."""
    raw, prep = Path(raw_dir), Path(prepared_dir)
    truth = load_truth(raw)
    if f"{subject}.mixing" not in truth:
        raise DataError(f"{raw / 'truth.npz'}: no subject {subject!r} (available: {list(truth['subjects'])}); "
                        f"fix: pick one of those")
    sdir = prep / subject
    stim_file = sdir / f"{split}_stimulus.npy"
    if not stim_file.is_file():
        raise DataError(f"{stim_file}: not found; fix: prepare {raw} into {prep} first")
    if not np.array_equal(np.load(sdir / "voxel_ijk.npy"), truth[f"{subject}.voxel_ijk"]):
        raise DataError(f"{sdir / 'voxel_ijk.npy'}: voxels differ from the synthetic mask; fix: prepare with the "
                        f"raw mask")
    import pandas as pd

    prep_ids = pd.read_csv(prep / "stimuli.tsv", sep="\t", dtype={"stimulus_id": str})["stimulus_id"].to_numpy()
    index = {s: i for i, s in enumerate(truth["ids"].astype(str))}
    rows = np.array([index[s] for s in prep_ids[np.load(stim_file)]])
    return (truth["z"][rows] @ truth[f"{subject}.mixing"].T.astype(np.float64)).astype(np.float32)
