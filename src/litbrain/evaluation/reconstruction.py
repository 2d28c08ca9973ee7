"""Reconstruct seen images from fMRI through a diffusers pipeline, and the MindEye metrics table.

Reconstruction (MindEye2): the model's predicted VAE latents are decoded by the pipeline's VAE
(the blurry image); ``StableDiffusionImg2ImgPipeline`` then starts from the blurry image at
``strength`` s, conditioned on the predicted caption conditioning (``prompt_embeds``), one fixed
seed per stimulus (``seed + stimulus row``). PNGs (seen / blurry / final) and a grid figure per
subject go to ``out_dir``.

Metrics (MindEye's definitions, on the test split, repeats averaged, per subject and mean):

* ``pixcorr``: Pearson correlation of the flattened RGB pixels of each reconstruction with its
  seen image (reconstruction resized to the seen image's size, bilinear), averaged over images;
* ``ssim``: SSIM of grayscale images (skimage's ``rgb2gray`` weights), Gaussian window sigma 1.5
  (11 taps), data range 1 (torchmetrics; equals ``skimage.metrics.structural_similarity`` with
  ``gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1``);
* two-way identification with feature layers (MindEye's ``two_way_identification``): the share of
  other test images whose features correlate less with a reconstruction's than its own seen
  image's do (chance 50%); offline with the world probe's early and late layers, and with
  AlexNet(2), AlexNet(5), Inception and CLIP where their weights are on this machine;
* ``attributes``: the probe's attribute accuracy on the reconstructions against the true
  attributes of the synthetic world (mean over attributes);
* ``brain_to_image`` / ``image_to_brain``: today's retrieval figures (top-1 among a pool).

Rows: ``decoder blurry``, ``decoder final``, ``ridge blurry`` / ``ridge final`` (voxels -> latents
and voxels -> conditioning by closed-form ridge, through the same VAE and pipeline), ``oracle``
(the pipeline from the true caption's conditioning, started from the true image's latents) and
``chance`` (a random other test stimulus's seen image).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from litbrain.errors import ConfigError, DataError
from litbrain.evaluation.baselines import fit_ridge
from litbrain.evaluation.fmri import _load_split, choose_subjects, read_prepared_manifest, read_stimulus_ids
from litbrain.metrics import top1_retrieval, two_way_identification
from litbrain.release import load_model
from litbrain.utils.io import atomic_file, atomic_write_text

__all__ = ["RGB_TO_GRAY", "evaluate_reconstruction", "format_recon_table", "img2img", "load_pipeline", "pixcorr",
           "reconstruct", "ssim", "to_gray"]

RGB_TO_GRAY = (0.2125, 0.7154, 0.0721)  # skimage.color.rgb2gray (MindEye's SSIM input)
METRICS = ("pixcorr", "ssim", "probe_early", "probe_late", "attributes", "brain_to_image", "image_to_brain")


# ----------------------------------------------------------------------------- metrics
def pixcorr(recons: torch.Tensor, images: torch.Tensor) -> float:
    """MindEye's PixCorr: mean over images of ``corrcoef(image_i.flatten(), recon_i.flatten())``.

    ``recons`` / ``images``: (N, 3, H, W) in [0, 1]; reconstructions are resized (bilinear) to the images' size.
    """
    if recons.shape[-2:] != images.shape[-2:]:
        recons = F.interpolate(recons.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)
    a = images.flatten(1).double()
    b = recons.flatten(1).double()
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    r = (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1)).clamp_min(1e-12)
    return float(r.mean())


def to_gray(images: torch.Tensor) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 1, H, W) with skimage's ``rgb2gray`` weights."""
    w = torch.tensor(RGB_TO_GRAY, dtype=images.dtype, device=images.device).view(1, 3, 1, 1)
    return (images * w).sum(1, keepdim=True)


def ssim(recons: torch.Tensor, images: torch.Tensor, per_image: bool = False) -> float | torch.Tensor:
    """MindEye's SSIM (grayscale, Gaussian window sigma 1.5 over 11 taps, data range 1), via torchmetrics."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    if recons.shape[-2:] != images.shape[-2:]:
        recons = F.interpolate(recons.float(), size=images.shape[-2:], mode="bilinear", align_corners=False)
    _, full = structural_similarity_index_measure(to_gray(recons.double()), to_gray(images.double()),
                                                  gaussian_kernel=True, sigma=1.5, kernel_size=11, data_range=1.0,
                                                  reduction="none", return_full_image=True)
    # skimage (MindEye's SSIM) averages the SSIM map without the (win_size - 1) // 2 = 5 border pixels,
    # where the filters would read the padding; torchmetrics' full map, cropped alike, is the same number.
    vals = full[..., 5:-5, 5:-5].mean((1, 2, 3))
    return vals if per_image else float(vals.mean())


def _corr_two_way(pred: torch.Tensor, true: torch.Tensor) -> float:
    return two_way_identification(pred.flatten(1).double(), true.flatten(1).double())


# ----------------------------------------------------------------------------- the pipeline
def load_pipeline(spec: str, device: str = "cpu") -> Any:
    """A ``StableDiffusionImg2ImgPipeline`` from a pipeline folder / ``diffusers:<id>`` (it must have a VAE)."""
    from litbrain.nn.generation import load_pipeline as load

    folder = Path(str(spec)[len("diffusers:"):] if str(spec).startswith("diffusers:") else str(spec))
    if folder.is_dir() and (folder / "model_index.json").is_file():
        parts = json.loads((folder / "model_index.json").read_text())
        if parts.get("vae") in (None, [None, None]) or not (folder / "vae").is_dir():
            raise ConfigError(f"pipeline={spec!r}: the pipeline has no VAE (model_index.json / vae/); fix: save the "
                              f"pipeline with its AutoencoderKL (the blurry image and img2img need it)")
    from diffusers.utils import logging as dlog

    level = dlog.get_verbosity()
    dlog.set_verbosity_error()  # "expected CLIPTextModel" (a MiniLM pipeline) and the safety-checker notice
    try:
        pipe = load(str(spec), "img2img", device)
    finally:
        dlog.set_verbosity(level)
    if getattr(pipe, "vae", None) is None:
        raise ConfigError(f"pipeline={spec!r}: the pipeline has no VAE; fix: save the pipeline with its AutoencoderKL")
    return pipe


def check_strength(strength: float) -> float:
    if not 0.0 < float(strength) <= 1.0:
        raise ConfigError(f"strength={strength}: must be in (0, 1] (the share of the denoising steps run from the "
                          f"blurry image); fix: e.g. 0.6 (1.0 ignores the blurry image)")
    return float(strength)


def check_conditioning(pipe: Any, width: int, source: str) -> None:
    cross = int(pipe.unet.config.cross_attention_dim)
    if int(width) != cross:
        raise ConfigError(f"{source}: conditioning width {width} != the pipeline UNet's cross_attention_dim {cross}; "
                          f"fix: embed the captions with this pipeline's text encoder and retrain the mapper, or use "
                          f"the pipeline the model was trained for")


def _vae_size(pipe: Any) -> int:
    return int(pipe.vae.config.sample_size)


def vae_decode(pipe: Any, latents: torch.Tensor, batch_size: int = 64) -> torch.Tensor:
    """Scaled VAE latents (N, C, h, w) -> images (N, 3, S, S) in [0, 1] (the blurry reconstruction)."""
    vae = pipe.vae
    c = int(vae.config.latent_channels)
    if latents.dim() != 4 or latents.shape[1] != c:
        raise ConfigError(f"latents of shape {tuple(latents.shape[1:])} do not fit the pipeline's VAE (latent_channels "
                          f"{c}); fix: train the low-level head on this pipeline's embed-images latents")
    sf = float(vae.config.scaling_factor)
    outs = []
    with torch.no_grad():
        for i in range(0, latents.shape[0], batch_size):
            z = latents[i:i + batch_size].to(vae.device, vae.dtype) / sf
            outs.append(((vae.decode(z).sample.float().cpu() + 1) / 2).clamp(0, 1))
    return torch.cat(outs)


def img2img(pipe: Any, init: torch.Tensor, prompt_embeds: torch.Tensor, strength: float = 0.6,
            num_inference_steps: int = 20, guidance_scale: float = 1.0, seeds: Sequence[int] | None = None,
            batch_size: int = 32) -> torch.Tensor:
    """Img2img from ``init`` (N, 3, S, S) in [0, 1], conditioned on ``prompt_embeds`` (N, T, D); one seed per image."""
    strength = check_strength(strength)
    check_conditioning(pipe, prompt_embeds.shape[-1], "prompt_embeds")
    n = init.shape[0]
    seeds = list(range(n)) if seeds is None else [int(s) for s in seeds]
    outs = []
    dev = pipe.device
    for i in range(0, n, batch_size):
        gens = [torch.Generator(device="cpu").manual_seed(s) for s in seeds[i:i + batch_size]]
        pe = prompt_embeds[i:i + batch_size].to(dev, pipe.unet.dtype)
        # guidance_scale > 1: classifier-free guidance against the empty prompt (the pipeline encodes it)
        res = pipe(prompt_embeds=pe, image=init[i:i + batch_size].float(), strength=strength,
                   num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, generator=gens,
                   output_type="pt")
        outs.append(res.images.float().cpu().clamp(0, 1))
    return torch.cat(outs)


# ----------------------------------------------------------------------------- feature networks
def named_feature_networks(names: Sequence[str]) -> tuple[dict[str, Callable[[torch.Tensor], torch.Tensor]], dict[str, str]]:
    """MindEye's feature networks by name where their weights are on this machine (no download).

    ``alexnet`` gives ``alexnet_2`` / ``alexnet_5`` (MindEye's layers ``features.4`` / ``features.11``),
    ``inception`` the pooled Inception-v3 features; ``clip`` open_clip ViT-L-14's image embedding.
    Returns the callables and, for each missing one, why.
    """
    nets: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {}
    missing: dict[str, str] = {}
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    for name in names:
        if name == "alexnet":
            from torchvision.models import AlexNet_Weights, alexnet

            f = hub / Path(AlexNet_Weights.IMAGENET1K_V1.url).name
            if not f.is_file():
                missing[name] = f"no weights offline ({f})"
                continue
            m = alexnet()
            m.load_state_dict(torch.load(f, map_location="cpu", weights_only=True))
            m.eval()

            def layer(k: int, m=m) -> Callable[[torch.Tensor], torch.Tensor]:
                def run(x: torch.Tensor) -> torch.Tensor:
                    x = F.interpolate(x, size=(224, 224), mode="bilinear", align_corners=False)
                    x = (x - torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)) / torch.tensor(
                        [0.229, 0.224, 0.225]).view(1, 3, 1, 1)
                    with torch.no_grad():
                        return m.features[: k + 1](x)
                return run

            nets["alexnet_2"], nets["alexnet_5"] = layer(4), layer(11)
        elif name == "inception":
            from torchvision.models import Inception_V3_Weights

            f = hub / Path(Inception_V3_Weights.IMAGENET1K_V1.url).name
            missing[name] = "not wired yet" if f.is_file() else f"no weights offline ({f})"
        elif name == "clip":
            missing[name] = "no open_clip ViT-L-14 weights offline (needs a filled Hugging Face cache)"
        else:
            missing[name] = "unknown network name (alexnet, inception, clip)"
    return nets, missing


# ----------------------------------------------------------------------------- the probe
def probe_outputs(probe: Any, images: torch.Tensor, batch_size: int = 256) -> dict[str, Any]:
    """``{"early": (N, ...), "late": (N, ...), "attributes": {name: (N,) predicted index}}`` from the world probe.

    ``probe(images)`` (images (N, 3, S, S) in [0, 1]) returns a dict with ``early`` / ``late``
    feature tensors and ``logits`` ``{attribute: (N, n_values)}`` (the generation family's WorldProbe).
    """
    early, late, preds = [], [], {}
    with torch.no_grad():
        for i in range(0, images.shape[0], batch_size):
            out = probe(images[i:i + batch_size].float())
            early.append(out["early"].flatten(1).float())
            late.append(out["late"].flatten(1).float())
            for k, v in out["logits"].items():
                preds.setdefault(k, []).append(v.argmax(-1))
    return {"early": torch.cat(early), "late": torch.cat(late),
            "attributes": {k: torch.cat(v) for k, v in preds.items()}}


def _image_scores(recons: torch.Tensor, seen: torch.Tensor, probe_seen: dict[str, Any] | None,
                  probe: Any | None, truth: dict[str, np.ndarray] | None, rows: np.ndarray,
                  nets: dict[str, Callable[[torch.Tensor], torch.Tensor]]) -> dict[str, float]:
    out = {"pixcorr": pixcorr(recons, seen), "ssim": ssim(recons, seen)}
    if probe is not None and probe_seen is not None:
        pr = probe_outputs(probe, recons)
        out["probe_early"] = _corr_two_way(pr["early"], probe_seen["early"])
        out["probe_late"] = _corr_two_way(pr["late"], probe_seen["late"])
        if truth is not None:
            accs = [float((pr["attributes"][k].numpy() == truth[k][rows]).mean()) for k in pr["attributes"] if k in truth]
            out["attributes"] = float(np.mean(accs)) if accs else float("nan")
    for name, f in nets.items():
        out[name] = _corr_two_way(f(recons), f(seen))
    return out


# ----------------------------------------------------------------------------- files
def _seen_images(raw: Path, ids: Sequence[str], size: int) -> torch.Tensor:
    import pandas as pd
    from PIL import Image

    table = pd.read_csv(raw / "stimuli.tsv", sep="\t", dtype={"stimulus_id": str, "image": str})
    path_of = dict(zip(table["stimulus_id"], table["image"]))
    out = []
    for sid in ids:
        if sid not in path_of:
            raise DataError(f"{raw / 'stimuli.tsv'}: no stimulus {sid!r}; fix: pass the raw folder of the prepared data")
        p = Path(path_of[sid])
        im = Image.open(p if p.is_absolute() else raw / p).convert("RGB").resize((size, size), Image.BICUBIC)
        out.append(np.asarray(im, dtype=np.float32) / 255.0)
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def _save_png(path: Path, image: torch.Tensor) -> None:
    from PIL import Image

    arr = (image.clamp(0, 1).permute(1, 2, 0).numpy() * 255.0 + 0.5).astype(np.uint8)
    with atomic_file(path) as tmp:
        Image.fromarray(arr).save(tmp, format="PNG")


def _write_grid(path: Path, columns: dict[str, torch.Tensor], ids: Sequence[str], title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n, k = len(ids), len(columns)
    fig, axes = plt.subplots(n, k, figsize=(1.3 * k, 1.3 * n + 0.4), squeeze=False)
    for r in range(n):
        for c, (name, imgs) in enumerate(columns.items()):
            a = axes[r][c]
            a.imshow(imgs[r].clamp(0, 1).permute(1, 2, 0).numpy())
            a.set_xticks([])
            a.set_yticks([])
            if r == 0:
                a.set_title(name, fontsize=8)
            if c == 0:
                a.set_ylabel(ids[r], fontsize=6)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    plt.close(fig)


def _write_examples(out: Path, subject: str, ids: Sequence[str], columns: dict[str, torch.Tensor], n: int) -> Path:
    d = out / subject
    d.mkdir(parents=True, exist_ok=True)
    n = min(n, len(ids))
    for i in range(n):
        for name, imgs in columns.items():
            _save_png(d / f"{ids[i]}_{name.replace(' ', '_')}.png", imgs[i])
    grid = out / f"grid_{subject}.png"
    _write_grid(grid, {k: v[:n] for k, v in columns.items()}, list(ids[:n]),
                f"{subject}: {' | '.join(columns)} (test stimuli)")
    return grid


# ----------------------------------------------------------------------------- decoding
@torch.no_grad()
def _decode(model: Any, subject: str, brain: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
    outs: dict[str, list[torch.Tensor]] = {}
    for i in range(0, brain.shape[0], batch_size):
        o = model({subject: brain[i:i + batch_size]})
        for k in ("latents", "conditioning", "image_projection"):
            outs.setdefault(k, []).append(o[k].float())
    return {k: torch.cat(v) for k, v in outs.items()}


def _open(checkpoint: str, pipeline: Optional[str], strength: float, device: str) -> tuple[Any, Any, str]:
    """The brain_to_image model, the img2img pipeline (its own, or ``pipeline``) and the pipeline's spec, checked."""
    check_strength(strength)
    model = load_model(checkpoint, "brain_to_image", "pass the release or checkpoint of a ReconstructionTask run")
    spec = pipeline or model.config.pipeline
    if not spec:
        raise ConfigError(f"{checkpoint}: the model names no pipeline; fix: pass --pipeline <pipeline folder>")
    pipe = load_pipeline(spec, device)
    _check_model(model, pipe, checkpoint)
    return model, pipe, spec


def _check_model(model: Any, pipe: Any, checkpoint: str) -> None:
    check_conditioning(pipe, model.conditioning_shape[-1], f"{checkpoint}: net.conditioning_shape")
    c = int(pipe.vae.config.latent_channels)
    if int(model.latent_shape[0]) != c:
        raise ConfigError(f"{checkpoint}: net.latent_shape={list(model.latent_shape)} does not fit the pipeline's VAE "
                          f"({c} latent channels); fix: use the pipeline whose VAE made the training latents")


def reconstruct(
    checkpoint: str,
    data_dir: str,
    raw_dir: str,
    pipeline: Optional[str] = None,
    out_dir: str = "results/recon",
    subjects: Optional[list[str]] = None,
    split: str = "test",
    n_images: int = 8,
    strength: float = 0.6,
    num_inference_steps: int = 20,
    guidance_scale: float = 1.0,
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, str]:
    """Reconstruct the first ``n_images`` stimuli of a split per subject: PNGs + a grid (seen | blurry | final).

    Args:
        checkpoint: a ``brain_to_image`` release folder, ``.ckpt`` or Hub id (a ReconstructionTask run).
        data_dir: the prepared dataset; raw_dir: its raw folder (the seen images).
        pipeline: the diffusers pipeline folder / ``diffusers:<id>`` (default: the one the model was trained for).
        out_dir: where ``<subject>/<stimulus>_{seen,blurry,final}.png`` and ``grid_<subject>.png`` go.
        subjects: default every subject of the data the model knows (a new subject after adapter transfer too).
        strength: img2img strength s in (0, 1] from the blurry image (MindEye2 starts there).
        num_inference_steps / guidance_scale / seed: the sampler; image i uses seed ``seed + row``.

    Returns ``{subject: grid path}``.
    """
    model, pipe, spec = _open(checkpoint, pipeline, strength, device)
    data, raw = Path(data_dir), Path(raw_dir)
    chosen = _subjects(data, model, subjects, checkpoint)
    stimulus_ids = read_stimulus_ids(data)
    out = Path(out_dir)
    grids = {}
    for s in chosen:
        brain, stim = _load_split(data, s, split)
        brain, stim = brain[:n_images], stim[:n_images]
        pred = _decode(model, s, brain)
        blurry = vae_decode(pipe, pred["latents"])
        final = img2img(pipe, blurry, pred["conditioning"], strength, num_inference_steps, guidance_scale,
                        [seed + int(r) for r in stim])
        ids = [stimulus_ids[i] for i in stim]
        seen = _seen_images(raw, ids, _vae_size(pipe))
        grids[s] = str(_write_examples(out, s, ids, {"seen": seen, "blurry": blurry, "final": final}, n_images))
        print(f"{s}: wrote {grids[s]}")
    return grids


def _subjects(data: Path, model: Any, subjects: Optional[list[str]], checkpoint: str) -> list[str]:
    return choose_subjects(read_prepared_manifest(data), data, model.subjects, subjects, checkpoint,
                           "fine-tune one (configs/recon/new_subject_demo.yaml) or drop it")


# ----------------------------------------------------------------------------- evaluation
def format_recon_table(rows: list[dict[str, Any]], extra: Sequence[str] = ()) -> str:
    cols = [("pixcorr", "PixCorr", False), ("ssim", "SSIM", False), ("probe_early", "probe-early", True),
            ("probe_late", "probe-late", True), *[(e, e, True) for e in extra], ("attributes", "attr-acc", True),
            ("brain_to_image", "brain->img", True), ("image_to_brain", "img->brain", True)]
    head = f"{'method':<16}" + "".join(f"{label:>12}" for _, label, _ in cols)
    lines = [head, "-" * len(head)]
    for r in rows:
        cells = []
        for key, _, pct in cols:
            v = r.get(key)
            if v is None or (isinstance(v, float) and math.isnan(v)):
                cells.append(f"{'-':>12}")
            else:
                cells.append(f"{100 * v:>11.1f}%" if pct else f"{v:>12.3f}")
        lines.append(f"{r['method']:<16}" + "".join(cells))
    return "\n".join(lines)


def evaluate_reconstruction(
    checkpoint: str,
    data_dir: str,
    raw_dir: str,
    pipeline: Optional[str] = None,
    probe: Optional[str] = None,
    out_dir: str = "results/recon",
    subjects: Optional[list[str]] = None,
    split: str = "test",
    strength: float = 0.6,
    num_inference_steps: int = 20,
    guidance_scale: float = 1.0,
    n_figure: int = 8,
    feature_networks: list[str] = ["alexnet", "inception", "clip"],
    retrieval_pool: int = 300,
    retrieval_draws: int = 30,
    ridge_alphas: list[float] = [1e-2, 1e-1, 1.0, 10.0, 100.0],
    seed: int = 0,
    device: str = "cpu",
) -> dict[str, Any]:
    """The MindEye table: decoder blurry / final vs ridge blurry / final, the oracle and chance (see the module doc).

    Args:
        checkpoint: a ``brain_to_image`` release folder, ``.ckpt`` or Hub id.
        data_dir: the prepared dataset with ``recon/`` targets; raw_dir: its raw folder (seen images, truth).
        pipeline: the diffusers pipeline (default: the model's); probe: the world probe's release
            folder or checkpoint (``world_probe``; None skips the probe columns).
        out_dir: ``metrics.json``, ``table.txt``, PNGs and ``grid_<subject>.png``.
        subjects: default every subject of the data the model knows.
        strength / num_inference_steps / guidance_scale / seed: img2img, one seed per stimulus (``seed + row``).
        n_figure: stimuli per subject shown as PNGs and in the grid.
        feature_networks: MindEye's networks by name, used where their weights are on this machine.
        retrieval_pool / retrieval_draws: today's retrieval protocol (the pool is capped at the test size).
        ridge_alphas: ridge penalties (relative to the mean Gram eigenvalue), picked on ``val``.
    """
    from litbrain.datamodules.recon.datamodule import read_recon_manifest

    model, pipe, spec = _open(checkpoint, pipeline, strength, device)
    data, raw = Path(data_dir), Path(raw_dir)
    read_recon_manifest(data)
    chosen = _subjects(data, model, subjects, checkpoint)
    stimulus_ids = read_stimulus_ids(data)
    latents_all = torch.from_numpy(np.load(data / "recon" / "latents.npy"))
    cond_all = torch.from_numpy(np.load(data / "recon" / "conditioning.npy", mmap_mode="r").astype(np.float32))
    check_conditioning(pipe, cond_all.shape[-1], f"{data / 'recon' / 'conditioning.npy'}")
    targets = torch.from_numpy(np.load(data / "image_embedding.npy"))
    size = _vae_size(pipe)
    probe_model = None
    if isinstance(probe, torch.nn.Module):  # a probe object (Python API, tests)
        probe_model, probe = probe.eval(), type(probe).__name__
    elif probe:  # the generation family's world probe (model_type world_probe): a release folder or checkpoint
        probe_model = load_model(probe, "world_probe", "pass the world probe's release (configs/generation/probe.yaml)")
    truth = None
    if (raw / "truth.npz").is_file():
        from litbrain.datamodules.fmri.synthetic import stimulus_attributes

        attrs = stimulus_attributes(raw)
        pos = {s: i for i, s in enumerate(attrs["stimulus_id"])}
        order = np.asarray([pos[s] for s in stimulus_ids])
        truth = {k: np.asarray(v)[order] for k, v in attrs.items() if k != "stimulus_id"}
    nets, missing_nets = named_feature_networks(feature_networks)
    sample = dict(strength=strength, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)

    oracle_cache: dict[int, torch.Tensor] = {}
    per_subject: dict[str, dict[str, dict[str, float]]] = {}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for s in chosen:
        brain, stim = _load_split(data, s, split)
        ids = [stimulus_ids[i] for i in stim]
        seeds = [seed + int(r) for r in stim]
        seen = _seen_images(raw, ids, size)
        probe_seen = probe_outputs(probe_model, seen) if probe_model is not None else None
        score = lambda recon: _image_scores(recon, seen, probe_seen, probe_model, truth, stim, nets)  # noqa: E731
        pool = min(retrieval_pool, len(stim))

        # decoder
        pred = _decode(model, s, brain)
        blurry = vae_decode(pipe, pred["latents"])
        final = img2img(pipe, blurry, pred["conditioning"], seeds=seeds, **sample)
        retr = top1_retrieval(pred["image_projection"], targets[stim], pool, retrieval_draws, seed)
        res = {"decoder blurry": {**score(blurry), **retr}, "decoder final": {**score(final), **retr}}
        print(f"{s}: decoder done ({len(stim)} test stimuli)")

        # ridge: voxels -> latents, voxels -> conditioning (and -> image embedding for retrieval)
        x_tr, st_tr = _load_split(data, s, "train")
        x_va, st_va = _load_split(data, s, "val")
        neg_l1 = lambda p, t: -float((p - t).abs().mean())  # noqa: E731
        r_lat = fit_ridge(x_tr, latents_all[st_tr], ridge_alphas, x_va, latents_all[st_va].flatten(1), neg_l1)
        r_blurry = vae_decode(pipe, r_lat.predict(brain).float().view(-1, *latents_all.shape[1:]))
        neg_l2 = lambda p, t: -float(((p - t) ** 2).view(p.shape[0], -1, cond_all.shape[-1]).sum(-1).sqrt().mean())  # noqa: E731
        r_cond = fit_ridge(x_tr, cond_all[st_tr], ridge_alphas, x_va, cond_all[st_va].flatten(1), neg_l2)
        r_pe = r_cond.predict(brain).float().view(-1, *cond_all.shape[1:])
        del r_cond
        r_final = img2img(pipe, r_blurry, r_pe, seeds=seeds, **sample)

        def val_score(p: torch.Tensor, t: torch.Tensor) -> float:
            r = top1_retrieval(p, t, min(retrieval_pool, len(t)), 5, seed)
            return r["brain_to_image"] + r["image_to_brain"]

        r_emb = fit_ridge(x_tr, targets[st_tr], [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0], x_va,
                          targets[st_va].flatten(1), val_score)
        r_retr = top1_retrieval(r_emb.predict(brain).float(), targets[stim], pool, retrieval_draws, seed)
        res["ridge blurry"] = {**score(r_blurry), **r_retr}
        res["ridge final"] = {**score(r_final), **r_retr}
        print(f"{s}: ridge done (alphas: latents {r_lat.alpha}, embedding {r_emb.alpha})")

        # oracle: the pipeline from the true caption's conditioning, started from the true image
        todo = [i for i, r in enumerate(stim) if int(r) not in oracle_cache]
        if todo:
            o = img2img(pipe, seen[todo], cond_all[stim[todo]], seeds=[seeds[i] for i in todo], **sample)
            for i, img in zip(todo, o):
                oracle_cache[int(stim[i])] = img
        oracle = torch.stack([oracle_cache[int(r)] for r in stim])
        o_retr: dict[str, float] = {}
        if (raw / "truth.npz").is_file():
            from litbrain.datamodules.fmri.synthetic import synthetic_oracle

            o_emb = torch.as_tensor(np.asarray(synthetic_oracle(raw, data, s, split)), dtype=torch.float32)
            o_retr = top1_retrieval(o_emb, targets[stim], pool, retrieval_draws, seed)
        res["oracle"] = {**score(oracle), **o_retr}

        # chance: a random other test stimulus's seen image
        g = torch.Generator().manual_seed(seed)
        perm = torch.randperm(len(stim), generator=g)
        perm = torch.where(perm == torch.arange(len(stim)), (perm + 1) % len(stim), perm)
        res["chance"] = {**score(seen[perm]), "brain_to_image": 1.0 / pool, "image_to_brain": 1.0 / pool}
        per_subject[s] = res
        _write_examples(out, s, ids, {"seen": seen, "blurry": blurry, "final": final, "ridge": r_final,
                                      "oracle": oracle}, n_figure)
        print(f"{s}:\n{format_recon_table([{'method': m, **v} for m, v in res.items()], list(nets))}")

    methods = list(next(iter(per_subject.values())))
    keys = sorted({k for r in per_subject.values() for v in r.values() for k in v})
    rows = [{"method": m, **{k: float(np.mean([per_subject[s][m].get(k, float("nan")) for s in chosen])) for k in keys}}
            for m in methods]
    by = {r["method"]: r for r in rows}
    summary: dict[str, Any] = {"split": split, "subjects": chosen, "pipeline": spec, "probe": probe, **sample,
                               "rows": rows, "per_subject": per_subject, "feature_networks_missing": missing_nets}
    if "attributes" in by["oracle"]:
        summary["final_attributes_over_oracle"] = by["decoder final"]["attributes"] / max(by["oracle"]["attributes"], 1e-12)
    table = format_recon_table(rows, list(nets))
    atomic_write_text(out / "metrics.json", json.dumps(summary, indent=2))
    atomic_write_text(out / "table.txt", table + "\n")
    print(f"\n{split} split, mean over subjects {', '.join(chosen)} (img2img strength {strength}, "
          f"{num_inference_steps} steps, guidance {guidance_scale})")
    print(table)
    for n, why in missing_nets.items():
        print(f"{n}: skipped, {why}")
    if "final_attributes_over_oracle" in summary:
        print(f"decoder final / oracle attribute accuracy: {summary['final_attributes_over_oracle']:.3f}")
    print(f"wrote {out / 'metrics.json'}, {out / 'table.txt'} and the grids in {out}")
    return summary
