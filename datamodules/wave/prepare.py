"""``wave prepare``: fMRIPrep BIDS derivatives -> per-run (T, parcels) float16 shards through nilearn.

Reads, per subject, ``sub-XX/func/*_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz`` (4D, TR in
the header), the run's ``*_events.tsv`` (onset, duration, stimulus_id; rest runs have none) and its
``*_desc-confounds_timeseries.tsv`` (optional; ``confounds`` picks the columns). Each run goes through
a :class:`nilearn.maskers.NiftiSpheresMasker` (Seitzman-2018 spheres, or an atlas TSV with x, y, z,
network; inside nilearn's MNI152 brain mask resampled to the image grid) with confound regression,
linear detrending and standardisation (z-scoring of each run, sample s.d.). Writes, atomically::

    <out>/manifest.json        format, fingerprint (inputs' content + parameters), tr, atlas, subjects -> runs
    <out>/parcels.tsv          index, x, y, z, network   (parcel coordinates in mm and network labels)
    <out>/sub-XX/<run>.npy     (T, P) float16            one shard per run, <run> = task-<t>_run-<r>
    <out>/events.tsv           subject, run, onset, duration, stimulus, split  (stimulus = row of stimuli.tsv;
                               split = test for the shared stimuli, train otherwise)
    <out>/stimuli.tsv          stimulus_id, shared
    <out>/embeddings/image.npy, text.npy   (N, D) float32 targets in stimuli.tsv order

The same inputs and parameters give the same bytes (the fingerprint makes a re-run a no-op).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from litbrain.errors import DataError
from litbrain.utils.io import atomic_dir

from ..io import content_fingerprint, output_is_current, read_tsv
from .atlas import SPACE, check_parcels_in_mask, seitzman_atlas

__all__ = ["prepare_wave", "read_wave_manifest", "WAVE_FORMAT", "read_bold", "load_atlas", "parcellate_run"]

WAVE_FORMAT = "litbrain-wave/1"
DEFAULT_CONFOUNDS = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z", "cosine*")
_BOLD = re.compile(rf"^(sub-[^_]+)_task-([^_]+)_run-(\d+)_space-{SPACE}_desc-preproc_bold\.nii(\.gz)?$")
_MNI_CENTRE_TOLERANCE_MM = 30.0


def read_wave_manifest(data_dir: str | os.PathLike) -> dict:
    path = Path(data_dir) / "manifest.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        raise DataError(f"{path}: missing or unreadable; fix: prepare the data with `litbrain wave prepare`") from None
    if info.get("format") != WAVE_FORMAT:
        raise DataError(f"{path}: format {info.get('format')!r} is not {WAVE_FORMAT!r}; fix: re-run "
                        f"`litbrain wave prepare --overwrite true`")
    return info


def load_atlas(atlas: str) -> dict:
    """``seitzman_2018`` (shipped with nilearn) or a TSV with columns x, y, z (mm, MNI) and network."""
    if atlas == "seitzman_2018":
        return seitzman_atlas()
    t = read_tsv(atlas, {"x": float, "y": float, "z": float, "network": str}, what="atlas")
    return {"coords": t[["x", "y", "z"]].to_numpy(np.float64), "networks": t["network"].to_numpy().astype(str),
            "radius": None, "name": str(atlas)}


def read_bold(path: Path):
    """The run's image and TR, refusing what prepare cannot use (one line each)."""
    import nibabel as nib

    try:
        img = nib.load(path)
    except Exception as err:
        raise DataError(f"{path}: cannot be read as NIfTI ({err}); fix: re-export the run") from None
    if img.ndim != 4:
        raise DataError(f"{path}: BOLD must be 4D (X,Y,Z,time), got a {img.ndim}D image; fix: pass the "
                        f"desc-preproc_bold series, not a single volume or mask")
    zooms = img.header.get_zooms()
    tr = float(zooms[3]) if len(zooms) > 3 else 0.0
    if not np.isfinite(tr) or tr <= 0:
        raise DataError(f"{path}: no repetition time in the NIfTI header (pixdim[4]={tr:g}); fix: set it, e.g. "
                        f"nibabel header.set_zooms((..., TR)) with xyzt_units 'sec', as fMRIPrep writes it")
    if img.header.get_xyzt_units()[1] == "msec":
        tr /= 1000.0
    return img, tr


def _check_mni(path: Path, img) -> None:
    """The image's field of view must be centred where the MNI152 template's is (else: not in MNI space)."""
    from nilearn import datasets

    mask_img = datasets.load_mni152_brain_mask(resolution=2)

    def centre(aff, shape):
        return aff[:3, :3] @ ((np.array(shape[:3]) - 1) / 2.0) + aff[:3, 3]

    d = float(np.linalg.norm(centre(img.affine, img.shape) - centre(mask_img.affine, mask_img.shape)))
    if d > _MNI_CENTRE_TOLERANCE_MM:
        raise DataError(f"{path}: the image is not in MNI space (its field of view is centred {d:.0f} mm from the "
                        f"MNI152 template's); fix: use fMRIPrep's space-{SPACE} output, or normalise the run to MNI")


def _brain_mask_for(img):
    from nilearn import datasets, image

    mask = datasets.load_mni152_brain_mask(resolution=2)
    out = image.resample_img(mask, target_affine=img.affine, target_shape=img.shape[:3], interpolation="nearest",
                             force_resample=True, copy_header=True)
    import nibabel as nib

    return nib.Nifti1Image((np.asarray(out.dataobj) > 0).astype(np.uint8), img.affine)


def _confounds(path: Path, T: int, columns: tuple[str, ...]) -> np.ndarray | None:
    if not path.is_file():
        return None
    import fnmatch

    t = read_tsv(path, {}, what="confounds")
    cols = [c for c in t.columns if any(fnmatch.fnmatch(c, p) for p in columns)]
    if len(t) != T:
        raise DataError(f"{path}: {len(t)} rows for a run of {T} volumes; fix: one confounds row per volume")
    if not cols:
        return None
    x = t[cols].to_numpy(np.float64)
    return np.nan_to_num(x)  # fMRIPrep leaves the first row of derivatives empty


def parcellate_run(img, tr: float, coords: np.ndarray, radius: float, mask_img,
                   confounds: np.ndarray | None) -> np.ndarray:
    """(T, P) parcel series: nilearn's sphere means after confound regression, detrending, z-scoring."""
    from nilearn.maskers import NiftiSpheresMasker

    masker = NiftiSpheresMasker([tuple(c) for c in coords], radius=radius, mask_img=mask_img, allow_overlap=True,
                                detrend=True, standardize="zscore_sample", t_r=tr, verbose=0)
    return masker.fit_transform(img, confounds=confounds).astype(np.float32)


def _scan(raw: Path, subjects: list[str] | None) -> dict[str, list[tuple[str, Path]]]:
    subs = sorted(p.name for p in raw.glob("sub-*") if p.is_dir())
    if subjects is not None:
        missing = sorted(set(subjects) - set(subs))
        if missing:
            raise DataError(f"subjects: {missing} not in {raw} (has {subs}); fix: pick from those")
        subs = list(subjects)
    out = {}
    for s in subs:
        runs = []
        for p in sorted((raw / s / "func").glob(f"{s}_*_bold.nii*")):
            m = _BOLD.match(p.name)
            if m:
                runs.append((f"task-{m.group(2)}_run-{m.group(3)}", p))
        if runs:
            out[s] = runs
    if not out:
        raise DataError(f"{raw}: no sub-XX/func/*_space-{SPACE}_desc-preproc_bold.nii.gz runs; fix: point at "
                        f"fMRIPrep's derivatives folder")
    return out


def prepare_wave(
    raw_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    subjects: list[str] | None = None,
    atlas: str = "seitzman_2018",
    radius: float | None = 8.0,
    confounds: list[str] | None = None,
    image_embeddings: str = "embeddings/image.npz",
    text_embeddings: str = "embeddings/text.npz",
    overwrite: bool = False,
) -> Path:
    """Parcellate every run of ``raw_dir`` into ``out_dir`` (see the module doc); return ``out_dir``.

    Args:
        raw_dir: BIDS derivatives (fMRIPrep layout) with ``stimuli.tsv`` and the embedding npz files.
        out_dir: Prepared dataset to write.
        subjects: Subject ids (``None`` = all).
        atlas: ``seitzman_2018`` or a TSV of sphere centres (x, y, z mm; network).
        radius: Sphere radius (mm); ``None`` = the atlas's own (Seitzman: 5 mm, for 2 mm grids).
        confounds: Confound column names or globs (default: the six motion parameters and cosine*).
        image_embeddings / text_embeddings: npz (ids, embeddings), relative to raw_dir or absolute.
        overwrite: Replace an ``out_dir`` prepared from other inputs.
    """
    raw, out = Path(raw_dir), Path(out_dir)
    if not raw.is_dir():
        raise DataError(f"{raw}: raw data folder not found; fix: pass fMRIPrep's derivatives folder")
    runs = _scan(raw, subjects)
    atl = load_atlas(atlas)
    rad = float(radius if radius is not None else (atl["radius"] or 5.0))
    cols = tuple(confounds) if confounds else DEFAULT_CONFOUNDS
    stim = read_tsv(raw / "stimuli.tsv", {"stimulus_id": str}, what="stimulus table")
    ids = stim["stimulus_id"].tolist()
    shared = stim["shared"].to_numpy().astype(bool) if "shared" in stim.columns else np.zeros(len(ids), bool)
    index = {s: i for i, s in enumerate(ids)}
    emb_paths = {k: (Path(p) if Path(p).is_absolute() else raw / p) for k, p in
                 (("image", image_embeddings), ("text", text_embeddings))}
    files = [("stimuli.tsv", raw / "stimuli.tsv")] + [(k, p) for k, p in emb_paths.items()]
    for s, rs in runs.items():
        for key, p in rs:
            files.append((f"{s}/{key}", p))
            for suffix in ("events.tsv", "desc-confounds_timeseries.tsv"):
                files.append((f"{s}/{key}/{suffix}", p.parent / f"{s}_{key}_{suffix}"))
    if atlas != "seitzman_2018":
        files.append(("atlas", Path(atlas)))
    params = {"format": WAVE_FORMAT, "atlas": atlas, "radius": rad, "confounds": list(cols)}
    fp = content_fingerprint(files, params)
    if output_is_current(out, fp, overwrite, lambda o: _maybe_manifest(o)):
        return out

    embs = {}
    for k, p in emb_paths.items():
        if not p.is_file():
            raise DataError(f"{p}: {k} embeddings not found; fix: run `litbrain embed-{'images' if k == 'image' else 'captions'}` "
                            f"or pass {k}_embeddings=<npz with ids, embeddings>")
        with np.load(p) as f:
            e_ids, e = f["ids"].astype(str).tolist(), f["embeddings"].astype(np.float32)
        pos = {s: i for i, s in enumerate(e_ids)}
        lack = [s for s in ids if s not in pos]
        if lack:
            raise DataError(f"{p}: no embedding for {len(lack)} stimulus id(s) of stimuli.tsv; fix: embed every stimulus")
        embs[k] = e[[pos[s] for s in ids]].reshape(len(ids), -1)

    event_rows = []
    manifest = {"format": WAVE_FORMAT, "fingerprint": fp, "atlas": atl["name"], "radius": rad,
                "n_parcels": int(atl["coords"].shape[0]), "networks": sorted(set(atl["networks"].tolist())),
                "subjects": {}, "image_embedding_dim": int(embs["image"].shape[1]),
                "text_embedding_dim": int(embs["text"].shape[1]), "n_stimuli": len(ids)}
    tr_seen = None
    mask_cache: dict = {}
    with atomic_dir(out, overwrite=True) as tmp:
        for s, rs in runs.items():
            (tmp / s).mkdir()
            manifest["subjects"][s] = {}
            for key, p in rs:
                img, tr = read_bold(p)
                grid = (tuple(img.shape[:3]), tuple(np.round(img.affine, 4).ravel()))
                if grid not in mask_cache:
                    _check_mni(p, img)
                    mask_img = _brain_mask_for(img)
                    check_parcels_in_mask(atl["coords"], mask_img, rad, f"atlas {atlas} on {p.name}")
                    mask_cache[grid] = mask_img
                mask_img = mask_cache[grid]
                T = int(img.shape[3])
                ev_path = p.parent / f"{s}_{key}_events.tsv"
                if ev_path.is_file():
                    ev = read_tsv(ev_path, {"onset": float, "duration": float, "stimulus_id": str}, what="events")
                    end = (ev["onset"] + ev["duration"]).to_numpy()
                    if end.size and end.max() > T * tr + 1e-6:
                        i = int(end.argmax())
                        raise DataError(f"{ev_path}: event {i + 1} ends at {end[i]:.1f} s, past the run's last volume "
                                        f"({T} volumes x TR {tr:g} s = {T * tr:.1f} s); fix: events of this run only, "
                                        f"onsets in seconds from the first volume")
                    bad = sorted(set(ev["stimulus_id"]) - set(index))
                    if bad:
                        raise DataError(f"{ev_path}: stimulus_id(s) {bad[:3]} not in stimuli.tsv; fix: list every "
                                        f"shown stimulus there")
                    for o, d, sid in zip(ev["onset"], ev["duration"], ev["stimulus_id"]):
                        event_rows.append((s, key, float(o), float(d), index[sid],
                                           "test" if shared[index[sid]] else "train"))
                conf = _confounds(p.parent / f"{s}_{key}_desc-confounds_timeseries.tsv", T, cols)
                x = parcellate_run(img, tr, atl["coords"], rad, mask_img, conf)
                with open(tmp / s / f"{key}.npy", "wb") as f:
                    np.save(f, x.astype(np.float16))
                manifest["subjects"][s][key] = {"n_volumes": T, "tr": tr}
                tr_seen = tr if tr_seen is None else tr_seen
        manifest["tr"] = tr_seen
        with open(tmp / "parcels.tsv", "w") as f:
            f.write("index\tx\ty\tz\tnetwork\n")
            for i, (c, n) in enumerate(zip(atl["coords"], atl["networks"])):
                f.write(f"{i}\t{c[0]:.2f}\t{c[1]:.2f}\t{c[2]:.2f}\t{n}\n")
        with open(tmp / "events.tsv", "w") as f:
            f.write("subject\trun\tonset\tduration\tstimulus\tsplit\n")
            for r in event_rows:
                f.write(f"{r[0]}\t{r[1]}\t{r[2]:.3f}\t{r[3]:g}\t{r[4]}\t{r[5]}\n")
        with open(tmp / "stimuli.tsv", "w") as f:
            f.write("stimulus_id\tshared\n" + "".join(f"{s}\t{int(h)}\n" for s, h in zip(ids, shared)))
        (tmp / "embeddings").mkdir()
        for k, e in embs.items():
            with open(tmp / "embeddings" / f"{k}.npy", "wb") as f:
                np.save(f, e)
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def _maybe_manifest(out: Path) -> dict | None:
    try:
        return json.loads((out / "manifest.json").read_text())
    except Exception:
        return None
