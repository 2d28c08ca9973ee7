"""Evaluate a trained decoder side by side with the ridge baseline, the oracle and chance.

MindEye protocol: top-1 retrieval among ``retrieval_pool`` random test samples averaged over
``retrieval_draws`` draws, both directions (named as in ``litbrain.metrics``), and 2-way
identification. Writes ``metrics.json`` and ``retrieval.png`` to ``out_dir`` and prints a table.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch

from litbrain.errors import DataError
from litbrain.evaluation.baselines import fit_ridge
from litbrain.metrics import retrieval_score, similarity_matrix, top1_retrieval, two_way_identification
from litbrain.release import load_model
from litbrain.utils.io import atomic_file, atomic_write_text

__all__ = ["choose_subjects", "evaluate_decoder", "format_table", "read_prepared_manifest", "read_stimulus_ids"]


def read_prepared_manifest(data: Path) -> dict[str, Any]:
    """``manifest.json`` of a prepared dataset (one line naming the file and ``prepare`` when missing)."""
    manifest_file = data / "manifest.json"
    if not manifest_file.is_file():
        raise DataError(f"{manifest_file}: missing; fix: run `litbrain prepare` first")
    return json.loads(manifest_file.read_text())


def choose_subjects(manifest: dict[str, Any], data: Path, known: dict[str, int], subjects: Optional[list[str]],
                    checkpoint: str, fix: str = "fine-tune one or drop it") -> list[str]:
    """The subjects to score: those asked for, else every subject of the data the model has an adapter for."""
    chosen = list(subjects) if subjects else [s for s in manifest["subjects"] if s in known]
    for s in chosen:
        if s not in manifest["subjects"]:
            raise DataError(f"{data}: no subject {s!r} (available: {list(manifest['subjects'])}); fix: evaluate.subjects")
        if s not in known:
            raise DataError(f"{checkpoint}: the model has no adapter for {s!r}; fix: {fix}")
    if not chosen:
        raise DataError(f"{checkpoint}: none of the model's subjects {list(known)} is in {data}")
    return chosen


def read_stimulus_ids(data: Path) -> list[str]:
    """Stimulus ids of a prepared dataset, in the row order of its embedding arrays."""
    return [line.split("\t")[0] for line in (data / "stimuli.tsv").read_text().splitlines()[1:]]


def _load_split(data_dir: Path, subject: str, split: str) -> tuple[torch.Tensor, np.ndarray]:
    brain_file = data_dir / subject / f"{split}_brain.npy"
    stim_file = data_dir / subject / f"{split}_stimulus.npy"
    if not brain_file.is_file() or not stim_file.is_file():
        raise DataError(f"{brain_file}: missing; fix: run `litbrain prepare` for {data_dir}")
    brain = torch.from_numpy(np.load(brain_file, mmap_mode="r").astype(np.float32))
    stimulus = np.load(stim_file)
    if brain.shape[0] == 0:
        raise DataError(f"{brain_file}: the {split} split of {subject} is empty; fix: prepare a dataset with {split} trials")
    return brain, stimulus


def _scores(pred: torch.Tensor, target: torch.Tensor, pool: int, draws: int, seed: int) -> dict[str, float]:
    out = top1_retrieval(pred, target, pool, draws, seed)
    out["two_way_identification"] = two_way_identification(pred, target)
    return out


@torch.no_grad()
def _decode(model, subject: str, brain: torch.Tensor, batch_size: int = 1024) -> torch.Tensor:
    outs = [model({subject: brain[i : i + batch_size]})["image_projection"] for i in range(0, brain.shape[0], batch_size)]
    return torch.cat(outs)


def _examples(sim: torch.Tensor, pool: int, n_right: int, n_wrong: int, seed: int) -> list[tuple[int, list[int]]]:
    """(query, its top-3 among a random pool that holds it) for some correct and some failed queries."""
    g = torch.Generator().manual_seed(seed)
    n = sim.shape[0]
    right, wrong = [], []
    for q in torch.randperm(n, generator=g).tolist():
        others = [i for i in torch.randperm(n, generator=g).tolist() if i != q][: max(pool - 1, 1)]
        cand = torch.tensor([q, *others])
        top = cand[sim[q, cand].argsort(descending=True)[:3]].tolist()
        (right if top[0] == q else wrong).append((q, top))
        if len(right) >= n_right and len(wrong) >= n_wrong:
            break
    picked = right[:n_right] + wrong[:n_wrong]
    return picked + (right + wrong)[len(picked):][: max(0, n_right + n_wrong - len(picked))]


def _write_figure(path: Path, rows: list[dict[str, Any]], examples: dict[str, tuple[torch.Tensor, list[str]]],
                  images: dict[str, Path], pool: int, seed: int) -> None:
    """A bar panel (decoder / ridge / oracle / chance, both directions) and, per subject, retrieval
    examples among ``pool`` candidates: two hits and two misses (seen image, then the top 3)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    subjects = list(examples)
    n_rows = max(1, len(subjects))
    fig = plt.figure(figsize=(15, 1.6 + 1.9 * n_rows))
    ax = fig.add_axes([0.05, 0.12, 0.25, 0.74])
    methods = [r["method"] for r in rows]
    x = np.arange(len(methods))
    for j, (key, label) in enumerate((("brain_to_image", "brain -> image"), ("image_to_brain", "image -> brain"))):
        vals = [100 * r[key] for r in rows]
        bars = ax.bar(x + (j - 0.5) * 0.38, vals, 0.38, label=label)
        for bar, v in zip(bars, vals):
            ax.text(bar.get_x() + bar.get_width() / 2, v + 1, f"{v:.0f}", ha="center", fontsize=7)
    ax.set_xticks(x, methods, fontsize=8)
    ax.set_ylim(0, 110)
    ax.set_ylabel(f"top-1 among {pool} (%), mean over subjects")
    ax.legend(fontsize=7, loc="upper left")
    ax.set_title("retrieval", fontsize=10)
    width, height = 0.075, 0.8 / n_rows * 0.8
    for r, subject in enumerate(subjects):
        sim, ids = examples[subject]
        y = 0.86 - (r + 1) * (0.8 / n_rows) + 0.02
        fig.text(0.345, y + height / 2, subject, rotation=90, va="center", fontsize=9)
        for e, (q, top) in enumerate(_examples(sim, pool, 2, 2, seed + r)):
            for c, idx in enumerate([q, *top]):
                a = fig.add_axes([0.36 + e * 0.16 + c * (width * 0.5), y, width * 0.48, height])
                a.set_xticks([])
                a.set_yticks([])
                sid = ids[idx]
                if sid in images and images[sid].is_file():
                    a.imshow(plt.imread(images[sid]))
                else:
                    a.text(0.5, 0.5, sid, ha="center", va="center", fontsize=6)
                colour = "black" if c == 0 else ("green" if idx == q else "red")
                for spine in a.spines.values():
                    spine.set_edgecolor(colour)
                    spine.set_linewidth(2 if c else 1)
                if r == 0:
                    a.set_title("seen" if c == 0 else f"top-{c}", fontsize=7)
    fig.suptitle(f"brain -> image retrieval per subject: two hits and two misses among {pool} "
                 f"(green: the seen image, red: another)", fontsize=10, y=0.97)
    fig.savefig(path, dpi=80, format="png")
    plt.close(fig)


def format_table(rows: list[dict[str, Any]]) -> str:
    head = f"{'method':<10} {'brain->image':>13} {'image->brain':>13} {'2-way id':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        tw = r.get("two_way_identification")
        lines.append(
            f"{r['method']:<10} {100 * r['brain_to_image']:>12.1f}% {100 * r['image_to_brain']:>12.1f}% "
            + (f"{100 * tw:>8.1f}%" if tw is not None else f"{'':>9}")
        )
    return "\n".join(lines)


def evaluate_decoder(
    data_dir: str,
    checkpoint: str,
    out_dir: str = "results",
    raw_dir: Optional[str] = None,
    split: str = "test",
    subjects: Optional[list[str]] = None,
    retrieval_pool: int = 300,
    retrieval_draws: int = 30,
    ridge_alphas: list[float] = [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0],
    seed: int = 0,
) -> dict[str, Any]:
    """Score a decoder, the closed-form ridge baseline, the oracle and chance on one split.

    Args:
        data_dir: a dataset written by ``litbrain prepare``.
        checkpoint: a Lightning ``.ckpt``, a DeepSpeed ZeRO checkpoint folder, a release folder or a Hub repo id.
        out_dir: where ``metrics.json`` and ``retrieval.png`` go.
        raw_dir: the raw dataset; with a synthetic ``truth.npz`` it adds the oracle row, and
            its images illustrate the figure.
        split: ``test`` (shared stimuli, repeats averaged) or ``val``.
        subjects: subjects to score (default: every subject of the data the model knows).
        retrieval_pool / retrieval_draws: MindEye protocol, 300 samples and 30 draws.
        ridge_alphas: ridge penalties (relative to the mean Gram eigenvalue), picked on ``val``.
        seed: seed of the retrieval draws.
    """
    data = Path(data_dir)
    manifest = read_prepared_manifest(data)
    model = load_model(checkpoint, "fmri_decoder", "pass the checkpoint or release of an FmriDecodingTask run")
    chosen = choose_subjects(manifest, data, model.subjects, subjects, checkpoint)
    targets = torch.from_numpy(np.load(data / "image_embedding.npy"))
    stimulus_ids = read_stimulus_ids(data)

    oracle_fn = None
    if raw_dir and (Path(raw_dir) / "truth.npz").is_file():
        from litbrain.datamodules.fmri.synthetic import synthetic_oracle

        oracle_fn = synthetic_oracle

    per_subject: dict[str, dict[str, dict[str, float]]] = {}
    examples: dict[str, tuple[torch.Tensor, list[str]]] = {}
    for s in chosen:
        brain, stim = _load_split(data, s, split)
        target = targets[stim]
        pred = _decode(model, s, brain)
        res = {"decoder": _scores(pred, target, retrieval_pool, retrieval_draws, seed)}
        x_tr, st_tr = _load_split(data, s, "train")
        x_va, st_va = _load_split(data, s, "val")
        ridge = fit_ridge(x_tr, targets[st_tr], ridge_alphas, x_va, targets[st_va],
                          lambda p, t: retrieval_score(p, t, retrieval_pool, 5, seed))
        res["ridge"] = _scores(ridge.predict(brain).float(), target, retrieval_pool, retrieval_draws, seed)
        res["ridge"]["alpha"] = ridge.alpha
        if oracle_fn is not None:
            oracle = torch.as_tensor(np.asarray(oracle_fn(raw_dir, data_dir, s, split)), dtype=torch.float32)
            res["oracle"] = _scores(oracle, target, retrieval_pool, retrieval_draws, seed)
        chance = res["decoder"]["chance"]
        res["chance"] = {"brain_to_image": chance, "image_to_brain": chance, "two_way_identification": 0.5}
        per_subject[s] = res
        examples[s] = (similarity_matrix(pred, target), [stimulus_ids[i] for i in stim])

    methods = list(next(iter(per_subject.values())).keys())
    rows = []
    for m in methods:
        row: dict[str, Any] = {"method": m}
        for key in ("brain_to_image", "image_to_brain", "two_way_identification"):
            row[key] = float(np.mean([per_subject[s][m][key] for s in chosen]))
        rows.append(row)
    summary: dict[str, Any] = {"split": split, "subjects": chosen, "pool": retrieval_pool, "draws": retrieval_draws, "rows": rows, "per_subject": per_subject}
    by = {r["method"]: r for r in rows}
    if "oracle" in by:
        summary["decoder_over_oracle"] = {
            d: by["decoder"][d] / max(by["oracle"][d], 1e-12) for d in ("brain_to_image", "image_to_brain")
        }

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(summary, indent=2))
    images: dict[str, Path] = {}
    if raw_dir and (Path(raw_dir) / "stimuli.tsv").is_file():
        import csv

        with open(Path(raw_dir) / "stimuli.tsv") as f:
            for r in csv.DictReader(f, delimiter="\t"):
                images[r["stimulus_id"]] = Path(raw_dir) / r["image"]
    with atomic_file(out / "retrieval.png") as fig_tmp:
        _write_figure(fig_tmp, rows, examples, images, retrieval_pool, seed)

    print(f"\n{split} split, subjects {', '.join(chosen)}: top-1 among {retrieval_pool} x {retrieval_draws} draws")
    print(format_table(rows))
    if "decoder_over_oracle" in summary:
        r = summary["decoder_over_oracle"]
        print(f"decoder / oracle: brain->image {r['brain_to_image']:.3f}, image->brain {r['image_to_brain']:.3f}")
    print(f"wrote {out / 'metrics.json'} and {out / 'retrieval.png'}")
    return summary
