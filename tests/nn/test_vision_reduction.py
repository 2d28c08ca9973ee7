"""VisionTokenReducer (issue 5) on tiny timm and open_clip ViTs: exactness, merging, errors."""

import math

import pytest
import torch
from torch import nn

from litbrain.nn.vision_reduction import VisionTokenReducer, VisionTokens

IMG = 24  # 6x6 patch grid with patch 4: divisible by window 3 and 2
FAMILIES = ["timm", "open_clip"]


def make_vit(family: str, img: int = IMG, **kw) -> nn.Module:
    torch.manual_seed(0)
    if family == "timm":
        from timm.models.vision_transformer import VisionTransformer

        return VisionTransformer(img_size=img, patch_size=4, embed_dim=32, depth=3, num_heads=4, **kw).eval()
    from open_clip.transformer import VisionTransformer

    return VisionTransformer(image_size=img, patch_size=4, width=32, layers=3, heads=4, mlp_ratio=4.0, output_dim=16, **kw).eval()


def dense_reference(vit: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(patch tokens, CLS) from the model's own forward path."""
    if hasattr(vit, "forward_features"):  # timm
        x = vit.forward_features(images)
        return x[:, vit.num_prefix_tokens :], x[:, 0]
    vit.output_tokens = True  # open_clip: its own forward returns (pooled, tokens)
    try:
        pooled, tokens = vit(images)
    finally:
        vit.output_tokens = False
    return tokens, pooled


def images(b=2, img=IMG, seed=1):
    torch.manual_seed(seed)
    return torch.randn(b, 3, img, img)


def _cls_for_compare(vit, out: VisionTokens) -> torch.Tensor:
    proj = getattr(vit, "proj", None)
    return out.cls @ proj if isinstance(proj, torch.Tensor) else out.cls


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "kwargs",
    [
        dict(method="none"),
        dict(method="tome", r=0),
        dict(method="tome", keep=36),
        dict(method="mustdrop", threshold=1.01),
        dict(method="mustdrop", keep=36),
    ],
    ids=["none", "tome_r0", "tome_keep_all", "mustdrop_no_merge", "mustdrop_keep_all"],
)
@torch.inference_mode()
def test_disabled_dropping_is_bit_exact(family, kwargs):
    vit = make_vit(family)
    x = images()
    ref_tokens, ref_cls = dense_reference(vit, x)
    out = VisionTokenReducer(vit, **kwargs)(x)
    assert torch.equal(out.tokens, ref_tokens)
    assert torch.equal(_cls_for_compare(vit, out), ref_cls)
    assert out.mask.all() and torch.equal(out.size, torch.ones(2, 36))
    if kwargs["method"] == "mustdrop":
        assert out.key.sum(1).tolist() == [math.ceil(0.08 * 36)] * 2
    else:
        assert not out.key.any()


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["tome", "mustdrop"])
@torch.inference_mode()
def test_keep_budget(family, method):
    vit = make_vit(family)
    out = VisionTokenReducer(vit, method=method, keep=9, window=2)(images(3))
    assert out.tokens.shape == (3, 9, 32) and out.mask.all()
    assert out.size.sum(1).tolist() == [36.0] * 3
    assert out.cls.shape == (3, 32)
    assert torch.isfinite(out.tokens).all()
    assert out.key.sum(1).tolist() == ([1] * 3 if method == "mustdrop" else [0] * 3)  # ceil(0.08 * 9)


@pytest.mark.parametrize("family", FAMILIES)
@torch.inference_mode()
def test_tome_r_per_layer(family):
    vit = make_vit(family)
    out = VisionTokenReducer(vit, method="tome", r=4)(images())
    assert out.tokens.shape[1] == 36 - 3 * 4
    assert out.size.sum(1).tolist() == [36.0, 36.0]


def _flat_and_noisy(b_img=2):
    x = images(b_img)
    x[0] = 0.5  # one flat colour: every window of image 0 is alike
    return x


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("proportional", [True, False])
@torch.inference_mode()
def test_padded_batch_equals_each_image_alone(family, proportional):
    vit = make_vit(family)
    red = VisionTokenReducer(
        vit, method="mustdrop", threshold=0.5, window=3, merge_layer=1, proportional_attention=proportional
    )
    x = _flat_and_noisy()
    out = red(x)
    counts = out.mask.sum(1).tolist()
    assert counts == [4, 36]  # the flat image merged every window, the noisy one none
    assert torch.all(out.tokens[~out.mask] == 0) and torch.all(out.size[~out.mask] == 0)
    assert torch.all(out.key <= out.mask)
    for b in range(2):
        alone = red(x[b : b + 1])
        n = counts[b]
        assert alone.tokens.shape[1] == n
        torch.testing.assert_close(out.tokens[b, :n], alone.tokens[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(out.cls[b], alone.cls[0], atol=1e-5, rtol=1e-4)
        assert torch.equal(out.size[b, :n], alone.size[0])
        assert torch.equal(out.key[b, :n], alone.key[0])
        assert out.size[b].sum() == 36


def _hand_cls_attention(family, blk, x_in, bias=None):
    """CLS attention of ``blk`` on its input, by hand from the block's weights, head-averaged."""
    if family == "timm":
        h = blk.norm1(x_in)
        w, bvec, heads = blk.attn.qkv.weight, blk.attn.qkv.bias, blk.attn.num_heads
    else:
        h = blk.ln_1(x_in)
        w, bvec, heads = blk.attn.in_proj_weight, blk.attn.in_proj_bias, blk.attn.num_heads
    D = h.shape[-1]
    q, k, _ = (h @ w.T + bvec).split(D, dim=-1)
    hd = D // heads
    attn = []
    for i in range(heads):
        qi, ki = q[..., i * hd : (i + 1) * hd], k[..., i * hd : (i + 1) * hd]
        logits = qi[:, :1] @ ki.transpose(1, 2) / math.sqrt(hd)
        if bias is not None:
            logits = logits + bias[:, None, :]
        attn.append(logits.softmax(-1)[:, 0])
    return torch.stack(attn).mean(0)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("merged", [False, True])
@torch.inference_mode()
def test_key_set_is_top_8_percent_by_last_layer_cls_attention(family, merged):
    vit = make_vit(family)
    last = (vit.blocks if family == "timm" else vit.transformer.resblocks)[-1]
    norm1 = last.norm1 if family == "timm" else last.ln_1
    seen = []
    handle = norm1.register_forward_hook(lambda m, args, out: seen.append(args[0]))
    try:
        red = VisionTokenReducer(vit, method="mustdrop", threshold=-1.0 if merged else 1.01, window=2)
        out = red(images(2))
    finally:
        handle.remove()
    x_in = seen[-1]  # the last block's input (CLS first)
    bias = None
    if merged:  # proportional attention: log(size) per key, CLS size 1
        bias = torch.cat([torch.zeros(2, 1), out.size.log()], dim=1)
    cls_attn = _hand_cls_attention(family, last, x_in, bias)[:, 1:]
    n = out.tokens.shape[1]
    k = math.ceil(0.08 * n)
    for b in range(2):
        assert set(out.key[b].nonzero().flatten().tolist()) == set(cls_attn[b].topk(k).indices.tolist())


@pytest.mark.parametrize("family", FAMILIES)
def test_training_with_dropping_sends_gradients_to_the_vit(family):
    vit = make_vit(family).train()
    out = VisionTokenReducer(vit, method="mustdrop", keep=9, window=2)(images())
    (out.tokens * out.mask[..., None]).pow(2).mean().backward()
    first = vit.patch_embed.proj.weight if family == "timm" else vit.conv1.weight
    assert first.grad is not None and first.grad.abs().sum() > 0


@pytest.mark.parametrize("family", FAMILIES)
def test_grid_not_divisible_by_window_gets_ragged_windows(family):
    vit = make_vit(family, img=32)  # 8x8 grid: 3x3 windows leave 2-wide edge windows
    out = VisionTokenReducer(vit, method="mustdrop", keep=16)(torch.randn(2, 3, 32, 32))
    assert torch.equal(out.size.sum(1), torch.full((2,), 64.0)) and int(out.mask.sum(1).max()) <= 16


@torch.inference_mode()
def test_non_square_grid_works_when_windows_fit():
    from timm.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(img_size=(24, 12), patch_size=4, embed_dim=32, depth=2, num_heads=4).eval()
    out = VisionTokenReducer(vit, method="mustdrop", keep=2)(torch.randn(1, 3, 24, 12))
    assert out.tokens.shape == (1, 2, 32) and out.size.tolist() == [[9.0, 9.0]]
    out = VisionTokenReducer(vit, method="mustdrop", keep=8, window=2)(torch.randn(1, 3, 24, 12))  # 6x3: ragged column
    assert torch.equal(out.size.sum(1), torch.full((1,), 18.0)) and int(out.mask.sum()) <= 8


@pytest.mark.parametrize("method", ["none", "tome", "mustdrop"])
def test_model_without_cls_token(method):
    vit = make_vit("timm", class_token=False, global_pool="avg")
    kw = {"r": 2} if method == "tome" else {}
    with pytest.raises(ValueError, match="needs a CLS token.*class_token=True"):
        VisionTokenReducer(vit, method=method, **kw)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ["tome", "mustdrop"])
@pytest.mark.parametrize("keep", [0, -1, 37])
def test_bad_budget(family, method, keep):
    with pytest.raises(ValueError, match=f"keep={keep} must be an int in 1..36"):
        VisionTokenReducer(make_vit(family), method=method, keep=keep)


def test_bad_budget_for_the_actual_images_and_other_arguments():
    vit = make_vit("timm", dynamic_img_size=True)
    red = VisionTokenReducer(vit, method="tome", keep=30)
    with pytest.raises(ValueError, match="keep=30 is more than the 16 patch tokens"):
        red(torch.randn(1, 3, 16, 16))
    with pytest.raises(ValueError, match="method='tome' needs exactly one"):
        VisionTokenReducer(vit, method="tome")
    with pytest.raises(ValueError, match="merge_layer=3"):
        VisionTokenReducer(vit, method="mustdrop", merge_layer=3)
    with pytest.raises(ValueError, match="method='fastv'"):
        VisionTokenReducer(vit, method="fastv")
    with pytest.raises(ValueError, match="fraction"):
        VisionTokenReducer(vit, method="mustdrop", key_fraction=0)
    with pytest.raises(ValueError, match="unreachable"):
        VisionTokenReducer(vit, method="tome", keep=1)


def test_unsupported_model():
    with pytest.raises(ValueError, match="timm VisionTransformer or an open_clip VisionTransformer.*got torch.nn"):
        VisionTokenReducer(nn.Linear(3, 3))


def test_whole_open_clip_model_gets_a_hint():
    class Wrapper(nn.Module):
        def __init__(self):
            super().__init__()
            self.visual = make_vit("open_clip")

    with pytest.raises(ValueError, match="pass model.visual"):
        VisionTokenReducer(Wrapper())


@torch.inference_mode()
def test_proportional_attention_changes_tome_output():
    vit = make_vit("timm")
    x = images()
    with_size = VisionTokenReducer(vit, method="tome", r=6)(x)
    without = VisionTokenReducer(vit, method="tome", r=6, proportional_attention=False)(x)
    assert torch.equal(with_size.size, without.size)  # same first-layer matching
    assert not torch.allclose(with_size.tokens, without.tokens)


def test_unsupported_blocks():
    from timm.models.vision_transformer import ResPostBlock

    with pytest.raises(ValueError, match="timm block 0 is ResPostBlock"):
        VisionTokenReducer(make_vit("timm", block_fn=ResPostBlock))
    with pytest.raises(ValueError, match="open_clip block 0 is CustomResidualAttentionBlock"):
        VisionTokenReducer(make_vit("open_clip", qk_norm=True))


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kwargs", [dict(method="none"), dict(method="tome", keep=9), dict(method="tome", r=4),
                                    dict(method="mustdrop", keep=9, window=2),
                                    dict(method="mustdrop", threshold=0.5, window=3)],
                         ids=["none", "tome_keep", "tome_r", "mustdrop_keep", "mustdrop_threshold"])
@torch.inference_mode()
def test_token_centres_are_the_mean_position_of_their_patches(family, kwargs):
    """Every token's centre is the size-weighted mean (row, col) of the patches it stands for, so the
    position mass sum(size * centre) of each image equals that of the 6 x 6 patch grid."""
    from litbrain.nn.vision_reduction import grid_coords

    vit = make_vit(family)
    out = VisionTokenReducer(vit, **kwargs)(_flat_and_noisy(2))
    grid = grid_coords((6, 6))
    assert out.centre.shape == (*out.mask.shape, 2)
    mass = (out.centre * out.size[..., None]).sum(1)
    torch.testing.assert_close(mass, grid.sum(0).expand(2, 2))
    assert (out.centre[~out.mask] == 0).all()
    real = out.centre[out.mask]
    assert (real >= 0).all() and (real <= 5).all()
    if kwargs["method"] == "none":
        assert torch.equal(out.centre, grid.expand(2, 36, 2))
    if kwargs["method"] == "mustdrop" and kwargs.get("window") == 3:
        # image 0 is one flat colour: all four 3x3 windows merge, each at its window's middle patch
        assert out.mask[0].sum() == 4
        assert out.centre[0, :4].tolist() == [[1.0, 1.0], [1.0, 4.0], [4.0, 1.0], [4.0, 4.0]]
