"""Evaluate encoding models (image -> voxels) against himalaya ridge, banded ridge and the oracle; in-silico maps.

Algonauts 2023 protocol on the held-out shared images (repeats averaged): voxel-wise Pearson r,
noise-normalised score ``100 r^2 / NC`` (r < 0 -> 0, capped at 100) with the NSD noise ceiling
computed from the single-trial repeats that ``encoding prepare`` keeps (see
:mod:`litbrain.evaluation.noise_ceiling`); mean / median over voxels, per subject and per ROI.

Rows of the table: each group of encoding-model checkpoints (e.g. ``lambda=0`` and the chosen
``lambda``, several seeds each: mean +- s.d. over seeds), himalaya ``RidgeCV`` on the same image
features, banded ``GroupRidgeCV`` over the image + description-embedding bands (torch backend),
and, on synthetic data, the oracle (the true forward model). Figures per subject: the voxel r
map on the subject's grid (nilearn ``plot_stat_map`` with the mask's affine) and r against the
noise ceiling.

:func:`synthesize_responses` is the in-silico verb: a trained model's predicted responses to a
folder of images, one NIfTI per image in the subject's space (zeros outside the mask).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from litbrain.errors import DataError
from litbrain.evaluation.noise_ceiling import (
    ncsnr_from_repeats,
    noise_ceiling,
    summarize_scores,
    voxel_correlation,
)
from litbrain.release import load_model
from litbrain.utils.io import atomic_dir, atomic_file, atomic_write_text

__all__ = ["evaluate_encoding", "fit_ridge_baselines", "subject_noise_ceiling", "synthesize_responses",
           "format_encoding_table"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _note(msg: str) -> None:
    print(f"note: {msg}", file=sys.stderr)


def _load(data: Path, subject: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    f = data / subject / f"{split}_brain.npy"
    if not f.is_file():
        raise DataError(f"{f}: missing; fix: run `litbrain encoding prepare` for {data}")
    return np.load(f).astype(np.float32), np.load(data / subject / f"{split}_stimulus.npy")


def _features(data: Path, name: str, n_stimuli: int) -> np.ndarray:
    f = data / name
    x = np.load(f, mmap_mode="r")
    if x.shape[0] != n_stimuli:
        raise DataError(f"{f}: {x.shape[0]} feature rows for {n_stimuli} stimuli in stimuli.tsv; fix: re-run "
                        f"`litbrain encoding prepare` with features for every stimulus")
    return np.asarray(x, dtype=np.float32).reshape(n_stimuli, -1)


def subject_noise_ceiling(data_dir: str | Path, subject: str) -> np.ndarray | None:
    """NC (%) per voxel for the subject's test rows, or None (and a note) when no stimulus was repeated."""
    d = Path(data_dir) / subject
    test_stim = np.load(d / "test_stimulus.npy")
    rep_f = d / "repeats_brain.npy"
    if rep_f.is_file() and np.load(d / "repeats_stimulus.npy").size:
        stim = np.load(d / "repeats_stimulus.npy")
        counts = dict(zip(*np.unique(stim, return_counts=True)))
        n = np.array([counts.get(int(s), 1) for s in test_stim])
        # prepare z-scores with training statistics only, so the test trials' variance is not exactly 1 (NSD
        # z-scores whole sessions): the signal variance is the repeat trials' own variance minus the noise's.
        ncsnr = ncsnr_from_repeats(np.load(rep_f).astype(np.float64), stim, unit_variance=False, where=str(rep_f))
        return noise_ceiling(ncsnr, n)
    if (d / "ncsnr.npy").is_file():  # NSD's own ncsnr (prepare copies it), test rows of unknown repeat count
        _note(f"{subject}: no repeated trials kept; noise ceiling from {d / 'ncsnr.npy'} with n=1 per image")
        return noise_ceiling(np.load(d / "ncsnr.npy"), 1)
    _note(f"{subject}: no test stimulus was shown more than once, so there is no noise ceiling; scoring it by "
          f"voxel r only (no noise-normalised score)")
    return None


def _standardize(train: np.ndarray, *others: np.ndarray) -> list[np.ndarray]:
    mean, std = train.mean(0), train.std(0) + 1e-6
    return [(x - mean) / std for x in (train, *others)]


def fit_ridge_baselines(x_img: np.ndarray, x_txt: np.ndarray | None, y: np.ndarray, test_img: np.ndarray,
                        test_txt: np.ndarray | None, alphas: np.ndarray, n_iter: int = 20, seed: int = 0,
                        ) -> dict[str, np.ndarray]:
    """Test predictions of himalaya ``RidgeCV`` (image band) and ``GroupRidgeCV`` (image + text bands), torch backend."""
    from himalaya.backend import set_backend
    from himalaya.ridge import GroupRidgeCV, RidgeCV

    backend = set_backend("torch", on_error="warn")
    xi, ti = _standardize(x_img, test_img)
    ridge = RidgeCV(alphas=alphas, fit_intercept=True, cv=5)
    ridge.fit(xi, y)
    out = {"ridge": np.asarray(backend.to_numpy(ridge.predict(ti)))}
    if x_txt is not None and test_txt is not None:
        xt, tt = _standardize(x_txt, test_txt)
        banded = GroupRidgeCV(groups="input", fit_intercept=True, cv=5, random_state=seed,
                              solver_params=dict(n_iter=n_iter, alphas=alphas, progress_bar=False,
                                                 warn=False))  # n < p with 10% of trials: slower, not wrong
        banded.fit([xi, xt], y)
        out["banded ridge"] = np.asarray(backend.to_numpy(banded.predict([ti, tt])))
    return out


@torch.no_grad()
def _predict(model, subject: str, feats: np.ndarray, shape: list[int], batch: int = 512) -> np.ndarray:
    x = torch.from_numpy(feats).reshape(feats.shape[0], *shape)
    return torch.cat([model({subject: x[i:i + batch]})["voxels"][subject] for i in range(0, x.shape[0], batch)]).numpy()


def format_encoding_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'method':<26} {'mean score':>14} {'median score':>13} {'mean r':>8} {'seeds':>5}"
    lines = [head, "-" * len(head)]
    for r in rows:
        sd = f" +- {r['mean_score_sd']:.1f}" if r.get("mean_score_sd") is not None else ""
        ms = f"{r['mean_score']:.1f}{sd}" if np.isfinite(r["mean_score"]) else "n/a"
        md = f"{r['median_score']:.1f}" if np.isfinite(r["median_score"]) else "n/a"
        lines.append(f"{r['method']:<26} {ms:>14} {md:>13} {r['mean_r']:>8.3f} {r['n_seeds']:>5}")
    return "\n".join(lines)


def _volume(values: np.ndarray, ijk: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    vol = np.zeros(shape, dtype=np.float32)
    vol[tuple(ijk.T)] = values
    return vol


def _figures(out: Path, subject: str, r: np.ndarray, nc: np.ndarray | None, ijk: np.ndarray, affine: np.ndarray,
             shape: tuple[int, ...], label: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import nibabel as nib
    from nilearn.plotting import plot_stat_map

    written = []
    stat = nib.Nifti1Image(_volume(r, ijk, shape), affine)
    bg = nib.Nifti1Image(_volume(np.ones_like(r), ijk, shape), affine)
    path = out / f"r_map_{subject}.png"
    with atomic_file(path) as tmp:
        display = plot_stat_map(stat, bg_img=bg, display_mode="ortho", cut_coords=None, colorbar=True,
                                title=f"{subject}: voxel r, {label}", threshold=None, vmax=1.0)
        display.frame_axes.figure.savefig(tmp, dpi=80, format="png")
        display.close()
    written.append(path)
    if nc is not None:
        path = out / f"r_vs_noise_ceiling_{subject}.png"
        with atomic_file(path) as tmp:
            fig, ax = plt.subplots(figsize=(4.5, 4))
            ax.scatter(np.sqrt(np.clip(nc, 0, 100) / 100), r, s=4, alpha=0.6)
            ax.plot([0, 1], [0, 1], "k--", lw=1, label="r = sqrt(NC)")
            ax.set_xlabel("sqrt(noise ceiling)  (best achievable r)")
            ax.set_ylabel(f"r ({label})")
            ax.set_title(f"{subject}")
            ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(tmp, dpi=80, format="png")
            plt.close(fig)
        written.append(path)
    return written


def evaluate_encoding(
    data_dir: str,
    models: dict[str, list[str]],
    out_dir: str = "results",
    raw_dir: Optional[str] = None,
    subjects: Optional[list[str]] = None,
    ridge_alphas: list[float] = [1e-2, 1e-1, 1.0, 1e1, 1e2, 1e3, 1e4, 1e5],
    banded_iterations: int = 20,
    baseline_train_fraction: float = 1.0,
    figures: bool = True,
    seed: int = 0,
) -> dict[str, Any]:
    """Noise-normalised scores of encoding models, himalaya ridge / banded ridge and the oracle on the test split.

    Args:
        data_dir: a dataset written by ``litbrain encoding prepare``.
        models: ``{row label: [checkpoints or releases]}``, e.g. ``{"lambda=0": [seed0.ckpt, seed1.ckpt]}``;
            several checkpoints in a row are seeds (mean +- s.d. of their subject-mean score).
        out_dir: where ``metrics.json`` and the figures go.
        raw_dir: the raw dataset; a synthetic world's ``truth.npz`` adds the oracle row.
        subjects: subjects to score (default: those of the data that every model knows).
        ridge_alphas: himalaya's alpha grid (features z-scored with training statistics).
        banded_iterations: random-search iterations of ``GroupRidgeCV`` over the band weights.
        baseline_train_fraction: fit the ridge baselines on the first fraction of each subject's training
            trials only (session order, as the datamodule's ``train_fraction``; the val rows are then left
            out too), to compare with a model trained on that share; 1 = train + val rows.
        figures: write the r map and r-vs-noise-ceiling figures of the first model row.
        seed: seed of the banded ridge's random search.
    """
    from litbrain.datamodules.encoding.prepare import read_encoding_info

    data = Path(data_dir)
    if not 0.0 < float(baseline_train_fraction) <= 1.0:
        raise DataError(f"baseline_train_fraction={baseline_train_fraction}: must be in (0, 1]; fix: e.g. 0.1 or 1.0")
    info = read_encoding_info(data)
    manifest = json.loads((data / "manifest.json").read_text())
    if not models:
        raise DataError("evaluate_encoding: models is empty; fix: pass --models '{\"lambda=0\": [run/last.ckpt]}'")
    loaded = {label: [load_model(c, "voxel_encoder", "pass checkpoints of EncodingTask runs") for c in ckpts]
              for label, ckpts in models.items()}
    known = set.intersection(*[set(m.subjects) for ms in loaded.values() for m in ms])
    chosen = subjects or [s for s in manifest["subjects"] if s in known]
    for s in chosen:
        if s not in manifest["subjects"]:
            raise DataError(f"{data}: no subject {s!r} (available: {list(manifest['subjects'])}); fix: --subjects")
        if s not in known:
            raise DataError(f"{s}: not every model has a readout for it (common: {sorted(known)}); fix: --subjects")
    if not chosen:
        raise DataError(f"{data}: none of the models' subjects {sorted(known)} is prepared here; fix: --data_dir")
    n_stim = int(manifest["n_stimuli"])
    img = _features(data, "image_embedding.npy", n_stim)
    txt = _features(data, "text_embedding.npy", n_stim) if manifest.get("text_embedding_dim") else None
    oracle_fn = None
    if raw_dir and (Path(raw_dir) / "truth.npz").is_file():
        from litbrain.datamodules.encoding.synthetic import encoding_oracle

        oracle_fn = encoding_oracle
    alphas = np.asarray(ridge_alphas, dtype=np.float64)

    per_subject: dict[str, dict[str, Any]] = {}
    r_maps: dict[str, tuple[np.ndarray, np.ndarray | None]] = {}
    for s in chosen:
        y_test, st_test = _load(data, s, "test")
        y_tr, st_tr = _load(data, s, "train")
        y_va, st_va = _load(data, s, "val")
        nc = subject_noise_ceiling(data, s)
        labels = np.load(data / s / "roi.npy") if (data / s / "roi.npy").is_file() else None
        names = {int(k): v for k, v in info["subjects"].get(s, {}).get("roi_names", {}).items()}
        res: dict[str, Any] = {}
        for label, ms in loaded.items():
            seeds = []
            for m in ms:
                r = voxel_correlation(_predict(m, s, img[st_test], m.config.feature_shape), y_test)
                seeds.append(summarize_scores(r, nc, labels, names))
                if s not in r_maps:  # the figures show the first model of the first row
                    r_maps[s] = (r, nc)
            res[label] = seeds
        # ridge baselines on train + val rows (himalaya picks alpha by 5-fold CV), or on the same share as the model
        if baseline_train_fraction < 1.0:
            keep = max(5, int(round(float(baseline_train_fraction) * st_tr.size)))
            x_fit, y_fit = st_tr[:keep], y_tr[:keep]
        else:
            x_fit, y_fit = np.concatenate([st_tr, st_va]), np.concatenate([y_tr, y_va])
        preds = fit_ridge_baselines(img[x_fit], txt[x_fit] if txt is not None else None, y_fit, img[st_test],
                                    txt[st_test] if txt is not None else None, alphas, banded_iterations, seed)
        for name, p in preds.items():
            res[name] = [summarize_scores(voxel_correlation(p, y_test), nc, labels, names)]
        if oracle_fn is not None:
            res["oracle"] = [summarize_scores(voxel_correlation(oracle_fn(raw_dir, data, s, "test"), y_test), nc,
                                              labels, names)]
        per_subject[s] = res

    rows = []
    for method in per_subject[chosen[0]]:
        n_seeds = len(per_subject[chosen[0]][method])
        # per seed: the mean over subjects; then mean and s.d. over seeds
        by_seed = {k: [float(np.mean([per_subject[s][method][i][k] for s in chosen])) for i in range(n_seeds)]
                   for k in ("mean_score", "median_score", "mean_r")
                   if all(k in per_subject[s][method][0] for s in chosen)}
        row: dict[str, Any] = {"method": method, "n_seeds": n_seeds,
                               "mean_score": float(np.mean(by_seed["mean_score"])) if "mean_score" in by_seed else
                               float("nan"),
                               "median_score": float(np.mean(by_seed["median_score"])) if "median_score" in by_seed
                               else float("nan"),
                               "mean_r": float(np.mean(by_seed["mean_r"])),
                               "mean_score_sd": float(np.std(by_seed["mean_score"])) if n_seeds > 1 and
                               "mean_score" in by_seed else None,
                               "seeds_mean_score": by_seed.get("mean_score")}
        rows.append(row)
    summary: dict[str, Any] = {"split": "test", "subjects": chosen, "rows": rows, "per_subject": per_subject,
                               "models": models, "baseline_train_fraction": float(baseline_train_fraction)}
    by = {r["method"]: r for r in rows}
    if "oracle" in by and np.isfinite(by["oracle"]["mean_score"]):
        summary["over_oracle"] = {m: by[m]["mean_score"] / by["oracle"]["mean_score"] for m in models}
    if "ridge" in by:
        summary["over_ridge"] = {m: by[m]["mean_score"] - by["ridge"]["mean_score"] for m in models}

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(summary, indent=2, default=float))
    written = [out / "metrics.json"]
    if figures:
        first = next(iter(models))
        for s, (r, nc) in r_maps.items():
            shape = tuple(info["subjects"][s]["grid_shape"])
            written += _figures(out, s, r, nc, np.load(data / s / "voxel_ijk.npy"), np.load(data / s / "affine.npy"),
                                shape, first)

    print(f"\ntest split (shared images, repeats averaged), subjects {', '.join(chosen)}: "
          f"noise-normalised score 100 r^2/NC (%), mean over voxels then subjects"
          + (f"; ridge rows fitted on {baseline_train_fraction:g} of the training trials"
             if baseline_train_fraction < 1.0 else ""))
    print(format_encoding_table(rows))
    for key, text in (("over_oracle", "of the oracle's score"), ("over_ridge", "points over ridge")):
        for m, v in summary.get(key, {}).items():
            print(f"{m}: {v:.3f} {text}" if key == "over_oracle" else f"{m}: {v:+.1f} {text}")
    print("wrote " + ", ".join(str(p) for p in written))
    return summary


def synthesize_responses(
    checkpoint: str,
    data_dir: str,
    images_dir: str,
    subject: str,
    out_dir: str,
    encoder: Optional[str] = None,
    pretrained: Optional[str] = None,
    model_config: Optional[str] = None,
    output: Optional[str] = None,
    batch_size: int = 16,
    overwrite: bool = False,
) -> Path:
    """In silico: a trained encoding model's predicted responses to every image of a folder, one NIfTI each.

    Args:
        checkpoint: the encoding model (``.ckpt``, release folder or Hub id).
        data_dir: the prepared dataset of its training data (the subject's voxel coordinates, grid and affine).
        images_dir: folder of images (png, jpg, ...); ``<stem>.nii.gz`` is written for each.
        subject: the subject whose readout predicts (and whose space the volumes are in).
        out_dir: output folder (written atomically).
        encoder / pretrained / model_config / output: the frozen image encoder that makes the features;
            default: the one recorded in the model's config (``net.image_encoder``...), as ``embed-images`` takes them.
        batch_size: images per encoder pass.
        overwrite: replace ``out_dir``.
    """
    import nibabel as nib

    from litbrain.datamodules.encoding.prepare import read_encoding_info
    from litbrain.datamodules.targets import _open_image
    from litbrain.nn.encoders import FrozenImageEncoder

    data = Path(data_dir)
    info = read_encoding_info(data)
    model = load_model(checkpoint, "voxel_encoder", "pass the checkpoint or release of an EncodingTask run")
    cfg = model.config
    if subject not in model.subjects:
        raise DataError(f"{checkpoint}: no readout for subject {subject!r} (has {list(model.subjects)}); fix: "
                        f"--subject one of those")
    if subject not in info["subjects"]:
        raise DataError(f"{data}: subject {subject!r} not prepared; fix: --data_dir of the model's training data")
    ijk = np.load(data / subject / "voxel_ijk.npy")
    if ijk.shape[0] != model.subjects[subject]:
        raise DataError(f"{data / subject}: {ijk.shape[0]} voxels but the model's readout for {subject} has "
                        f"{model.subjects[subject]}; fix: --data_dir of the data the model was trained on")
    affine = np.load(data / subject / "affine.npy")
    shape = tuple(info["subjects"][subject]["grid_shape"])
    spec = encoder or cfg.image_encoder
    if not spec:
        raise DataError(f"{checkpoint}: the model was trained on cached features and records no image encoder; fix: "
                        f"pass --encoder (and --pretrained/--model_config) of the encoder that made them")
    src = Path(images_dir)
    if not src.is_dir():
        raise DataError(f"{src}: images folder not found; fix: pass a folder of images")
    paths = sorted(p for p in src.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise DataError(f"{src}: no images ({', '.join(IMAGE_SUFFIXES)}); fix: put the images to predict there")
    for p in paths:  # every image readable before any model runs
        _open_image(p, str(p), load=False)
    enc = FrozenImageEncoder(spec, pretrained=pretrained if encoder else (pretrained or cfg.image_encoder_pretrained),
                             output=output or cfg.image_encoder_output, model_config=model_config or
                             (None if encoder else cfg.image_encoder_config))
    with atomic_dir(Path(out_dir), overwrite=overwrite) as tmp:
        for a in range(0, len(paths), batch_size):
            chunk = paths[a:a + batch_size]
            feats = enc([_open_image(p, str(p), load=True) for p in chunk]).astype(np.float32)
            if list(feats.shape[1:]) != list(cfg.feature_shape):
                raise DataError(f"encoder={spec!r}: gives features of shape {list(feats.shape[1:])} but the model takes "
                                f"{cfg.feature_shape}; fix: use the encoder (and output) the model was trained on")
            with torch.no_grad():
                pred = model({subject: torch.from_numpy(feats)})["voxels"][subject].numpy()
            for p, v in zip(chunk, pred):
                nib.save(nib.Nifti1Image(_volume(v, ijk, shape), affine), tmp / f"{p.stem}.nii.gz")
    print(f"wrote {len(paths)} volume(s) of {subject} ({shape}, {ijk.shape[0]} voxels in the mask) to {out_dir}")
    return Path(out_dir)
