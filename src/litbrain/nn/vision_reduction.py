"""Vision-token reduction for the ViTs people use: timm ``VisionTransformer`` and open_clip towers.

:class:`VisionTokenReducer` wraps a ViT without copying its code: it calls the model's own
embedding, blocks and final norm, and computes attention itself only where it needs
something the model does not give (ToMe's keys, a size bias, a padding mask, MustDrop's CLS
attention). While nothing has been merged it calls the original blocks, so with dropping
disabled the tokens equal the dense model's bit for bit.

Methods: "none" (dense), "tome" (ToMe merging in every layer, :mod:`litbrain.nn.tome`) and
"mustdrop" (MustDrop stage 1, :mod:`litbrain.nn.mustdrop`: one window merge after
``merge_layer`` blocks, plus the key-token set from the last layer's CLS attention).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litbrain.errors import ConfigError
from litbrain.nn.mustdrop import check_window_grid, key_token_set, window_merge
from litbrain.nn.tome import (
    bipartite_soft_matching,
    merge_wavg,
    proportional_attention_bias,
    tome_schedule,
)

__all__ = ["VisionTokenReducer", "VisionTokens"]

METHODS = ("none", "tome", "mustdrop")


@dataclass
class VisionTokens:
    """Patch tokens of a batch after (optional) reduction; CLS is kept apart.

    tokens: ``(B, N, D)`` patch tokens after the ViT's final norm, CLS excluded, spatial
        order, right-padded (zeros) where images keep different counts.
    mask: ``(B, N)`` bool, True = real token.
    size: ``(B, N)`` float, how many original patches each token stands for (0 on padding).
    key: ``(B, N)`` bool, MustDrop's key-token set (all False for other methods).
    cls: ``(B, D)`` CLS token after the final norm.
    centre: ``(B, N, 2)`` float (row, column) on the patch grid: the size-weighted mean position
        of the patches each token stands for (0 on padding). Merges keep ``sum(size * centre)``.
    """

    tokens: Tensor
    mask: Tensor
    size: Tensor
    key: Tensor
    cls: Tensor
    centre: Tensor


def grid_coords(grid_hw: tuple[int, int], device=None, dtype=torch.float32) -> Tensor:
    """``(H * W, 2)`` (row, column) of every patch, raster order."""
    H, W = grid_hw
    r, c = torch.meshgrid(torch.arange(H, device=device, dtype=dtype), torch.arange(W, device=device, dtype=dtype),
                          indexing="ij")
    return torch.stack([r.flatten(), c.flatten()], 1)


class _TimmViT:
    """Drives a timm ``VisionTransformer`` through its own submodules."""

    family = "timm"

    def __init__(self, vit: nn.Module) -> None:
        from timm.layers import Attention
        from timm.models.vision_transformer import Block

        for i, blk in enumerate(vit.blocks):
            if not isinstance(blk, Block) or type(blk.attn) is not Attention:
                raise ConfigError(
                    f"VisionTokenReducer: timm block {i} is {type(blk).__name__} with {type(blk.attn).__name__}; "
                    "fix: use a ViT built from timm's standard Block + Attention (e.g. vit_base_patch16_224)"
                )
        self.vit = vit
        self.blocks = list(vit.blocks)
        self.num_prefix = int(vit.num_prefix_tokens)
        self.has_cls = getattr(vit, "cls_token", None) is not None
        self.patch_size = tuple(vit.patch_embed.patch_size)
        self.default_grid = tuple(vit.patch_embed.grid_size)
        self.embed_dim = int(vit.embed_dim)

    def embed(self, images: Tensor) -> Tensor:
        vit = self.vit
        x = vit.patch_embed(images)
        x = vit._pos_embed(x)
        x = vit.patch_drop(x)
        return vit.norm_pre(x)

    def run_block(self, blk: nn.Module, x: Tensor) -> Tensor:
        return blk(x)

    def norm1(self, blk: nn.Module, x: Tensor) -> Tensor:
        return blk.norm1(x)

    def qkv(self, blk: nn.Module, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        attn = blk.attn
        B, N, _ = h.shape
        q, k, v = attn.qkv(h).reshape(B, N, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return attn.q_norm(q), attn.k_norm(k), v

    def scale(self, blk: nn.Module) -> float:
        return blk.attn.scale

    def attn_dropout(self, blk: nn.Module) -> float:
        return blk.attn.attn_drop.p if blk.training else 0.0

    def attn_out(self, blk: nn.Module, o: Tensor, h: Tensor) -> Tensor:
        attn = blk.attn
        o = attn.norm(o)
        if getattr(attn, "gate", None) is not None:
            o = o * attn.gate(h).sigmoid()
        return attn.proj_drop(attn.proj(o))

    def attn_residual(self, blk: nn.Module, x: Tensor, a: Tensor) -> Tensor:
        return x + blk.drop_path1(blk.ls1(a))

    def mlp_residual(self, blk: nn.Module, x: Tensor) -> Tensor:
        return x + blk.drop_path2(blk.ls2(blk.mlp(blk.norm2(x))))

    def final(self, x: Tensor) -> tuple[Tensor, Tensor]:
        x = self.vit.norm(x)
        return x[:, self.num_prefix :], x[:, 0]


class _OpenClipViT:
    """Drives an open_clip ``VisionTransformer`` (``model.visual``) through its own submodules."""

    family = "open_clip"

    def __init__(self, visual: nn.Module) -> None:
        from open_clip.transformer import ResidualAttentionBlock

        if getattr(visual, "attn_pool", None) is not None:
            raise ConfigError(
                "VisionTokenReducer: open_clip towers with an attentional pooler (CoCa) have no per-patch output; "
                "fix: use a tower with attentional_pool=False"
            )
        if not visual.transformer.batch_first:
            raise ConfigError("VisionTokenReducer: open_clip Transformer(batch_first=False) is not supported; fix: build it batch-first")
        for i, blk in enumerate(visual.transformer.resblocks):
            mha = getattr(blk, "attn", None)
            if (
                not isinstance(blk, ResidualAttentionBlock)
                or not isinstance(mha, nn.MultiheadAttention)
                or not mha._qkv_same_embed_dim
                or mha.bias_k is not None
                or hasattr(blk, "ln_1_kv")
            ):
                raise ConfigError(
                    f"VisionTokenReducer: open_clip block {i} is {type(blk).__name__}; fix: use a tower with the default "
                    "ResidualAttentionBlock (no qk_norm / scaled-cosine / custom attention options)"
                )
        self.vit = visual
        self.blocks = list(visual.transformer.resblocks)
        self.num_prefix = 1  # open_clip towers always prepend one class token
        self.has_cls = True
        self.patch_size = tuple(visual.patch_size)
        self.default_grid = tuple(visual.grid_size)
        self.embed_dim = int(visual.class_embedding.shape[-1])

    def embed(self, images: Tensor) -> Tensor:
        return self.vit._embeds(images)

    def run_block(self, blk: nn.Module, x: Tensor) -> Tensor:
        return blk(x, attn_mask=None)

    def norm1(self, blk: nn.Module, x: Tensor) -> Tensor:
        return blk.ln_1(x)

    def qkv(self, blk: nn.Module, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        mha = blk.attn
        B, N, D = h.shape
        H = mha.num_heads
        qkv = F.linear(h, mha.in_proj_weight, mha.in_proj_bias)
        q, k, v = qkv.reshape(B, N, 3, H, D // H).permute(2, 0, 3, 1, 4).unbind(0)
        return q, k, v

    def scale(self, blk: nn.Module) -> float:
        return blk.attn.head_dim**-0.5

    def attn_dropout(self, blk: nn.Module) -> float:
        return blk.attn.dropout if blk.training else 0.0

    def attn_out(self, blk: nn.Module, o: Tensor, h: Tensor) -> Tensor:
        return blk.attn.out_proj(o)

    def attn_residual(self, blk: nn.Module, x: Tensor, a: Tensor) -> Tensor:
        return x + blk.ls_1(a)

    def mlp_residual(self, blk: nn.Module, x: Tensor) -> Tensor:
        return x + blk.ls_2(blk.mlp(blk.ln_2(x)))

    def final(self, x: Tensor) -> tuple[Tensor, Tensor]:
        # Mirror open_clip's own pooling: with final_ln_after_pool only the pooled token is normed.
        if getattr(self.vit, "final_ln_after_pool", False):
            return x[:, 1:], self.vit.ln_post(x[:, 0])
        x = self.vit.ln_post(x)
        return x[:, 1:], x[:, 0]


def _adapter(vit: nn.Module) -> _TimmViT | _OpenClipViT:
    try:
        from timm.models.vision_transformer import VisionTransformer as TimmViT
    except ImportError:  # pragma: no cover - timm is a dependency
        TimmViT = None
    try:
        from open_clip.transformer import VisionTransformer as OpenClipViT
    except ImportError:  # pragma: no cover - open_clip is a dependency
        OpenClipViT = None
    if TimmViT is not None and isinstance(vit, TimmViT):
        return _TimmViT(vit)
    if OpenClipViT is not None and isinstance(vit, OpenClipViT):
        return _OpenClipViT(vit)
    hint = ""
    if OpenClipViT is not None and isinstance(getattr(vit, "visual", None), OpenClipViT):
        hint = " (this looks like a whole open_clip model: pass model.visual)"
    raise ConfigError(
        f"VisionTokenReducer: vit must be a timm VisionTransformer or an open_clip VisionTransformer, "
        f"got {type(vit).__module__}.{type(vit).__name__}{hint}; fix: pass one of those"
    )


class VisionTokenReducer(nn.Module):
    """A ViT that returns fewer, merged patch tokens: :class:`VisionTokens`.

    method: "none" (dense; bit-identical to the model's own forward), "tome" (ToMe in every
    block; give ``keep`` = patch tokens left at the output, or ``r`` = merged per block) or
    "mustdrop" (MustDrop stage 1: after ``merge_layer`` blocks, merge ``window x window``
    windows whose mean pairwise cosine similarity is >= ``threshold``, or, with ``keep``, the
    most similar windows until at most ``keep`` tokens are left; plus the key-token set, the
    top ``key_fraction`` of tokens by the last layer's CLS attention).
    ``proportional_attention`` adds ``log(size)`` to the attention logits of merged tokens.
    The wrapped model is a submodule: its parameters train through the reducer.
    """

    def __init__(
        self,
        vit: nn.Module,
        method: str = "none",
        keep: int | None = None,
        r: int | None = None,
        threshold: float = 0.8,
        window: int = 3,
        merge_layer: int = 1,
        key_fraction: float = 0.08,
        proportional_attention: bool = True,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ConfigError(f"VisionTokenReducer method={method!r}; fix: use one of {METHODS}")
        self._ops = _adapter(vit)
        self.vit = vit
        self.method = method
        self.keep = keep
        self.r = r
        self.threshold = float(threshold)
        self.window = window
        self.merge_layer = merge_layer
        self.key_fraction = key_fraction
        self.proportional_attention = proportional_attention
        self.embed_dim = self._ops.embed_dim
        ops = self._ops
        if not ops.has_cls:
            raise ConfigError(
                "VisionTokenReducer needs a CLS token (VisionTokens.cls, ToMe's protected token, MustDrop's key set), "
                "but this timm model has none (class_token=False); fix: build it with class_token=True"
            )
        n_patch = self.num_patches
        depth = len(ops.blocks)
        if keep is not None and (isinstance(keep, bool) or not isinstance(keep, int) or keep <= 0 or keep > n_patch):
            raise ConfigError(
                f"keep={keep!r} must be an int in 1..{n_patch} (this ViT's patch-token count); fix: pass a budget in that range"
            )
        if method == "none" and (keep is not None or r is not None):
            raise ConfigError("method='none' keeps every token; fix: drop keep=/r= or pick method='tome' / 'mustdrop'")
        if method == "tome":
            if (keep is None) == (r is None):
                raise ConfigError("method='tome' needs exactly one of keep= (patch tokens at the output) or r= (merged per block)")
            tome_schedule(n_patch + ops.num_prefix, depth, keep=keep, r=r, num_protected=ops.num_prefix)
        if method == "mustdrop":
            if r is not None:
                raise ConfigError("r= is ToMe's per-block merge count; fix: for method='mustdrop' use keep= or threshold=")
            if not isinstance(merge_layer, int) or not 0 <= merge_layer < depth:
                raise ConfigError(
                    f"merge_layer={merge_layer!r} must be in 0..{depth - 1} (blocks run before the merge); fix: e.g. merge_layer=1"
                )
            check_window_grid(n_patch, ops.default_grid, window)
            key_token_set(torch.zeros(1, 1), key_fraction)  # validates key_fraction

    @property
    def num_patches(self) -> int:
        """Patch tokens of the model's default image size (the dense output count)."""
        gh, gw = self._ops.default_grid
        return gh * gw

    def grid(self, images: Tensor) -> tuple[int, int]:
        """(rows, columns) of the patch grid of ``images``."""
        ph, pw = self._ops.patch_size
        return images.shape[-2] // ph, images.shape[-1] // pw

    @property
    def family(self) -> str:
        """"timm" or "open_clip"."""
        return self._ops.family

    def forward(self, images: Tensor) -> VisionTokens:
        ops = self._ops
        x = ops.embed(images)
        grid = self.grid(images)
        n_patch = x.shape[1] - ops.num_prefix
        if self.method == "mustdrop" and n_patch != grid[0] * grid[1]:
            raise ConfigError(
                f"MustDrop needs the full {grid[0]}x{grid[1]} patch grid but got {n_patch} tokens (patch dropout in training?); "
                "fix: disable patch dropout"
            )
        if self.keep is not None and self.keep > n_patch:
            raise ConfigError(f"keep={self.keep} is more than the {n_patch} patch tokens of these images; fix: lower keep")
        coords = grid_coords(grid, x.device, x.dtype).expand(x.shape[0], n_patch, 2)
        if self.method == "tome":
            return self._forward_tome(x, coords)
        if self.method == "mustdrop":
            return self._forward_mustdrop(x, grid, coords)
        for blk in ops.blocks:
            x = ops.run_block(blk, x)
        return self._output(x, None, None, None, coords)

    # -- pieces -------------------------------------------------------------------------

    def _attend(self, blk: nn.Module, x: Tensor, bias: Tensor | None, want_cls: bool = False):
        """Attention half of a block with our own attention; returns ``(x, keys, cls_attn)``.

        ``keys``: ``(B, N, hd)`` averaged over heads (ToMe's metric); ``cls_attn``: ``(B, N)``
        the CLS query's attention averaged over heads, if asked for.
        """
        ops = self._ops
        B, N, _ = x.shape
        h = ops.norm1(blk, x)
        q, k, v = ops.qkv(blk, h)
        scale = ops.scale(blk)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=ops.attn_dropout(blk), scale=scale)
        o = o.transpose(1, 2).reshape(B, N, -1)
        x = ops.attn_residual(blk, x, ops.attn_out(blk, o, h))
        cls_attn = _cls_attention(q, k, scale, bias) if want_cls else None
        return x, k.mean(dim=1), cls_attn

    def _side_cls_attention(self, blk: nn.Module, x: Tensor) -> Tensor:
        """The CLS attention of ``blk`` on input ``x``, computed beside the original block."""
        ops = self._ops
        q, k, _ = ops.qkv(blk, ops.norm1(blk, x))
        return _cls_attention(q, k, ops.scale(blk), None)

    def _bias(self, size: Tensor | None, mask: Tensor | None) -> Tensor | None:
        if size is None:
            return None
        if mask is None or bool(mask.all()):
            if bool((size == size[:, :1]).all()):  # equal sizes: log(size) is a constant shift, softmax ignores it
                return None
        if self.proportional_attention:
            return proportional_attention_bias(size, mask)
        if mask is None or bool(mask.all()):
            return None
        zeros = torch.zeros(mask.shape, dtype=size.dtype, device=size.device)
        return zeros.masked_fill(~mask, -math.inf)[:, None, None, :]

    def _forward_tome(self, x: Tensor, coords: Tensor) -> VisionTokens:
        ops = self._ops
        P = ops.num_prefix
        B, T, _ = x.shape
        schedule = tome_schedule(T, len(ops.blocks), keep=self.keep, r=self.r, num_protected=P)
        size = pos = None
        centre = torch.cat([coords.new_zeros(B, P, 2), coords], 1)  # prefix tokens: placeholder, dropped at the end
        for blk, r in zip(ops.blocks, schedule):
            if r == 0 and size is None:  # nothing merged yet: the original block, bit for bit
                x = ops.run_block(blk, x)
                continue
            x, keys, _ = self._attend(blk, x, self._bias(size, None))
            if r > 0:
                merge, _ = bipartite_soft_matching(keys, r, num_protected=P)
                if size is None:
                    size = x.new_ones(B, T)
                    pos = torch.arange(T, device=x.device).expand(B, T)
                centre, _ = merge_wavg(merge, centre, size)
                x, size = merge_wavg(merge, x, size)
                pos = merge(pos, mode="amin")  # a token sits where its first patch was
            x = ops.mlp_residual(blk, x)
        if pos is not None:  # back to spatial order (ToMe's merge shuffles tokens)
            order = pos.argsort(dim=1)
            x = x.gather(1, order[..., None].expand_as(x))
            size = size.gather(1, order)
            centre = centre.gather(1, order[..., None].expand_as(centre))
        return self._output(x, size, None, None, centre[:, P:])

    def _forward_mustdrop(self, x: Tensor, grid: tuple[int, int], coords: Tensor) -> VisionTokens:
        ops = self._ops
        P = ops.num_prefix
        blocks = ops.blocks
        for blk in blocks[: self.merge_layer]:
            x = ops.run_block(blk, x)
        B, T, _ = x.shape
        patches, psize, pmask, slot = window_merge(
            x[:, P:], None, grid, window=self.window, threshold=self.threshold, keep=self.keep, return_index=True
        )
        rest = blocks[self.merge_layer :]
        if patches.shape[1] == T - P and bool(pmask.all()):  # nothing merged: original blocks, CLS attention on the side
            for blk in rest[:-1]:
                x = ops.run_block(blk, x)
            cls_attn = self._side_cls_attention(rest[-1], x)
            x = ops.run_block(rest[-1], x)
            key = key_token_set(cls_attn[:, P:], self.key_fraction)
            return self._output(x, None, None, key, coords)
        # the merged window's centre: mean position of its patches (every input patch has size 1 here)
        centre = coords.new_zeros(B, patches.shape[1], 2).scatter_add(1, slot[..., None].expand_as(coords), coords)
        centre = centre / psize.clamp_min(1)[..., None]

        ones = x.new_ones(B, P)
        x = torch.cat([x[:, :P], patches], dim=1)
        size = torch.cat([ones, psize], dim=1)
        mask = torch.cat([ones.bool(), pmask], dim=1)
        bias = self._bias(size, mask)
        for i, blk in enumerate(rest):
            x, _, cls_attn = self._attend(blk, x, bias, want_cls=i == len(rest) - 1)
            x = ops.mlp_residual(blk, x)
        key = key_token_set(cls_attn[:, P:], self.key_fraction, mask=pmask)
        return self._output(x, psize, pmask, key, centre)

    def _output(self, x: Tensor, size: Tensor | None, mask: Tensor | None, key: Tensor | None,
                centre: Tensor) -> VisionTokens:
        ops = self._ops
        tokens, cls = ops.final(x)
        B, N, _ = tokens.shape
        if size is None:
            size = tokens.new_ones(B, N)
        elif size.shape[1] != N:  # ToMe's sizes include the prefix tokens
            size = size[:, ops.num_prefix :]
        if mask is None:
            mask = torch.ones(B, N, dtype=torch.bool, device=tokens.device)
        elif not bool(mask.all()):
            tokens = tokens.masked_fill(~mask[..., None], 0.0)
        if key is None:
            key = torch.zeros(B, N, dtype=torch.bool, device=tokens.device)
        return VisionTokens(tokens=tokens, mask=mask, size=size, key=key, cls=cls, centre=centre.to(tokens.dtype))


def _cls_attention(q: Tensor, k: Tensor, scale: float, bias: Tensor | None) -> Tensor:
    """Attention of the CLS query (token 0) to every token, averaged over heads: ``(B, N)``."""
    logits = (q[:, :, :1] * scale) @ k.transpose(-1, -2)  # (B, H, 1, N)
    if bias is not None:
        logits = logits + bias
    return logits.softmax(dim=-1).mean(dim=1)[:, 0]
