"""``fmri prepare-nsd``: the Natural Scenes Dataset in its own layout -> the raw layout ``prepare`` reads.

NSD as distributed (paths relative to the NSD root; the names are NSD's)::

    nsddata/experiments/nsd/nsd_expdesign.mat       masterordering (1 x 30000): trial g (1-based) shows the
                                                    subject's image masterordering[g] (1-based, of 10000);
                                                    subjectim (8 x 10000): 1-based nsdId of each subject's
                                                    images; sharedix (1 x 1000): 1-based nsdIds of shared1000
    nsddata/experiments/nsd/nsd_stim_info_merged.csv nsdId (0-based), cocoId, cocoSplit, shared1000,
                                                    subjectK_repR (1-based trial of the R-th showing, 0 = none)
    nsddata_betas/ppdata/subjXX/<space>/<betas>/betas_sessionNN.nii.gz   4D (X,Y,Z,750) int16 x300, or
                                                    betas_sessionNN.hdf5 (dataset 'betas', h5py shape (750,Z,Y,X))
    nsddata_betas/ppdata/subjXX/<space>/<betas>/ncsnr.nii.gz             3D noise-ceiling SNR
    nsddata/ppdata/subjXX/<space>/roi/<roi>.nii.gz  3D labels: -1 outside the brain, 0, 1.. (nsdgeneral: 1 = ROI)
    nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5    dataset 'imgBrick' (73000, 425, 425, 3) uint8, row = nsdId
    <coco_annotations>/captions_{train,val}2017.json COCO 2017 captions, joined by cocoId

Trial ``t`` (1..750) of session ``s`` of subject ``k`` is NSD trial ``g = (s-1)*750 + t``; it shows
``nsdId = subjectim[k-1, masterordering[g-1]-1] - 1`` (0-based, the imgBrick row and the csv's nsdId).
When the csv has the ``subjectK_repR`` columns, every trial is checked against them too.

What :func:`prepare_nsd` writes (the raw layout of :mod:`.prepare`; ``litbrain fmri prepare`` reads it)::

    <out>/stimuli.tsv     stimulus_id (nsdNNNNN), image, shared (1 = in sharedix: prepare's test split),
                          nsd_id, coco_id, coco_split -- one row per image that a chosen trial shows
    <out>/captions.tsv    stimulus_id, caption   (every COCO caption of the image)
    <out>/images/nsdNNNNN.png                     imgBrick rows, read row by row (never the whole brick)
    <out>/sub-XX/mask.nii.gz                      the ROI as 0/1 (chosen labels = 1; -1 and 0 = outside)
    <out>/sub-XX/ncsnr.nii.gz                     link to NSD's ncsnr (prepare keeps it masked: ncsnr.npy)
    <out>/sub-XX/betas_sessionNN.nii.gz           link to NSD's session file (or the .hdf5 streamed to NIfTI)
    <out>/sub-XX/trials.tsv                       session, trial (1-based volume), stimulus_id, nsd_id, nsd_trial
    <out>/nsd.json                                what was read, counts, parameters, fingerprint

Nothing big is held in memory: session files are linked (or, for .hdf5, copied ``chunk_mb`` at a
time), images go from the brick to PNG a few rows at a time and the COCO files are streamed an
annotation at a time, keeping the captions of the chosen images only; so the peak RSS does not
grow with the number of sessions or images (``litbrain fmri bench-nsd`` measures it). Everything is checked before anything is written; the
output appears whole (temporary folder, then rename) and a second call with the same inputs and
parameters returns at once. Image embeddings then come from ``litbrain embed-images`` and
``litbrain embed-captions`` on ``<out>``, and ``litbrain fmri prepare`` shards it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from litbrain.errors import DataError
from litbrain.utils.io import atomic_dir, fmt_list

from ..io import output_is_current

__all__ = [
    "prepare_nsd", "read_expdesign", "trial_nsd_ids", "nsd_stimulus_id", "NsdDesign",
    "EXPDESIGN", "STIM_INFO", "BRICK", "COCO_DIR", "betas_dir", "roi_path", "session_file",
]

EXPDESIGN = "nsddata/experiments/nsd/nsd_expdesign.mat"
STIM_INFO = "nsddata/experiments/nsd/nsd_stim_info_merged.csv"
BRICK = "nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5"
COCO_DIR = "nsddata_stimuli/stimuli/nsd/annotations"  # where nsd_access puts COCO's annotations
NSD_TRIALS_PER_SESSION = 750
N_NSD_SUBJECTS = 8
FORMAT = "litbrain-nsd-raw/1"
_SESSION_RE = re.compile(r"^betas_session(\d+)\.(nii\.gz|nii|hdf5)$")
_GRID_ATOL, _GRID_RTOL = 1e-3, 1e-4  # prepare's affine tolerance


def betas_dir(subject: int, space: str = "func1pt8mm", betas: str = "betas_fithrf_GLMdenoise_RR") -> str:
    """NSD's folder of one subject's single-trial betas (relative to the NSD root)."""
    return f"nsddata_betas/ppdata/subj{subject:02d}/{space}/{betas}"


def roi_path(subject: int, space: str = "func1pt8mm", roi: str = "nsdgeneral") -> str:
    """NSD's ROI file of one subject (relative to the NSD root)."""
    return f"nsddata/ppdata/subj{subject:02d}/{space}/roi/{roi}.nii.gz"


def session_file(session: int, fmt: Literal["nifti", "hdf5"] = "nifti") -> str:
    return f"betas_session{session:02d}." + ("nii.gz" if fmt == "nifti" else "hdf5")


def nsd_stimulus_id(nsd_id: int) -> str:
    """litbrain's stimulus id of a 0-based nsdId: ``nsd00042``."""
    return f"nsd{int(nsd_id):05d}"


# ----------------------------------------------------------------------------- the design
@dataclass(frozen=True)
class NsdDesign:
    """nsd_expdesign.mat, MATLAB's 1-based values kept as they are (int64)."""

    masterordering: np.ndarray  # (n_trials,) 1-based index into a subject's images
    subjectim: np.ndarray  # (8, n_subject_images) 1-based nsdId
    sharedix: np.ndarray  # (n_shared,) 1-based nsdId


def _integral(a: np.ndarray, rel: str, name: str, lo: int, hi: int | None) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind not in "iuf" or a.size == 0:
        raise DataError(f"{rel}: '{name}' is not a numeric array (dtype {a.dtype}, shape {a.shape}); "
                        f"fix: use NSD's own nsd_expdesign.mat")
    if a.dtype.kind == "f" and (not np.all(np.isfinite(a)) or np.any(a != np.round(a))):
        raise DataError(f"{rel}: '{name}' holds non-integer values; fix: use NSD's own nsd_expdesign.mat")
    a = a.astype(np.int64)
    bad = (a < lo) | ((a > hi) if hi is not None else False)
    if bad.any():
        raise DataError(f"{rel}: '{name}' holds {int(bad.sum())} value(s) outside {lo}..{hi if hi else 'inf'} "
                        f"(first: {int(a[bad][0])}); these are 1-based MATLAB indices; fix: use NSD's own "
                        f"nsd_expdesign.mat, unmodified")
    return a


def read_expdesign(path: str | os.PathLike, rel: str | None = None) -> NsdDesign:
    """Read ``masterordering``, ``subjectim`` and ``sharedix`` of nsd_expdesign.mat (MATLAB v5 through
    scipy.io, v7.3 through h5py), checked for shape and 1-based range."""
    path = Path(path)
    rel = rel or str(path)
    need = ("masterordering", "subjectim", "sharedix")
    if not path.is_file():
        raise DataError(f"{rel}: not found; fix: download nsddata/experiments/nsd/nsd_expdesign.mat or point "
                        f"nsd_dir at the NSD root")
    import h5py

    arrays: dict[str, np.ndarray] = {}
    try:
        if h5py.is_hdf5(path):  # MATLAB v7.3: HDF5, arrays stored transposed
            with h5py.File(path, "r") as f:
                found = sorted(k for k in f.keys() if not k.startswith("#"))
                arrays = {k: np.asarray(f[k][()]).T for k in need if k in f}
        else:
            from scipy.io import loadmat, whosmat

            found = sorted(name for name, _, _ in whosmat(path))
            arrays = loadmat(path, variable_names=[k for k in need if k in found])
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"{rel}: cannot be read as a MATLAB file ({type(exc).__name__}: {exc}); fix: re-download "
                        f"nsd_expdesign.mat (the file is truncated or not a .mat)") from exc
    for k in need:
        if k not in arrays:
            raise DataError(f"{rel}: no variable '{k}' (found: {', '.join(found) or 'none'}); fix: use NSD's own "
                            f"nsd_expdesign.mat, which holds masterordering, subjectim and sharedix")
    subjectim = np.asarray(arrays["subjectim"])
    if subjectim.ndim != 2 or subjectim.shape[0] != N_NSD_SUBJECTS:
        raise DataError(f"{rel}: 'subjectim' has shape {subjectim.shape}, expected ({N_NSD_SUBJECTS}, n_images) "
                        f"(NSD: 8 x 10000); fix: use NSD's own nsd_expdesign.mat")
    subjectim = _integral(subjectim, rel, "subjectim", 1, None)
    mo = np.asarray(arrays["masterordering"])
    if mo.ndim > 2 or (mo.ndim == 2 and 1 not in mo.shape):
        raise DataError(f"{rel}: 'masterordering' has shape {mo.shape}, expected a vector (NSD: 1 x 30000); "
                        f"fix: use NSD's own nsd_expdesign.mat")
    mo = _integral(mo.ravel(), rel, "masterordering", 1, subjectim.shape[1])
    shared = _integral(np.asarray(arrays["sharedix"]).ravel(), rel, "sharedix", 1, None)
    return NsdDesign(masterordering=mo, subjectim=subjectim, sharedix=shared)


def trial_nsd_ids(design: NsdDesign, subject: int, session: int,
                  trials_per_session: int = NSD_TRIALS_PER_SESSION) -> np.ndarray:
    """0-based nsdIds shown on trials 1..trials_per_session of ``session`` (1-based) of ``subject`` (1-8).

    NSD trial ``g = (session-1)*trials_per_session + t`` shows the subject's image
    ``masterordering[g]`` (1-based), whose nsdId is ``subjectim[subject, that]`` (1-based);
    the arrays are indexed 0-based here, hence every ``- 1``.
    """
    g = (int(session) - 1) * int(trials_per_session) + np.arange(1, int(trials_per_session) + 1)
    image_of_subject = design.masterordering[g - 1]
    return design.subjectim[int(subject) - 1, image_of_subject - 1] - 1


# ----------------------------------------------------------------------------- readers
def _subject_number(x: int | str) -> int:
    m = re.fullmatch(r"(?:subj|sub-?)?0*(\d+)", str(x).strip())
    k = int(m.group(1)) if m else -1
    if not 1 <= k <= N_NSD_SUBJECTS:
        raise DataError(f"subjects: {x!r} is no NSD subject; fix: pass numbers 1-8 (or subj01 ... subj08)")
    return k


def _read_stim_info(path: Path, rel: str):
    import pandas as pd

    if not path.is_file():
        raise DataError(f"{rel}: not found; fix: download nsddata/experiments/nsd/nsd_stim_info_merged.csv")
    try:
        df = pd.read_csv(path, index_col=0, low_memory=False)
    except Exception as exc:
        raise DataError(f"{rel}: cannot be parsed as CSV ({type(exc).__name__}: {exc}); fix: re-download it") from exc
    missing = [c for c in ("nsdId", "cocoId", "cocoSplit") if c not in df.columns]
    if missing:
        raise DataError(f"{rel}: missing column(s) {missing} (found {fmt_list(list(df.columns))}); fix: use NSD's "
                        f"nsd_stim_info_merged.csv")
    nsd = pd.to_numeric(df["nsdId"], errors="coerce").to_numpy()
    if not np.all(np.isfinite(nsd)) or np.any(nsd < 0) or np.any(nsd != np.round(nsd)):
        raise DataError(f"{rel}: column 'nsdId' must hold 0-based integers; fix: use NSD's nsd_stim_info_merged.csv")
    if pd.Series(nsd).duplicated().any():
        raise DataError(f"{rel}: duplicate nsdId(s); fix: use NSD's nsd_stim_info_merged.csv (one row per image)")
    return df.assign(nsdId=nsd.astype(np.int64)).set_index("nsdId", drop=False)


def _load_nifti(path: Path, rel: str):
    import nibabel as nib

    try:
        return nib.load(path)
    except Exception as exc:
        raise DataError(f"{rel}: cannot be read as NIfTI ({type(exc).__name__}: {exc}); fix: the file is truncated "
                        f"or corrupt -- re-download it") from exc


@dataclass
class _Session:
    number: int
    path: Path
    fmt: str  # "nifti" | "hdf5"


@dataclass
class _SubjectPlan:
    k: int
    sid: str
    betas_rel: str
    sessions: list[_Session]
    roi_path: Path
    roi_rel: str
    ncsnr_path: Path | None
    trials: dict[int, np.ndarray] = field(default_factory=dict)  # session -> nsdIds of its trials
    mask: np.ndarray | None = None
    affine: np.ndarray | None = None


def _grid_of_session(s: _Session, rel: str, tps: int) -> tuple[tuple[int, int, int], np.ndarray | None]:
    """(X, Y, Z) and the affine (None for .hdf5) of a session file, read from its header only."""
    if s.fmt == "nifti":
        img = _load_nifti(s.path, rel)
        shape = tuple(int(v) for v in img.shape)
        if len(shape) != 4:
            raise DataError(f"{rel}: betas must be 4D (X, Y, Z, trials), got shape {shape}; fix: re-download it")
        n, grid, affine = shape[3], shape[:3], np.asarray(img.affine, dtype=np.float64)
    else:
        import h5py

        try:
            with h5py.File(s.path, "r") as f:
                if "betas" not in f:
                    raise DataError(f"{rel}: no dataset 'betas' (found {list(f.keys())}); fix: re-download it or use "
                                    f"the .nii.gz session file")
                shape = tuple(int(v) for v in f["betas"].shape)
        except DataError:
            raise
        except Exception as exc:
            raise DataError(f"{rel}: cannot be read as HDF5 ({type(exc).__name__}: {exc}); fix: re-download it") \
                from exc
        if len(shape) != 4:
            raise DataError(f"{rel}: 'betas' must be 4D (trials, Z, Y, X in h5py), got shape {shape}; fix: re-download")
        n, grid, affine = shape[0], shape[:0:-1], None  # h5py sees MATLAB's (X,Y,Z,T) reversed
    if n != tps:
        raise DataError(f"{rel}: {n} trials, expected trials_per_session={tps} (NSD: 750); fix: re-download the "
                        f"file or pass the right trials_per_session")
    return grid, affine


def _same_grid(shape_a, affine_a, shape_b, affine_b) -> bool:
    if tuple(shape_a) != tuple(shape_b):
        return False
    return affine_a is None or affine_b is None or np.allclose(affine_a, affine_b, atol=_GRID_ATOL, rtol=_GRID_RTOL)


def _fmt_grid(shape, affine) -> str:
    s = "x".join(str(v) for v in shape)
    return s if affine is None else f"{s}, voxel {np.round(np.abs(np.diag(affine)[:3]), 3).tolist()} mm, origin " \
                                   f"{np.round(affine[:3, 3], 2).tolist()}"


def _read_captions(paths: dict[str, Path], wanted: dict[str, set[int]]) -> dict[int, list[str]]:
    """COCO captions of the wanted cocoIds per split; only those are kept from each JSON file."""
    import ijson

    out: dict[int, list[str]] = {}
    for split in sorted(wanted):
        path = paths[split]
        if not path.is_file():
            raise DataError(f"{path}: not found (cocoSplit '{split}' of {len(wanted[split])} chosen image(s)); fix: "
                            f"download COCO 2017's annotations (annotations_trainval2017.zip) and pass "
                            f"coco_annotations=<its annotations folder>, or captions=false")
        want = wanted[split]
        try:
            # streamed one annotation at a time (ijson): captions_train2017.json is 92 MB, ~0.5 GB as Python objects
            with open(path, "rb") as f:
                for a in ijson.items(f, "annotations.item"):
                    cid = int(a["image_id"])
                    if cid in want:
                        out.setdefault(cid, []).append(" ".join(str(a["caption"]).split()))  # one line, no tabs
        except (KeyError, TypeError, ValueError, ijson.JSONError) as exc:
            raise DataError(f"{path}: not a COCO captions file ({type(exc).__name__}: {exc}); fix: use COCO 2017's "
                            f"captions_{split}.json") from exc
    return out


# ----------------------------------------------------------------------------- main entry
def prepare_nsd(
    nsd_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    subjects: list[int | str] | None = None,
    sessions: list[int] | dict[str, list[int]] | None = None,
    roi: str = "nsdgeneral",
    roi_labels: list[int] | None = None,
    space: str = "func1pt8mm",
    betas: str = "betas_fithrf_GLMdenoise_RR",
    betas_format: Literal["auto", "nifti", "hdf5"] = "auto",
    trials_per_session: int = NSD_TRIALS_PER_SESSION,
    coco_annotations: str | None = None,
    captions: bool = True,
    ncsnr: bool = True,
    image_size: int | None = None,
    copy_betas: bool = False,
    chunk_mb: float = 64.0,
    progress: bool = True,
    overwrite: bool = False,
) -> Path:
    """Read NSD in its own layout for any subjects and sessions; write the raw layout ``fmri prepare`` reads.

    Args:
        nsd_dir: The NSD root (holding nsddata/, nsddata_betas/, nsddata_stimuli/), as downloaded.
        out_dir: Raw dataset folder to create (stimuli.tsv, captions.tsv, images/, sub-XX/, nsd.json).
        subjects: NSD subjects, as numbers 1-8 (or ``subj01``); ``null`` = every subject with betas
            under ``nsddata_betas/ppdata``. ``subjK`` becomes ``sub-0K``.
        sessions: Sessions to read (1-based): one list for every subject, or per subject
            (``{"subj01": [1, 2], "subj02": [1]}``); ``null`` = every session file present.
        roi: ROI file name under ``nsddata/ppdata/subjXX/<space>/roi/`` (nsdgeneral, prf-visualrois,
            streams, ...), without ``.nii.gz``.
        roi_labels: Label values that form the mask; ``null`` = every value > 0 (-1 = outside the
            brain and 0 = outside the ROI are never in it).
        space: NSD's volume space of betas and ROI: ``func1pt8mm`` or ``func1mm``.
        betas: The betas version folder: ``betas_fithrf_GLMdenoise_RR`` (b3), ``betas_fithrf``,
            ``betas_assumehrf``.
        betas_format: Which session files to read: ``nifti`` (.nii.gz, linked), ``hdf5`` (.hdf5,
            streamed into .nii.gz on the ROI's grid), ``auto`` = the .nii.gz where present.
        trials_per_session: Trials per session file (NSD: 750).
        coco_annotations: Folder holding COCO 2017's ``captions_train2017.json`` and
            ``captions_val2017.json``; ``null`` = ``<nsd_dir>/nsddata_stimuli/stimuli/nsd/annotations``.
        captions: Write captions.tsv from COCO (every image must then have a caption).
        ncsnr: Link NSD's ``ncsnr.nii.gz`` beside the betas (``prepare`` keeps it masked, for the
            noise ceiling); it must exist on the betas' grid.
        image_size: Side (pixels) of the written PNGs; ``null`` = the brick's own (425).
        copy_betas: Copy the .nii.gz session files instead of symlinking them.
        chunk_mb: MiB of brick rows or .hdf5 betas read at a time.
        progress: Progress bars on stderr.
        overwrite: Replace an ``out_dir`` written from other inputs or parameters.

    Returns:
        The path of the raw dataset.

    Raises:
        DataError: on missing or bad NSD files, naming the file and the fix; ``out_dir`` is then
            left as it was.
    """
    root, out = Path(nsd_dir), Path(out_dir)
    if not root.is_dir():
        raise DataError(f"{root}: NSD folder not found; fix: pass the NSD root (holding nsddata/, nsddata_betas/, "
                        f"nsddata_stimuli/)")
    root = root.resolve()
    tps = int(trials_per_session)
    if tps < 1:
        raise DataError(f"trials_per_session={trials_per_session}: must be >= 1; fix: pass 750 for NSD")
    if betas_format not in ("auto", "nifti", "hdf5"):
        raise DataError(f"betas_format={betas_format!r}: unknown; fix: pass auto, nifti or hdf5")
    if image_size is not None and int(image_size) < 1:
        raise DataError(f"image_size={image_size}: must be >= 1 or null; fix: pass e.g. 224, or null for 425")
    coco = Path(coco_annotations) if coco_annotations else root / COCO_DIR

    plans = _plan_subjects(root, subjects, sessions, roi, space, betas, betas_format, ncsnr)
    coco_files = {s: coco / f"captions_{s}.json" for s in ("train2017", "val2017")}
    params = {"subjects": [p.k for p in plans], "sessions": {p.sid: [s.number for s in p.sessions] for p in plans},
              "roi": roi, "roi_labels": None if roi_labels is None else sorted(int(v) for v in roi_labels),
              "space": space, "betas": betas, "betas_format": betas_format, "trials_per_session": tps,
              "captions": bool(captions), "ncsnr": bool(ncsnr), "image_size": image_size,
              "copy_betas": bool(copy_betas)}
    files = [root / EXPDESIGN, root / STIM_INFO, root / BRICK, *(coco_files.values() if captions else [])]
    for p in plans:
        files += [p.roi_path, *([p.ncsnr_path] if p.ncsnr_path else []), *[s.path for s in p.sessions]]
    fp = _fingerprint(files, params)
    if output_is_current(out, fp, overwrite, _read_meta, made="written", foreign="was not written by prepare-nsd"):
        return out

    # ---- check everything before writing anything
    design = read_expdesign(root / EXPDESIGN, EXPDESIGN)
    info = _read_stim_info(root / STIM_INFO, STIM_INFO)
    n_design = design.masterordering.size
    for p in plans:
        for s in p.sessions:
            if s.number * tps > n_design:
                raise DataError(f"{p.betas_rel}/{s.path.name}: session {s.number} x {tps} trials runs past the "
                                f"{n_design} trials of masterordering in {EXPDESIGN}; fix: pass trials_per_session "
                                f"(NSD: 750) or leave session {s.number} out")
            p.trials[s.number] = trial_nsd_ids(design, p.k, s.number, tps)
        _check_against_stim_info(p, info, tps)
        _check_grids(root, p, roi_labels, tps)
    needed = np.unique(np.concatenate([t for p in plans for t in p.trials.values()]))
    unknown = needed[~np.isin(needed, info.index.to_numpy())]
    if unknown.size:
        raise DataError(f"{STIM_INFO}: no row for nsdId(s) {fmt_list(unknown.tolist())} that {EXPDESIGN} names; "
                        f"fix: use the csv and the .mat of the same NSD release")
    shared_ids = design.sharedix - 1
    if "shared1000" in info.columns:
        flagged = info.index.to_numpy()[info["shared1000"].astype(str).str.lower().isin(["true", "1"]).to_numpy()]
        if set(flagged.tolist()) != set(shared_ids.tolist()):
            raise DataError(f"{STIM_INFO}: column 'shared1000' marks {flagged.size} images, {EXPDESIGN} sharedix "
                            f"{shared_ids.size}, and they differ; fix: use the csv and the .mat of the same NSD release")
    is_shared = np.isin(needed, shared_ids)
    coco_id = info.loc[needed, "cocoId"].to_numpy()
    coco_split = info.loc[needed, "cocoSplit"].astype(str).to_numpy()
    brick_file, brick = _open_brick(root / BRICK, BRICK, int(needed.max()))
    try:
        caps: dict[int, list[str]] = {}
        if captions:
            wanted: dict[str, set[int]] = {}
            for c, s in zip(coco_id.tolist(), coco_split.tolist()):
                if s not in coco_files:
                    raise DataError(f"{STIM_INFO}: cocoSplit {s!r} for cocoId {c}; fix: use NSD's csv (cocoSplit "
                                    f"is train2017 or val2017)")
                wanted.setdefault(s, set()).add(int(c))
            caps = _read_captions(coco_files, wanted)
            for n, c, s in zip(needed.tolist(), coco_id.tolist(), coco_split.tolist()):
                if not caps.get(int(c)):
                    raise DataError(f"{coco_files[s]}: no caption for cocoId {c} (nsdId {n}, cocoSplit {s} in "
                                    f"{STIM_INFO}); fix: pass the COCO 2017 captions_{s}.json that holds it as "
                                    f"coco_annotations, or captions=false")

        with atomic_dir(out, overwrite=overwrite) as tmp:
            ids = [nsd_stimulus_id(n) for n in needed.tolist()]
            with open(tmp / "stimuli.tsv", "w") as f:
                f.write("stimulus_id\timage\tshared\tnsd_id\tcoco_id\tcoco_split\n")
                for sid, n, sh, c, s in zip(ids, needed.tolist(), is_shared.tolist(), coco_id.tolist(),
                                            coco_split.tolist()):
                    f.write(f"{sid}\timages/{sid}.png\t{int(sh)}\t{n}\t{c}\t{s}\n")
            if captions:
                with open(tmp / "captions.tsv", "w") as f:
                    f.write("stimulus_id\tcaption\n")
                    for sid, c in zip(ids, coco_id.tolist()):
                        for text in caps[int(c)]:
                            f.write(f"{sid}\t{text}\n")
            del caps
            sub_info = {}
            for p in plans:
                sub_info[p.sid] = _write_subject(p, tmp / p.sid, tps, bool(copy_betas), chunk_mb, progress)
            _write_images(brick, needed, ids, tmp / "images", image_size, chunk_mb, progress)
            meta = {"format": FORMAT, "fingerprint": fp, "parameters": params, "nsd_dir": str(root),
                    "subjects": sub_info, "n_stimuli": int(needed.size), "n_shared": int(is_shared.sum()),
                    "coco_annotations": str(coco) if captions else None}
            (tmp / "nsd.json").write_text(json.dumps(meta, indent=1))
    finally:
        brick_file.close()
    return out


def _read_meta(out: Path) -> dict | None:
    try:
        meta = json.loads((out / "nsd.json").read_text())
        return meta if meta.get("format") == FORMAT else None
    except Exception:
        return None


def _fingerprint(files: Sequence[Path], params: dict) -> str:
    entries = []
    for p in files:
        try:
            st = p.stat()
            entries.append([str(p), st.st_size, st.st_mtime_ns])
        except FileNotFoundError:
            entries.append([str(p), None, None])
    blob = json.dumps({"format": FORMAT, "files": entries, "params": params}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _plan_subjects(root: Path, subjects, sessions, roi: str, space: str, betas: str, betas_format: str,
                   ncsnr: bool) -> list[_SubjectPlan]:
    if subjects is None:
        base = root / "nsddata_betas" / "ppdata"
        found = sorted(int(m.group(1)) for d in (base.iterdir() if base.is_dir() else [])
                       if (m := re.fullmatch(r"subj0*(\d+)", d.name)) and (d / space / betas).is_dir())
        if not found:
            raise DataError(f"{root / 'nsddata_betas/ppdata'}: no subjXX/{space}/{betas}/ folder; fix: download the "
                            f"betas, point nsd_dir at the NSD root, or check space and betas")
        ks = found
    else:
        ks = [_subject_number(x) for x in subjects]
        if len(set(ks)) != len(ks):
            raise DataError(f"subjects={subjects}: duplicates; fix: list each subject once")
    if isinstance(sessions, dict):
        per = {_subject_number(k): [int(v) for v in vs] for k, vs in sessions.items()}
        extra = sorted(set(per) - set(ks))
        if extra:
            raise DataError(f"sessions: subject(s) {extra} are not in subjects {ks}; fix: add them to subjects or "
                            f"drop their session lists")
    else:
        per = {k: None if sessions is None else [int(v) for v in sessions] for k in ks}
    plans = []
    for k in ks:
        brel = betas_dir(k, space, betas)
        bdir = root / brel
        present: dict[int, dict[str, Path]] = {}
        for p in sorted(bdir.iterdir()) if bdir.is_dir() else []:
            m = _SESSION_RE.match(p.name)
            if m:
                present.setdefault(int(m.group(1)), {})["hdf5" if m.group(2) == "hdf5" else "nifti"] = p
        want = per.get(k)
        if want is None:
            want = sorted(n for n, fm in present.items() if betas_format == "auto" or betas_format in fm)
            if not want:
                kind = {"auto": ".nii.gz or .hdf5", "nifti": ".nii.gz", "hdf5": ".hdf5"}[betas_format]
                raise DataError(f"{brel}: no betas_sessionNN {kind} file; fix: download the betas of subj{k:02d} "
                                f"({space}/{betas}) or leave subject {k} out of subjects")
        if not want or min(want) < 1 or len(set(want)) != len(want):
            raise DataError(f"sessions={want} (subj{k:02d}): sessions are distinct numbers >= 1; fix: list e.g. [1, 2]")
        chosen = []
        for n in sorted(want):
            fm = present.get(n, {})
            pick = ("nifti" if "nifti" in fm else "hdf5" if "hdf5" in fm else None) if betas_format == "auto" \
                else (betas_format if betas_format in fm else None)
            if pick is None:
                name = session_file(n, "hdf5" if betas_format == "hdf5" else "nifti")
                raise DataError(f"{brel}/{name}: not found (session {n} of subj{k:02d} is asked for; present: "
                                f"{fmt_list(sorted(present)) or 'none'}); fix: download it, or leave session {n} "
                                f"out of sessions")
            chosen.append(_Session(n, fm[pick], pick))
        rrel = roi_path(k, space, roi)
        nc = bdir / "ncsnr.nii.gz"
        if ncsnr and not nc.is_file():
            raise DataError(f"{brel}/ncsnr.nii.gz: not found; fix: download it (the noise ceiling needs it) or pass "
                            f"ncsnr=false")
        plans.append(_SubjectPlan(k=k, sid=f"sub-{k:02d}", betas_rel=brel, sessions=chosen, roi_path=root / rrel,
                                  roi_rel=rrel, ncsnr_path=nc if ncsnr else None))
    return plans


def _check_against_stim_info(p: _SubjectPlan, info, tps: int) -> None:
    """Each trial's nsdId must list that trial among the csv's subjectK_repR columns (when present)."""
    cols = [c for c in info.columns if re.fullmatch(rf"subject{p.k}_rep\d+", str(c))]
    if not cols:
        return
    reps = info[cols].apply(lambda c: np.asarray(c, dtype=np.float64)).to_numpy()
    row_of = {int(n): i for i, n in enumerate(info.index.to_numpy().tolist())}
    for s, ids in p.trials.items():
        g = (s - 1) * tps + np.arange(1, tps + 1)
        rows = np.array([row_of.get(int(n), -1) for n in ids])
        ok = np.zeros(ids.size, dtype=bool)
        known = rows >= 0
        ok[known] = (reps[rows[known]] == g[known, None]).any(1)
        if not ok.all():
            t = int(np.flatnonzero(~ok)[0])
            raise DataError(f"{STIM_INFO}: trial {g[t]} (session {s}, trial {t + 1}) of subj{p.k:02d} shows nsdId "
                            f"{int(ids[t])} by {EXPDESIGN}, but that image's {', '.join(cols)} do not list it; fix: "
                            f"use the csv and the .mat of the same NSD release")


def _check_grids(root: Path, p: _SubjectPlan, roi_labels, tps: int) -> None:
    """The ROI, ncsnr and every session file share one grid; fill p.mask and p.affine."""
    if not p.roi_path.is_file():
        avail = sorted(q.name[:-7] for q in p.roi_path.parent.glob("*.nii.gz")) if p.roi_path.parent.is_dir() else []
        raise DataError(f"{p.roi_rel}: not found (ROIs there: {fmt_list(avail) or 'none'}); fix: pass one of them as "
                        f"roi, or download it")
    img = _load_nifti(p.roi_path, p.roi_rel)
    labels = np.asanyarray(img.dataobj)
    if labels.ndim == 4 and labels.shape[3] == 1:
        labels = labels[..., 0]
    if labels.ndim != 3:
        raise DataError(f"{p.roi_rel}: ROI must be 3D, got shape {labels.shape}; fix: pass a volume ROI file")
    labels = np.nan_to_num(np.asarray(labels, dtype=np.float64), nan=-1.0)
    mask = np.isin(labels, [float(v) for v in roi_labels]) if roi_labels is not None else labels > 0
    if not mask.any():
        vals = np.unique(labels)
        raise DataError(f"{p.roi_rel}: no voxel has label {roi_labels if roi_labels is not None else '> 0'} (labels "
                        f"present: {fmt_list(vals.astype(int).tolist())}); fix: choose roi_labels among them")
    p.mask, p.affine = mask, np.asarray(img.affine, dtype=np.float64)
    for s in p.sessions:
        rel = f"{p.betas_rel}/{s.path.name}"
        grid, affine = _grid_of_session(s, rel, tps)
        if not _same_grid(grid, affine, mask.shape, p.affine):
            raise DataError(f"{p.roi_rel}: grid {_fmt_grid(mask.shape, p.affine)} differs from {rel}'s "
                            f"{_fmt_grid(grid, affine)}; fix: use the ROI of the betas' space (nsddata/ppdata/"
                            f"subj{p.k:02d}/<space>/roi/, same space as the betas)")
    if p.ncsnr_path is not None:
        rel = f"{p.betas_rel}/ncsnr.nii.gz"
        nimg = _load_nifti(p.ncsnr_path, rel)
        shape = tuple(int(v) for v in nimg.shape)
        shape = shape[:3] if len(shape) == 4 and shape[3] == 1 else shape
        if not _same_grid(shape, np.asarray(nimg.affine), mask.shape, p.affine):
            raise DataError(f"{rel}: grid {_fmt_grid(shape, np.asarray(nimg.affine))} differs from {p.roi_rel}'s "
                            f"{_fmt_grid(mask.shape, p.affine)}; fix: use the ncsnr of the same space and betas version")


def _open_brick(path: Path, rel: str, max_id: int):
    import h5py

    if not path.is_file():
        raise DataError(f"{rel}: not found; fix: download nsddata_stimuli/stimuli/nsd/nsd_stimuli.hdf5 or point "
                        f"nsd_dir at the NSD root")
    try:
        f = h5py.File(path, "r")
    except Exception as exc:
        raise DataError(f"{rel}: cannot be read as HDF5 ({type(exc).__name__}: {exc}); fix: re-download it") from exc
    try:
        ds = f.get("imgBrick")
        if not isinstance(ds, h5py.Dataset):
            raise DataError(f"{rel}: no dataset 'imgBrick' (found: {', '.join(f.keys()) or 'none'}); fix: use NSD's "
                            f"nsd_stimuli.hdf5, whose 'imgBrick' holds the images (73000 x 425 x 425 x 3 uint8)")
        if ds.ndim != 4 or ds.shape[3] != 3 or ds.dtype != np.uint8:
            raise DataError(f"{rel}: 'imgBrick' is {ds.dtype} {ds.shape}, expected uint8 (n, H, W, 3); fix: use NSD's "
                            f"nsd_stimuli.hdf5")
        if ds.shape[0] <= max_id:
            raise DataError(f"{rel}: 'imgBrick' has {ds.shape[0]} rows but the chosen trials show nsdId {max_id}; "
                            f"fix: use the brick and the .mat of the same NSD release (73000 images)")
    except BaseException:
        f.close()
        raise
    return f, ds


def _progress(total: int, desc: str, unit: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, file=sys.stderr, mininterval=1.0,
                dynamic_ncols=True, leave=False)


def _write_subject(p: _SubjectPlan, d: Path, tps: int, copy: bool, chunk_mb: float, progress: bool) -> dict:
    import nibabel as nib

    d.mkdir()
    nib.save(nib.Nifti1Image(p.mask.astype(np.uint8), p.affine), d / "mask.nii.gz")
    if p.ncsnr_path is not None:
        _link_or_copy(p.ncsnr_path, d / "ncsnr.nii.gz", copy)
    with open(d / "trials.tsv", "w") as f:
        f.write("session\ttrial\tstimulus_id\tnsd_id\tnsd_trial\n")
        for s in p.sessions:
            ids = p.trials[s.number]
            for t, n in enumerate(ids.tolist(), start=1):
                f.write(f"{s.number}\t{t}\t{nsd_stimulus_id(n)}\t{n}\t{(s.number - 1) * tps + t}\n")
    to_convert = [s for s in p.sessions if s.fmt == "hdf5"]
    for s in p.sessions:
        if s.fmt == "nifti":
            suffix = ".nii.gz" if s.path.name.endswith(".gz") else ".nii"
            _link_or_copy(s.path, d / f"betas_session{s.number:02d}{suffix}", copy)
    if to_convert:
        with _progress(len(to_convert) * tps, f"{p.sid} hdf5 -> NIfTI", "trial", progress) as bar:
            for s in to_convert:
                _hdf5_to_nifti(s.path, d / f"betas_session{s.number:02d}.nii.gz", p.affine, chunk_mb, bar)
    return {"nsd_subject": f"subj{p.k:02d}", "sessions": [s.number for s in p.sessions],
            "n_trials": int(tps * len(p.sessions)), "n_roi_voxels": int(p.mask.sum()),
            "betas_files": {str(s.number): s.path.name for s in p.sessions}}


def _link_or_copy(src: Path, dest: Path, copy: bool) -> None:
    if not copy:
        try:
            os.symlink(src, dest)
            return
        except OSError:  # a file system without symlinks: copy instead
            pass
    shutil.copyfile(src, dest)


def _hdf5_to_nifti(src: Path, dest: Path, affine: np.ndarray, chunk_mb: float, bar) -> None:
    """Stream an NSD .hdf5 session ('betas', h5py (T, Z, Y, X)) into a 4D NIfTI (X, Y, Z, T), same dtype."""
    import h5py

    from .synthetic import _StreamingNifti

    with h5py.File(src, "r") as f:
        ds = f["betas"]
        n, grid = ds.shape[0], tuple(int(v) for v in ds.shape[:0:-1])
        per = max(1, int(chunk_mb * (1 << 20)) // max(1, int(np.prod(grid)) * ds.dtype.itemsize))
        w = _StreamingNifti(dest, grid + (n,), ds.dtype, affine)
        try:
            for a in range(0, n, per):
                block = ds[a:min(a + per, n)]  # (t, Z, Y, X): each volume is already NIfTI's Fortran byte order
                w.write(block.transpose(0, 3, 2, 1))
                bar.update(block.shape[0])
        finally:
            w.close()


def _write_images(brick, needed: np.ndarray, ids: list[str], d: Path, image_size: int | None, chunk_mb: float,
                  progress: bool) -> None:
    """PNG of every needed brick row; rows are read in runs of consecutive nsdIds, ``chunk_mb`` at a time."""
    from PIL import Image

    d.mkdir()
    row_bytes = int(np.prod(brick.shape[1:]))
    per = max(1, int(chunk_mb * (1 << 20)) // row_bytes)
    breaks = np.flatnonzero(np.diff(needed) != 1) + 1
    with _progress(needed.size, "nsd images", "img", progress) as bar:
        i = 0
        for run in np.split(needed, breaks):
            for a in range(0, run.size, per):
                lo, hi = int(run[a]), int(run[min(a + per, run.size) - 1]) + 1
                block = brick[lo:hi]  # rows lo..hi-1 only
                for row in block:
                    im = Image.fromarray(row)
                    if image_size is not None and im.size != (int(image_size), int(image_size)):
                        im = im.resize((int(image_size), int(image_size)), Image.Resampling.BICUBIC)
                    im.save(d / f"{ids[i]}.png", compress_level=1)  # level 1: ~5x faster, files ~10% larger
                    i += 1
                bar.update(block.shape[0])
                del block
