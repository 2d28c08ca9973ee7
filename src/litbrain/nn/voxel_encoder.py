"""Encoding model, image -> voxels (LLM-VEM): frozen image features -> shared trunk -> one readout per subject.

The per-subject readouts are the house's :class:`~litbrain.nn.subject_adapter.SubjectAdapter` used in
the readout direction (shared width -> the subject's voxels), so a new subject is one more readout.
An alignment head projects the trunk's features to the text-embedding width; the task aligns it
contrastively with the embedding of each stimulus' detailed description (LLM-VEM's small-weight
alignment; weight 0 = the plain encoding model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from litbrain.errors import ConfigError
from litbrain.nn.blocks import ResidualMLPBackbone
from litbrain.nn.registry import ModelCard, ModelConfig
from litbrain.nn.subject_adapter import SubjectAdapter, check_subject_batch

__all__ = ["VoxelEncoder", "VoxelEncoderConfig"]


@dataclass
class VoxelEncoderConfig(ModelConfig):
    """Hyper-parameters of :class:`VoxelEncoder` (config.json of its releases).

    Args:
        subjects: voxel count per subject id (from the datamodule when omitted).
        feature_shape: shape of the image features, ``[D]`` or ``[T, D]`` (flattened; from the datamodule).
        text_embedding_dim: width of the description embeddings aligned with (None: no alignment head).
        width: trunk width.
        n_blocks: residual MLP blocks of the trunk.
        dropout: trunk dropout.
        image_encoder: the frozen encoder spec (``timm:...``, ``open_clip:...``) the features came from,
            recorded so that in-silico runs embed new images the same way (None: cached features).
        image_encoder_pretrained / image_encoder_config / image_encoder_output: its weights, local model
            config and output kind (``pooled`` / ``tokens``), as ``embed-images`` takes them.
    """

    model_type = "voxel_encoder"

    subjects: dict[str, int] | None = None
    feature_shape: list[int] | None = None
    text_embedding_dim: int | None = None
    width: int = 512
    n_blocks: int = 2
    dropout: float = 0.1
    image_encoder: str | None = None
    image_encoder_pretrained: str | None = None
    image_encoder_config: str | None = None
    image_encoder_output: str = "pooled"

    def __post_init__(self) -> None:
        if self.subjects is not None:
            self.subjects = {str(s): int(n) for s, n in self.subjects.items()}
        if self.feature_shape is not None:
            self.feature_shape = [int(s) for s in self.feature_shape]
        if self.width < 1 or self.n_blocks < 0:
            raise ConfigError(f"net.width={self.width}, net.n_blocks={self.n_blocks}; fix: width >= 1, n_blocks >= 0")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"net.dropout={self.dropout}; fix: a value in [0, 1)")

    def missing(self) -> list[str]:
        return [k for k in ("subjects", "feature_shape") if not getattr(self, k)]

    @classmethod
    def examples(cls) -> list["VoxelEncoderConfig"]:
        return [
            cls(subjects={"sub-01": 11, "sub-02": 7}, feature_shape=[6], text_embedding_dim=4, width=16, n_blocks=1),
            cls(subjects={"sub-01": 5}, feature_shape=[3, 4], width=8, n_blocks=0),
        ]

    def example_input(self, batch_size: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return {s: torch.randn(batch_size, *self.feature_shape, generator=g) for s in (self.subjects or {})}

    def card(self) -> ModelCard:
        subjects = ", ".join(f"{s} ({n} voxels)" for s, n in (self.subjects or {}).items())
        first = next(iter(self.subjects or {"sub-01": 0}))
        return ModelCard(
            title="litbrain voxel-wise encoding model (image -> fMRI)",
            summary=(
                "Predicts each voxel's z-scored response to an image from frozen image features through a\n"
                "shared trunk and one linear readout per subject, trained with voxel regression plus a small\n"
                "contrastive alignment to text embeddings of detailed stimulus descriptions (LLM-VEM).\n\n"
                f"- Subjects: {subjects}\n"
                f"- Features: {self.feature_shape} from {self.image_encoder or 'cached embeddings'}; width "
                f"{self.width}, {self.n_blocks} blocks"
            ),
            tags=["encoding-model", "fmri"],
            usage=(f'out = model({{"{first}": features}})  # features: (batch, *feature_shape)\n'
                   f'out["voxels"]["{first}"]               # (batch, n_voxels) predicted z-scored betas'),
        )


class VoxelEncoder(nn.Module):
    """``{subject: features (b, *feature_shape)}`` -> ``{"voxels": {subject: (b, V_s)}, "alignment": (B, D)}``."""

    config_class = VoxelEncoderConfig

    def __init__(self, config: VoxelEncoderConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        config = VoxelEncoderConfig.complete(config, kwargs, "VoxelEncoder")
        self.config = config
        n_in = math.prod(config.feature_shape)
        self.input = nn.Sequential(nn.LayerNorm(n_in), nn.Linear(n_in, config.width))
        self.trunk = ResidualMLPBackbone(config.width, n_blocks=config.n_blocks, dropout=config.dropout)
        self.readout = SubjectAdapter(dict(config.subjects), config.width, readout=True)
        self.align = nn.Linear(config.width, config.text_embedding_dim) if config.text_embedding_dim else None

    @property
    def subjects(self) -> dict[str, int]:
        return dict(self.readout.in_features)

    def add_subject(self, subject: str, n_voxels: int) -> None:
        """A fresh readout for a new subject (the trunk is shared); the config follows."""
        self.readout.add_subject(subject, n_voxels)
        self.config = self.config.replace(subjects=self.subjects)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The shared trunk's output for image features ``(B, *feature_shape)``."""
        return self.trunk(self.input(x.flatten(1)))

    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, Any]:
        """``features``: ``{subject: (b_s, *feature_shape)}``; ``alignment`` rows are concatenated in dict order."""
        ndim = 1 + len(self.config.feature_shape)
        check_subject_batch(features, ndim, f"(batch, {', '.join(map(str, self.config.feature_shape))})",
                            self.readout.in_features, "VoxelEncoder")
        for s, x in features.items():
            if list(x.shape[1:]) != list(self.config.feature_shape):
                raise ConfigError(f"VoxelEncoder: subject {s!r} got features of shape {list(x.shape[1:])}, the model "
                                  f"takes {self.config.feature_shape}; fix: use the image features it was trained on")
        h = {s: self.features(x) for s, x in features.items()}
        out: dict[str, Any] = {"voxels": {s: self.readout(v, s) for s, v in h.items()}}
        if self.align is not None:
            out["alignment"] = self.align(torch.cat(list(h.values())))
        return out
