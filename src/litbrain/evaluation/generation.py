"""Text-to-image evaluation on the synthetic world: generate for held-out captions, judge with the probe.

Reusable pieces (brain-to-image reconstruction and GILL import them):

* :func:`load_probe` -- a :class:`~litbrain.nn.generation.WorldProbe` release, frozen;
* :func:`probe_accuracy` -- per-attribute accuracy of images against labels (with an optional mask:
  the attributes a caption actually states);
* :func:`chance_accuracy` -- uniform (1 / values) and majority-class accuracy of the same labels;
* :func:`probe_fd` -- Frechet distance between two image sets in a probe layer's feature space
  (torchmetrics' ``FrechetInceptionDistance`` with the probe as its ``feature`` extractor);
* :func:`~litbrain.nn.generation.generate_from_embeddings` -- images from ``prompt_embeds`` (+ the ""
  embedding as ``negative_prompt_embeds``) with a seed, steps and guidance.

:func:`evaluate_generation` (``litbrain generation evaluate``) generates one image per held-out
stimulus from one of its captions (seeded pick), prints per attribute the probe accuracy of the
generated images (over the captions stating that attribute), of the real images (the probe's
ceiling) and chance, and the probe FD of generated vs real images beside two references (real test
vs real training images: the floor; shuffled-colour images: a bad generator). In real use
``clip_score`` / ``inception_fid`` name torchmetrics' CLIPScore model and Inception FID.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from litbrain.errors import ConfigError
from litbrain.nn.generation import ProbeFeatures, WorldProbe, generate_from_embeddings, load_pipeline

__all__ = ["chance_accuracy", "evaluate_generation", "export_pipeline", "image_grid", "load_probe", "probe_accuracy", "probe_fd",
           "to_unit"]


def load_probe(path: str | os.PathLike) -> WorldProbe:
    """A world-probe release (``ProbeTask``'s ``save_dir``), in eval mode and frozen."""
    from litbrain.release import load_model

    src = load_model(str(path), "world_probe", "train one with `litbrain fit --config configs/generation/probe.yaml`")
    probe = src if isinstance(src, WorldProbe) else getattr(src, "model", src)
    return probe.eval().requires_grad_(False)


def to_unit(images: Any) -> torch.Tensor:
    """Images as float ``(B, 3, H, W)`` in [0, 1] from uint8 ``(B, H, W, 3)`` / ``(B, 3, H, W)`` arrays or tensors."""
    x = torch.as_tensor(np.asarray(images)) if not isinstance(images, torch.Tensor) else images
    if x.ndim == 4 and x.shape[-1] == 3 and x.shape[1] != 3:
        x = x.permute(0, 3, 1, 2)
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


@torch.no_grad()
def probe_predict(probe: WorldProbe, images: Any, batch_size: int = 128) -> dict[str, torch.Tensor]:
    x = to_unit(images)
    outs: dict[str, list[torch.Tensor]] = {}
    for a in range(0, x.shape[0], batch_size):
        for k, v in probe.predict(x[a:a + batch_size]).items():
            outs.setdefault(k, []).append(v)
    return {k: torch.cat(v) for k, v in outs.items()}


def probe_accuracy(probe: WorldProbe, images: Any, labels: dict[str, Any],
                   mask: dict[str, Any] | None = None) -> dict[str, float]:
    """Accuracy per attribute of the probe's reading of ``images`` against ``labels`` ``{attribute: (B,)}``;
    ``mask[attribute]`` (B,) bool keeps only the rows that count (e.g. captions stating it)."""
    pred = probe_predict(probe, images)
    out = {}
    for a, y in labels.items():
        if a not in pred:
            continue
        y = torch.as_tensor(np.asarray(y))
        keep = torch.ones_like(y, dtype=torch.bool) if mask is None or a not in mask else torch.as_tensor(
            np.asarray(mask[a], dtype=bool))
        out[a] = float((pred[a][keep] == y[keep]).float().mean()) if keep.any() else float("nan")
    return out


def chance_accuracy(labels: dict[str, Any], sizes: dict[str, int],
                    mask: dict[str, Any] | None = None) -> dict[str, tuple[float, float]]:
    """``{attribute: (1 / number of values, majority-class share of the labels)}``."""
    out = {}
    for a, y in labels.items():
        y = np.asarray(y)
        if mask is not None and a in mask:
            y = y[np.asarray(mask[a], dtype=bool)]
        major = float(np.bincount(y, minlength=sizes[a]).max() / max(len(y), 1)) if len(y) else float("nan")
        out[a] = (1.0 / sizes[a], major)
    return out


def probe_fd(probe: WorldProbe, real: Any, fake: Any, layer: str = "late", batch_size: int = 128) -> float:
    """Frechet distance of ``fake`` to ``real`` images in the probe's ``layer`` features (torchmetrics FID)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    fid = FrechetInceptionDistance(feature=ProbeFeatures(probe, layer), normalize=True, reset_real_features=True)
    for images, is_real in ((real, True), (fake, False)):
        x = to_unit(images)
        for a in range(0, x.shape[0], batch_size):
            fid.update(x[a:a + batch_size], real=is_real)
    return float(fid.compute())


def image_grid(rows: Sequence[Sequence[np.ndarray]], titles: Sequence[str], col_titles: Sequence[str],
               path: str | os.PathLike) -> Path:
    """A figure: one row per prompt (its text on the left), one column per image source."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from litbrain.utils.io import atomic_write_bytes

    n, m = len(rows), len(col_titles)
    fig, axes = plt.subplots(n, m, figsize=(1.6 * m + 3.2, 1.6 * n), squeeze=False)
    for i, row in enumerate(rows):
        for j, im in enumerate(row):
            ax = axes[i][j]
            ax.imshow(im)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(col_titles[j], fontsize=8)
        axes[i][0].set_ylabel(titles[i], rotation=0, ha="right", va="center", fontsize=7, wrap=True)
    fig.tight_layout()
    import io

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return atomic_write_bytes(Path(path), buf.getvalue())


def _uint8(images: torch.Tensor) -> np.ndarray:
    return (images.clamp(0, 1) * 255).round().byte().permute(0, 2, 3, 1).numpy()


def evaluate_generation(
    pipeline: str,
    probe: str,
    raw_dir: str,
    split: str = "test",
    n_prompts: int | None = None,
    steps: int = 25,
    guidance_scale: float = 3.0,
    seed: int = 0,
    batch_size: int = 16,
    out_dir: str | None = None,
    figure_rows: int = 8,
    clip_score: str | None = None,
    inception_fid: bool = False,
    device: str = "cpu",
) -> dict[str, Any]:
    """Generate for held-out captions and score the images (see the module docstring); print the table.

    Args:
        pipeline: the diffusers pipeline folder (``UnetTask``'s ``save_dir``) or ``diffusers:<id>``.
        probe: the world-probe release (``ProbeTask``'s ``save_dir``).
        raw_dir: the image-caption world (its ``truth.npz`` gives the labels).
        split: ``test`` (the held-out shared stimuli) or ``val``.
        n_prompts: evaluate the first N stimuli of the split (null: all); one caption each, drawn with ``seed``.
        steps / guidance_scale / seed / batch_size: sampling (image i uses the generator seeded ``seed + i``).
        out_dir: where ``results.json``, ``generated.npz`` and ``grid.png`` go (null: nowhere).
        figure_rows: captions in the figure (held-out caption x real image x generated images).
        clip_score: a CLIP model for torchmetrics' CLIPScore (e.g. ``openai/clip-vit-large-patch14``), real use.
        inception_fid: also torchmetrics' Inception FID (needs torch-fidelity's weights), real use.
        device: ``cpu`` or ``cuda``.
    """
    from litbrain.datamodules.generation import ImageCaptionDataModule, stated_attributes
    from litbrain.datamodules.fmri.synthetic import ATTRIBUTES
    from litbrain.nn.encoders import PromptEncoder

    if split not in ("test", "val"):
        raise ConfigError(f"split={split!r}; fix: 'test' (held-out shared stimuli) or 'val'")
    pipe = load_pipeline(pipeline, device=device)
    world_probe = load_probe(probe)
    dm = ImageCaptionDataModule(raw_dir)
    rows = dm.split_rows(split)
    if rows["attributes"] is None:
        raise ConfigError(f"raw_dir={raw_dir}: no truth.npz, so no attribute labels; fix: a synthetic world "
                          f"(`litbrain fmri synthesize`)")
    n = len(rows["ids"]) if n_prompts is None else min(int(n_prompts), len(rows["ids"]))
    rng = np.random.default_rng(seed)
    prompts = [caps[int(rng.integers(len(caps)))] for caps in rows["captions"][:n]]
    labels = {a: np.asarray(v[:n]) for a, v in rows["attributes"].items()}
    stated = [stated_attributes(p) for p in prompts]
    mask = {a: np.array([a in s for s in stated]) for a in labels}
    for a in labels:  # a stated value always matches the truth (the world's captions are true)
        bad = [i for i, s in enumerate(stated) if a in s and s[a] != labels[a][i]]
        if bad:
            raise ConfigError(f"caption {prompts[bad[0]]!r} states {a} {ATTRIBUTES[a][stated[bad[0]][a]]} but the truth "
                              f"is {ATTRIBUTES[a][labels[a][bad[0]]]}; fix: captions and truth.npz of one world")

    real = to_unit(rows["images"][:n])
    size = int(pipe.unet.config.sample_size) * 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    if real.shape[-1] != size:
        real = torch.nn.functional.interpolate(real, size=(size, size), mode="bilinear", antialias=True)
    encoder = PromptEncoder(pipeline if Path(pipeline).is_dir() else f"diffusers:{pipeline}", max_length=None,
                            device=device)
    embeds = torch.cat([encoder(prompts[a:a + 64]) for a in range(0, n, 64)])
    empty = encoder([""])
    fake = generate_from_embeddings(pipe, embeds, empty, seed=seed, steps=steps, guidance_scale=guidance_scale,
                                    batch_size=batch_size, progress=True)

    sizes = {a: len(ATTRIBUTES[a]) for a in labels}
    acc_gen = probe_accuracy(world_probe, fake, labels, mask)
    acc_real = probe_accuracy(world_probe, real, labels, mask)
    chance = chance_accuracy(labels, sizes, mask)
    train = dm.split_rows("train")
    ref = to_unit(train["images"][:n])
    if ref.shape[-1] != size:
        ref = torch.nn.functional.interpolate(ref, size=(size, size), mode="bilinear", antialias=True)
    shuffled = real.clone()[:, torch.tensor([2, 0, 1])]  # a bad generator: every colour wrong
    fd = {"generated": probe_fd(world_probe, real, fake), "real train (floor)": probe_fd(world_probe, real, ref),
          "colour-permuted real": probe_fd(world_probe, real, shuffled)}
    fd_early = {"generated": probe_fd(world_probe, real, fake, "early"),
                "real train (floor)": probe_fd(world_probe, real, ref, "early")}
    results: dict[str, Any] = {
        "pipeline": str(pipeline), "probe": str(probe), "raw_dir": str(raw_dir), "split": split, "n_prompts": n,
        "steps": steps, "guidance_scale": guidance_scale, "seed": seed,
        "accuracy": {a: {"generated": acc_gen[a], "real": acc_real[a], "uniform": chance[a][0],
                         "majority": chance[a][1], "n_stating": int(mask[a].sum())} for a in labels},
        "fd_late": fd, "fd_early": fd_early,
    }
    if clip_score:
        from torchmetrics.multimodal.clip_score import CLIPScore

        metric = CLIPScore(model_name_or_path=clip_score)
        metric.update((fake * 255).round().to(torch.uint8), prompts)
        results["clip_score"] = float(metric.compute())
    if inception_fid:
        from torchmetrics.image.fid import FrechetInceptionDistance

        metric = FrechetInceptionDistance(feature=2048, normalize=True)
        metric.update(real, real=True)
        metric.update(fake, real=False)
        results["inception_fid"] = float(metric.compute())
    _print_table(results)
    if out_dir:
        from litbrain.utils.io import atomic_write_bytes, atomic_write_text

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "results.json", json.dumps(results, indent=2) + "\n")
        import io

        buf = io.BytesIO()
        np.savez_compressed(buf, images=_uint8(fake), prompts=np.array(prompts), ids=np.array(rows["ids"][:n]))
        atomic_write_bytes(out / "generated.npz", buf.getvalue())
        k = min(figure_rows, n)
        grid_rows = [[_uint8(real[i:i + 1])[0], _uint8(fake[i:i + 1])[0]] for i in range(k)]
        image_grid(grid_rows, prompts[:k], ["real (held out)", f"generated ({steps} steps, cfg {guidance_scale})"],
                   out / "grid.png")
        print(f"wrote {out / 'results.json'} and {out / 'grid.png'}", flush=True)
    return results


def _print_table(r: dict[str, Any]) -> None:
    print(f"\ntext-to-image on {r['split']} captions ({r['n_prompts']} prompts, {r['steps']} steps, "
          f"guidance {r['guidance_scale']}): probe attribute accuracy over the captions stating each attribute")
    print(f"{'attribute':<12}{'generated':>10}{'real':>8}{'chance':>8}{'majority':>10}{'n':>6}")
    for a, v in r["accuracy"].items():
        print(f"{a:<12}{v['generated']:>10.3f}{v['real']:>8.3f}{v['uniform']:>8.3f}{v['majority']:>10.3f}"
              f"{v['n_stating']:>6}")
    print("probe Frechet distance to the real held-out images (late / early features):")
    for k, v in r["fd_late"].items():
        early = r["fd_early"].get(k)
        print(f"  {k:<24}{v:>12.4g}" + (f"{early:>12.4g}" if early is not None else ""))
    for k in ("clip_score", "inception_fid"):
        if k in r:
            print(f"  {k:<24}{r[k]:>10.3f}")


def export_pipeline(checkpoint: str, out: str, vae_decoder: str | None = None, overwrite: bool = False) -> str:
    """The diffusers pipeline folder of a ``UnetTask`` checkpoint (``.ckpt``; e.g. ``last.ckpt`` of an unfinished
    run): its UNet (EMA weights when kept) with the run's frozen VAE, text encoder and tokenizer.

    Args:
        checkpoint: a Lightning checkpoint of ``litbrain fit --config configs/generation/unet.yaml``.
        out: the pipeline folder to write.
        vae_decoder: a fine-tuned-decoder VAE (same encoder) to save instead of the run's VAE (null: the run's own
            ``vae_decoder``, if any).
        overwrite: replace an existing ``out``.
    """
    from litbrain.nn.generation import save_pipeline
    from litbrain.tasks.generation import UnetTask
    from litbrain.utils.checkpoint import read_checkpoint

    if Path(out).exists() and not overwrite:
        raise ConfigError(f"out={out}: already exists; fix: another folder or --overwrite true")
    ckpt = read_checkpoint(checkpoint)
    hp = dict(ckpt.get("hyper_parameters", {}))
    if "caption_dropout" not in hp or "vae" not in hp:
        raise ConfigError(f"checkpoint={checkpoint}: not a UnetTask checkpoint; fix: the checkpoint of a "
                          f"configs/generation/unet.yaml run")
    if vae_decoder is not None:
        hp["vae_decoder"] = vae_decoder
    hp = {k: v for k, v in hp.items() if not k.startswith("_")}
    task = UnetTask(**hp)
    task.setup("fit")
    task.configure_model()
    state = {k[len("model."):]: v for k, v in ckpt["state_dict"].items() if k.startswith("model.")}
    task.model.load_state_dict(state)
    task.on_load_checkpoint(ckpt)
    folder = save_pipeline(task.pipeline(), out)
    print(f"wrote the pipeline of {checkpoint} (step {ckpt.get('global_step')}) to {folder}", flush=True)
    return str(folder)
