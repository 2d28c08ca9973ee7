"""WAVE's whole-brain foundation encoder: parcel series -> GPT-style transformer -> pretraining and contrastive heads.

A window of ``(T <= max_len, P)`` parcel values is embedded per TR by a linear map ``P -> d_model``,
plus a learned TR-time embedding, then run through ``n_layers`` pre-norm transformer blocks with
causal self-attention over TRs (GPT-style). Heads: ``reconstruct`` (``d -> P``: the next TR for the
causal objective, the masked parcels for masked-parcel modelling) and, for contrastive decoding,
``image_proj`` / ``text_proj`` from the time-pooled state to the target spaces with their own
learnable logit scales (CLIP's). The parcel space is shared by subjects, so one encoder serves all;
``n_subjects > 0`` adds a subject embedding to every TR (optional).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from litbrain.nn.registry import ModelCard, ModelConfig

__all__ = ["WaveConfig", "WaveEncoder"]


@dataclass
class WaveConfig(ModelConfig):
    """Hyper-parameters of :class:`WaveEncoder` (WAVE: d_model 768, 4 layers, 12 heads, 50 TRs)."""

    model_type: ClassVar[str] = "wave"
    n_parcels: int | None = None
    d_model: int = 768
    n_layers: int = 4
    n_heads: int = 12
    max_len: int = 50
    dropout: float = 0.1
    image_embedding_dim: int | None = None
    text_embedding_dim: int | None = None
    n_subjects: int = 0
    logit_scale_init: float = 2.659  # log(1 / 0.07), CLIP's

    def missing(self) -> list[str]:
        return [] if self.n_parcels else ["n_parcels"]

    @classmethod
    def examples(cls) -> list["WaveConfig"]:
        return [cls(n_parcels=12, d_model=16, n_layers=1, n_heads=2, max_len=8, image_embedding_dim=6,
                    text_embedding_dim=5), cls(n_parcels=7, d_model=8, n_layers=2, n_heads=2, max_len=4, n_subjects=2)]

    def example_input(self, batch_size: int = 2, seed: int = 0) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        return torch.randn(batch_size, self.max_len, int(self.n_parcels), generator=g)

    def card(self) -> ModelCard:
        return ModelCard(title="litbrain WAVE whole-brain fMRI encoder",
                         summary=f"GPT-style encoder over {self.n_parcels} parcels, {self.n_layers} layers, "
                                 f"d_model {self.d_model}, windows of up to {self.max_len} TRs.",
                         tags=["fmri", "foundation-model", "wave"],
                         usage="WaveEncoder(config).embed(bold)  # bold: (B, T, parcels), z-scored per run")


class WaveEncoder(nn.Module):
    config_class = WaveConfig

    def __init__(self, config: WaveConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        c = WaveConfig.complete(config, kwargs, "WaveEncoder")
        self.config = c
        P, d = int(c.n_parcels), int(c.d_model)
        self.parcel_embed = nn.Linear(P, d)
        self.time_embed = nn.Embedding(int(c.max_len), d)
        self.subject_embed = nn.Embedding(int(c.n_subjects), d) if c.n_subjects else None
        layer = nn.TransformerEncoderLayer(d, int(c.n_heads), 4 * d, dropout=float(c.dropout), activation="gelu",
                                           batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, int(c.n_layers), enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.reconstruct = nn.Linear(d, P)
        self.image_proj = nn.Linear(d, int(c.image_embedding_dim)) if c.image_embedding_dim else None
        self.text_proj = nn.Linear(d, int(c.text_embedding_dim)) if c.text_embedding_dim else None
        self.logit_scale_image = nn.Parameter(torch.tensor(float(c.logit_scale_init)))
        self.logit_scale_text = nn.Parameter(torch.tensor(float(c.logit_scale_init)))

    @classmethod
    def from_config(cls, config: WaveConfig) -> "WaveEncoder":
        return cls(config)

    def forward(self, bold: torch.Tensor, subject: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (B, T, d) of a window (B, T, P); attention is causal over TRs."""
        B, T, _ = bold.shape
        if T > self.config.max_len:
            raise ValueError(f"window of {T} TRs exceeds net.max_len={self.config.max_len}")
        h = self.parcel_embed(bold) + self.time_embed(torch.arange(T, device=bold.device))
        if self.subject_embed is not None and subject is not None:
            h = h + self.subject_embed(subject)[:, None]
        mask = nn.Transformer.generate_square_subsequent_mask(T, device=bold.device, dtype=h.dtype)
        return self.norm(self.blocks(h, mask=mask, is_causal=True))

    def embed(self, bold: torch.Tensor, subject: torch.Tensor | None = None) -> torch.Tensor:
        """The time-pooled window state (B, d) (mean over TRs)."""
        return self(bold, subject).mean(1)

    def project(self, pooled: torch.Tensor) -> dict[str, torch.Tensor]:
        out = {}
        if self.image_proj is not None:
            out["image"] = self.image_proj(pooled)
        if self.text_proj is not None:
            out["text"] = self.text_proj(pooled)
        return out

    def logit_scales(self) -> dict[str, torch.Tensor]:
        cap = math.log(100.0)  # CLIP clamps the scale at 100
        return {"image": self.logit_scale_image.clamp(max=cap).exp(), "text": self.logit_scale_text.clamp(max=cap).exp()}
