"""WAVE evaluation: top-1 retrieval (MindEye protocol) vs ridge, oracle and chance; network ablation maps.

* :func:`retrieval` scores a contrastive WAVE encoder on a split, per subject (each subject's test rows are
  one pool), optionally with some parcels zeroed (the prepared series are z-scored, so 0 = the run mean).
* :func:`network_ablation`: for every network, the drop in retrieval when its parcels are zeroed, and the
  retrieval when only its parcels are kept (the others zeroed).
* :func:`ridge_retrieval`: the classic baseline, ridge (evaluation/baselines.py) from the flattened event
  window to the image embedding.
* :func:`oracle_retrieval` (synthetic worlds only): the decoder that knows the true latent features of the
  training events and that the world is linear-Gaussian in them: the window's regression on the true
  latents and the residual covariance (Ledoit-Wolf) give the posterior mean of each test event's latents,
  mapped through the world's true image-embedding function.
* :func:`ablation_figure`: nilearn ``plot_markers`` of the parcels coloured by their network's importance on
  a glass brain, beside a bar chart per network.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from litbrain.metrics import top1_retrieval
from litbrain.nn.wave import WaveEncoder
from litbrain.utils.io import atomic_file, atomic_write_text

__all__ = ["event_arrays", "retrieval", "network_ablation", "ridge_retrieval", "oracle_retrieval",
           "ablation_figure", "rank_agreement", "compare_wave"]


def event_arrays(dm: Any, split: str) -> dict[str, np.ndarray]:
    """All windows of a split: bold (N, W, P), subject (N,), stimulus (N,), image / text embeddings."""
    ds = dm.dataset(split)
    items = [ds[i] for i in range(len(ds))]
    return {k: torch.stack([it[k] for it in items]).numpy() for k in items[0]}


def _scores(brain: torch.Tensor, image: torch.Tensor, subject: np.ndarray) -> dict[str, float]:
    per = [top1_retrieval(brain[subject == s], image[subject == s]) for s in np.unique(subject)]
    out = {k: float(np.mean([p[k] for p in per])) for k in per[0]}
    out["top1"] = (out["brain_to_image"] + out["image_to_brain"]) / 2
    return out


@torch.no_grad()
def retrieval(model: WaveEncoder, arrays: dict[str, np.ndarray], zero: np.ndarray | None = None,
              batch_size: int = 256) -> dict[str, float]:
    """Top-1 retrieval both ways per subject (averaged); ``zero``: boolean (P,) of parcels to zero."""
    model.eval()
    x = torch.from_numpy(arrays["bold"]).float().clone()  # zeroing must not touch the caller's arrays
    if zero is not None:
        x[..., torch.from_numpy(np.asarray(zero, bool))] = 0.0
    brain = torch.cat([model.project(model.embed(x[i:i + batch_size]))["image"] for i in range(0, len(x), batch_size)])
    return _scores(brain, torch.from_numpy(arrays["image_embedding"]).float(), arrays["subject"])


def network_ablation(model: WaveEncoder, arrays: dict[str, np.ndarray], networks: np.ndarray) -> dict[str, Any]:
    """``full`` retrieval and, per network, ``drop`` (full - network zeroed) and ``keep_only`` retrieval."""
    full = retrieval(model, arrays)
    per = {}
    for k in sorted(set(networks.tolist())):
        own = networks == k
        per[k] = {"drop": full["top1"] - retrieval(model, arrays, zero=own)["top1"],
                  "keep_only": retrieval(model, arrays, zero=~own)["top1"], "n_parcels": int(own.sum())}
    return {"full": full, "networks": per}


def rank_agreement(drops: dict[str, float], weights: dict[str, float]) -> dict[str, Any]:
    """Spearman of drop vs true weight over informative networks; top network right; uninformative all below."""
    from scipy.stats import spearmanr

    info = [k for k, w in weights.items() if w > 0 and k in drops]
    rest = [k for k in drops if weights.get(k, 0) <= 0]
    rho = float(spearmanr([drops[k] for k in info], [weights[k] for k in info]).statistic) if len(info) > 1 else 1.0
    top_true = max(info, key=lambda k: weights[k])
    top_found = max(drops, key=lambda k: drops[k])
    below = max((drops[k] for k in rest), default=-np.inf) < min(drops[k] for k in info)
    return {"spearman": rho, "top_true": top_true, "top_found": top_found, "top_right": top_true == top_found,
            "uninformative_below": bool(below)}


def _window_features(arrays: dict[str, np.ndarray]) -> np.ndarray:
    return arrays["bold"].reshape(len(arrays["bold"]), -1).astype(np.float64)


def ridge_retrieval(train: dict[str, np.ndarray], test: dict[str, np.ndarray],
                    val: dict[str, np.ndarray] | None = None) -> dict[str, float]:
    """Ridge from the flattened event window to the image embedding (alpha on val by retrieval)."""
    from litbrain.evaluation.baselines import fit_ridge

    xt, yt = torch.from_numpy(_window_features(train)), torch.from_numpy(train["image_embedding"]).double()
    kw = {}
    if val is not None and len(val["bold"]) > 1:
        kw = {"x_val": torch.from_numpy(_window_features(val)), "y_val": torch.from_numpy(val["image_embedding"]),
              "score": lambda p, t: top1_retrieval(p, t)["brain_to_image"]}
    dec = fit_ridge(xt, yt, **kw)
    pred = dec.predict(torch.from_numpy(_window_features(test))).float()
    return _scores(pred, torch.from_numpy(test["image_embedding"]).float(), test["subject"])


def oracle_retrieval(raw_dir: str | Path, train: dict[str, np.ndarray], test: dict[str, np.ndarray]) -> dict[str, float]:
    """The known-latent linear-Gaussian decoder of a synthesize_wave world (see the module doc)."""
    from sklearn.covariance import LedoitWolf

    from litbrain.datamodules.fmri.synthetic import true_image_embedding
    from litbrain.datamodules.wave.synthetic import load_wave_truth

    truth = load_wave_truth(raw_dir)
    z = truth["z"]
    world = {k[len("world."):]: truth[k] for k in truth if isinstance(k, str) and k.startswith("world.")}
    xt, zt = _window_features(train), z[train["stimulus"]]
    xm = xt.mean(0)
    B, *_ = np.linalg.lstsq(np.c_[zt, np.ones(len(zt))], xt, rcond=None)
    B = B[:-1]  # (L, F)
    resid = xt - xm - (zt - zt.mean(0)) @ B
    prec = LedoitWolf().fit(resid).precision_
    A = B @ prec  # (L, F)
    post = np.linalg.solve(np.eye(B.shape[0]) + A @ B.T, A @ (_window_features(test) - xm).T).T
    pred = torch.from_numpy(true_image_embedding(post, world))
    return _scores(pred, torch.from_numpy(test["image_embedding"]).float(), test["subject"])


def ablation_figure(path: str | Path, ablation: dict[str, Any], parcels: Any, title: str = "") -> Path:
    """Glass brain of parcels coloured by their network's drop (nilearn plot_markers) + bar chart per network."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from nilearn import plotting

    per = ablation["networks"]
    names = sorted(per, key=lambda k: -per[k]["drop"])
    nets = parcels["network"].to_numpy().astype(str)
    values = np.array([per[n]["drop"] for n in nets])
    fig = plt.figure(figsize=(13, 4))
    ax_brain = fig.add_axes([0.0, 0.05, 0.62, 0.9])
    plotting.plot_markers(values, parcels[["x", "y", "z"]].to_numpy(), node_size=12, axes=ax_brain, figure=fig,
                          node_cmap="viridis", title=title or "retrieval drop when the parcel's network is zeroed",
                          display_mode="ortho", colorbar=True)
    ax = fig.add_axes([0.7, 0.3, 0.28, 0.6])
    pos = np.arange(len(names))
    ax.bar(pos - 0.2, [per[n]["drop"] for n in names], width=0.4, color="tab:blue", label="drop when zeroed")
    ax.bar(pos + 0.2, [per[n]["keep_only"] for n in names], width=0.4, color="tab:orange", label="keep only it")
    ax.axhline(ablation["full"]["chance"], color="grey", lw=0.8, ls=":", label="chance")
    ax.set_xticks(range(len(names)), names, rotation=70, fontsize=7)
    ax.set_ylabel("top-1 retrieval")
    ax.legend(fontsize=7)
    path = Path(path)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=90)
    plt.close(fig)
    return path


def write_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=1, default=float))


def load_wave(path: str | Path, key: str = "checkpoint") -> WaveEncoder:
    """The contrastive WaveEncoder (eval mode) of a checkpoint or release."""
    from litbrain.errors import ReleaseError
    from litbrain.release import model_from_source, read_model_source

    src = read_model_source(path)
    if src.config.model_type != "wave" or not src.config.image_embedding_dim:
        raise ReleaseError(f"{key}={path}: holds no contrastive wave model (model_type {src.config.model_type!r}); "
                           f"fix: point it at the checkpoint of a `objective: contrastive` run of configs/wave/")
    return model_from_source(src)


def evaluate_wave(data_dir: str, checkpoint: str, out_dir: str, raw_dir: str | None = None,
                  subjects: list[str] | None = None, event_window: int = 6, figure: bool = True) -> dict[str, Any]:
    """Retrieval of a contrastive WAVE encoder vs ridge, oracle (synthetic worlds) and chance, and its network
    ablation; writes ``metrics.json`` (and ``ablation.png``) into ``out_dir`` and returns the metrics.

    Args:
        data_dir: Prepared set (``litbrain wave prepare``).
        checkpoint: Checkpoint or release of the contrastive model.
        out_dir: Where metrics.json and ablation.png go.
        raw_dir: The synthetic world (truth.json): adds the oracle and the ablation's agreement with the truth.
        subjects: Subjects to evaluate (``None`` = all); ridge trains on their training events.
        event_window: TRs per event window (as in training).
        figure: Write ablation.png.
    """
    from litbrain.datamodules.wave.datamodule import WaveDataModule, read_parcels

    model = load_wave(checkpoint)
    dm = WaveDataModule(data_dir, subjects=subjects, mode="events", event_window=event_window, val_fraction=0.1)
    train, val, test = (event_arrays(dm, s) for s in ("train", "val", "test"))
    out: dict[str, Any] = {"model": retrieval(model, test), "ridge": ridge_retrieval(train, test, val)}
    ab = network_ablation(model, test, dm.networks)
    out["ablation"] = ab["networks"]
    if raw_dir is not None:
        truth = json.loads((Path(raw_dir) / "truth.json").read_text())
        out["oracle"] = oracle_retrieval(raw_dir, train, test)
        out["oracle_fraction"] = out["model"]["top1"] / max(out["oracle"]["top1"], 1e-12)
        out["ablation_vs_truth"] = rank_agreement({k: v["drop"] for k, v in ab["networks"].items()},
                                                  truth["network_weights"])
    out["chance"] = out["model"]["chance"]
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    if figure:
        ablation_figure(Path(out_dir) / "ablation.png", ab, read_parcels(data_dir))
    write_json(Path(out_dir) / "metrics.json", out)
    print(format_wave_table(out, subjects), flush=True)
    return out


def format_wave_table(out: dict[str, Any], subjects: list[str] | None = None) -> str:
    """What ``litbrain wave evaluate`` prints: retrieval rows, then each network's ablation drop."""
    who = ", ".join(subjects) if subjects else "all subjects"
    lines = [f"test events, {who}: top-1 retrieval", f"{'method':<10}{'brain->image':>14}{'image->brain':>14}",
             "-" * 38]
    for name in ("model", "ridge", "oracle"):
        if name in out:
            r = out[name]
            lines.append(f"{name:<10}{r['brain_to_image']:>13.1%}{r['image_to_brain']:>14.1%}")
    lines.append(f"{'chance':<10}{out['chance']:>13.1%}{out['chance']:>14.1%}")
    if "oracle_fraction" in out:
        lines.append(f"model / oracle: {out['oracle_fraction']:.3f}")
    lines += ["", f"{'network (zeroed)':<22}{'parcels':>8}{'drop':>9}{'kept alone':>12}"]
    for net, a in sorted(out["ablation"].items(), key=lambda kv: -kv[1]["drop"]):
        lines.append(f"{net:<22}{a['n_parcels']:>8}{a['drop']:>9.3f}{a['keep_only']:>12.3f}")
    if "ablation_vs_truth" in out:
        t = out["ablation_vs_truth"]
        lines.append(f"ablation vs truth: Spearman {t['spearman']:.2f} over informative networks, top network "
                     f"{t['top_found']} ({'right' if t['top_right'] else 'wrong; truth ' + str(t['top_true'])}), "
                     f"uninformative all below: {t['uninformative_below']}")
    return "\n".join(lines)


def _run_name(checkpoint: str | Path) -> str:
    """A checkpoint's run: the folder above ``checkpoints/`` (Lightning's layout), else the file's folder."""
    p = Path(checkpoint)
    return p.parent.parent.name if p.parent.name == "checkpoints" else p.parent.name


def compare_wave(data_dir: str, checkpoints: list[str], raw_dir: str | None = None,
                 subjects: list[str] | None = None, event_window: int = 6, out: str | None = None) -> dict[str, Any]:
    """Test top-1 retrieval of several contrastive WAVE runs, grouped by run name without its ``_seed<N>``
    suffix (e.g. ``labels0.2_pretrained``), with mean +- s.d. over seeds, the oracle and chance.

    Args:
        data_dir: Prepared set (``litbrain wave prepare``).
        checkpoints: Checkpoints or releases; each may be a glob pattern (``runs/x/*_seed*/checkpoints/last.ckpt``).
        raw_dir: The synthetic world (truth.json): adds the oracle.
        subjects: Subjects to evaluate (``None`` = all).
        event_window: TRs per event window (as in training).
        out: Optional path of a JSON file with the per-run scores and the groups.
    """
    import glob

    from litbrain.datamodules.wave.datamodule import WaveDataModule
    from litbrain.errors import ConfigError

    paths = [p for c in checkpoints for p in (sorted(glob.glob(c)) if glob.has_magic(c) else [c])]
    if not paths:
        raise ConfigError(f"checkpoints={checkpoints}: match no file; fix: point them at runs' checkpoints/last.ckpt")
    dm = WaveDataModule(data_dir, subjects=subjects, mode="events", event_window=event_window, val_fraction=0.1)
    test = event_arrays(dm, "test")
    scores = {_run_name(p): retrieval(load_wave(p, "checkpoints"), test) for p in paths}
    runs = {name: r["top1"] for name, r in scores.items()}
    result: dict[str, Any] = {"runs": runs, "chance": next(iter(scores.values()))["chance"]}
    if raw_dir is not None:
        result["oracle"] = oracle_retrieval(raw_dir, event_arrays(dm, "train"), test)["top1"]
    result["groups"] = seed_groups(runs)
    if out is not None:
        write_json(out, result)
    print(format_compare_table(result), flush=True)
    return result


def seed_groups(runs: dict[str, float]) -> dict[str, dict[str, float]]:
    """Runs grouped by name without the ``_seed<N>`` suffix: mean, sample s.d. (0 for one seed) and count."""
    import re

    groups: dict[str, list[float]] = {}
    for name, v in runs.items():
        groups.setdefault(re.sub(r"_seed\d+$", "", name), []).append(v)
    return {g: {"mean": float(np.mean(v)), "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0, "n": len(v)}
            for g, v in groups.items()}


def format_compare_table(result: dict[str, Any]) -> str:
    """What ``litbrain wave evaluate-seeds`` prints: top-1 per run, then mean +- s.d. per group, oracle and chance."""
    lines = [f"{'run':<34}{'test top-1':>11}", "-" * 45]
    lines += [f"{name:<34}{v:>11.3f}" for name, v in sorted(result["runs"].items())]
    lines += ["", f"{'group':<26}{'seeds':>6}{'mean':>8}{'s.d.':>8}", "-" * 48]
    lines += [f"{g:<26}{s['n']:>6}{s['mean']:>8.3f}{s['sd']:>8.3f}" for g, s in sorted(result["groups"].items())]
    if "oracle" in result:
        lines.append(f"{'oracle':<32}{result['oracle']:>8.3f}")
    lines.append(f"{'chance':<32}{result['chance']:>8.3f}")
    return "\n".join(lines)
