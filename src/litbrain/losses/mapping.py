"""Losses of mapping networks (GILL's generation loss; the brain-to-image high-level pathway)."""

from __future__ import annotations

import torch

from litbrain.errors import ConfigError

__all__ = ["per_token_l2_loss"]


def per_token_l2_loss(preds: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """GILL's generation loss: Euclidean distance per conditioning token, averaged over tokens and batch.

    ``((u - v) ** 2).sum(-1).sqrt()`` on ``(B, T, D)``; not MSE: every token's error counts by its
    length, so no token can hide in a small share of a squared sum.
    """
    if preds.shape != targets.shape or preds.dim() != 3:
        raise ConfigError(f"per_token_l2_loss needs two (batch, tokens, width) tensors of one shape, got "
                          f"{tuple(preds.shape)} and {tuple(targets.shape)}; fix: map to the pipeline's "
                          f"(tokens, cross-attention width)")
    return ((preds.float() - targets.float()) ** 2).sum(-1).sqrt().mean()
