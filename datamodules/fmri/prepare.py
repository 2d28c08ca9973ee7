"""``prepare``: raw NSD-like fMRI (NIfTI betas + ROI mask + trial table) -> memory-mappable shards.

Raw layout read here (written by :func:`~litbrain.datamodules.synthesize_fmri`, or by you for
real data)::

    <raw>/stimuli.tsv            stimulus_id, image (path relative to <raw>), shared (0/1: test set)
    <raw>/captions.tsv           stimulus_id, caption   (not used by prepare)
    <raw>/embeddings/image.npz   ids (N,), embeddings (N, *shape)   precomputed image targets
    <raw>/embeddings/text.npz    ids (N,), embeddings (N, D)        optional text targets
    <raw>/sub-XX/mask.nii.gz     3D ROI mask (nonzero = in ROI)
    <raw>/sub-XX/betas_sessionNN.nii.gz   4D (X,Y,Z,T) betas, int16 x300 (no scl_slope) or float
    <raw>/sub-XX/trials.tsv      session (1-based), trial (1-based volume index), stimulus_id
    <raw>/sub-XX/ncsnr.nii.gz    optional 3D noise-ceiling SNR on the mask's grid (NSD's ncsnr)

What prepare does, per subject: applies the mask (voxel order = C order of the grid, saved as
``voxel_ijk.npy``); divides unscaled integer data by ``int16_divisor``; z-scores every voxel per
session with mean/std of that session's TRAINING trials only (sessions with fewer than two
training trials use the subject's pooled training statistics); keeps training trials as
individual rows (session, trial order) and averages the repeats of each val/test stimulus into
one row (rows sorted by stimulus index). Test = stimuli with ``shared=1``; val = ``val_fraction``
of the subject's other stimuli, drawn by stimulus (no leakage), seeded.

Sessions are streamed (volumes read in chunks through ``img.dataobj[..., a:b]``); output rows
are written with plain file writes after an npy header and val/test repeats are summed in an
on-disk accumulator, so peak memory is about one masked session, whatever the number of
sessions or trials. The output is built in a temporary directory next to ``out_dir`` and
renamed into place; a second call with the same inputs and parameters returns at once.

Prepared layout::

    <out>/manifest.json          format_version, subjects{sid: n_voxels, n_train, n_val, n_test,
                                 sessions}, image_embedding_shape, text_embedding_dim, n_stimuli,
                                 fingerprint, parameters
    <out>/stimuli.tsv            stimulus_id, shared, image -- row index = stimulus index
    <out>/sub-XX/ncsnr.npy       (V,) float32, voxel_ijk order, when the raw subject has ncsnr.nii.gz; the
                                 NSD noise ceiling of an n-trial average is 100 ncsnr^2 / (ncsnr^2 + 1/n)
    <out>/image_embedding.npy    (N, *shape) float32      <out>/text_embedding.npy (N, D) float32
    <out>/sub-XX/{train,val,test}_brain.npy     (rows, V) float16
    <out>/sub-XX/{train,val,test}_stimulus.npy  (rows,) int64 index into stimuli.tsv
    <out>/sub-XX/train_session.npy, train_trial.npy   (rows,) int32
    <out>/sub-XX/voxel_ijk.npy (V, 3) int32,  affine.npy (4, 4) float64
"""

from __future__ import annotations

import json
import os
import re
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from litbrain.errors import DataError
from litbrain.utils.io import atomic_dir

from ..io import (
    NpyRowWriter,
    RowAccumulator,
    content_fingerprint,
    _fmt_list,
    prepared_is_current,
    read_npy_header,
    read_tsv,
)

__all__ = ["prepare_fmri", "FORMAT_VERSION", "list_raw_subjects"]

FORMAT_VERSION = 1
_SESSION_RE = re.compile(r"^betas_session(\d+)\.nii(\.gz)?$")
_F16_MAX = float(np.finfo(np.float16).max)


@dataclass
class _Subject:
    sid: str
    dir: Path
    mask_path: Path
    trials_path: Path
    sessions: dict[int, Path]
    trials: object = None  # DataFrame
    mask: np.ndarray | None = None
    affine: np.ndarray | None = None
    n_vols: dict[int, int] = field(default_factory=dict)
    ncsnr_path: Path | None = None


def list_raw_subjects(raw_dir: str | os.PathLike) -> list[str]:
    """Subject ids (``sub-*`` folders holding a ``trials.tsv``) of a raw dataset, sorted."""
    raw = Path(raw_dir)
    if not raw.is_dir():
        return []
    return sorted(p.name for p in raw.iterdir() if p.is_dir() and p.name.startswith("sub-")
                  and (p / "trials.tsv").is_file())


def _load_nifti(path: Path, rel: str):
    import nibabel as nib

    try:
        return nib.load(path, keep_file_open=True)
    except Exception as exc:
        raise DataError(f"{rel}: cannot be read as NIfTI ({type(exc).__name__}: {exc}); "
                        f"fix: the file is truncated or corrupt -- re-export or re-download it") from exc


def _raw_int(img) -> bool:
    """True for integer data without a stored scaling (NSD's int16 x300 convention)."""
    slope = getattr(img.dataobj, "slope", 1.0)
    inter = getattr(img.dataobj, "inter", 0.0)
    return img.get_data_dtype().kind in "iu" and float(slope) == 1.0 and float(inter) == 0.0


def _read_npz_member_header(path: Path, rel: str, name: str) -> tuple[tuple[int, ...], np.dtype]:
    try:
        with zipfile.ZipFile(path) as zf, zf.open(f"{name}.npy") as f:
            shape, fortran, dtype, _ = read_npy_header(f)
    except KeyError as exc:
        raise DataError(f"{rel}: has no array '{name}'; fix: save it with np.savez(path, ids=..., embeddings=...)") \
            from exc
    except Exception as exc:
        raise DataError(f"{rel}: cannot be read as .npz ({type(exc).__name__}: {exc}); "
                        f"fix: save it with np.savez(path, ids=..., embeddings=...)") from exc
    if fortran:
        raise DataError(f"{rel}: '{name}' is Fortran-ordered; fix: save np.ascontiguousarray(embeddings)")
    return shape, dtype


def _read_embedding_ids(path: Path, rel: str) -> np.ndarray:
    shape, dtype = _read_npz_member_header(path, rel, "ids")
    if dtype.kind not in "UiuS":  # object arrays need pickle, which is never loaded
        raise DataError(f"{rel}: 'ids' has dtype {dtype} (a pickled object array); fix: store them as strings, "
                        f"np.savez(path, ids=np.asarray(ids, dtype=str), embeddings=...)")
    with np.load(path, allow_pickle=False) as f:
        ids = f["ids"]
    if ids.ndim != 1:
        raise DataError(f"{rel}: 'ids' must be 1-D (got shape {ids.shape}); fix: store one id per row")
    return ids.astype(str)


def _copy_embeddings(path: Path, rel: str, stim_ids: np.ndarray, out_path: Path, expect_ndim: int | None,
                     block_bytes: int = 64 << 20) -> tuple[int, ...]:
    """Stream ``embeddings`` rows of an npz into ``out_path`` in stimuli.tsv order; return the row shape."""
    ids = _read_embedding_ids(path, rel)
    shape, dtype = _read_npz_member_header(path, rel, "embeddings")
    if len(shape) < 2 or shape[0] != ids.size:
        raise DataError(f"{rel}: 'embeddings' has shape {shape} for {ids.size} ids; fix: store an array "
                        f"(n_ids, ...) with one row per id")
    if expect_ndim is not None and len(shape) != expect_ndim:
        raise DataError(f"{rel}: 'embeddings' must be {expect_ndim}-D (got shape {shape}); fix: store (N, D)")
    if dtype.kind not in "fiu":
        raise DataError(f"{rel}: 'embeddings' has dtype {dtype}; fix: store float32")
    if len(set(ids.tolist())) != ids.size:
        raise DataError(f"{rel}: duplicate ids; fix: store each stimulus once")
    dest_of = {s: i for i, s in enumerate(stim_ids.tolist())}
    missing = sorted(set(dest_of) - set(ids.tolist()))
    if missing:
        raise DataError(f"{rel}: no embedding for {len(missing)} stimulus id(s) of stimuli.tsv "
                        f"({_fmt_list(missing)}); fix: compute embeddings for every stimulus")
    dest = np.array([dest_of.get(s, -1) for s in ids.tolist()], dtype=np.int64)
    row_shape = tuple(int(s) for s in shape[1:])
    row_elems = int(np.prod(row_shape, dtype=np.int64))
    rows_per_block = max(1, block_bytes // max(1, row_elems * dtype.itemsize))
    with zipfile.ZipFile(path) as zf, zf.open("embeddings.npy") as f, \
            NpyRowWriter(out_path, (len(stim_ids),) + row_shape, np.float32) as w:
        read_npy_header(f)
        for a in range(0, shape[0], rows_per_block):
            b = min(a + rows_per_block, shape[0])
            buf = f.read((b - a) * row_elems * dtype.itemsize)
            if len(buf) != (b - a) * row_elems * dtype.itemsize:
                raise DataError(f"{rel}: 'embeddings' is truncated; fix: re-save the file")
            block = np.frombuffer(buf, dtype=dtype).reshape((b - a,) + row_shape).astype(np.float32)
            if not np.all(np.isfinite(block)):
                raise DataError(f"{rel}: 'embeddings' holds NaN/inf; fix: recompute those embeddings")
            d = dest[a:b]
            # write runs of consecutive destinations at once
            keep = np.flatnonzero(d >= 0)
            if keep.size == 0:
                continue
            breaks = np.flatnonzero((np.diff(d[keep]) != 1) | (np.diff(keep) != 1)) + 1
            for run in np.split(keep, breaks):
                w.write_rows_at(int(d[run[0]]), block[run])
    return row_shape


def _scan_subject(raw: Path, sid: str) -> _Subject:
    d = raw / sid
    sessions: dict[int, Path] = {}
    for p in sorted(d.iterdir()):
        m = _SESSION_RE.match(p.name)
        if m:
            n = int(m.group(1))
            if n in sessions:
                raise DataError(f"{sid}/{p.name}: session {n} also in {sessions[n].name}; fix: keep one file per session")
            sessions[n] = p
    ncsnr = next((d / n for n in ("ncsnr.nii.gz", "ncsnr.nii") if (d / n).exists()), None)
    return _Subject(sid=sid, dir=d, mask_path=d / "mask.nii.gz" if (d / "mask.nii.gz").exists() else d / "mask.nii",
                    trials_path=d / "trials.tsv", sessions=sessions, ncsnr_path=ncsnr)


def _fingerprint(raw: Path, subs: list[_Subject], emb_paths: list[Path], params: dict) -> str:
    """sha256 over the CONTENT of every input file (streamed) and the parameters: a re-copy of the same data
    is "already prepared", one changed byte is not."""
    files = [raw / "stimuli.tsv", *emb_paths]
    for s in subs:
        files += [s.mask_path, s.trials_path, *[s.sessions[k] for k in sorted(s.sessions)]]
        files += [s.ncsnr_path] if s.ncsnr_path else []
    named = []
    for p in files:
        try:
            named.append((str(p.relative_to(raw)), p))
        except ValueError:  # e.g. embeddings given as an absolute path elsewhere
            named.append((str(p.resolve()), p))
    return content_fingerprint(named, {"format_version": FORMAT_VERSION, **params})


def _validate_subject(raw: Path, s: _Subject, stim_index: dict[str, int]) -> None:
    """Check mask, session headers and trial table; fill s.trials, s.mask, s.affine, s.n_vols."""
    sid = s.sid
    if not s.mask_path.is_file():
        raise DataError(f"{sid}/mask.nii.gz: not found; fix: write the ROI mask (3D NIfTI, nonzero = in ROI)")
    mrel = f"{sid}/{s.mask_path.name}"
    mimg = _load_nifti(s.mask_path, mrel)
    try:
        mask = np.asanyarray(mimg.dataobj)
    except Exception as exc:
        raise DataError(f"{mrel}: cannot read data ({type(exc).__name__}: {exc}); fix: re-export the mask") from exc
    if mask.ndim == 4 and mask.shape[3] == 1:
        mask = mask[..., 0]
    if mask.ndim != 3:
        raise DataError(f"{mrel}: mask must be 3D (got shape {mask.shape}); fix: save a single 3D volume")
    mask = np.nan_to_num(mask.astype(np.float64), nan=0.0) != 0
    if not mask.any():
        raise DataError(f"{mrel}: mask is empty (no nonzero voxel); fix: write a mask with the ROI set to 1")
    s.mask, s.affine = mask, np.asarray(mimg.affine, dtype=np.float64)

    trel = f"{sid}/trials.tsv"
    t = read_tsv(s.trials_path, {"session": int, "trial": int, "stimulus_id": str}, what="trial table")
    if len(t) == 0:
        raise DataError(f"{trel}: no trials; fix: list one row per trial (session, trial, stimulus_id)")
    unknown = sorted(set(t["stimulus_id"]) - set(stim_index))
    if unknown:
        raise DataError(f"{trel}: {len(unknown)} stimulus_id(s) not in stimuli.tsv ({_fmt_list(unknown)}); "
                        f"fix: add them to stimuli.tsv or remove those trials")
    if (t["trial"] < 1).any() or (t["session"] < 1).any():
        bad = np.flatnonzero(((t["trial"] < 1) | (t["session"] < 1)).to_numpy())
        raise DataError(f"{trel}: session and trial are 1-based; bad value(s) on file line(s) {_fmt_list(bad + 2)}; "
                        f"fix: number sessions and trials from 1")
    dup = t.duplicated(["session", "trial"])
    if dup.any():
        bad = np.flatnonzero(dup.to_numpy())
        raise DataError(f"{trel}: (session, trial) repeated on file line(s) {_fmt_list(bad + 2)}; "
                        f"fix: one row per volume")
    missing = sorted(set(t["session"].tolist()) - set(s.sessions))
    if missing:
        raise DataError(f"{trel}: session(s) {_fmt_list(missing)} have no betas file "
                        f"(found {[p.name for p in s.sessions.values()] or 'none'}); "
                        f"fix: add {sid}/betas_session{missing[0]:02d}.nii.gz or remove those trials")
    t = t.assign(stim=t["stimulus_id"].map(stim_index).astype(np.int64)).sort_values(["session", "trial"])
    s.trials = t.reset_index(drop=True)

    for sess in sorted(set(t["session"].tolist())):
        p = s.sessions[sess]
        rel = f"{sid}/{p.name}"
        img = _load_nifti(p, rel)
        shape = img.shape
        if len(shape) != 4:
            raise DataError(f"{rel}: betas must be 4D (X,Y,Z,trials), got a {len(shape)}D image of shape {shape}; "
                            f"fix: save one 4D file per session (a session of one trial as shape (X,Y,Z,1))")
        if tuple(shape[:3]) != mask.shape:
            raise DataError(f"{rel}: volume shape {tuple(shape[:3])} does not match {mrel} shape {mask.shape}; "
                            f"fix: resample the mask to the betas grid (same shape and affine)")
        if not np.allclose(img.affine, s.affine, atol=1e-3, rtol=1e-4):
            raise DataError(f"{rel}: affine differs from {mrel} (betas {np.round(img.affine, 3).tolist()} vs mask "
                            f"{np.round(s.affine, 3).tolist()}); fix: resample the mask to the betas grid")
        n_vols = shape[3]
        trial_max = int(t.loc[t["session"] == sess, "trial"].max())
        if trial_max > n_vols:
            raise DataError(f"{trel}: session {sess} lists trial {trial_max} but {rel} has only {n_vols} volume(s); "
                            f"fix: correct the trial numbers (1-based volume index) or the betas file")
        s.n_vols[sess] = n_vols
        del img
    _read_ncsnr(s, check_only=True)


def _read_ncsnr(s: _Subject, check_only: bool = False) -> np.ndarray | None:
    """The subject's ncsnr inside the mask (V,) float32, or None without an ncsnr file."""
    if s.ncsnr_path is None:
        return None
    rel = f"{s.sid}/{s.ncsnr_path.name}"
    img = _load_nifti(s.ncsnr_path, rel)
    shape = tuple(img.shape[:3]) if len(img.shape) == 4 and img.shape[3] == 1 else tuple(img.shape)
    if shape != s.mask.shape or not np.allclose(img.affine, s.affine, atol=1e-3, rtol=1e-4):
        raise DataError(f"{rel}: grid {shape} differs from the mask's {s.mask.shape} (or its affine); fix: write the "
                        f"ncsnr of the betas' grid, or remove the file")
    if check_only:
        return None
    return np.asarray(img.dataobj, dtype=np.float32).reshape(s.mask.shape)[s.mask]


def _read_session(path: Path, rel: str, mask: np.ndarray, n_read: int, int16_divisor: float,
                  chunk_bytes: int) -> np.ndarray:
    """Masked volumes 0..n_read-1 of one session, float32 (n_read, V)."""
    img = _load_nifti(path, rel)
    proxy = img.dataobj
    raw_int = _raw_int(img)
    # bytes of one volume as nibabel returns it (scaled data come back as float64)
    vol_bytes = int(np.prod(img.shape[:3])) * (img.get_data_dtype().itemsize if raw_int else 8)
    per = max(1, chunk_bytes // max(1, vol_bytes))
    out = np.empty((n_read, int(mask.sum())), dtype=np.float32)
    for a in range(0, n_read, per):
        b = min(a + per, n_read)
        try:
            block = np.asarray(proxy[..., a:b]) if len(img.shape) == 4 else np.asarray(proxy)[..., None]
        except Exception as exc:
            raise DataError(f"{rel}: cannot read volumes {a + 1}-{b} ({type(exc).__name__}: {exc}); "
                            f"fix: the file is truncated or corrupt -- re-export or re-download it") from exc
        out[a:b] = block[mask].T
        del block
    del img
    if raw_int:
        out /= np.float32(int16_divisor)
    bad = ~np.isfinite(out)
    if bad.any():
        t_bad, v_bad = np.argwhere(bad)[0]
        ijk = np.argwhere(mask)[v_bad].tolist()
        raise DataError(f"{rel}: {int(bad.sum())} NaN/inf value(s) inside the mask (first: volume {t_bad + 1}, "
                        f"voxel {ijk}); fix: remove those voxels from the mask or repair the betas")
    return out


def _zscore_stats(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x64 = x.astype(np.float64)
    mean = x64.mean(0)
    std = x64.std(0)
    std[std < 1e-8] = 1.0  # constant voxel: centre only
    return mean, std


def prepare_fmri(
    raw_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    subjects: list[str] | None = None,
    val_fraction: float = 0.1,
    int16_divisor: float = 300.0,
    image_embeddings: str = "embeddings/image.npz",
    text_embeddings: str | None = "embeddings/text.npz",
    zscore: bool = True,
    seed: int = 0,
    overwrite: bool = False,
    chunk_mb: float = 256.0,
) -> Path:
    """Prepare a raw NSD-like fMRI dataset into memory-mappable float16 shards; return ``out_dir``.

    Args:
        raw_dir: Raw dataset folder (stimuli.tsv, embeddings/, sub-XX/{mask, betas_sessionNN, trials.tsv}).
        out_dir: Prepared dataset folder to create. Built next to it under a temporary name and
            renamed into place; if it already holds a preparation of the same inputs and
            parameters (fingerprint), the call returns at once without writing.
        subjects: Subject ids to prepare (e.g. ``["sub-01", "sub-02"]``); ``None`` = all subjects found.
        val_fraction: Fraction of each subject's non-shared stimuli held out for validation
            (chosen by stimulus, seeded); must leave at least one val and one training stimulus.
        int16_divisor: Integer betas without a NIfTI scaling (NSD ships int16 x300) are divided by
            this; scaled or float data are used as stored.
        image_embeddings: Path (relative to ``raw_dir`` or absolute) of the image-embedding npz
            (arrays ``ids`` and ``embeddings``).
        text_embeddings: Path of the text-embedding npz; ``None`` or a missing file = no text targets.
        zscore: Z-score each voxel per session with training-trial statistics (the NSD recipe).
            ``False`` keeps the (divided) betas as they are.
        seed: Seed of the val split.
        overwrite: Replace an existing ``out_dir`` prepared with other inputs or parameters.
        chunk_mb: Raw volumes read per chunk (MiB) while streaming a session.

    Returns:
        The path of the prepared dataset.

    Raises:
        DataError: on bad or missing input; ``out_dir`` is then left as it was and no temporary
            folder remains.
    """
    raw, out = Path(raw_dir), Path(out_dir)
    if not raw.is_dir():
        raise DataError(f"{raw}: raw data folder not found; fix: pass the folder holding stimuli.tsv and sub-XX/")
    if not 0.0 <= float(val_fraction) < 1.0:
        raise DataError(f"val_fraction={val_fraction}: must be in [0, 1); fix: pass e.g. 0.1")
    if not float(int16_divisor) > 0:
        raise DataError(f"int16_divisor={int16_divisor}: must be > 0; fix: pass 300 for NSD betas")
    available = list_raw_subjects(raw)
    if not available:
        raise DataError(f"{raw}: no subject folders (sub-*/trials.tsv); fix: point raw_dir at the dataset root")
    if subjects is None:
        subjects = available
    subjects = list(subjects)
    unknown = [s for s in subjects if s not in available]
    if unknown:
        raise DataError(f"{raw}: subject(s) {unknown} have no data (available: {available}); "
                        f"fix: choose from the available subjects or add sub-XX/trials.tsv")
    if len(set(subjects)) != len(subjects):
        raise DataError(f"subjects={subjects}: duplicates; fix: list each subject once")

    img_path = Path(image_embeddings) if Path(image_embeddings).is_absolute() else raw / image_embeddings
    txt_path = None
    if text_embeddings is not None:
        p = Path(text_embeddings) if Path(text_embeddings).is_absolute() else raw / text_embeddings
        txt_path = p if p.is_file() else None
    subs = [_scan_subject(raw, sid) for sid in subjects]
    params = {"subjects": subjects, "val_fraction": float(val_fraction), "int16_divisor": float(int16_divisor),
              "image_embeddings": str(image_embeddings), "text_embeddings": str(text_embeddings) if txt_path else None,
              "zscore": bool(zscore), "seed": int(seed)}
    fp = _fingerprint(raw, subs, [img_path] + ([txt_path] if txt_path else []), params)

    if prepared_is_current(out, fp, overwrite):
        return out

    # ---- validate everything cheap before writing anything
    stimuli = read_tsv(raw / "stimuli.tsv", {"stimulus_id": str, "image": str, "shared": int}, what="stimulus table")
    srel = "stimuli.tsv"
    if len(stimuli) == 0:
        raise DataError(f"{srel}: no stimuli; fix: list one row per stimulus")
    if stimuli["stimulus_id"].duplicated().any():
        dups = stimuli.loc[stimuli["stimulus_id"].duplicated(), "stimulus_id"].tolist()
        raise DataError(f"{srel}: duplicate stimulus_id(s) {_fmt_list(dups)}; fix: one row per stimulus")
    if not stimuli["shared"].isin([0, 1]).all():
        raise DataError(f"{srel}: column 'shared' must be 0 or 1; fix: mark the shared test stimuli with 1")
    stim_ids = stimuli["stimulus_id"].to_numpy().astype(str)
    stim_index = {s: i for i, s in enumerate(stim_ids.tolist())}
    shared = stimuli["shared"].to_numpy().astype(bool)
    if not img_path.is_file():
        raise DataError(f"{image_embeddings}: image embeddings not found in {raw}; fix: write an npz with arrays "
                        f"'ids' and 'embeddings' or pass image_embeddings=<path>")
    for s in subs:
        _validate_subject(raw, s, stim_index)

    # ---- splits
    plans = {}
    for s in subs:
        t = s.trials
        st = t["stim"].to_numpy()
        is_test = shared[st]
        own = np.unique(st[~is_test])
        rng = np.random.default_rng([int(seed), zlib.crc32(s.sid.encode())])
        n_val = int(round(float(val_fraction) * own.size))
        trel = f"{s.sid}/trials.tsv"
        if n_val == 0:
            raise DataError(f"{trel}: val split is empty (val_fraction={val_fraction} of {own.size} non-shared "
                            f"stimuli rounds to 0); fix: raise val_fraction or add stimuli")
        if n_val >= own.size:
            raise DataError(f"{trel}: train split is empty (val_fraction={val_fraction} takes all {own.size} "
                            f"non-shared stimuli); fix: lower val_fraction")
        val_stims = np.sort(rng.choice(own, size=n_val, replace=False))
        is_val = np.isin(st, val_stims)
        if not is_test.any():
            raise DataError(f"{trel}: test split is empty (no trial shows a stimulus with shared=1 in stimuli.tsv); "
                            f"fix: mark the shared test stimuli with shared=1 in stimuli.tsv")
        split = np.where(is_test, 2, np.where(is_val, 1, 0))
        plans[s.sid] = split

    text_dim = None
    with atomic_dir(out, overwrite=overwrite) as tmp:
        with open(tmp / "stimuli.tsv", "w") as f:
            f.write("stimulus_id\tshared\timage\n")
            for sid_, sh, im in zip(stim_ids, shared, stimuli["image"].tolist()):
                f.write(f"{sid_}\t{int(sh)}\t{im}\n")
        img_shape = _copy_embeddings(img_path, str(image_embeddings), stim_ids, tmp / "image_embedding.npy", None)
        if txt_path is not None:
            text_dim = _copy_embeddings(txt_path, str(text_embeddings), stim_ids, tmp / "text_embedding.npy", 2)[0]
        sub_info = {}
        for s in subs:
            sub_info[s.sid] = _prepare_subject(s, plans[s.sid], tmp / s.sid, float(int16_divisor), bool(zscore),
                                               int(chunk_mb * (1 << 20)))
        manifest = {
            "format_version": FORMAT_VERSION,
            "subjects": sub_info,
            "image_embedding_shape": list(img_shape),
            "text_embedding_dim": text_dim,
            "n_stimuli": int(len(stim_ids)),
            "fingerprint": fp,
            "parameters": params,
            "raw_dir": str(raw.resolve()),
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def _prepare_subject(s: _Subject, split: np.ndarray, d: Path, int16_divisor: float, zscore: bool,
                     chunk_bytes: int) -> dict:
    d.mkdir()
    t = s.trials
    sess_col = t["session"].to_numpy()
    trial_col = t["trial"].to_numpy()
    stim_col = t["stim"].to_numpy()
    mask = s.mask
    V = int(mask.sum())
    np.save(d / "voxel_ijk.npy", np.argwhere(mask).astype(np.int32))
    np.save(d / "affine.npy", s.affine)
    if s.ncsnr_path is not None:
        np.save(d / "ncsnr.npy", _read_ncsnr(s))
    train = np.flatnonzero(split == 0)  # already in (session, trial) order
    np.save(d / "train_stimulus.npy", stim_col[train].astype(np.int64))
    np.save(d / "train_session.npy", sess_col[train].astype(np.int32))
    np.save(d / "train_trial.npy", trial_col[train].astype(np.int32))
    avg_rows = {}
    for k, name in ((1, "val"), (2, "test")):
        uniq = np.unique(stim_col[split == k])
        np.save(d / f"{name}_stimulus.npy", uniq.astype(np.int64))
        avg_rows[k] = {int(x): i for i, x in enumerate(uniq.tolist())}

    sessions = sorted(set(sess_col.tolist()))
    # pooled training statistics, only needed for sessions with < 2 training trials
    n_train_sess = {ss: int(np.sum((sess_col == ss) & (split == 0))) for ss in sessions}
    pooled = None
    if zscore and any(n < 2 for n in n_train_sess.values()):
        if train.size < 2:
            raise DataError(f"{s.sid}/trials.tsv: fewer than 2 training trials, cannot z-score; "
                            f"fix: lower val_fraction or add training trials")
        tot, tot2, cnt = np.zeros(V), np.zeros(V), 0
        for ss in sessions:
            sel = (sess_col == ss) & (split == 0)
            if not sel.any():
                continue
            x = _read_session(s.sessions[ss], f"{s.sid}/{s.sessions[ss].name}", mask, int(trial_col[sess_col == ss]
                              .max()), int16_divisor, chunk_bytes)[trial_col[sel] - 1].astype(np.float64)
            tot += x.sum(0)
            tot2 += (x * x).sum(0)
            cnt += x.shape[0]
        mean = tot / cnt
        std = np.sqrt(np.maximum(tot2 / cnt - mean * mean, 0.0))
        std[std < 1e-8] = 1.0
        pooled = (mean, std)

    acc = {k: RowAccumulator(d / f".{k}_sums.tmp", len(avg_rows[k]), V) for k in (1, 2)}
    try:
        with NpyRowWriter(d / "train_brain.npy", (train.size, V), np.float16) as w:
            for ss in sessions:
                rows = np.flatnonzero(sess_col == ss)
                p = s.sessions[ss]
                x = _read_session(p, f"{s.sid}/{p.name}", mask, int(trial_col[rows].max()), int16_divisor, chunk_bytes)
                x = x[trial_col[rows] - 1]
                sp = split[rows]
                if zscore:
                    mean, std = _zscore_stats(x[sp == 0]) if n_train_sess[ss] >= 2 else pooled
                    x = ((x - mean) / std).astype(np.float32)
                np.clip(x, -_F16_MAX, _F16_MAX, out=x)
                w.append(x[sp == 0].astype(np.float16))
                for k in (1, 2):
                    sel = sp == k
                    if sel.any():
                        acc[k].add(np.array([avg_rows[k][int(v)] for v in stim_col[rows][sel]]), x[sel])
                del x
        for k, name in ((1, "val"), (2, "test")):
            with NpyRowWriter(d / f"{name}_brain.npy", (len(avg_rows[k]), V), np.float16) as w:
                for m in acc[k].iter_means():
                    w.append(np.clip(m, -_F16_MAX, _F16_MAX).astype(np.float16))
    finally:
        for a in acc.values():
            a.close()
    return {"n_voxels": V, "n_train": int(train.size), "n_val": len(avg_rows[1]), "n_test": len(avg_rows[2]),
            "sessions": [int(x) for x in sessions]}
