"""``prepare_seeg``: BIDS-iEEG (mne-bids) word-production recordings -> memory-mappable epoch shards.

Input: a BIDS root (written by :func:`~litbrain.datamodules.synthesize_seeg`, or your own) with,
per subject, iEEG runs ``sub-XX/[ses-YY/]ieeg/*_ieeg.{vhdr,edf,bdf,set,fif}`` and their sidecars
``*_channels.tsv`` (required; channel names must match the recording) and ``*_events.tsv``
(``onset`` in s from the file start, ``trial_type`` = the word). Region labels per contact come
from a column (``region_column``, default ``region``) of the subject's ``*_electrodes.tsv``, or
from a mapping file ``channel_regions`` (TSV: ``name``, ``region`` and optionally ``subject``).

Pipeline per run, each step configurable (the usual sEEG recipe): read through
``mne_bids.read_raw_bids``; keep ``seeg`` channels not marked bad; bipolar re-referencing of
neighbouring contacts along each shaft (``A1-A2``, ``A2-A3``, ...; shaft = name without its
trailing number; a bipolar channel takes the region of its anode) with
``mne.set_bipolar_reference``; channel selection by region; NaN/inf check; notch (``notch`` and
its harmonics below ``h_freq``/Nyquist) and band-pass (``l_freq``-``h_freq``) with MNE's FIR
filters; ``raw.resample``; epochs ``[onset + tmin, onset + tmax)`` around word onsets (3 s by
default). Epochs of each label are split train/val/test (``split``, per label, seeded); every
channel is z-scored with the mean/std of the subject's TRAINING epochs only.

Runs are processed one at a time: epochs go to float32 scratch files, training statistics are
accumulated on the way, then a second pass z-scores into float16 shards -- peak memory is about
one run. The output is built next to ``out_dir`` and renamed into place; a second call with the
same inputs and parameters returns at once.

Prepared layout::

    <out>/manifest.json   format_version, kind="seeg", labels, sfreq, n_times, tmin, tmax,
                          subjects{sid: n_channels, channels, regions, n_train, n_val, n_test, runs},
                          fingerprint, parameters, bids_root
    <out>/labels.tsv      label (row = label id), word
    <out>/sub-XX/{train,val,test}_brain.npy   (rows, channels, times) float16 (z-scored)
    <out>/sub-XX/{train,val,test}_label.npy   (rows,) int64 label id
    <out>/sub-XX/{train,val,test}_run.npy     (rows,) int32 run index (manifest ``runs``)
    <out>/sub-XX/{train,val,test}_onset.npy   (rows,) float64 onset (s) in that run
    <out>/sub-XX/channels.tsv                 name, region, anode, cathode, mean, std (z-score stats, uV)
"""

from __future__ import annotations

import json
import os
import re
import warnings
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from litbrain.errors import DataError
from litbrain.utils.io import atomic_dir

from ..io import (
    NpyRowWriter,
    _fmt_list,
    content_fingerprint,
    prepared_is_current,
    read_tsv,
)

__all__ = ["prepare_seeg", "read_seeg_file", "list_bids_subjects", "SEEG_FORMAT_VERSION"]

SEEG_FORMAT_VERSION = 1
_EXTENSIONS = (".vhdr", ".edf", ".bdf", ".set", ".fif")
_F16_MAX = float(np.finfo(np.float16).max)
_SHAFT_RE = re.compile(r"^(.*?)(\d+)$")
_SPLITS = ("train", "val", "test")


# ----------------------------------------------------------------------------- plain files
def read_seeg_file(path: str | os.PathLike, events: str | os.PathLike | None = None,
                   ch_types: str | dict[str, str] | None = None, preload: bool = False):
    """Read one MNE-readable recording (EDF, BDF, BrainVision, EEGLAB .set, FIF) and an events table.

    Args:
        path: The recording.
        events: Optional TSV with columns ``onset`` (s from the file start) and ``trial_type``.
        ch_types: Set channel types after reading: one type for every channel (e.g. ``"seeg"``:
            EDF/BDF do not store types) or a ``{name: type}`` mapping.
        preload: Load the data into memory.

    Returns:
        ``(raw, events_df)``; ``events_df`` is ``None`` without ``events``.

    Raises:
        DataError: unknown extension, unreadable file, or events outside the recording.
    """
    import mne

    p = Path(path)
    if not p.is_file():
        raise DataError(f"{p}: file not found; fix: pass an existing EDF/BDF/BrainVision/FIF/.set recording")
    ext = ".fif" if p.name.endswith((".fif.gz", "_raw.fif")) else p.suffix.lower()
    if ext not in _EXTENSIONS:
        raise DataError(f"{p}: unsupported extension {p.suffix!r}; fix: convert it to one of {list(_EXTENSIONS)}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            raw = mne.io.read_raw(p, preload=preload, verbose="error")
    except Exception as exc:
        raise DataError(f"{p}: cannot be read by MNE ({type(exc).__name__}: {exc}); fix: the file is corrupt or "
                        f"not in the format its extension says") from exc
    if ch_types is not None:
        mapping = {ch: ch_types for ch in raw.ch_names} if isinstance(ch_types, str) else dict(ch_types)
        unknown = [c for c in mapping if c not in raw.ch_names]
        if unknown:
            raise DataError(f"{p}: ch_types names channel(s) {_fmt_list(unknown)} absent from the recording "
                            f"(has {_fmt_list(raw.ch_names)}); fix: correct the names")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # unit changes
            raw.set_channel_types(mapping, verbose="error")
    ev = None
    if events is not None:
        ev = _read_events(Path(events))
        _check_events_inside(ev, Path(events), raw.n_times / raw.info["sfreq"], 0.0, 0.0)
    return raw, ev


def _read_events(path: Path):
    ev = read_tsv(path, {"onset": float, "trial_type": str}, what="events")
    bad = np.flatnonzero(~np.isfinite(ev["onset"].to_numpy()))
    if bad.size:
        raise DataError(f"{path}: column 'onset' is not finite on file line(s) {_fmt_list(bad + 2)}; "
                        f"fix: give every event an onset in seconds")
    return ev


def _check_events_inside(ev, path: Path, duration: float, tmin: float, tmax: float, sfreq: float = 0.0) -> None:
    on = ev["onset"].to_numpy()
    tol = 0.5 / sfreq if sfreq else 1e-9
    bad = np.flatnonzero((on + tmin < -tol) | (on + tmax > duration + tol))
    if bad.size:
        i = int(bad[0])
        raise DataError(f"{path}: {bad.size} event(s) outside the recording (0 to {duration:.3f} s) for the epoch "
                        f"window [{tmin:g}, {tmax:g}) s, first on file line {i + 2} (onset {on[i]:.3f} s); fix: "
                        f"correct the onsets (seconds from the start of the data file) or shorten tmin/tmax")


# ----------------------------------------------------------------------------- BIDS scanning
def list_bids_subjects(bids_root: str | os.PathLike) -> list[str]:
    """Subject ids (``sub-XX``) of a BIDS root that have iEEG recordings, sorted."""
    root = Path(bids_root)
    if not root.is_dir():
        return []
    out = []
    for p in sorted(root.glob("sub-*")):
        if p.is_dir() and any(f.name.endswith(tuple(f"_ieeg{e}" for e in _EXTENSIONS))
                              for f in p.rglob("*_ieeg.*")):
            out.append(p.name)
    return out


@dataclass
class _Run:
    bids_path: object  # mne_bids.BIDSPath
    rel: str  # path relative to the root, for messages
    channels_tsv: Path
    events_tsv: Path
    events: object = None  # DataFrame
    sfreq: float = 0.0
    n_times: int = 0
    ch_names: list = field(default_factory=list)


@dataclass
class _Plan:
    sid: str
    runs: list
    anodes: list
    cathodes: list
    out_names: list
    out_regions: list
    needed: list
    label_rows: list = field(default_factory=list)  # per run: label id per event
    split_rows: list = field(default_factory=list)  # per run: split index per event


def _find_runs(root: Path, sid: str, task: str | None) -> list[_Run]:
    from mne_bids import find_matching_paths

    paths = find_matching_paths(root, subjects=sid[4:], datatypes="ieeg", suffixes="ieeg",
                                extensions=list(_EXTENSIONS), tasks=task)
    paths = sorted(paths, key=lambda b: str(b.fpath))
    runs = []
    for bp in paths:
        side = lambda suffix: Path(bp.copy().update(suffix=suffix, extension=".tsv").fpath)  # noqa: E731
        runs.append(_Run(bids_path=bp, rel=str(Path(bp.fpath).relative_to(root)), channels_tsv=side("channels"),
                         events_tsv=side("events")))
    return runs


def _read_header(run: _Run, root: Path):
    import mne

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            return mne.io.read_raw(run.bids_path.fpath, preload=False, verbose="error")
    except Exception as exc:
        raise DataError(f"{run.rel}: cannot be read by MNE ({type(exc).__name__}: {exc}); fix: the file is "
                        f"truncated or corrupt -- re-export it") from exc


def _shaft_pairs(names: list[str]) -> list[tuple[str, str]]:
    """Neighbouring contacts along each shaft: (A1, A2), (A2, A3), ... (consecutive numbers only)."""
    by_shaft: dict[str, dict[int, str]] = {}
    for n in names:
        m = _SHAFT_RE.match(n)
        if m:
            by_shaft.setdefault(m.group(1), {})[int(m.group(2))] = n
    pairs = []
    for shaft in sorted(by_shaft):
        idx = by_shaft[shaft]
        for i in sorted(idx):
            if i + 1 in idx:
                pairs.append((idx[i], idx[i + 1]))
    return pairs


def _region_map(root: Path, sid: str, channel_regions: Path | None, region_column: str) -> tuple[dict, str]:
    import pandas as pd

    if channel_regions is not None:
        df = read_tsv(channel_regions, {"name": str, "region": str}, what="channel regions")
        if "subject" in df.columns:
            df = df[df["subject"].astype(str) == sid]
        return dict(zip(df["name"], df["region"])), str(channel_regions)
    files = sorted((root / sid).rglob("*_electrodes.tsv"))
    for f in files:
        df = pd.read_csv(f, sep="\t", dtype=str, keep_default_na=False)
        if region_column in df.columns and "name" in df.columns:
            return dict(zip(df["name"], df[region_column])), str(f.relative_to(root))
    where = ", ".join(str(f.relative_to(root)) for f in files) or f"no {sid}/**/*_electrodes.tsv"
    raise DataError(f"{sid}: no region labels ({where} has no column '{region_column}'); fix: add a "
                    f"'{region_column}' column to electrodes.tsv, pass channel_regions=<tsv with name, region>, "
                    f"or regions=None to keep every channel")


def _plan_subject(root: Path, sid: str, task, regions, channel_regions, region_column, bipolar, tmin, tmax,
                  label_ids: dict) -> _Plan:
    runs = _find_runs(root, sid, task)
    if not runs:
        raise DataError(f"{sid}: no iEEG recording{'' if task is None else f' of task {task!r}'} "
                        f"(sub-XX/[ses-YY/]ieeg/*_ieeg{{{','.join(_EXTENSIONS)}}}); fix: check the BIDS root and task")
    names0 = None
    for run in runs:
        if not run.channels_tsv.is_file():
            raise DataError(f"{run.channels_tsv.relative_to(root)}: channels.tsv missing for {run.rel}; fix: write "
                            f"it (columns name, type, units; type SEEG for depth contacts), e.g. with mne-bids")
        ch = read_tsv(run.channels_tsv, {"name": str, "type": str}, what="channels")
        raw = _read_header(run, root)
        absent = [n for n in ch["name"] if n not in raw.ch_names]
        if absent:
            raise DataError(f"{run.channels_tsv.relative_to(root)}: names channel(s) {_fmt_list(absent)} absent from "
                            f"the recording {run.rel} (which has {_fmt_list(raw.ch_names)}); fix: make channels.tsv "
                            f"list exactly the recording's channels")
        run.sfreq, run.n_times, run.ch_names = float(raw.info["sfreq"]), int(raw.n_times), list(raw.ch_names)
        seeg = ch.loc[ch["type"].str.upper() == "SEEG", "name"].tolist()
        bads = set(ch.loc[ch.get("status", "good").astype(str).str.lower() == "bad", "name"]) \
            if "status" in ch.columns else set()
        good = [n for n in seeg if n not in bads]
        if not good:
            raise DataError(f"{run.channels_tsv.relative_to(root)}: no good channel of type SEEG; fix: set type SEEG "
                            f"for depth contacts (and status good)")
        names0 = good if names0 is None else [n for n in names0 if n in good]
    rates = sorted({r.sfreq for r in runs})
    if len(rates) > 1:
        detail = ", ".join(f"{r.rel}: {r.sfreq:g} Hz" for r in runs)
        raise DataError(f"{sid}: sampling rates differ between runs ({detail}); fix: resample the runs to one rate "
                        f"before export, or prepare them as separate datasets")
    for run in runs:
        if not run.events_tsv.is_file():
            raise DataError(f"{run.events_tsv.relative_to(root)}: events.tsv missing for {run.rel}; fix: write it "
                            f"with columns onset (s) and trial_type (the word)")
        run.events = _read_events(run.events_tsv)
        _check_events_inside(run.events, run.events_tsv.relative_to(root), run.n_times / run.sfreq, tmin, tmax,
                             run.sfreq)
    region_of: dict[str, str] = {}
    src = ""
    if regions is not None:
        region_of, src = _region_map(root, sid, channel_regions, region_column)
    if bipolar:
        pairs = _shaft_pairs(names0)
        if not pairs:
            raise DataError(f"{sid}: no neighbouring contacts for bipolar re-referencing (names like A1, A2 on one "
                            f"shaft); fix: pass bipolar=False")
        anodes, cathodes = [a for a, _ in pairs], [c for _, c in pairs]
        out_names = [f"{a}-{c}" for a, c in pairs]
    else:
        anodes, cathodes, out_names = list(names0), [None] * len(names0), list(names0)
    out_regions = [region_of.get(a, "n/a") for a in anodes]
    if regions is not None:
        for reg in regions:
            if reg not in out_regions:
                carried = sorted(set(region_of.values()))
                raise DataError(f"{sid}: no {'bipolar ' if bipolar else ''}channel carries region {reg!r} (labels in "
                                f"{src}: {_fmt_list(carried)}); fix: correct regions= or the '{region_column}' labels")
        keep = [i for i, r in enumerate(out_regions) if r in regions]
        anodes, cathodes = [anodes[i] for i in keep], [cathodes[i] for i in keep]
        out_names, out_regions = [out_names[i] for i in keep], [out_regions[i] for i in keep]
    needed = sorted({a for a in anodes} | {c for c in cathodes if c is not None}, key=names0.index)
    plan = _Plan(sid=sid, runs=runs, anodes=anodes, cathodes=cathodes, out_names=out_names,
                 out_regions=out_regions, needed=needed)
    for run in runs:
        plan.label_rows.append(np.array([label_ids[w] for w in run.events["trial_type"]], dtype=np.int64))
    return plan


def _assign_splits(plan: _Plan, split: tuple[float, float, float], seed: int) -> None:
    labels = np.concatenate(plan.label_rows)
    out = np.zeros(labels.size, dtype=np.int8)
    rng = np.random.default_rng([int(seed), zlib.crc32(plan.sid.encode())])
    _, fv, ft = split
    for lab in np.unique(labels):
        idx = np.flatnonzero(labels == lab)
        idx = idx[rng.permutation(idx.size)]
        n = idx.size
        nv, nt = int(round(fv * n)), int(round(ft * n))
        if fv > 0 and nv == 0 and n >= 3:
            nv = 1
        if ft > 0 and nt == 0 and n >= 3:
            nt = 1
        out[idx[:nv]] = 1
        out[idx[nv:nv + nt]] = 2
    for k, name in enumerate(_SPLITS):
        if not np.any(out == k) and split[k] > 0:
            raise DataError(f"{plan.sid}: the {name} split is empty (split={list(split)} of "
                            f"{labels.size} epochs); fix: record more trials per word or change split")
    bounds = np.cumsum([0] + [r.size for r in plan.label_rows])
    plan.split_rows = [out[bounds[i]:bounds[i + 1]] for i in range(len(plan.label_rows))]


def _fingerprint(root: Path, plans: list[_Plan], extra: list[Path], params: dict) -> str:
    """sha256 over the content of every file of the runs read (streamed) and the parameters."""
    named = []
    for p in plans:
        files = sorted({f for r in p.runs for f in Path(r.bids_path.fpath).parent.iterdir() if f.is_file()})
        named += [(str(f.relative_to(root)) if f.is_relative_to(root) else str(f), f) for f in files]
    named += [(str(f), f) for f in extra]
    return content_fingerprint(named, {"format_version": SEEG_FORMAT_VERSION, **params})


# ----------------------------------------------------------------------------- per run
def _process_run(run: _Run, plan: _Plan, root: Path, notch, l_freq, h_freq, resample, tmin, tmax):
    """Preprocessed epochs of one run: float32 (events, channels, times) in uV, and the output sfreq."""
    import mne
    from mne_bids import read_raw_bids

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # mne-bids notes about sidecars we check ourselves
        raw = read_raw_bids(run.bids_path, verbose="error")
    raw.pick(plan.needed)
    raw.load_data(verbose="error")
    data = raw.get_data()
    bad = ~np.isfinite(data)
    if bad.any():
        ci = int(np.flatnonzero(bad.any(1))[0])
        where = np.flatnonzero(bad[ci])
        sf = raw.info["sfreq"]
        raise DataError(f"{run.rel}: {int(bad.sum())} NaN/inf sample(s) (first in channel {raw.ch_names[ci]}, "
                        f"{where[0] / sf:.3f}-{where[-1] / sf:.3f} s); fix: repair or interpolate the segment, or mark "
                        f"the channel bad (status=bad in channels.tsv)")
    del data
    if any(c is not None for c in plan.cathodes):
        raw = mne.set_bipolar_reference(raw, plan.anodes, plan.cathodes, ch_name=plan.out_names, drop_refs=True,
                                        copy=False, on_bad="ignore", verbose="error")
    raw.pick(plan.out_names)
    sf = raw.info["sfreq"]
    top = min(h_freq if h_freq is not None else sf / 2, sf / 2)
    if notch:
        freqs = np.arange(notch, top, notch)
        freqs = freqs[freqs < sf / 2 - 1e-6]
        if freqs.size:
            raw.notch_filter(freqs, picks="all", verbose="error")
    if h_freq is not None and h_freq >= sf / 2:
        raise DataError(f"h_freq={h_freq:g} Hz is not below the Nyquist frequency ({sf / 2:g} Hz) of {run.rel} "
                        f"(recorded at {sf:g} Hz); fix: set h_freq below {sf / 2:g}, or null to skip the low-pass")
    if l_freq is not None or h_freq is not None:
        raw.filter(l_freq, h_freq, picks="all", verbose="error")
    if resample is not None and float(resample) != sf:
        raw.resample(float(resample), verbose="error")
        sf = raw.info["sfreq"]
    x = raw.get_data() * 1e6  # V -> uV
    n_times = int(round((tmax - tmin) * sf))
    on = run.events["onset"].to_numpy()
    start = np.round((on + tmin) * sf).astype(np.int64)
    start = np.clip(start, 0, x.shape[1] - n_times)  # rounding at the very edges only (checked before)
    idx = start[:, None] + np.arange(n_times)[None, :]
    return np.ascontiguousarray(x[:, idx].transpose(1, 0, 2), dtype=np.float32), sf


# ----------------------------------------------------------------------------- main entry
def prepare_seeg(
    bids_root: str | os.PathLike,
    out_dir: str | os.PathLike,
    subjects: list[str] | None = None,
    task: str | None = None,
    regions: list[str] | None = ("vSMC", "STG"),
    channel_regions: str | os.PathLike | None = None,
    region_column: str = "region",
    bipolar: bool = True,
    notch: float | None = 50.0,
    l_freq: float | None = 0.5,
    h_freq: float | None = 200.0,
    resample: float | None = None,
    tmin: float = 0.0,
    tmax: float = 3.0,
    split: tuple[float, float, float] = (0.8, 0.1, 0.1),
    zscore: bool = True,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Prepare BIDS-iEEG word recordings into memory-mappable float16 epoch shards; return ``out_dir``.

    Args:
        bids_root: BIDS root with ``sub-XX/[ses-YY/]ieeg/`` recordings and sidecars.
        out_dir: Prepared dataset folder to create (built under a temporary name, then renamed);
            returns at once if it already holds this preparation (fingerprint of inputs + parameters).
        subjects: Subject ids (``"sub-01"``); ``None`` = every subject with iEEG data.
        task: BIDS task to read; ``None`` = all tasks.
        regions: Keep channels whose region is one of these (e.g. ``["vSMC", "STG"]``); ``None``
            keeps every sEEG channel. Every listed region must be carried by a channel.
        channel_regions: Mapping TSV (``name``, ``region``[, ``subject``]) used instead of the
            electrodes.tsv column.
        region_column: electrodes.tsv column holding the region label.
        bipolar: Re-reference neighbouring contacts along each shaft (anode's region).
        notch: Mains frequency to notch (with harmonics below ``h_freq``); ``None`` = no notch.
        l_freq: High-pass edge (Hz) of the band-pass; ``None`` = none.
        h_freq: Low-pass edge (Hz); ``None`` = none. Clipped to Nyquist.
        resample: New sampling rate (Hz) after filtering; ``None`` keeps the recording's.
        tmin: Epoch start relative to the word onset (s).
        tmax: Epoch end (exclusive) relative to the onset (s); ``round((tmax - tmin) * sfreq)`` samples.
        split: Train/val/test fractions, applied per label (word), seeded.
        zscore: Z-score each channel with the mean/std of the subject's training epochs.
        seed: Seed of the split.
        overwrite: Replace an existing ``out_dir`` prepared from other inputs or parameters.

    Raises:
        DataError: bad input (one clear message each); ``out_dir`` is then left as it was.
    """
    root, out = Path(bids_root), Path(out_dir)
    if not root.is_dir():
        raise DataError(f"{root}: BIDS root not found; fix: pass the folder holding dataset_description.json")
    split = tuple(float(x) for x in split)
    if len(split) != 3 or min(split) < 0 or abs(sum(split) - 1.0) > 1e-6 or split[0] <= 0:
        raise DataError(f"split={list(split)}: needs three fractions >= 0 summing to 1 with train > 0; "
                        f"fix: e.g. [0.8, 0.1, 0.1]")
    if not tmax > tmin:
        raise DataError(f"tmin={tmin}, tmax={tmax}: tmax must exceed tmin; fix: e.g. tmin=0, tmax=3")
    if resample is not None and h_freq is not None and h_freq >= float(resample) / 2:
        raise DataError(f"h_freq={h_freq} >= resample/2={float(resample) / 2:g}: the band would alias; fix: lower "
                        f"h_freq below {float(resample) / 2:g} Hz or resample higher")
    available = list_bids_subjects(root)
    if not available:
        raise DataError(f"{root}: no subject with iEEG recordings (sub-XX/[ses-YY/]ieeg/*_ieeg.*); fix: point "
                        f"bids_root at the BIDS root")
    subjects = available if subjects is None else list(subjects)
    unknown = [s for s in subjects if s not in available]
    if unknown or not subjects or len(set(subjects)) != len(subjects):
        raise DataError(f"subjects={subjects}: unknown or repeated (available: {available}); fix: list each of "
                        f"the available subjects at most once")
    regions = None if regions is None else [str(r) for r in regions]
    cr = None if channel_regions is None else Path(channel_regions)
    params = {"subjects": subjects, "task": task, "regions": regions,
              "channel_regions": str(cr) if cr else None, "region_column": region_column, "bipolar": bool(bipolar),
              "notch": notch, "l_freq": l_freq, "h_freq": h_freq, "resample": resample, "tmin": float(tmin),
              "tmax": float(tmax), "split": list(split), "zscore": bool(zscore), "seed": int(seed)}

    # ---- validate everything cheap before writing anything
    vocab: set[str] = set()
    pre = {}
    for sid in subjects:
        for run in _find_runs(root, sid, task):
            if run.events_tsv.is_file():
                vocab |= set(_read_events(run.events_tsv)["trial_type"])
        pre[sid] = None
    labels = sorted(vocab)
    label_ids = {w: i for i, w in enumerate(labels)}
    plans = [_plan_subject(root, sid, task, regions, cr, region_column, bipolar, float(tmin), float(tmax), label_ids)
             for sid in subjects]
    fp = _fingerprint(root, plans, [cr] if cr else [], params)
    if prepared_is_current(out, fp, overwrite):
        return out
    for plan in plans:
        _assign_splits(plan, split, seed)

    sfreq_out, n_times_out = None, None
    with atomic_dir(out, overwrite=overwrite) as tmp:
        with open(tmp / "labels.tsv", "w") as f:
            f.write("label\tword\n")
            for i, w in enumerate(labels):
                f.write(f"{i}\t{w}\n")
        info = {}
        for plan in plans:
            sub_info, sf, nt = _prepare_subject(plan, root, tmp / plan.sid, notch, l_freq, h_freq, resample,
                                                float(tmin), float(tmax), bool(zscore))
            if sfreq_out is not None and (sf != sfreq_out or nt != n_times_out):
                raise DataError(f"{plan.sid}: epochs of {nt} samples at {sf:g} Hz, other subjects have {n_times_out} "
                                f"at {sfreq_out:g} Hz; fix: pass resample=<Hz> so every subject has the same rate")
            sfreq_out, n_times_out = sf, nt
            info[plan.sid] = sub_info
        manifest = {"format_version": SEEG_FORMAT_VERSION, "kind": "seeg", "labels": labels,
                    "sfreq": sfreq_out, "n_times": n_times_out, "tmin": float(tmin), "tmax": float(tmax),
                    "subjects": info, "fingerprint": fp, "parameters": params, "bids_root": str(root.resolve())}
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1))
    return out


def _prepare_subject(plan: _Plan, root: Path, d: Path, notch, l_freq, h_freq, resample, tmin, tmax, zscore):
    d.mkdir()
    C = len(plan.out_names)
    counts = [int(sum(np.sum(s == k) for s in plan.split_rows)) for k in range(3)]
    writers: dict[int, NpyRowWriter] = {}
    meta = {k: {"label": [], "run": [], "onset": []} for k in range(3)}
    tot, tot2, n = np.zeros(C), np.zeros(C), 0
    sf = nt = None
    try:
        for ri, run in enumerate(plan.runs):
            ep, sf_run = _process_run(run, plan, root, notch, l_freq, h_freq, resample, tmin, tmax)
            if sf is None:
                sf, nt = sf_run, ep.shape[2]
                for k in range(3):
                    writers[k] = NpyRowWriter(d / f".{_SPLITS[k]}_raw.tmp.npy", (counts[k], C, nt), np.float32)
            sp = plan.split_rows[ri]
            for k in range(3):
                sel = sp == k
                if not sel.any():
                    continue
                writers[k].append(ep[sel])
                meta[k]["label"].append(plan.label_rows[ri][sel])
                meta[k]["run"].append(np.full(int(sel.sum()), ri, dtype=np.int32))
                meta[k]["onset"].append(run.events["onset"].to_numpy()[sel])
            tr = ep[sp == 0].astype(np.float64)
            tot += tr.sum((0, 2))
            tot2 += (tr * tr).sum((0, 2))
            n += tr.shape[0] * tr.shape[2]
            del ep, tr
        for w in writers.values():
            w.close()
        mean = tot / max(n, 1)
        std = np.sqrt(np.maximum(tot2 / max(n, 1) - mean * mean, 0.0))
        std[std < 1e-12] = 1.0
        if not zscore:
            mean, std = np.zeros(C), np.ones(C)
        for k, name in enumerate(_SPLITS):
            tmp_path = d / f".{name}_raw.tmp.npy"
            src = np.load(tmp_path, mmap_mode="r")
            with NpyRowWriter(d / f"{name}_brain.npy", (counts[k], C, nt), np.float16) as w:
                for a in range(0, counts[k], 256):
                    z = (src[a:a + 256] - mean[None, :, None].astype(np.float32)) / std[None, :, None].astype(np.float32)
                    w.append(np.clip(z, -_F16_MAX, _F16_MAX).astype(np.float16))
            del src
            tmp_path.unlink()
            cat = lambda key, dt: (np.concatenate(meta[k][key]) if meta[k][key] else np.zeros(0)).astype(dt)  # noqa
            np.save(d / f"{name}_label.npy", cat("label", np.int64))
            np.save(d / f"{name}_run.npy", cat("run", np.int32))
            np.save(d / f"{name}_onset.npy", cat("onset", np.float64))
    finally:
        for w in writers.values():
            w._f.close()
    with open(d / "channels.tsv", "w") as f:
        f.write("name\tregion\tanode\tcathode\tmean\tstd\n")
        for i in range(C):
            f.write(f"{plan.out_names[i]}\t{plan.out_regions[i]}\t{plan.anodes[i]}\t{plan.cathodes[i] or 'n/a'}\t"
                    f"{mean[i]:.6g}\t{std[i]:.6g}\n")
    info = {"n_channels": C, "channels": plan.out_names, "regions": plan.out_regions,
            "n_train": counts[0], "n_val": counts[1], "n_test": counts[2], "runs": [r.rel for r in plan.runs]}
    return info, float(sf), int(nt)
