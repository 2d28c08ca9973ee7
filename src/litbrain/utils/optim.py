"""The optimiser recipe every task shares: AdamW with decoupled decay + a one-cycle schedule."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["build_optimizer"]


def build_optimizer(
    module: nn.Module, lr: float, weight_decay: float, warmup_fraction: float, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW (no weight decay on biases and norm gains) + a one-cycle schedule over ``total_steps``.

    Only parameters that require gradients are optimised. Shared by every task and by the
    benchmarks' bare PyTorch loops, so both optimise identically. Uses torch's fused AdamW
    wherever the parameters allow it (CPU or CUDA, floating point).
    """
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    # The fused kernel (one pass over each tensor instead of a chain of elementwise ops) is the same
    # AdamW and 3-4x faster on CPU: it was about 45% of the fMRI step in its default form.
    params = decay + no_decay
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr,
        fused=fused or None,
    )
    if total_steps < 4:  # too short for a warm-up and an annealing phase (smoke runs)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    # OneCycleLR divides by the warm-up length in steps: it must be at least 2 steps.
    pct = min(max(warmup_fraction, 2.0 / total_steps), 0.5)
    return opt, torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=lr, total_steps=total_steps, pct_start=pct, final_div_factor=1000
    )
