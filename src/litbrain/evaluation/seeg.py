"""sEEG word decoding, evaluated side by side: Du-IN vs no pretraining vs logistic regression vs oracle.

:func:`evaluate_seeg` scores, per subject on one split of a prepared sEEG folder, the stage-3
classifier (top-1, top-5, balanced accuracy), optionally the same network trained without
pretraining, scikit-learn's logistic regression on the flattened (time-decimated) epochs
fitted on the training split, the generator's Bayes oracle when the data is synthetic, and
chance. It writes ``metrics.json``, ``confusion.png`` (row-normalised confusion matrix per
subject) and, given the stage-1 checkpoint, the codebook usage on the training epochs.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from litbrain.errors import ReleaseError
from litbrain.evaluation.baselines import fit_logistic
from litbrain.nn.duin import DuinModel
from litbrain.release import model_from_source, read_model_source
from litbrain.utils.io import atomic_file, atomic_write_text


def _split(data_dir: Path, subject: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.load(data_dir / subject / f"{split}_brain.npy", mmap_mode="r")
    y = np.load(data_dir / subject / f"{split}_label.npy")
    return np.asarray(x, dtype=np.float32), y


def load_duin(path: str | Path, stage: str, key: str = "checkpoint") -> DuinModel:
    """The DuinModel (eval mode) of a checkpoint/release of ``stage``; refuses other models and stages."""
    src = read_model_source(path)
    found = getattr(src.config, "stage", None) if src.config.model_type == "duin" else None
    if src.config.model_type != "duin":
        raise ReleaseError(f"{key}={path}: holds a {src.config.model_type!r} model, not a Du-IN (sEEG) one; fix: point "
                           f"it at the stage-'{stage}' checkpoint of configs/seeg/")
    if found != stage:
        raise ReleaseError(f"{key}={path}: is a stage-'{found}' checkpoint, but this key needs a stage-'{stage}' one; "
                           f"fix: point it at the checkpoint of the '{stage}' run (stages chain vqvae -> mae -> classify)")
    return model_from_source(src)


@torch.no_grad()
def _logits(model: DuinModel, subject: str, x: np.ndarray, batch_size: int = 256) -> torch.Tensor:
    return torch.cat([model({subject: torch.from_numpy(x[i:i + batch_size])}) for i in range(0, len(x), batch_size)])


def _scores(logits: torch.Tensor, y: np.ndarray, n_classes: int) -> dict[str, float]:
    from torchmetrics.functional.classification import multiclass_accuracy

    t = torch.from_numpy(y).long()
    k = min(5, n_classes)
    return {
        "top1": float(multiclass_accuracy(logits, t, n_classes, top_k=1, average="micro")),
        "top5": float(multiclass_accuracy(logits, t, n_classes, top_k=k, average="micro")),
        "balanced": float(multiclass_accuracy(logits, t, n_classes, average="macro")),
    }


def _flatten(x: np.ndarray, decimate: int) -> np.ndarray:
    t = (x.shape[-1] // decimate) * decimate
    return x[..., :t].reshape(x.shape[0], x.shape[1], -1, decimate).mean(-1).reshape(x.shape[0], -1)


def _confusion_figure(path: Path, confusions: dict[str, np.ndarray], labels: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = len(confusions)
    fig, axes = plt.subplots(1, n, figsize=(4.2 * n, 4.0), squeeze=False)
    for ax, (subject, cm) in zip(axes[0], confusions.items()):
        norm = cm / np.maximum(cm.sum(1, keepdims=True), 1)
        ax.imshow(norm, cmap="viridis", vmin=0, vmax=1)
        ax.set_title(f"{subject}: top-1 {np.trace(cm) / max(cm.sum(), 1):.1%}", fontsize=9)
        ax.set_xlabel("predicted word")
        ax.set_ylabel("true word")
        if len(labels) <= 12:
            ax.set_xticks(range(len(labels)), labels, rotation=90, fontsize=6)
            ax.set_yticks(range(len(labels)), labels, fontsize=6)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


@torch.no_grad()
def codebook_usage(tokenizer: DuinModel, data_dir: Path, subjects: list[str], split: str = "train") -> dict[str, float]:
    """Share of the stage-1 codes hit at least once, and the assignment perplexity, on ``split``."""
    counts = torch.zeros(tokenizer.vq.n_codes, dtype=torch.long)
    for s in subjects:
        x, _ = _split(data_dir, s, split)
        for i in range(0, len(x), 256):
            idx = tokenizer.code_indices({s: torch.from_numpy(x[i:i + 256])})
            counts += torch.bincount(idx.reshape(-1), minlength=counts.numel())
    p = counts.float() / counts.sum()
    perplexity = float(torch.exp(-(p * torch.log(p.clamp_min(1e-12))).sum()))
    return {"usage": float((counts > 0).float().mean()), "perplexity": perplexity, "n_codes": int(counts.numel())}


def evaluate_seeg(
    checkpoint: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    no_pretraining: str | Path | None = None,
    tokenizer: str | Path | None = None,
    split: str = "test",
    logistic: bool = True,
    decimate: int = 10,
    seed: int = 0,
    label_fraction: float = 1.0,
) -> dict[str, Any]:
    """Score the methods per subject on ``split``; write metrics.json + confusion.png; return the metrics."""
    from litbrain.datamodules import labelled_subset, read_seeg_manifest
    from litbrain.datamodules.seeg.synthetic import load_seeg_truth

    data_dir, out_dir = Path(data_dir), Path(out_dir)
    manifest = read_seeg_manifest(data_dir)
    labels = list(manifest["labels"])
    n_classes = len(labels)
    model = load_duin(checkpoint, "classify", "checkpoint")
    baseline = load_duin(no_pretraining, "classify", "no_pretraining") if no_pretraining else None
    subjects = [s for s in model.subjects if s in manifest["subjects"]]
    truth = None
    bids_root = manifest.get("bids_root")
    if bids_root and (Path(bids_root) / "truth.json").is_file():
        truth = load_seeg_truth(bids_root)

    rows: list[dict[str, Any]] = []
    per_subject: dict[str, dict[str, dict[str, float]]] = {}
    confusions: dict[str, np.ndarray] = {}
    for s in subjects:
        x, y = _split(data_dir, s, split)
        res: dict[str, dict[str, float]] = {}
        logits = _logits(model, s, x)
        res["du-in"] = _scores(logits, y, n_classes)
        cm = np.zeros((n_classes, n_classes), dtype=np.int64)
        np.add.at(cm, (y, logits.argmax(1).numpy()), 1)
        confusions[s] = cm
        if baseline is not None and s in baseline.subjects:
            res["no pretraining"] = _scores(_logits(baseline, s, x), y, n_classes)
        if logistic:
            xtr, ytr = _split(data_dir, s, "train")
            keep = labelled_subset(ytr, label_fraction, seed, s)  # the trials the networks had labels for
            xtr, ytr = xtr[keep], ytr[keep]
            xv, yv = _split(data_dir, s, "val")
            clf = fit_logistic(_flatten(xtr, decimate), ytr, _flatten(xv, decimate), yv, seed=seed)
            proba = np.zeros((len(x), n_classes), dtype=np.float32)
            proba[:, clf.classes_] = clf.predict_proba(_flatten(x, decimate))
            res["logistic regression"] = _scores(torch.from_numpy(proba), y, n_classes)
        if truth is not None:
            acc = truth.get("subjects", {}).get(s, {}).get("oracle_accuracy")
            if acc is not None:
                res["oracle"] = {"top1": float(acc)}
        res["chance"] = {"top1": 1.0 / n_classes, "top5": min(5, n_classes) / n_classes, "balanced": 1.0 / n_classes}
        per_subject[s] = res

    methods = list(dict.fromkeys(m for r in per_subject.values() for m in r))
    for m in methods:
        row: dict[str, Any] = {"method": m}
        for metric in ("top1", "top5", "balanced"):
            vals = [per_subject[s][m][metric] for s in subjects if metric in per_subject[s].get(m, {})]
            row[metric] = float(np.mean(vals)) if vals else math.nan
        for s in subjects:
            row[s] = per_subject[s].get(m, {}).get("top1", math.nan)
        rows.append(row)
    metrics: dict[str, Any] = {"split": split, "subjects": subjects, "n_classes": n_classes, "rows": rows,
                               "label_fraction": float(label_fraction),
                               "per_subject": per_subject}
    oracle = next((r for r in rows if r["method"] == "oracle"), None)
    if oracle is not None:
        metrics["duin_over_oracle"] = rows[0]["top1"] / oracle["top1"]
    if tokenizer:
        metrics["codebook"] = codebook_usage(load_duin(tokenizer, "vqvae", "tokenizer"), data_dir, subjects)
    out_dir.mkdir(parents=True, exist_ok=True)
    _confusion_figure(out_dir / "confusion.png", confusions, labels)
    atomic_write_text(out_dir / "metrics.json", json.dumps(metrics, indent=2))
    return metrics


def format_seeg_table(metrics: dict[str, Any]) -> str:
    """The per-method table (mean over subjects, then top-1 of each subject), in percent."""
    subjects = metrics["subjects"]
    cols = ["top1", "top5", "balanced", *subjects]
    head = f"{'method':<20}" + "".join(f"{c if c in subjects else c + ' (mean)':>16}" for c in cols)
    lines = [head, "-" * len(head)]
    for r in metrics["rows"]:
        cells = [f"{100 * r[c]:.1f}%" if not math.isnan(r[c]) else "-" for c in cols]
        lines.append(f"{r['method']:<20}" + "".join(f"{c:>16}" for c in cells))
    text = "\n".join(lines)
    if metrics.get("label_fraction", 1.0) < 1.0:
        text += f"\nlogistic regression trained on the same {metrics['label_fraction']:.0%} of labelled training epochs"
    if "duin_over_oracle" in metrics:
        text += f"\nDu-IN / oracle (top-1) = {metrics['duin_over_oracle']:.3f}"
    if "codebook" in metrics:
        cb = metrics["codebook"]
        text += f"\ncodebook usage = {cb['usage']:.1%} of {cb['n_codes']} codes (perplexity {cb['perplexity']:.0f})"
    return text


def evaluate_seeg_from_cli(
    checkpoint: str,
    data_dir: str,
    out_dir: str,
    no_pretraining: str | None = None,
    tokenizer: str | None = None,
    split: str = "test",
    logistic: bool = True,
    decimate: int = 10,
    seed: int = 0,
    label_fraction: float = 1.0,
) -> str:
    """Evaluate a stage-3 sEEG classifier against its baselines; print the table.

    Args:
        checkpoint: the stage-3 (classify) checkpoint or release folder.
        data_dir: the prepared sEEG folder (prepare-seeg's out_dir).
        out_dir: where metrics.json and confusion.png go.
        no_pretraining: the classify checkpoint trained without pretraining (the baseline row).
        tokenizer: the stage-1 (vqvae) checkpoint, to report codebook usage.
        split: val or test.
        logistic: also fit scikit-learn's logistic regression on the flattened training epochs.
        decimate: average this many samples before flattening for the logistic regression.
        seed: seed of the logistic regression and of the labelled subset (the DataModule's ``seed``).
        label_fraction: the networks' ``data.label_fraction``: the logistic regression then trains on
            the same labelled subset of the training epochs.
    """
    m = evaluate_seeg(checkpoint, data_dir, out_dir, no_pretraining, tokenizer, split, logistic, decimate, seed,
                      label_fraction)
    return format_seeg_table(m)  # the CLI prints it
