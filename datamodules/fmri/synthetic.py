"""Synthetic NSD-like fMRI data with known ground truth, and the oracle decoder for it.

:func:`synthesize_fmri` writes a raw dataset in exactly the on-disk format that
:func:`litbrain.datamodules.prepare_fmri` reads (see :mod:`.prepare`), plus ``truth.npz``.

Generative model (all subjects share the latent stimulus features ``z``)::

    z_n            ~ N(0, I_L)                                   latent features of stimulus n
    image_n        = render(z_n)                                 blob colour/position/size, grating
    caption_n      = words from quantised z_n (a few phrasings)
    image_emb_n    = normalize(W2 @ gelu(W1 @ z_n + b1))          nonlinear: ridge < MLP < oracle
    text_emb_n     = normalize(Wt @ onehot(quantised z_n))        a function of the coarse part of z
    beta_{s,t}     = offset_{s,sess} + gain_{s,sess} * (A_s @ z_{n(t)} + noise * eps_t)
    stored         = int16(round(300 * beta))                    NSD's x300 convention, no scl_slope

``A_s`` (voxels x L) is subject specific: each latent dimension is a Gaussian-smoothed random
field over the subject's grid, scaled by a smooth "informativeness" map. Grids, ellipsoid ROI
masks and so voxel counts differ between subjects. ``offset``/``gain`` vary per session and
voxel, so per-session z-scoring matters. Volumes are generated and written session by session
(and in trial chunks within a session), so NSD-sized datasets never sit in RAM.

``truth.npz`` is self-describing: for each subject ``<sub>.voxel_ijk`` (V,3) gives the voxel
coordinates (mask order = C order of the grid, which is also prepare's voxel order), with
``<sub>.mixing`` (V,L), ``<sub>.offset`` / ``<sub>.gain`` (sessions,V) and
``<sub>.sessions`` (the session numbers) aligned to it.

:func:`synthetic_oracle` knows all of that and returns the Bayes posterior-mean decoder's image
embeddings for the rows of a prepared split.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from litbrain.errors import DataError
from ..io import synthetic_is_current
from litbrain.utils.io import atomic_dir

__all__ = ["ATTRIBUTES", "load_truth", "stimulus_attributes", "synthesize_fmri", "synthetic_oracle", "true_image_embedding",
           "true_text_embedding"]

TRUTH_FORMAT = "litbrain-synthetic-fmri/1"

_COLOURS = ("red", "green", "blue")
_HPOS = ("left", "center", "right")
_VPOS = ("top", "middle", "bottom")
_SIZES = ("small", "large")
_STRIPES = ("vertical", "rising", "horizontal", "falling")
_BACKGROUNDS = ("dark", "light")
# The generator's categorical attributes (what a caption says and a world probe is trained to read), with their values.
ATTRIBUTES: dict[str, tuple[str, ...]] = {"colour": _COLOURS, "hpos": _HPOS, "vpos": _VPOS, "size": _SIZES,
                                          "stripes": _STRIPES, "background": _BACKGROUNDS}
_N_COARSE = len(_COLOURS) + len(_HPOS) + len(_VPOS) + len(_SIZES) + len(_STRIPES) + len(_BACKGROUNDS)


# ----------------------------------------------------------------------------- stimulus features
def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def _gelu(x: np.ndarray) -> np.ndarray:
    from scipy.special import erf

    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _visual_params(z: np.ndarray) -> dict[str, np.ndarray]:
    """Image parameters from latent features (n, L); latent dims are used modulo L."""
    L = z.shape[1]
    d = lambda i: z[:, i % L]  # noqa: E731
    return {
        "bg": _sigmoid(np.stack([d(0), d(1), d(2)], 1)),
        "cx": 0.6 * np.tanh(d(3)),
        "cy": 0.6 * np.tanh(d(4)),
        "radius": 0.18 + 0.25 * _sigmoid(d(5)),
        "size_logit": d(5),
        "blob": _sigmoid(2.0 * np.stack([d(6), d(7), d(8)], 1)),
        "theta": np.pi * _sigmoid(d(9)),
        "freq": 2.0 + 4.0 * _sigmoid(d(10)),
        "contrast": 0.1 + 0.25 * _sigmoid(d(11)),
    }


def _coarse_codes(z: np.ndarray) -> dict[str, np.ndarray]:
    """Quantised (categorical) stimulus features, the words captions are made of."""
    p = _visual_params(z)
    stripes = np.floor((p["theta"] / np.pi) * 4.0 + 0.5).astype(int) % 4
    return {
        "colour": np.argmax(p["blob"], axis=1),
        "hpos": np.digitize(p["cx"], [-0.2, 0.2]),
        "vpos": np.digitize(p["cy"], [-0.2, 0.2]),
        "size": (p["size_logit"] > 0).astype(int),
        "stripes": stripes,
        "background": (p["bg"].mean(1) > 0.5).astype(int),
    }


def _coarse_onehot(z: np.ndarray) -> np.ndarray:
    c = _coarse_codes(z)
    parts = []
    for key, n in (("colour", 3), ("hpos", 3), ("vpos", 3), ("size", 2), ("stripes", 4), ("background", 2)):
        parts.append(np.eye(n, dtype=np.float64)[c[key]])
    return np.concatenate(parts, axis=1)


def _render(z: np.ndarray, size: int) -> np.ndarray:
    """Render images (n, size, size, 3) uint8 deterministically from z."""
    p = _visual_params(z)
    lin = np.linspace(-1.0, 1.0, size)
    yy, xx = np.meshgrid(lin, lin, indexing="ij")  # row = y (top = -1), col = x
    xx, yy = xx[None], yy[None]
    th, fr = p["theta"][:, None, None], p["freq"][:, None, None]
    grating = p["contrast"][:, None, None] * np.sin(np.pi * fr * (xx * np.cos(th) + yy * np.sin(th)))
    img = p["bg"][:, None, None, :] + grating[..., None]
    dist = np.sqrt((xx - p["cx"][:, None, None]) ** 2 + (yy - p["cy"][:, None, None]) ** 2)
    m = _sigmoid((p["radius"][:, None, None] - dist) / 0.03)[..., None]
    img = (1.0 - m) * img + m * p["blob"][:, None, None, :]
    return np.clip(np.round(img * 255.0), 0, 255).astype(np.uint8)


def _captions(z: np.ndarray, rng: np.random.Generator, per_stimulus: int) -> list[list[str]]:
    c = _coarse_codes(z)
    templates = (
        "a {size} {colour} blob at the {vpos} {hpos} with {stripes} stripes",
        "{stripes} stripes on a {bg} background behind a {size} {colour} circle",
        "a {colour} disc, {size}, placed {vpos} {hpos} on a {bg} striped backdrop",
        "{bg} picture of {stripes} lines and a {colour} spot in the {vpos} {hpos}",
    )
    out = []
    for i in range(z.shape[0]):
        words = {
            "colour": _COLOURS[c["colour"][i]], "hpos": _HPOS[c["hpos"][i]], "vpos": _VPOS[c["vpos"][i]],
            "size": _SIZES[c["size"][i]], "stripes": _STRIPES[c["stripes"][i]], "bg": _BACKGROUNDS[c["background"][i]],
        }
        picks = rng.choice(len(templates), size=min(per_stimulus, len(templates)), replace=False)
        out.append([templates[k].format(**words) for k in picks])
    return out


def true_image_embedding(z: np.ndarray, truth: dict) -> np.ndarray:
    """The ground-truth image embedding function: normalize(W2 @ gelu(W1 @ z + b1)), (n, *shape)."""
    h = _gelu(np.asarray(z, np.float64) @ truth["image_W1"].T + truth["image_b1"])
    e = h @ truth["image_W2"].T
    shape = tuple(int(s) for s in truth["image_embedding_shape"])
    e = e.reshape((z.shape[0],) + shape)
    e /= np.linalg.norm(e, axis=-1, keepdims=True) + 1e-12
    return e.astype(np.float32)


def true_text_embedding(z: np.ndarray, truth: dict) -> np.ndarray:
    """The ground-truth text embedding: normalize(Wt @ onehot(quantised z)), (n, D)."""
    e = _coarse_onehot(np.asarray(z, np.float64)) @ truth["text_W"].T
    e /= np.linalg.norm(e, axis=-1, keepdims=True) + 1e-12
    return e.astype(np.float32)


# ----------------------------------------------------------------------------- writers
def _nifti_header(shape: tuple[int, ...], dtype: np.dtype, affine: np.ndarray):
    import nibabel as nib

    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    hdr.set_xyzt_units("mm", "sec")
    hdr.set_data_offset(352)
    return hdr


class _StreamingNifti:
    """Write a 4D NIfTI-1 (.nii.gz) volume block by volume block (NIfTI is Fortran ordered, so
    consecutive volumes are consecutive bytes)."""

    def __init__(self, path: Path, shape: tuple[int, int, int, int], dtype, affine: np.ndarray):
        self.dtype = np.dtype(dtype)
        hdr = _nifti_header(shape, self.dtype, affine)
        hdr.set_slope_inter(np.nan, np.nan)  # NSD: raw ints, no scaling stored
        self._f = gzip.open(path, "wb", compresslevel=1)
        hdr.write_to(self._f)
        self._f.write(b"\0" * (352 - self._f.tell()))
        self.shape = shape
        self.written = 0

    def write(self, vols: np.ndarray) -> None:
        """``vols``: (t, X, Y, Z) in the target dtype."""
        self._f.write(np.ascontiguousarray(vols.astype(self.dtype, copy=False).transpose(0, 3, 2, 1)).tobytes())
        self.written += vols.shape[0]

    def close(self) -> None:
        self._f.close()
        if self.written != self.shape[3]:
            raise RuntimeError(f"wrote {self.written} volumes, declared {self.shape[3]}")


def _write_npz_streaming(path: Path, small: dict[str, np.ndarray], big_name: str, big_shape: tuple[int, ...],
                         blocks: Iterator[np.ndarray]) -> None:
    """np.savez-compatible archive whose big array is written in row blocks."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for name, arr in small.items():
            with zf.open(f"{name}.npy", "w", force_zip64=True) as f:
                np.lib.format.write_array(f, np.asarray(arr), allow_pickle=False)
        with zf.open(f"{big_name}.npy", "w", force_zip64=True) as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)), "fortran_order": False,
                    "shape": tuple(big_shape)})
            n = 0
            for b in blocks:
                f.write(np.ascontiguousarray(b, dtype=np.float32).tobytes())
                n += b.shape[0]
            assert n == big_shape[0]


def _tsv_field(s: str) -> str:
    return s.replace("\t", " ").replace("\n", " ")


# ----------------------------------------------------------------------------- geometry
def _subject_geometry(n_vox: int, rng: np.random.Generator) -> tuple[tuple[int, int, int], np.ndarray]:
    """Grid shape and ellipsoid mask with about ``n_vox`` voxels, subject-specific aspect."""
    aspect = np.exp(rng.uniform(-0.25, 0.25, size=3))
    aspect /= np.prod(aspect) ** (1 / 3)
    base = (3.0 * n_vox / (4.0 * np.pi)) ** (1 / 3)
    radii = base * aspect
    margin = rng.integers(2, 5, size=3)
    shape = tuple(int(math.ceil(2 * r)) + 2 * int(m) + 1 for r, m in zip(radii, margin))
    centre = (np.array(shape) - 1) / 2.0 + rng.uniform(-0.5, 0.5, size=3)
    ii, jj, kk = np.meshgrid(*[np.arange(s) for s in shape], indexing="ij")
    d = ((ii - centre[0]) / radii[0]) ** 2 + ((jj - centre[1]) / radii[1]) ** 2 + ((kk - centre[2]) / radii[2]) ** 2
    return shape, d <= 1.0


def _smooth_field(shape: tuple[int, ...], sigma: float, rng: np.random.Generator, mask: np.ndarray) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    f = gaussian_filter(rng.standard_normal(shape), sigma=sigma, mode="wrap")
    f -= f[mask].mean()
    f /= f[mask].std() + 1e-12
    return f


# ----------------------------------------------------------------------------- main entry
def synthesize_fmri(
    out_dir: str | os.PathLike,
    n_subjects: int = 3,
    n_stimuli: int = 6100,
    n_shared: int = 100,
    repeats: int = 3,
    train_repeats: int = 1,
    trials_per_session: int = 250,
    n_voxels: int | Sequence[int] = 1200,
    latent_dim: int = 16,
    image_embedding_shape: Sequence[int] = (128,),
    text_embedding_dim: int | None = 64,
    noise: float = 6.0,
    smoothness: float = 1.5,
    image_size: int = 32,
    captions_per_stimulus: int = 2,
    betas_dtype: str = "int16",
    int16_scale: float = 300.0,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic NSD-like raw fMRI dataset with known ground truth; return its path.

    Args:
        out_dir: Destination directory (created atomically: built next to it, then renamed).
        n_subjects: Number of subjects (``sub-01`` ...), each with its own grid, mask and mixing.
        n_stimuli: Total number of stimuli, shared test stimuli included.
        n_shared: Stimuli every subject sees (``shared=1``): the test set.
        repeats: Presentations of each shared stimulus per subject (averaged at test time).
        train_repeats: Presentations of each of a subject's own (non-shared) stimuli.
        trials_per_session: Trials (volumes) per session file; the last session may be shorter.
        n_voxels: Approximate ROI voxel count: one int (subject s gets ``n * (1 + 0.15 s)``) or one
            per subject. NSD's nsdgeneral is ~15000.
        latent_dim: Dimension of the latent stimulus features ``z`` (>= 1; 12+ drive all of the
            image parameters).
        image_embedding_shape: Shape of the image embedding target: ``(D,)`` pooled or
            ``(T, D)`` tokens.
        text_embedding_dim: Dimension of the caption embedding; ``None`` writes no text embedding.
        noise: Standard deviation of the Gaussian measurement noise, relative to a signal of
            unit variance per voxel (before the per-session gain).
        smoothness: Gaussian smoothing (voxels) of the mixing fields.
        image_size: Side of the square PNG stimuli, in pixels.
        captions_per_stimulus: Captions (different phrasings) per stimulus, at most 4.
        betas_dtype: ``"int16"`` (NSD convention: value x ``int16_scale``, no ``scl_slope``) or
            ``"float32"``.
        int16_scale: Multiplier applied before rounding to int16.
        seed: Random seed; the same arguments and seed give identical files.
        overwrite: Replace ``out_dir`` if it exists.

    Returns:
        The path of the written raw dataset.
    """
    out = Path(out_dir)
    params = {k: v for k, v in locals().items() if k not in ("out_dir", "overwrite", "out")}
    params = json.loads(json.dumps(params, default=list))  # tuples -> lists, as stored
    if synthetic_is_current(out, params, "README.json", overwrite):
        return out
    if n_subjects < 1 or n_stimuli < 1 or latent_dim < 1 or repeats < 1 or train_repeats < 1:
        raise DataError("synthesize_fmri: n_subjects, n_stimuli, latent_dim, repeats and train_repeats must be >= 1; "
                        "fix: pass positive values")
    if not 0 <= n_shared <= n_stimuli:
        raise DataError(f"synthesize_fmri: n_shared={n_shared} must be in [0, n_stimuli={n_stimuli}]; fix: lower it")
    if betas_dtype not in ("int16", "float32"):
        raise DataError(f"synthesize_fmri: betas_dtype={betas_dtype!r}; fix: use 'int16' or 'float32'")
    img_shape = tuple(int(s) for s in image_embedding_shape)
    if isinstance(n_voxels, int):
        vox_counts = [int(round(n_voxels * (1 + 0.15 * s))) for s in range(n_subjects)]
    else:
        vox_counts = [int(v) for v in n_voxels]
        if len(vox_counts) != n_subjects:
            raise DataError(f"synthesize_fmri: n_voxels has {len(vox_counts)} entries for {n_subjects} subjects; "
                            f"fix: give one per subject or a single int")

    ss = np.random.SeedSequence(seed)
    rng_stim, rng_fn, rng_cap, rng_split, *rng_subs = [np.random.default_rng(s) for s in ss.spawn(4 + n_subjects)]
    L = latent_dim
    width = max(5, len(str(n_stimuli - 1)))
    ids = np.array([f"stim{i:0{width}d}" for i in range(n_stimuli)])
    z = rng_stim.standard_normal((n_stimuli, L))
    shared = np.zeros(n_stimuli, dtype=bool)
    shared[rng_split.choice(n_stimuli, size=n_shared, replace=False)] = True

    # embedding functions
    hidden = 4 * L
    truth: dict[str, np.ndarray] = {
        "format": np.array(TRUTH_FORMAT),
        "description": np.array(
            "beta[s,sess,v,t] = offset[s][sess,v] + gain[s][sess,v] * (mixing[s][v] @ z[stim(t)] + noise * eps); "
            "stored int16 round(int16_scale * beta) if betas_dtype == 'int16'. Per subject, arrays '<sub>.*' are "
            "aligned with '<sub>.voxel_ijk' (mask voxels in C order). image embedding = "
            "normalize_last_axis(reshape(image_W2 @ gelu(image_W1 @ z + image_b1), image_embedding_shape)); "
            "text embedding = normalize(text_W @ onehot(quantised z))."),
        "ids": ids,
        "z": z.astype(np.float64),
        "shared": shared,
        "noise": np.array(float(noise)),
        "int16_scale": np.array(float(int16_scale)),
        "betas_dtype": np.array(betas_dtype),
        "image_W1": rng_fn.standard_normal((hidden, L)) * (1.5 / math.sqrt(L)),
        "image_b1": rng_fn.standard_normal(hidden) * 0.5,
        "image_W2": rng_fn.standard_normal((int(np.prod(img_shape)), hidden)) / math.sqrt(hidden),
        "image_embedding_shape": np.array(img_shape, dtype=np.int64),
        "subjects": np.array([f"sub-{s + 1:02d}" for s in range(n_subjects)]),
    }
    if text_embedding_dim:
        truth["text_W"] = rng_fn.standard_normal((int(text_embedding_dim), _N_COARSE))

    with atomic_dir(out, overwrite=overwrite) as tmp:
        # ---- stimuli, images, captions
        (tmp / "images").mkdir()
        from PIL import Image

        for a in range(0, n_stimuli, 512):
            imgs = _render(z[a:a + 512], image_size)
            for i, im in enumerate(imgs):
                Image.fromarray(im).save(tmp / "images" / f"{ids[a + i]}.png", compress_level=1)
        with open(tmp / "stimuli.tsv", "w") as f:
            f.write("stimulus_id\timage\tshared\n")
            for i in range(n_stimuli):
                f.write(f"{ids[i]}\timages/{ids[i]}.png\t{int(shared[i])}\n")
        caps = _captions(z, rng_cap, captions_per_stimulus)
        with open(tmp / "captions.tsv", "w") as f:
            f.write("stimulus_id\tcaption\n")
            for i in range(n_stimuli):
                for c in caps[i]:
                    f.write(f"{ids[i]}\t{_tsv_field(c)}\n")

        # ---- embeddings (streamed in blocks, so token targets at NSD scale fit)
        (tmp / "embeddings").mkdir()
        blk = max(1, (64 << 20) // (4 * int(np.prod(img_shape))))
        _write_npz_streaming(tmp / "embeddings" / "image.npz", {"ids": ids}, "embeddings", (n_stimuli,) + img_shape,
                             (true_image_embedding(z[a:a + blk], truth) for a in range(0, n_stimuli, blk)))
        if text_embedding_dim:
            np.savez(tmp / "embeddings" / "text.npz", ids=ids, embeddings=true_text_embedding(z, truth))

        # ---- subjects
        own = np.flatnonzero(~shared)
        own = own[rng_split.permutation(own.size)]
        own_parts = np.array_split(own, n_subjects)
        shared_idx = np.flatnonzero(shared)
        for s in range(n_subjects):
            sub = f"sub-{s + 1:02d}"
            rng = rng_subs[s]
            _write_subject(tmp / sub, sub, rng, vox_counts[s], z, ids, shared_idx, own_parts[s], repeats,
                           train_repeats, trials_per_session, noise, smoothness, betas_dtype, int16_scale, truth)

        np.savez(tmp / "truth.npz", **truth)
        with open(tmp / "README.json", "w") as f:
            json.dump({"generator": "litbrain.datamodules.synthesize_fmri", "truth_format": TRUTH_FORMAT,
                       "n_subjects": n_subjects, "n_stimuli": n_stimuli, "n_shared": n_shared, "repeats": repeats,
                       "train_repeats": train_repeats, "trials_per_session": trials_per_session,
                       "n_voxels_target": vox_counts, "latent_dim": L, "image_embedding_shape": list(img_shape),
                       "text_embedding_dim": text_embedding_dim, "noise": noise, "seed": seed,
                       "parameters": params}, f, indent=1)
    return out


def _write_subject(d: Path, sub: str, rng: np.random.Generator, n_vox: int, z: np.ndarray, ids: np.ndarray,
                   shared_idx: np.ndarray, own_idx: np.ndarray, repeats: int, train_repeats: int,
                   trials_per_session: int, noise: float, smoothness: float, betas_dtype: str, int16_scale: float,
                   truth: dict) -> None:
    import nibabel as nib

    d.mkdir()
    shape, mask = _subject_geometry(n_vox, rng)
    G = int(np.prod(shape))
    L = z.shape[1]
    voxel_sizes = np.array([1.8, 1.8, 1.8])
    affine = np.diag(np.r_[voxel_sizes, 1.0])
    affine[:3, 3] = -voxel_sizes * (np.array(shape) - 1) / 2.0
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), d / "mask.nii.gz")

    # mixing: smooth field per latent dim, scaled by a smooth informativeness map
    inform = 0.25 + 1.25 * _sigmoid(1.5 * _smooth_field(shape, 2.5 * smoothness, rng, mask))
    A = np.empty((G, L), dtype=np.float32)
    for l in range(L):
        A[:, l] = (_smooth_field(shape, smoothness, rng, mask) * inform).ravel() / math.sqrt(L)

    # trial schedule
    stim = np.concatenate([np.repeat(shared_idx, repeats), np.repeat(own_idx, train_repeats)])
    stim = stim[rng.permutation(stim.size)]
    n_sess = max(1, math.ceil(stim.size / trials_per_session))
    base = 1.5 * _smooth_field(shape, 3.0, rng, mask).ravel()
    flat_mask = np.flatnonzero(mask.ravel())
    offsets = np.empty((n_sess, flat_mask.size), dtype=np.float32)
    gains = np.empty((n_sess, flat_mask.size), dtype=np.float32)
    chunk = max(1, (64 << 20) // (4 * G))
    Am = A[flat_mask]
    with open(d / "trials.tsv", "w") as f:
        f.write("session\ttrial\tstimulus_id\n")
        for sess in range(n_sess):
            st = stim[sess * trials_per_session:(sess + 1) * trials_per_session]
            for t, n in enumerate(st):
                f.write(f"{sess + 1}\t{t + 1}\t{ids[n]}\n")
            off = base + rng.normal(0, 0.5) + 0.5 * _smooth_field(shape, 3.0, rng, mask).ravel()
            offsets[sess] = off[flat_mask] + 0.2 * rng.standard_normal(flat_mask.size)
            gains[sess] = np.exp(rng.normal(0, 0.2) + 0.25 * rng.standard_normal(flat_mask.size))
            dtype = np.int16 if betas_dtype == "int16" else np.float32
            w = _StreamingNifti(d / f"betas_session{sess + 1:02d}.nii.gz", shape + (st.size,), dtype, affine)
            try:
                for a in range(0, st.size, chunk):
                    zz = z[st[a:a + chunk]].astype(np.float32)
                    x = zz @ Am.T + np.float32(noise) * rng.standard_normal((zz.shape[0], Am.shape[0]),
                                                                            dtype=np.float32)
                    beta_m = offsets[sess] + gains[sess] * x
                    if betas_dtype == "int16":
                        beta_m = np.clip(np.round(beta_m * int16_scale), -32768, 32767)
                    beta = np.zeros((zz.shape[0], G), dtype=np.float32)  # zero outside the ROI
                    beta[:, flat_mask] = beta_m
                    w.write(beta.reshape((-1,) + shape))
            finally:
                w.close()
    truth[f"{sub}.voxel_ijk"] = np.argwhere(mask).astype(np.int32)
    truth[f"{sub}.mixing"] = Am
    truth[f"{sub}.offset"] = offsets
    truth[f"{sub}.gain"] = gains
    truth[f"{sub}.sessions"] = np.arange(1, n_sess + 1, dtype=np.int64)
    truth[f"{sub}.grid_shape"] = np.array(shape, dtype=np.int64)


# ----------------------------------------------------------------------------- oracle
def load_truth(raw_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """Load ``truth.npz`` of a synthetic raw dataset as a dict of arrays."""
    path = Path(raw_dir) / "truth.npz"
    if not path.is_file():
        raise DataError(f"{path}: not found; fix: the oracle needs a dataset written by synthesize_fmri")
    with np.load(path, allow_pickle=False) as f:
        truth = {k: f[k] for k in f.files}
    if str(truth.get("format")) != TRUTH_FORMAT:
        raise DataError(f"{path}: unknown truth format {truth.get('format')}; fix: regenerate with synthesize_fmri")
    return truth


def stimulus_attributes(raw_dir: str | os.PathLike) -> dict[str, np.ndarray]:
    """The true categorical attributes of every stimulus of a synthetic dataset (from ``truth.npz``).

    Returns ``{"stimulus_id": (n,) str, "<attribute>": (n,) int index into ATTRIBUTES[attribute]}``
    for the attributes of :data:`ATTRIBUTES` (colour, hpos, vpos, size, stripes, background), in the
    order of ``stimuli.tsv``: the labels a world probe learns and generated images are judged by.
    """
    truth = load_truth(raw_dir)
    codes = _coarse_codes(np.asarray(truth["z"], np.float64))
    return {"stimulus_id": np.asarray(truth["ids"]).astype(str), **{k: codes[k].astype(np.int64) for k in ATTRIBUTES}}


def synthetic_oracle(raw_dir: str | os.PathLike, prepared_dir: str | os.PathLike, subject: str,
                     split: str = "test") -> np.ndarray:
    """Oracle image-embedding predictions for the rows of a prepared split, in row order.

    The oracle knows the generative model: it reads the raw betas of the split's trials,
    undoes the int16 scaling and each session's offset and gain, averages the repeats of each
    row's stimulus exactly as prepare does (val/test: all of the subject's trials of that
    stimulus; train: the single trial of that row), computes the posterior-mean latent
    ``(A^T A + noise^2/r I)^-1 A^T x`` (prior ``z ~ N(0, I)``) and applies the true embedding
    function.

    Args:
        raw_dir: A dataset written by :func:`synthesize_fmri` (with ``truth.npz``).
        prepared_dir: The same dataset after :func:`prepare_fmri`.
        subject: Subject id, e.g. ``"sub-01"``.
        split: ``"train"``, ``"val"`` or ``"test"``.

    Returns:
        float32 array (rows, *image_embedding_shape).
    """
    import nibabel as nib
    import pandas as pd

    raw, prep = Path(raw_dir), Path(prepared_dir)
    truth = load_truth(raw)
    if f"{subject}.mixing" not in truth:
        raise DataError(f"{raw / 'truth.npz'}: no subject {subject!r} (available: {list(truth['subjects'])}); "
                        f"fix: pick one of those")
    if split not in ("train", "val", "test"):
        raise DataError(f"synthetic_oracle: split={split!r}; fix: use 'train', 'val' or 'test'")
    sdir = prep / subject
    if not (sdir / f"{split}_stimulus.npy").is_file():
        raise DataError(f"{sdir / (split + '_stimulus.npy')}: not found; fix: prepare {raw} into {prep} first")
    stim_rows = np.load(sdir / f"{split}_stimulus.npy")
    prep_ids = pd.read_csv(prep / "stimuli.tsv", sep="\t", dtype={"stimulus_id": str})["stimulus_id"].to_numpy()
    row_ids = prep_ids[stim_rows]

    # align truth voxels to prepare's voxel order
    ijk_p = np.load(sdir / "voxel_ijk.npy")
    ijk_t = truth[f"{subject}.voxel_ijk"]
    key = lambda a: (a[:, 0].astype(np.int64) * 1_000_003 + a[:, 1]) * 1_000_003 + a[:, 2]  # noqa: E731
    kt, kp = key(ijk_t), key(ijk_p)
    order = np.argsort(kt)
    pos = np.searchsorted(kt, kp, sorter=order)
    if np.any(pos >= kt.size) or np.any(kt[order[np.minimum(pos, kt.size - 1)]] != kp):
        raise DataError(f"{sdir / 'voxel_ijk.npy'}: voxels not in the synthetic mask; fix: prepare with the raw mask")
    vsel = order[pos]
    A = truth[f"{subject}.mixing"][vsel].astype(np.float64)
    offsets = truth[f"{subject}.offset"][:, vsel]
    gains = truth[f"{subject}.gain"][:, vsel]
    sess_numbers = list(truth[f"{subject}.sessions"])
    sigma = float(truth["noise"])
    scale = float(truth["int16_scale"]) if str(truth["betas_dtype"]) == "int16" else 1.0

    trials = pd.read_csv(raw / subject / "trials.tsv", sep="\t", dtype={"stimulus_id": str})
    if split == "train":
        sess_rows = np.load(sdir / "train_session.npy")
        trial_rows = np.load(sdir / "train_trial.npy")
        wanted = pd.DataFrame({"session": sess_rows, "trial": trial_rows, "row": np.arange(len(stim_rows))})
    else:
        row_of = {sid: r for r, sid in enumerate(row_ids)}
        t = trials[trials["stimulus_id"].isin(row_of)]
        wanted = pd.DataFrame({"session": t["session"].to_numpy(), "trial": t["trial"].to_numpy(),
                               "row": t["stimulus_id"].map(row_of).to_numpy()})
    sums = np.zeros((len(stim_rows), A.shape[0]))
    counts = np.zeros(len(stim_rows), dtype=np.int64)
    ii, jj, kk = ijk_p[:, 0], ijk_p[:, 1], ijk_p[:, 2]
    from .prepare import _scan_subject

    files = _scan_subject(raw, subject).sessions
    for sess, g in wanted.groupby("session"):
        img = nib.load(files[int(sess)])
        vols = np.asarray(img.dataobj[..., :]) if len(img.shape) == 4 else np.asarray(img.dataobj)[..., None]
        x = vols[ii, jj, kk][:, g["trial"].to_numpy() - 1].T.astype(np.float64) / scale  # (t, V)
        si = sess_numbers.index(int(sess))
        x = (x - offsets[si]) / gains[si]
        np.add.at(sums, g["row"].to_numpy(), x)
        np.add.at(counts, g["row"].to_numpy(), 1)
        del vols
    if np.any(counts == 0):
        raise DataError(f"{raw / subject / 'trials.tsv'}: some {split} rows have no trials; fix: re-prepare")
    xbar = sums / counts[:, None]
    AtA, Atx = A.T @ A, xbar @ A
    zhat = np.empty((xbar.shape[0], A.shape[1]))
    for r in np.unique(counts):
        sel = counts == r
        zhat[sel] = np.linalg.solve(AtA + (sigma ** 2 / r) * np.eye(A.shape[1]), Atx[sel].T).T
    return true_image_embedding(zhat, truth)
