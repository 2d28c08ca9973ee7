"""Shared MLP blocks: the residual MLP backbone (MindEye2 / STTM), embedding heads, the contrastive projector."""

from __future__ import annotations

import math

import torch
from torch import nn


class ResidualMLPBlock(nn.Module):
    """LayerNorm -> Linear -> GELU -> Dropout -> Linear, added back to the input."""

    def __init__(self, width: int, dropout: float = 0.15) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.LayerNorm(width),
            nn.Linear(width, width),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(width, width),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.net(x)


class ResidualMLPBackbone(nn.Module):
    """``n_blocks`` residual MLP blocks at a fixed width (4 in MindEye2), then a final LayerNorm."""

    def __init__(self, width: int, n_blocks: int = 4, dropout: float = 0.15) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*[ResidualMLPBlock(width, dropout) for _ in range(n_blocks)])
        self.norm = nn.LayerNorm(width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.blocks(x))


class EmbeddingHead(nn.Module):
    """Linear from the backbone width to a target shape: pooled ``(D,)`` or tokens ``(T, D)``."""

    def __init__(self, width: int, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.shape = tuple(int(s) for s in shape)
        self.linear = nn.Linear(width, math.prod(self.shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x).view(x.shape[0], *self.shape)


class ContrastiveProjector(nn.Module):
    """MindEye2's 3-layer projector, applied token-wise, used only for the contrastive loss."""

    def __init__(self, dim: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or dim
        self.net = nn.Sequential(
            nn.LayerNorm(dim),
            nn.GELU(),
            nn.Linear(dim, hidden),
            nn.LayerNorm(hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.LayerNorm(hidden),
            nn.GELU(),
            nn.Linear(hidden, dim),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
