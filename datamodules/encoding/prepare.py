"""``prepare`` for encoding models: the fMRI prepare, plus what the noise ceiling and ROI scores need.

:func:`prepare_encoding` runs :func:`~litbrain.datamodules.prepare_fmri` (masking, per-session
z-scoring with training statistics, repeat-averaged test rows; the text targets are the
description embeddings) and then writes, per subject, beside its shards::

    <out>/sub-XX/repeats_brain.npy     (T, V) float16  single-trial z-scored betas of the test stimuli shown
                                       at least twice (same z-scoring as the test rows: their mean per
                                       stimulus is ``test_brain.npy``)
    <out>/sub-XX/repeats_stimulus.npy  (T,) int64      stimulus index of each of those trials
    <out>/sub-XX/roi.npy               (V,) int16      the mask's label of each voxel (0/1 for a binary mask)
    <out>/descriptions.tsv             stimulus_id, description (copied)
    <out>/encoding.json                format, fingerprint (of manifest.json), per subject: grid_shape,
                                       n_repeat_trials, roi_names

Raw inputs beyond prepare's: ``descriptions.tsv`` (one detailed description per stimulus, e.g. from a
captioning LLM), their embeddings as an npz (``ids``, ``embeddings``; e.g. ``embed-captions`` run on
them) and optionally ``sub-XX/roi_labels.tsv`` (label, name).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np

from litbrain.errors import DataError
from litbrain.utils.io import atomic_file, atomic_write_text

from ..fmri.prepare import _read_session, _scan_subject, _validate_subject, _zscore_stats, prepare_fmri
from ..io import _fmt_list, read_tsv

__all__ = ["prepare_encoding", "ENCODING_FORMAT", "read_encoding_info"]

ENCODING_FORMAT = "litbrain-encoding/1"


def read_encoding_info(data_dir: str | os.PathLike) -> dict:
    """``encoding.json`` of a dataset prepared by :func:`prepare_encoding` (one-line DataError otherwise)."""
    path = Path(data_dir) / "encoding.json"
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        raise DataError(f"{path}: missing or unreadable; fix: prepare the data with `litbrain encoding prepare`") \
            from None
    if info.get("format") != ENCODING_FORMAT:
        raise DataError(f"{path}: format {info.get('format')!r} is not {ENCODING_FORMAT!r}; fix: re-run "
                        f"`litbrain encoding prepare --overwrite true`")
    return info


def _check_descriptions(raw: Path, descriptions: str) -> Path:
    path = Path(descriptions) if Path(descriptions).is_absolute() else raw / descriptions
    stim = read_tsv(raw / "stimuli.tsv", {"stimulus_id": str}, what="stimulus table")
    table = read_tsv(path, {"stimulus_id": str, "description": str}, what="descriptions")
    missing = sorted(set(stim["stimulus_id"]) - set(table["stimulus_id"]))
    if missing:
        raise DataError(f"{path}: no description for {len(missing)} stimulus id(s) of stimuli.tsv "
                        f"({_fmt_list(missing)}); fix: describe every stimulus (one row per stimulus_id)")
    return path


def _roi_names(sub_dir: Path, labels: np.ndarray) -> dict[str, str]:
    names = {int(v): f"roi-{int(v)}" for v in np.unique(labels) if v != 0}
    f = sub_dir / "roi_labels.tsv"
    if f.is_file():
        t = read_tsv(f, {"label": int, "name": str}, what="ROI names")
        names.update({int(a): str(b) for a, b in zip(t["label"], t["name"]) if int(a) in names})
    return {str(k): v for k, v in names.items()}


def _repeat_trials(raw: Path, out: Path, sid: str, stim_index: dict[str, int], shared: np.ndarray,
                   int16_divisor: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[int, ...], np.ndarray]:
    """Single-trial betas of repeated test stimuli, z-scored exactly as prepare did; and the mask's labels."""
    import nibabel as nib

    s = _scan_subject(raw, sid)
    _validate_subject(raw, s, stim_index)
    labels = np.asarray(nib.load(s.mask_path).dataobj)
    labels = np.nan_to_num(labels.reshape(s.mask.shape).astype(np.float64)).astype(np.int64)[s.mask]
    t = s.trials
    st = t["stim"].to_numpy()
    test = shared[st]
    counts = np.bincount(st[test], minlength=shared.size)
    rep = test & (counts[st] >= 2)
    sd = out / sid
    train_keys = set(zip(np.load(sd / "train_session.npy").tolist(), np.load(sd / "train_trial.npy").tolist()))
    is_train = np.array([(a, b) in train_keys for a, b in zip(t["session"].tolist(), t["trial"].tolist())])
    chunk = 256 << 20
    V = int(s.mask.sum())
    pooled = None
    rows, stims = [], []
    for sess in sorted(set(t.loc[rep, "session"].tolist())):
        sel = (t["session"] == sess).to_numpy()
        p = s.sessions[sess]
        x = _read_session(p, f"{sid}/{p.name}", s.mask, int(t.loc[sel, "trial"].max()), int16_divisor, chunk)
        tr = t.loc[sel & is_train, "trial"].to_numpy() - 1
        if tr.size >= 2:
            mean, std = _zscore_stats(x[tr])
        else:  # prepare's fallback: the subject's pooled training statistics
            if pooled is None:
                tot, tot2, cnt = np.zeros(V), np.zeros(V), 0
                for ss in sorted(set(t.loc[is_train, "session"].tolist())):
                    m = (t["session"] == ss).to_numpy()
                    q = s.sessions[ss]
                    xx = _read_session(q, f"{sid}/{q.name}", s.mask, int(t.loc[m, "trial"].max()), int16_divisor,
                                       chunk)[t.loc[m & is_train, "trial"].to_numpy() - 1].astype(np.float64)
                    tot, tot2, cnt = tot + xx.sum(0), tot2 + (xx * xx).sum(0), cnt + xx.shape[0]
                mean = tot / cnt
                std = np.sqrt(np.maximum(tot2 / cnt - mean * mean, 0.0))
                std[std < 1e-8] = 1.0
                pooled = (mean, std)
            mean, std = pooled
        keep = sel & rep
        rows.append(((x[t.loc[keep, "trial"].to_numpy() - 1] - mean) / std).astype(np.float32))
        stims.append(st[keep])
    trials = np.concatenate(rows) if rows else np.zeros((0, V), np.float32)
    stim = np.concatenate(stims) if stims else np.zeros(0, np.int64)
    return trials, stim.astype(np.int64), labels, tuple(int(v) for v in s.mask.shape), s.affine


def prepare_encoding(
    raw_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    subjects: list[str] | None = None,
    val_fraction: float = 0.1,
    int16_divisor: float = 300.0,
    image_embeddings: str = "embeddings/image.npz",
    descriptions: str = "descriptions.tsv",
    description_embeddings: str = "embeddings/description.npz",
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Prepare a raw fMRI dataset for encoding models; return ``out_dir``.

    Args:
        raw_dir: Raw dataset (prepare's layout) with ``descriptions.tsv`` and their embeddings.
        out_dir: Prepared dataset to write (prepare's shards + the files listed in the module doc).
        subjects: Subject ids (``None`` = all).
        val_fraction: Share of each subject's own stimuli held out for validation.
        int16_divisor: Divisor of unscaled integer betas (NSD: 300).
        image_embeddings: npz of the image features (``ids``, ``embeddings``), relative to raw_dir or absolute.
        descriptions: TSV (stimulus_id, description), one detailed description per stimulus.
        description_embeddings: npz of the descriptions' text embeddings (the alignment targets).
        seed: Seed of the val split.
        overwrite: Replace an ``out_dir`` prepared from other inputs.
    """
    raw = Path(raw_dir)
    if not raw.is_dir():
        raise DataError(f"{raw}: raw data folder not found; fix: pass the folder holding stimuli.tsv and sub-XX/")
    desc_path = _check_descriptions(raw, descriptions)
    emb = Path(description_embeddings) if Path(description_embeddings).is_absolute() else raw / description_embeddings
    if not emb.is_file():
        raise DataError(f"{emb}: description embeddings not found; fix: embed descriptions.tsv with a text encoder "
                        f"(npz with arrays 'ids' and 'embeddings') or pass description_embeddings=<path>")
    out = prepare_fmri(raw, out_dir, subjects=subjects, val_fraction=val_fraction, int16_divisor=int16_divisor,
                       image_embeddings=image_embeddings, text_embeddings=str(description_embeddings), zscore=True, seed=seed,
                       overwrite=overwrite)
    manifest = json.loads((out / "manifest.json").read_text())
    if not manifest.get("text_embedding_dim"):  # prepare skips a text file it cannot find: here it is required
        raise DataError(f"{out / 'manifest.json'}: prepared without description embeddings; fix: re-run with "
                        f"--overwrite true and description_embeddings={emb}")
    info_path = out / "encoding.json"
    if info_path.is_file():
        try:
            if json.loads(info_path.read_text()).get("fingerprint") == manifest["fingerprint"]:
                return out
        except ValueError:
            pass
    stimuli = read_tsv(raw / "stimuli.tsv", {"stimulus_id": str, "shared": int}, what="stimulus table")
    stim_index = {s: i for i, s in enumerate(stimuli["stimulus_id"].tolist())}
    shared = stimuli["shared"].to_numpy().astype(bool)
    info = {"format": ENCODING_FORMAT, "fingerprint": manifest["fingerprint"], "subjects": {}}
    for sid in manifest["subjects"]:
        trials, stim, labels, grid, _ = _repeat_trials(raw, out, sid, stim_index, shared, float(int16_divisor))
        for name, arr in (("repeats_brain", trials.astype(np.float16)), ("repeats_stimulus", stim),
                          ("roi", labels.astype(np.int16))):
            with atomic_file(out / sid / f"{name}.npy") as tmp:
                with open(tmp, "wb") as f:
                    np.save(f, arr)
        info["subjects"][sid] = {"grid_shape": list(grid), "n_repeat_trials": int(trials.shape[0]),
                                 "n_repeated_stimuli": int(np.unique(stim).size),
                                 "roi_names": _roi_names(raw / sid, labels)}
    with atomic_file(out / "descriptions.tsv") as tmp:
        shutil.copyfile(desc_path, tmp)
    atomic_write_text(info_path, json.dumps(info, indent=1))
    return out
