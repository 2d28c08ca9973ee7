"""``litbrain fmri bench-nsd``: peak memory of reading NSD in its own layout does not grow with the data.

Two miniature NSD trees (:func:`~litbrain.datamodules.fmri.nsd_synthetic.synthesize_nsd`, one
subject, NSD's 750 trials per session) are written once and cached under ``work_dir``: one whose
design has ``sessions_small`` sessions, one with ``sessions_big``. The larger has that many times
the session files, the trials and the images (images per subject = sessions x 750 / 3, and the
brick holds every subject's images, as NSD's does). On each, a fresh child process imports what it
needs, resets its RSS high-water mark (VmHWM, ``/proc/self/clear_refs``) and runs

* ``prepare_nsd`` with the .nii.gz betas (linked) -- the reader itself: design, csv, ROI, headers,
  COCO captions, and every image the trials show read from the brick row by row into PNGs;
* ``prepare_nsd`` with the .hdf5 betas -- the same plus every session streamed into NIfTI;
* ``prepare_fmri`` on the first output (the shards; image embeddings written before the window).

The table gives each peak, the ratio big / small per step (bar: <= 1.2x, as the fMRI benchmark's)
and the sizes a whole-file reader would have held (betas of all sessions, the brick).
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

from litbrain.utils.io import atomic_write_text

from .fmri import _MB, _json_default, _loadavg, _peak_rss_mb, _Progress, _reset_peak_rss, format_table

__all__ = ["bench_nsd", "BARS"]

#: Row key -> (comparison, value); fixed here so a config cannot move them.
BARS: dict[str, tuple[str, float]] = {
    "rss_ratio_read_nifti": ("<=", 1.2),
    "rss_ratio_read_hdf5": ("<=", 1.2),
    "rss_ratio_prepare": ("<=", 1.2),
}
_RESULT_TAG = "LITBRAIN_BENCH_RESULT "
_TPS = 750


def bench_nsd(
    work_dir: str = "runs/bench/nsd",
    output: str = "runs/bench/nsd/results.json",
    sessions_small: int = 2,
    sessions_big: int = 8,
    trials_per_session: int = _TPS,
    grid: list[int] = [30, 36, 30],  # noqa: B006  (jsonargparse needs the literal default)
    image_size: int = 128,
    n_shared: int = 100,
    seed: int = 0,
    verbose: bool = True,
) -> dict[str, Any]:
    """Measure the peak RSS of prepare-nsd and prepare at two design sizes; print one table, write JSON.

    Args:
        work_dir: Folder of the cached NSD trees (keyed by their parameters) and the outputs.
        output: JSON file the table, details and configuration are written to.
        sessions_small: Sessions of the small tree's design (its subject has all of them).
        sessions_big: Sessions of the large tree's design.
        trials_per_session: Trials per session file (NSD: 750).
        grid: Volume grid (X, Y, Z) of the betas; NSD's func1pt8mm is 81 x 104 x 83.
        image_size: Side of the brick's images (NSD: 425); the brick holds every subject's images.
        n_shared: Shared images of the design (NSD: 1000).
        seed: Seed of the trees.
        verbose: Progress lines on stderr (the table goes to stdout).

    Returns:
        The JSON document written to ``output``: ``rows``, ``details``, ``environment``, ``config``.
    """
    config = {k: v for k, v in locals().items()}
    if not 1 <= sessions_small < sessions_big:
        raise ValueError(f"sessions_small={sessions_small}, sessions_big={sessions_big}: need 1 <= small < big")
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    log = _Progress(verbose)
    t0 = time.perf_counter()
    env = {"torch": "not used", "lightning": "not used", "python": platform.python_version(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
           "loadavg_start": _loadavg(), "threads": 1, "device": "cpu"}
    details: dict[str, Any] = {}
    for label, n in (("small", sessions_small), ("big", sessions_big)):
        kw = dict(n_subjects=1, sessions=n, trials_per_session=trials_per_session, n_shared=n_shared,
                  grid=list(grid), image_size=image_size, betas_format="both", seed=seed, progress=False)
        tree = work / "nsd" / f"{n}sessions-{hashlib.sha1(json.dumps(kw, sort_keys=True).encode()).hexdigest()[:8]}"
        if not (tree / "litbrain_fixture.json").is_file():
            log(f"writing the {n}-session NSD tree (once)")
            _child("synth", {"out_dir": str(tree), "overwrite": True, **kw})
        res: dict[str, Any] = {"sessions": n, "tree": str(tree), **_sizes(tree)}
        for fmt in ("nifti", "hdf5"):
            out = work / "out" / f"{label}-{fmt}"
            log(f"{n} sessions: prepare-nsd, {fmt} betas")
            res[f"read_{fmt}"] = _child("read", {"nsd_dir": str(tree), "out_dir": str(out), "betas_format": fmt,
                                                 "trials_per_session": trials_per_session})
        log(f"{n} sessions: prepare")
        res["prepare"] = _child("prepare", {"raw_dir": str(work / "out" / f"{label}-nifti"),
                                            "out_dir": str(work / "out" / f"{label}-prepared")})
        details[label] = res
        log(f"{n} sessions: peak RSS read {res['read_nifti']['peak_rss_mb']:.0f} / "
            f"{res['read_hdf5']['peak_rss_mb']:.0f} MB, prepare {res['prepare']['peak_rss_mb']:.0f} MB")
    rows = _rows(details, config)
    env["loadavg_end"] = _loadavg()
    doc = {"benchmark": "litbrain NSD reader (issue 21)", "rows": rows,
           "details": {**details, "wall_s": round(time.perf_counter() - t0, 1)}, "environment": env,
           "config": config}
    out = atomic_write_text(output, json.dumps(doc, indent=1, default=_json_default))
    print(format_table(doc))
    log(f"wrote {out} ({doc['details']['wall_s']} s)")
    return doc


def _sizes(tree: Path) -> dict[str, float]:
    import h5py

    from litbrain.datamodules.fmri.nsd import BRICK, betas_dir

    with h5py.File(tree / BRICK, "r") as f:
        shape = f["imgBrick"].shape
    betas = sorted((tree / betas_dir(1)).glob("betas_session*.hdf5"))
    raw_bytes = 0
    for p in betas:
        with h5py.File(p, "r") as f:
            raw_bytes += f["betas"].size * f["betas"].dtype.itemsize
    return {"brick_rows": int(shape[0]), "brick_mb": float(shape[0] * shape[1] * shape[2] * shape[3]) / _MB,
            "betas_mb": raw_bytes / _MB, "n_session_files": len(betas)}


def _rows(d: dict[str, Any], config: dict[str, Any]) -> list[dict[str, Any]]:
    s, b = d["small"], d["big"]
    ns, nb = config["sessions_small"], config["sessions_big"]
    rows = [
        ("betas_small_mb", f"int16 betas of all {ns} sessions (what a whole-file read holds)", s["betas_mb"], "MB"),
        ("betas_big_mb", f"int16 betas of all {nb} sessions", b["betas_mb"], "MB"),
        ("brick_small_mb", f"imgBrick, {s['brick_rows']} rows ({ns}-session design)", s["brick_mb"], "MB"),
        ("brick_big_mb", f"imgBrick, {b['brick_rows']} rows ({nb}-session design)", b["brick_mb"], "MB"),
        ("images_small", f"images written, {ns} sessions", s["read_nifti"]["n_stimuli"], "images"),
        ("images_big", f"images written, {nb} sessions", b["read_nifti"]["n_stimuli"], "images"),
        ("baseline_rss_mb", "RSS after imports (start of the window)", s["read_nifti"]["baseline_rss_mb"], "MB"),
    ]
    for key, what in (("read_nifti", "prepare-nsd, .nii.gz betas"), ("read_hdf5", "prepare-nsd, .hdf5 -> NIfTI"),
                      ("prepare", "prepare (shards) of its output")):
        rows += [(f"peak_rss_{key}_small_mb", f"peak RSS {what}, {ns} sessions", s[key]["peak_rss_mb"], "MB"),
                 (f"peak_rss_{key}_big_mb", f"peak RSS {what}, {nb} sessions", b[key]["peak_rss_mb"], "MB"),
                 (f"rss_ratio_{key}", f"peak RSS {what}, {nb} / {ns} sessions",
                  b[key]["peak_rss_mb"] / s[key]["peak_rss_mb"], "x")]
    out = []
    for key, figure, value, unit in rows:
        row: dict[str, Any] = {"key": key, "figure": figure, "value": float(value), "unit": unit}
        if key in BARS:
            op, bar = BARS[key]
            row["bar"] = f"{op} {bar:g}"
            row["pass"] = bool(value <= bar) if op == "<=" else bool(value >= bar)
        out.append(row)
    return out


# ============================================================================ children
def _child(mode: str, payload: dict[str, Any]) -> dict[str, Any]:
    code = "from litbrain.benchmarks.nsd import _child_main; _child_main()"
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", code, mode, json.dumps(payload)], capture_output=True, text=True,
                          env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"bench child {mode!r} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len(_RESULT_TAG):])


def _measured(fn) -> dict[str, Any]:
    """Run ``fn()`` with the RSS high-water mark reset just before; its peak and wall time."""
    reset = _reset_peak_rss()
    baseline = _peak_rss_mb()
    t0 = time.perf_counter()
    extra = fn() or {}
    return {"peak_rss_mb": _peak_rss_mb(), "baseline_rss_mb": baseline, "peak_reset": reset,
            "seconds": round(time.perf_counter() - t0, 2), **extra}


def _child_main() -> None:
    import shutil

    mode, p = sys.argv[1], json.loads(sys.argv[2])
    # everything the measured call imports, imported before the window opens
    import h5py  # noqa: F401
    import ijson  # noqa: F401
    import nibabel  # noqa: F401
    import numpy as np
    import pandas  # noqa: F401
    import scipy.io  # noqa: F401
    import tqdm.auto  # noqa: F401
    from PIL import Image  # noqa: F401

    from litbrain.datamodules.fmri import nsd, nsd_synthetic, prepare, synthetic  # noqa: F401

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mode == "synth":
            nsd_synthetic.synthesize_nsd(**p)
            result: dict[str, Any] = {"ok": True}
        elif mode == "read":
            shutil.rmtree(p["out_dir"], ignore_errors=True)
            result = _measured(lambda: {"n_stimuli": json.loads(
                (nsd.prepare_nsd(p["nsd_dir"], p["out_dir"], betas_format=p["betas_format"],
                                 trials_per_session=p["trials_per_session"], progress=False) / "nsd.json")
                .read_text())["n_stimuli"]})
        elif mode == "prepare":
            raw = Path(p["raw_dir"])
            ids = np.loadtxt(raw / "stimuli.tsv", dtype=str, delimiter="\t", skiprows=1, usecols=0, ndmin=1)
            (raw / "embeddings").mkdir(exist_ok=True)
            np.savez(raw / "embeddings" / "image.npz", ids=ids,
                     embeddings=np.random.default_rng(0).standard_normal((ids.size, 64)).astype(np.float32))
            shutil.rmtree(p["out_dir"], ignore_errors=True)
            result = _measured(lambda: {"manifest": json.loads((prepare.prepare_fmri(
                raw, p["out_dir"], text_embeddings=None) / "manifest.json").read_text())["subjects"]})
        else:
            raise SystemExit(f"unknown bench child mode {mode!r}")
    print(_RESULT_TAG + json.dumps(result), flush=True)
