"""Brain -> image (MindEye2's two pathways) on the cross-subject fMRI decoder.

:class:`BrainToImage` is a :class:`~litbrain.nn.fmri_decoder.BrainDecoder` (subject adapters ->
shared residual MLP -> retrieval heads, unchanged) with two more heads on the backbone's output:

* low-level (MindEye2's blurry branch): ``Linear(width -> hidden x h x w)`` -> GroupNorm, SiLU,
  3x3 conv -> the seen image's VAE latents ``(C, h, w)`` (scaled by the VAE's scaling factor),
  which the pipeline's VAE decodes into the blurry reconstruction;
* high-level: ``Linear(width -> n_tokens x token_dim)`` gives the backbone's output tokens, which
  GILL's mapping network (:class:`~litbrain.nn.mapping.GillMapper`) turns into the pipeline's
  caption conditioning ``(77, D)`` (``prompt_embeds`` of a diffusers pipeline), plus (``conditioning_skip``)
  a zero-initialised linear map of the backbone features.

Plain ``torch.nn``; the sizes are one config dataclass (written into releases' config.json).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from litbrain.errors import ConfigError
from litbrain.nn.fmri_decoder import BrainDecoder, BrainDecoderConfig
from litbrain.nn.mapping import GillMapper, GillMapperConfig
from litbrain.nn.registry import ModelCard

__all__ = ["BrainToImage", "BrainToImageConfig", "LowLevelHead"]


@dataclass
class BrainToImageConfig(BrainDecoderConfig):
    """Hyper-parameters of :class:`BrainToImage`: the decoder's (see :class:`BrainDecoderConfig`) and

    Args:
        latent_shape: ``[C, h, w]`` of the VAE latents the low-level head predicts (from the datamodule).
        conditioning_shape: ``[T, D]`` of the pipeline's caption conditioning (77 x the UNet's
            cross-attention width; from the datamodule).
        low_level_channels: channels of the low-level head's feature map before its conv (MindEye2: 64).
        n_tokens / token_dim: the backbone's output tokens fed to the mapper (GILL: 8 [IMG] tokens).
        mapper_hidden_dim / mapper_heads / mapper_layers / mapper_ffn: the GillMapper's Transformer
            (GILL: 512, 4, 4 encoder + 4 decoder layers, 2048).
        conditioning_skip: add a linear map of the backbone features (zero-initialised) to the mapper's
            output. The GILL mapper alone learned only the mean conditioning within the CPU demo's budget
            (2-way identification of its output at chance); this ridge-like path carries the per-stimulus part.
        pipeline: the diffusers pipeline whose VAE / text encoder made the targets (recorded for reconstruction).
    """

    model_type = "brain_to_image"

    latent_shape: list[int] | None = None
    conditioning_shape: list[int] | None = None
    low_level_channels: int = 64
    n_tokens: int = 8
    token_dim: int = 64
    mapper_hidden_dim: int = 128
    mapper_heads: int = 4
    mapper_layers: int = 2
    mapper_ffn: int = 256
    conditioning_skip: bool = True
    pipeline: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.latent_shape is not None:
            self.latent_shape = [int(s) for s in self.latent_shape]
            if len(self.latent_shape) != 3 or min(self.latent_shape) < 1:
                raise ConfigError(f"net.latent_shape={self.latent_shape}: VAE latents must be (channels, height, "
                                  f"width); fix: embed the images with the pipeline's VAE (embed-images)")
        if self.conditioning_shape is not None:
            self.conditioning_shape = [int(s) for s in self.conditioning_shape]
            if len(self.conditioning_shape) != 2 or min(self.conditioning_shape) < 1:
                raise ConfigError(f"net.conditioning_shape={self.conditioning_shape}: the conditioning must be "
                                  f"(tokens, width), e.g. [77, 768]; fix: embed the captions with the pipeline's "
                                  f"text encoder (embed-captions)")
        for k in ("low_level_channels", "n_tokens", "token_dim"):
            if int(getattr(self, k)) < 1:
                raise ConfigError(f"net.{k}={getattr(self, k)}; fix: a positive integer")

    def missing(self) -> list[str]:
        return super().missing() + [k for k in ("latent_shape", "conditioning_shape") if not getattr(self, k)]

    def mapper_config(self) -> GillMapperConfig:
        assert self.conditioning_shape is not None
        t, d = self.conditioning_shape
        return GillMapperConfig(in_dim=self.token_dim, out_dim=d, n_output_tokens=t, hidden_dim=self.mapper_hidden_dim,
                                nhead=self.mapper_heads, n_encoder_layers=self.mapper_layers,
                                n_decoder_layers=self.mapper_layers, dim_feedforward=self.mapper_ffn)

    @classmethod
    def examples(cls) -> list["BrainToImageConfig"]:
        return [cls(subjects={"sub-01": 12, "sub-02": 9}, image_embedding_shape=[6], width=16, n_blocks=1,
                    latent_shape=[4, 4, 4], conditioning_shape=[5, 8], low_level_channels=8, n_tokens=2, token_dim=8,
                    mapper_hidden_dim=8, mapper_heads=2, mapper_layers=1, mapper_ffn=16)]

    def card(self) -> ModelCard:
        base = super().card()
        first = next(iter(self.subjects or {"sub-01": 0}))
        return ModelCard(
            title="litbrain brain-to-image reconstruction model (MindEye2's low- and high-level pathways)",
            summary=base.summary + (
                f"\n\nReconstruction heads: VAE latents {self.latent_shape} (the blurry image) and the pipeline's caption "
                f"conditioning {self.conditioning_shape} (through a GILL mapper); pipeline: {self.pipeline}.\n"
                "Reconstruct with `litbrain recon synthesize-images` (img2img from the blurry image)."),
            tags=["brain-decoding", "fmri", "image-reconstruction"],
            usage=(f'out = model({{"{first}": voxels}})\n'
                   'out["latents"]        # (batch, C, h, w) VAE latents (x scaling factor): vae.decode -> blurry image\n'
                   'out["conditioning"]   # (batch, 77, D) prompt_embeds for the diffusers pipeline\n'
                   'out["image_projection"]  # retrieval embedding, as the fMRI decoder'),
        )


class LowLevelHead(nn.Module):
    """Backbone features ``(B, width)`` -> VAE latents ``(B, C, h, w)`` (MindEye2's blurry branch, small)."""

    def __init__(self, width: int, latent_shape: tuple[int, int, int], channels: int = 64) -> None:
        super().__init__()
        c, h, w = latent_shape
        self.shape = (channels, h, w)
        self.fc = nn.Linear(width, channels * h * w)
        self.refine = nn.Sequential(nn.GroupNorm(min(8, channels), channels), nn.SiLU(),
                                    nn.Conv2d(channels, c, 3, padding=1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.refine(self.fc(h).view(h.shape[0], *self.shape))


class BrainToImage(BrainDecoder):
    """A :class:`BrainDecoder` with MindEye2's low-level head and a GILL mapper for the conditioning.

    ``forward`` returns the decoder's outputs plus ``latents`` (B, C, h, w) and ``conditioning`` (B, T, D).
    The decoder's modules are built first, in the same order, so a seed gives them the same weights.
    """

    config_class = BrainToImageConfig

    def __init__(self, config: BrainToImageConfig | None = None, **kwargs: Any) -> None:
        config = BrainToImageConfig.complete(config, kwargs, "BrainToImage")
        super().__init__(config)
        # The heads draw their initial weights from a fork of the RNG: the generator's state afterwards
        # is the decoder's alone, so training with both head weights at 0 is today's decoder, bit for bit.
        with torch.random.fork_rng(devices=[]):
            self.low_level = LowLevelHead(config.width, tuple(config.latent_shape), config.low_level_channels)
            self.to_tokens = nn.Linear(config.width, config.n_tokens * config.token_dim)
            self.token_norm = nn.LayerNorm(config.token_dim)
            self.mapper = GillMapper(config.mapper_config())
            self.skip = None
            if config.conditioning_skip:
                t, d = config.conditioning_shape
                self.skip = nn.Linear(config.width, t * d)
                nn.init.zeros_(self.skip.weight)
                nn.init.zeros_(self.skip.bias)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        return tuple(self.config.latent_shape)  # type: ignore[return-value]

    @property
    def conditioning_shape(self) -> tuple[int, int]:
        return tuple(self.config.conditioning_shape)  # type: ignore[return-value]

    def tokens(self, h: torch.Tensor) -> torch.Tensor:
        """The backbone's output tokens ``(B, n_tokens, token_dim)`` that feed the mapper."""
        c = self.config
        return self.token_norm(self.to_tokens(h).view(h.shape[0], c.n_tokens, c.token_dim))

    def forward(self, brain: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        h = self.features(brain)
        out = self.heads(h)
        out["latents"] = self.low_level(h)
        cond = self.mapper(self.tokens(h))
        if self.skip is not None:
            cond = cond + self.skip(h).view(cond.shape)
        out["conditioning"] = cond
        return out
