"""Token Merging (ToMe, Bolya et al. 2023): the baseline for vision-token dropping.

Between the attention and the MLP of a ViT block, split the tokens alternately into sets A
(even positions) and B (odd positions), connect every A token to its most similar B token
(cosine similarity of the attention keys averaged over heads), and merge the ``r`` strongest
edges: each chosen A token is folded into its B partner by a size-weighted mean. Sizes (how
many original patches a token stands for) are tracked so that later layers can use
proportional attention (``log(size)`` added to the attention logits, see
:func:`proportional_attention_bias`). Protected tokens (the CLS token at index 0, and any
other prefix tokens) are never merged away nor merged into.
"""

from __future__ import annotations

import math
from typing import Callable

import torch
from torch import Tensor

from litbrain.errors import ConfigError

__all__ = [
    "bipartite_soft_matching",
    "max_merges",
    "merge_wavg",
    "proportional_attention_bias",
    "tome_schedule",
]

MergeFn = Callable[..., Tensor]


def max_merges(num_tokens: int, num_protected: int = 1) -> int:
    """The most tokens one bipartite matching can merge away: the unprotected tokens of set A.

    Set A holds the even positions, so of the ``num_protected`` leading tokens the even ones
    sit in A; nothing can be merged if B has no unprotected token to receive a merge.
    """
    a_free = (num_tokens + 1) // 2 - (num_protected + 1) // 2
    b_free = num_tokens // 2 - num_protected // 2
    return max(0, a_free) if b_free > 0 else 0


def bipartite_soft_matching(
    metric: Tensor,
    r: int,
    protect_cls: bool = True,
    num_protected: int | None = None,
) -> tuple[MergeFn, MergeFn]:
    """Match tokens for merging; returns ``(merge, unmerge)`` callables.

    ``metric``: ``(B, N, C)`` similarity features (ToMe uses the keys averaged over heads).
    ``r``: tokens to merge away (capped by :func:`max_merges`; 0 gives identity callables).
    ``protect_cls`` keeps token 0 out of any merge; ``num_protected`` (overrides it) keeps the
    first ``num_protected`` tokens out (CLS + register tokens).

    ``merge(x, mode="sum")`` maps ``(B, N, ...)`` to ``(B, N - r, ...)``: the protected tokens
    first, in their original order, then the other unmerged A tokens (original order), then the
    other B tokens, each merged A token reduced into its B partner (``mode`` is any
    ``Tensor.scatter_reduce`` reduction: "sum", "mean", "amin", "amax", "prod"). With one
    protected token this is the official ToMe layout (unmerged A, then B); with several (CLS +
    register or distillation tokens) the protected ones that sit in B (odd positions) are moved to
    the front as well, so the next layer's first ``num_protected`` positions still hold them.
    ``unmerge(y)`` maps back to ``(B, N, ...)``, every original token taking the value of the
    token it ended up in.
    """
    if metric.dim() != 3:
        raise ConfigError(f"bipartite_soft_matching: metric must be (B, N, C), got shape {tuple(metric.shape)}")
    if r < 0:
        raise ConfigError(f"bipartite_soft_matching: r={r} must be >= 0; fix: pass the number of tokens to merge")
    protected = (1 if protect_cls else 0) if num_protected is None else int(num_protected)
    B, N, _ = metric.shape
    r = min(int(r), max_merges(N, protected))
    if r == 0:
        return _identity, _identity

    with torch.no_grad():  # the matching is a discrete choice; gradients flow through merge()
        m = metric / metric.norm(dim=-1, keepdim=True).clamp_min(1e-12)
        a, b = m[:, ::2], m[:, 1::2]
        scores = a @ b.transpose(-1, -2)  # (B, Na, Nb) cosine similarity
        if protected:
            # Even positions < protected sit in A, odd ones in B.
            scores[:, : (protected + 1) // 2, :] = -math.inf
            scores[:, :, : protected // 2] = -math.inf
        best, best_dst = scores.max(dim=-1)  # each A token's best B partner
        edges = best.argsort(dim=-1, descending=True)
        src_idx = edges[:, :r]  # A tokens merged away
        unm_idx = edges[:, r:].sort(dim=-1).values  # kept A tokens, original order
        dst_idx = best_dst.gather(1, src_idx)

    Na = a.shape[1]
    pa, pb = (protected + 1) // 2, protected // 2  # protected tokens in A (even positions) and in B (odd)
    # Protected A tokens are never merged (their scores are -inf and r is capped), so they are the
    # first pa entries of the sorted unm_idx; the protected B tokens are dst[:, :pb].
    prefix_from_a = [i % 2 == 0 for i in range(protected)]

    def _layout(unm: Tensor, dst: Tensor) -> Tensor:
        if pb == 0:
            return torch.cat([unm, dst], dim=1)
        ia, ib, prefix = iter(range(pa)), iter(range(pb)), []
        for from_a in prefix_from_a:
            prefix.append(unm[:, next(ia)] if from_a else dst[:, next(ib)])
        return torch.cat([torch.stack(prefix, 1), unm[:, pa:], dst[:, pb:]], dim=1)

    def _split(y: Tensor, n_unm: int) -> tuple[Tensor, Tensor]:
        if pb == 0:
            return y[:, :n_unm], y[:, n_unm:]
        prefix = y[:, :protected]
        rest_a = y[:, protected:protected + n_unm - pa]
        rest_b = y[:, protected + n_unm - pa:]
        keep_a = torch.tensor(prefix_from_a, device=y.device)
        return torch.cat([prefix[:, keep_a], rest_a], 1), torch.cat([prefix[:, ~keep_a], rest_b], 1)

    def merge(x: Tensor, mode: str = "sum") -> Tensor:
        squeeze = x.dim() == 2
        if squeeze:
            x = x.unsqueeze(-1)
        src, dst = x[:, ::2], x[:, 1::2]
        tail = src.shape[2:]
        expand = (-1, -1, *tail)
        unm = src.gather(1, _idx(unm_idx, tail).expand(*expand))
        moved = src.gather(1, _idx(src_idx, tail).expand(*expand))
        dst = dst.scatter_reduce(1, _idx(dst_idx, tail).expand(*expand), moved, reduce=mode)
        out = _layout(unm, dst)
        return out.squeeze(-1) if squeeze else out

    def unmerge(y: Tensor) -> Tensor:
        squeeze = y.dim() == 2
        if squeeze:
            y = y.unsqueeze(-1)
        n_unm = unm_idx.shape[1]
        unm, dst = _split(y, n_unm)
        tail = y.shape[2:]
        expand = (-1, -1, *tail)
        src = dst.gather(1, _idx(dst_idx, tail).expand(*expand))
        a_full = y.new_zeros(B, Na, *tail)
        a_full = a_full.scatter(1, _idx(unm_idx, tail).expand(*expand), unm)
        a_full = a_full.scatter(1, _idx(src_idx, tail).expand(*expand), src)
        out = y.new_zeros(B, N, *tail)
        out[:, ::2] = a_full
        out[:, 1::2] = dst
        return out.squeeze(-1) if squeeze else out

    return merge, unmerge


def merge_wavg(merge: MergeFn, x: Tensor, size: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Merge ``x`` ``(B, N, D)`` by the size-weighted mean; returns ``(x, size)`` merged.

    ``size``: ``(B, N)`` (or ``(B, N, 1)``) patches each token stands for, ones if None. The
    token mass ``sum(size * x)`` and the total size are conserved.
    """
    if size is None:
        size = x.new_ones(x.shape[:2])
    flat = size.dim() == 2
    s = size.unsqueeze(-1) if flat else size
    s = s.to(x.dtype)
    total = merge(x * s, mode="sum")
    s = merge(s, mode="sum")
    x = total / s
    return x, (s.squeeze(-1) if flat else s)


def proportional_attention_bias(size: Tensor, mask: Tensor | None = None) -> Tensor:
    """Attention-logit bias ``(B, 1, 1, N)`` from sizes ``(B, N)``: ``log(size)`` per key.

    A merged token then draws as much attention as the patches it replaces; padding
    (``size == 0`` or ``mask`` False) gets ``-inf``, i.e. is masked out.
    """
    bias = size.log()
    if mask is not None:
        bias = bias.masked_fill(~mask, -math.inf)
    return bias[:, None, None, :]


def tome_schedule(
    num_tokens: int,
    depth: int,
    keep: int | None = None,
    r: int | None = None,
    num_protected: int = 1,
) -> list[int]:
    """Tokens to merge at each of ``depth`` layers.

    With ``r``: ``r`` per layer (ToMe's constant schedule), capped by what one matching can
    merge. With ``keep`` (unprotected tokens left after the last layer): the removals spread
    as evenly as possible over the layers, so the output holds exactly ``keep`` of the
    ``num_tokens - num_protected`` unprotected tokens.
    """
    n_free = num_tokens - num_protected
    if (keep is None) == (r is None):
        raise ConfigError("tome_schedule: give exactly one of keep= (tokens left at the output) or r= (merged per layer)")
    if r is not None:
        if r < 0:
            raise ConfigError(f"ToMe r={r} must be >= 0; fix: pass the number of tokens merged per layer (0 = no merging)")
        out, t = [], num_tokens
        for _ in range(depth):
            step = min(r, max_merges(t, num_protected))
            out.append(step)
            t -= step
        return out
    assert keep is not None
    if keep <= 0 or keep > n_free:
        raise ConfigError(
            f"ToMe keep={keep} must be in 1..{n_free} (the patch-token count); fix: pass a budget in that range"
        )
    out, t, remaining = [], num_tokens, n_free - keep
    for i in range(depth):
        step = min(math.ceil(remaining / (depth - i)), max_merges(t, num_protected))
        out.append(step)
        t -= step
        remaining -= step
    if remaining > 0:
        raise ConfigError(
            f"ToMe keep={keep} is unreachable in {depth} layers (each merges at most half the tokens); "
            f"fix: use keep >= {keep + remaining}"
        )
    return out


def _identity(x: Tensor, mode: str = "sum") -> Tensor:
    return x


def _idx(index: Tensor, tail: torch.Size) -> Tensor:
    """``(B, k)`` indices broadcastable against ``(B, k, *tail)``."""
    return index.reshape(*index.shape, *([1] * len(tail)))
