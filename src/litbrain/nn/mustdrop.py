"""MustDrop stage 1 (vision encoding): window merge of similar neighbours and the key-token set.

After an early ViT layer the patch grid is cut into ``window x window`` windows; a window
whose tokens are alike (mean pairwise cosine similarity, self excluded, >= ``threshold``)
becomes one token, their size-weighted mean. The "key-token set" is the top ``fraction`` of
tokens by CLS attention in the last layer; later stages never drop it.

A grid the window does not divide (ViT-B/16 at 224 px: 14 x 14 patches, 3 x 3 windows) gets
ragged windows at its bottom and right edges (3 x 2, 2 x 3, 2 x 2 here), as the method's window
partition allows: every patch belongs to exactly one window, and a window of one patch never
merges.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from litbrain.errors import ConfigError

__all__ = ["check_window_grid", "key_token_set", "window_merge", "window_similarity"]


def check_window_grid(num_patches: int, grid_hw: tuple[int, int] | None, window: int) -> tuple[int, int]:
    """Validate a patch grid for windowing; returns ``(H, W)``. ``grid_hw=None`` means square.

    The window need not divide the grid: edge windows are then smaller (see the module docstring).
    """
    if isinstance(window, bool) or not isinstance(window, int) or window < 2:
        raise ConfigError(f"window={window!r} must be an int >= 2; fix: use e.g. window=3 (3x3 windows)")
    if grid_hw is None:
        side = math.isqrt(num_patches)
        if side * side != num_patches:
            raise ConfigError(
                f"grid_hw=None assumes a square patch grid, but {num_patches} patches is not a square number; "
                "fix: pass grid_hw=(rows, cols)"
            )
        grid_hw = (side, side)
    H, W = (int(v) for v in grid_hw)
    if H * W != num_patches:
        raise ConfigError(f"grid_hw={grid_hw} has {H * W} cells but there are {num_patches} patch tokens; fix: pass the real grid")
    if window > max(H, W):
        raise ConfigError(f"window={window} is larger than the patch grid {H}x{W}; fix: use a window <= {max(H, W)}")
    return H, W


def _windows(H: int, W: int, window: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """``win_of (H*W,)``: the window of each patch (windows in raster order); ``count (nW,)``: patches per
    window (``window**2`` inside, fewer at ragged edges); ``first (nW,)``: each window's top-left patch."""
    cols_w = -(-W // window)
    rows = torch.arange(H, device=device) // window
    cols = torch.arange(W, device=device) // window
    win_of = (rows[:, None] * cols_w + cols[None, :]).reshape(-1)
    n_windows = int(-(-H // window) * cols_w)
    count = torch.bincount(win_of, minlength=n_windows)
    first = torch.full((n_windows,), H * W, device=device, dtype=torch.long)
    first = first.scatter_reduce(0, win_of, torch.arange(H * W, device=device), reduce="amin")
    return win_of, count, first


def window_similarity(metric: Tensor, grid_hw: tuple[int, int] | None = None, window: int = 3) -> Tensor:
    """Mean pairwise cosine similarity (self excluded) inside each window: ``(B, nW)``.

    ``metric``: ``(B, H*W, C)`` patch features, raster order, CLS excluded. Computed as
    ``(|sum_i m_i|^2 - k) / (k (k - 1))`` over the window's k unit vectors, which is the mean of
    the off-diagonal cosines; a window of one patch gets ``-inf`` (it has no pair, never merges).
    """
    B, N, C = metric.shape
    H, W = check_window_grid(N, grid_hw, window)
    win_of, count, _ = _windows(H, W, window, metric.device)
    m = F.normalize(metric.float(), dim=-1)
    total = m.new_zeros(B, count.numel(), C).index_add_(1, win_of, m)
    k = count.to(m.dtype)
    sim = ((total * total).sum(-1) - k) / (k * (k - 1)).clamp_min(1)
    return torch.where(count > 1, sim, torch.full_like(sim, -math.inf)).to(metric.dtype)


def window_merge(
    x: Tensor,
    size: Tensor | None,
    grid_hw: tuple[int, int] | None,
    window: int = 3,
    threshold: float = 0.8,
    keep: int | None = None,
    *,
    metric: Tensor | None = None,
    return_index: bool = False,
) -> tuple[Tensor, ...]:
    """Merge similar windows of the patch grid; returns ``(tokens, size, mask)``.

    ``x``: ``(B, H*W, D)`` patch tokens in raster order, CLS excluded. ``size``: ``(B, H*W)``
    patches each token already stands for (None = ones). ``grid_hw``: ``(H, W)``, or None for a
    square grid. A window merges when its :func:`window_similarity` (on ``metric``, default
    ``x``) is >= ``threshold``; with ``keep`` (a budget of tokens per image) the threshold is
    ignored and the most similar windows merge until at most ``keep`` tokens are left (every
    image then keeps the same count).

    Outputs keep spatial order: a merged window sits where its top-left patch was. Under a
    threshold the images of a batch may keep different counts: they are right-padded to the
    longest, ``mask (B, N')`` is True on real tokens, padding has zero tokens and zero size.
    The mass ``sum(size * x)`` is conserved. If nothing merges anywhere in the batch, ``x``
    and ``size`` come back unchanged (the same tensors). ``return_index=True`` adds a
    ``(B, H*W)`` long tensor: the output slot of every input patch.
    """
    if x.dim() != 3:
        raise ConfigError(f"window_merge: x must be (B, H*W, D) patch tokens, got shape {tuple(x.shape)}")
    B, N, D = x.shape
    H, W = check_window_grid(N, grid_hw, window)
    win_of, count, first = _windows(H, W, window, x.device)
    n_windows = count.numel()
    if size is None:
        size = x.new_ones(B, N)
    elif size.shape != (B, N):
        raise ConfigError(f"window_merge: size must be (B, N)={(B, N)}, got {tuple(size.shape)}")
    if keep is not None:
        if isinstance(keep, bool) or not isinstance(keep, int) or keep <= 0 or keep > N:
            raise ConfigError(
                f"keep={keep!r} must be an int in 1..{N} (the patch-token count); fix: pass a budget in that range, "
                "or keep=None to merge by threshold"
            )
        if keep < n_windows:
            raise ConfigError(
                f"keep={keep} is unreachable with window={window}: merging all {n_windows} windows leaves "
                f"{n_windows} tokens; fix: use keep >= {n_windows} or a larger window"
            )

    with torch.no_grad():  # which windows merge is a discrete choice; gradients flow through the means
        sim = window_similarity(x if metric is None else metric, (H, W), window)
        if keep is None:
            merged = sim >= threshold
        else:
            # The most similar windows merge until at most `keep` tokens are left: a window of k
            # patches removes k - 1 of them (fewer at ragged edges).
            order = sim.argsort(dim=1, descending=True)
            saved = (count - 1)[order].cumsum(dim=1)  # tokens removed after merging the first j windows
            n_take = (saved < N - keep).sum(dim=1, keepdim=True) + (N > keep)  # first j reaching the budget
            take = torch.arange(n_windows, device=x.device)[None] < n_take
            merged = torch.zeros(B, n_windows, dtype=torch.bool, device=x.device).scatter(1, order, take)

    if not bool(merged.any()):
        mask = torch.ones(B, N, dtype=torch.bool, device=x.device)
        out = (x, size, mask)
        if return_index:
            out += (torch.arange(N, device=x.device).expand(B, N),)
        return out

    patch = torch.arange(N, device=x.device)
    # Every patch goes to its window's top-left patch if the window merges, else stays.
    target = torch.where(merged[:, win_of], first[win_of], patch)  # (B, N)
    kept = target == patch
    slot = kept.long().cumsum(dim=1) - 1  # output position of each kept patch
    index = slot.gather(1, target)  # output position of every patch
    n_out = kept.sum(dim=1)
    width = int(n_out.max())
    mask = torch.arange(width, device=x.device) < n_out[:, None]

    s = size.to(x.dtype)
    mass = x.new_zeros(B, width, D).scatter_add(1, index[..., None].expand(B, N, D), x * s[..., None])
    new_size = s.new_zeros(B, width).scatter_add(1, index, s)
    tokens = mass / torch.where(mask, new_size, torch.ones_like(new_size))[..., None]
    out = (tokens, new_size, mask)
    if return_index:
        out += (index,)
    return out


def key_token_set(cls_attn: Tensor, fraction: float = 0.08, mask: Tensor | None = None) -> Tensor:
    """The key-token set: a ``(B, N)`` bool mask of the top ``ceil(fraction * n)`` tokens by CLS attention.

    ``cls_attn``: ``(B, N)`` attention from the CLS query to each patch token (head-averaged,
    last layer), CLS column excluded. ``n`` is each image's real-token count (``mask`` True;
    all tokens if None); padding is never chosen.
    """
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"key fraction={fraction!r} must be in (0, 1]; fix: use e.g. 0.08 for the top 8%")
    if cls_attn.dim() != 2:
        raise ConfigError(f"key_token_set: cls_attn must be (B, N), got shape {tuple(cls_attn.shape)}")
    B, N = cls_attn.shape
    if mask is None:
        mask = torch.ones(B, N, dtype=torch.bool, device=cls_attn.device)
    n_real = mask.sum(dim=1)
    # ceil with a little slack so that e.g. 0.08 * 50 = 4.000000000000001 still gives 4.
    k = torch.ceil(n_real.double() * fraction - 1e-9).long().clamp(min=1).minimum(n_real)
    k_max = int(k.max()) if B else 0
    key = torch.zeros(B, N, dtype=torch.bool, device=cls_attn.device)
    if k_max == 0:
        return key
    scores = cls_attn.detach().masked_fill(~mask, -math.inf)
    top = scores.topk(k_max, dim=1).indices
    chosen = torch.arange(k_max, device=cls_attn.device) < k[:, None]
    return key.scatter(1, top, chosen)
