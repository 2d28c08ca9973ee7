"""Contrastive losses of the fMRI decoders (MindEye / See Through Their Minds).

All take 2D ``(B, D)`` or token ``(B, T, D)`` inputs, flatten and L2-normalise them: the
papers compare flattened CLIP token grids by cosine similarity.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def _flat_normed(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(x.flatten(1), dim=-1)


def info_nce(
    preds: torch.Tensor, targets: torch.Tensor, temperature: float, bidirectional: bool = True
) -> torch.Tensor:
    """CLIP's InfoNCE with the matching row as the positive."""
    logits = _flat_normed(preds) @ _flat_normed(targets).T / temperature
    labels = torch.arange(logits.shape[0], device=logits.device)
    loss = F.cross_entropy(logits, labels)
    if bidirectional:
        loss = (loss + F.cross_entropy(logits.T, labels)) / 2
    return loss


def soft_clip_loss(preds: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """SoftCLIP: soft labels = softmax of target-target similarities; symmetric cross-entropy.

    Soft labels let near-duplicate images share credit instead of being pushed apart.
    """
    p, t = _flat_normed(preds), _flat_normed(targets)
    target_logits = t @ t.T / temperature
    pred_logits = p @ t.T / temperature
    soft = target_logits.softmax(-1)
    loss1 = -(pred_logits.log_softmax(-1) * soft).sum(-1).mean()
    loss2 = -(pred_logits.T.log_softmax(-1) * soft).sum(-1).mean()
    return (loss1 + loss2) / 2


def mixco(
    x: torch.Tensor,
    beta: float = 0.15,
    mix_fraction: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mix inputs with shuffled partners for BiMixCo.

    A ``mix_fraction`` of rows becomes ``lam * x + (1 - lam) * x[perm]`` with
    ``lam ~ Beta(beta, beta)``; the other rows keep ``lam = 1``. Returns
    ``(mixed, perm, lam, selected)``.
    """
    n = x.shape[0]
    device = x.device
    perm = torch.randperm(n, generator=generator, device="cpu").to(device)
    lam = torch.distributions.Beta(beta, beta).sample((n,)).to(device=device, dtype=x.dtype)
    selected = (torch.rand(n, generator=generator, device="cpu") < mix_fraction).to(device)
    lam = torch.where(selected, lam, torch.ones_like(lam))
    shape = (n,) + (1,) * (x.dim() - 1)
    mixed = lam.view(shape) * x + (1 - lam.view(shape)) * x[perm]
    return mixed, perm, lam, selected


def mixco_nce(
    preds: torch.Tensor,
    targets: torch.Tensor,
    perm: torch.Tensor,
    lam: torch.Tensor,
    temperature: float = 0.006,
    bidirectional: bool = True,
) -> torch.Tensor:
    """BiMixCo's InfoNCE with soft targets: a mixed row's positives are its two sources.

    Row ``i`` gives ``lam_i`` to target ``i`` and ``1 - lam_i`` to target ``perm_i``; the
    reverse direction spreads each target's credit over the rows mixed from it.
    """
    logits = _flat_normed(preds) @ _flat_normed(targets).T / temperature
    n = logits.shape[0]
    eye = torch.eye(n, device=logits.device, dtype=logits.dtype)
    probs = lam[:, None] * eye + (1 - lam)[:, None] * eye[perm]
    loss = -(logits.log_softmax(-1) * probs).sum(-1).mean()
    if bidirectional:
        loss_t = -(logits.T.log_softmax(-1) * probs.T).sum(-1).mean()
        loss = (loss + loss_t) / 2
    return loss


def cosine_anneal(start: float, end: float, progress: float) -> float:
    """Cosine schedule from ``start`` (progress 0) to ``end`` (progress 1)."""
    progress = min(max(progress, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * progress))
