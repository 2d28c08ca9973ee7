"""MustDrop stage 1 (issue 5): window merge of similar neighbours and the key-token set."""

import math

import pytest
import torch

from litbrain.nn.mustdrop import key_token_set, window_merge, window_similarity


def _grid_tokens(B=2, H=6, W=6, D=8, seed=0):
    torch.manual_seed(seed)
    return torch.randn(B, H * W, D)


def test_similar_window_merges_into_its_size_weighted_mean_at_its_top_left():
    x = _grid_tokens(B=1)
    # window (0, 0) of a 6x6 grid, 3x3 windows: patches 0,1,2,6,7,8,12,13,14 -> nearly one direction
    win = torch.tensor([0, 1, 2, 6, 7, 8, 12, 13, 14])
    base = torch.randn(8)
    x[0, win] = base + 0.01 * torch.randn(9, 8)
    size = torch.ones(1, 36)
    size[0, 7] = 3.0
    tokens, new_size, mask = window_merge(x, size, (6, 6), window=3, threshold=0.8)
    assert tokens.shape == (1, 36 - 8, 8) and mask.all()
    expected = (x[0, win] * size[0, win, None]).sum(0) / size[0, win].sum()
    torch.testing.assert_close(tokens[0, 0], expected)
    assert new_size[0, 0] == size[0, win].sum()
    # the other patches stay, in raster order
    rest = [i for i in range(36) if i not in win.tolist()]
    assert torch.equal(tokens[0, 1:], x[0, rest])


def test_window_similarity_is_mean_pairwise_cosine_without_self():
    x = _grid_tokens(B=1, H=3, W=3)
    sim = window_similarity(x, (3, 3), window=3)
    n = torch.nn.functional.normalize(x[0], dim=-1)
    pairs = [(n[i] @ n[j]).item() for i in range(9) for j in range(9) if i != j]
    assert sim.shape == (1, 1)
    assert math.isclose(sim.item(), sum(pairs) / len(pairs), rel_tol=1e-5, abs_tol=1e-6)


@pytest.mark.parametrize("threshold", [-1.0, 0.05, 0.2])
def test_merges_conserve_mass_and_size_and_pad_correctly(threshold):
    x = _grid_tokens(B=3, H=6, W=9)
    size = torch.rand(3, 54) + 0.5
    tokens, new_size, mask, index = window_merge(x, size, (6, 9), window=3, threshold=threshold, return_index=True)
    torch.testing.assert_close((tokens * new_size[..., None]).sum(1), (x * size[..., None]).sum(1))
    torch.testing.assert_close(new_size.sum(1), size.sum(1))
    assert torch.equal(mask, new_size > 0)
    assert torch.all(tokens[~mask] == 0)
    assert torch.all(mask[:, :-1] >= mask[:, 1:])  # right-padded
    # every input patch maps to a real output slot
    assert torch.all(mask.gather(1, index))


def test_images_keep_different_counts_under_a_threshold():
    x = _grid_tokens(B=2)
    x[0] = torch.randn(8)  # image 0: one flat colour -> every window merges
    tokens, size, mask = window_merge(x, None, (6, 6), window=3, threshold=0.8)
    assert mask.sum(1).tolist() == [4, 36]
    assert tokens.shape == (2, 36, 8)
    assert size[0, :4].tolist() == [9.0] * 4 and size[0, 4:].abs().sum() == 0


def test_nothing_merged_returns_the_inputs_unchanged():
    x = _grid_tokens()
    tokens, size, mask = window_merge(x, None, (6, 6), window=3, threshold=1.01)
    assert tokens is x and mask.all() and torch.equal(size, torch.ones(2, 36))


@pytest.mark.parametrize("keep", [36, 30, 28, 20, 4])
def test_keep_budget_merges_most_similar_windows(keep):
    x = _grid_tokens(B=3)
    tokens, size, mask = window_merge(x, None, (6, 6), window=3, keep=keep)
    n_merge = math.ceil((36 - keep) / 8)
    assert mask.all() and tokens.shape[1] == 36 - 8 * n_merge <= keep
    assert size.sum(1).tolist() == [36.0] * 3
    if n_merge == 1:  # the single merged window is the most similar one
        sim = window_similarity(x, (6, 6), 3)
        best = sim.argmax(1)
        top_left = torch.tensor([0, 3, 18, 21])[best]
        merged_at = (size == 9).nonzero()[:, 1]
        # a merged window sits where its top-left patch was, i.e. after the patches before it
        assert merged_at.tolist() == [int(t) for t in top_left]


def test_window_merge_bad_input():
    x = torch.randn(1, 12, 4)
    with pytest.raises(ValueError, match="grid_hw=None assumes a square"):
        window_merge(x, None, None)
    with pytest.raises(ValueError, match="window=5 is larger than the patch grid 4x4"):
        window_merge(torch.randn(1, 16, 4), None, (4, 4), window=5)
    with pytest.raises(ValueError, match="grid_hw=.* has 9 cells"):
        window_merge(x, None, (3, 3))
    with pytest.raises(ValueError, match="window=1"):
        window_merge(torch.randn(1, 9, 4), None, (3, 3), window=1)
    for keep in (0, -1, 37):
        with pytest.raises(ValueError, match=f"keep={keep}"):
            window_merge(torch.randn(1, 36, 4), None, (6, 6), keep=keep)
    with pytest.raises(ValueError, match="unreachable"):
        window_merge(torch.randn(1, 36, 4), None, (6, 6), keep=3)


def test_non_square_grid_is_handled():
    x = _grid_tokens(B=1, H=3, W=6)
    tokens, size, mask = window_merge(x, None, (3, 6), window=3, threshold=-1.0)
    assert tokens.shape == (1, 2, 8) and size.tolist() == [[9.0, 9.0]]


def test_gradients_flow_through_merged_tokens():
    x = _grid_tokens(B=2).requires_grad_()
    tokens, size, mask = window_merge(x, None, (6, 6), window=3, keep=20)
    (tokens * mask[..., None]).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_key_token_set_is_top_ceil_fraction():
    torch.manual_seed(0)
    attn = torch.rand(3, 50)
    key = key_token_set(attn, 0.08)
    assert key.sum(1).tolist() == [4, 4, 4]  # ceil(0.08 * 50) = 4, no float slop
    for b in range(3):
        assert set(key[b].nonzero().flatten().tolist()) == set(attn[b].topk(4).indices.tolist())
    key = key_token_set(torch.rand(2, 196), 0.08)
    assert key.sum(1).tolist() == [16, 16]  # ceil(15.68)


def test_key_token_set_ignores_padding():
    attn = torch.tensor([[0.1, 0.2, 0.3, 0.9, 0.8], [0.5, 0.4, 0.3, 0.2, 0.1]])
    mask = torch.tensor([[True, True, True, False, False], [True] * 5])
    key = key_token_set(attn, 0.5, mask=mask)
    assert key.tolist() == [[False, True, True, False, False], [True, True, True, False, False]]


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_key_token_set_rejects_bad_fraction(fraction):
    with pytest.raises(ValueError, match="fraction"):
        key_token_set(torch.rand(1, 10), fraction)


def test_a_grid_the_window_does_not_divide_gets_ragged_edge_windows():
    """14 x 14 patches (ViT-B/16 at 224 px) in 3 x 3 windows: 4 x 4 full windows plus 3 x 2, 2 x 3 and 2 x 2
    ones at the bottom and right edges; similarity is each window's own mean pairwise cosine."""
    torch.manual_seed(0)
    x = torch.randn(2, 196, 8)
    sim = window_similarity(x, (14, 14), 3)
    assert sim.shape == (2, 25)
    grid = x.view(2, 14, 14, 8)
    for w, (r, c) in enumerate([(r, c) for r in range(0, 14, 3) for c in range(0, 14, 3)]):
        block = torch.nn.functional.normalize(grid[:, r:r + 3, c:c + 3].reshape(2, -1, 8), dim=-1)
        k = block.shape[1]
        pair = block @ block.transpose(1, 2)
        want = (pair.sum((1, 2)) - pair.diagonal(dim1=1, dim2=2).sum(1)) / (k * (k - 1))
        torch.testing.assert_close(sim[:, w], want, rtol=1e-5, atol=1e-6)
    # every window merged: 25 tokens whose sizes are the windows' patch counts, mass conserved
    tokens, size, mask = window_merge(x, None, (14, 14), window=3, keep=25)
    assert mask.all() and tokens.shape[1] == 25
    assert sorted(size[0].tolist()) == sorted([9.0] * 16 + [6.0] * 8 + [4.0])
    torch.testing.assert_close((tokens * size[..., None]).sum(1), x.sum(1), rtol=1e-5, atol=1e-4)
    # a budget between: the most similar windows merge until at most `keep` tokens are left
    _, size, mask = window_merge(x, None, (14, 14), window=3, keep=100)
    assert (mask.sum(1) <= 100).all() and torch.equal(size.sum(1), torch.full((2,), 196.0))


def test_a_window_of_one_patch_never_merges():
    x = torch.ones(1, 16, 4)  # identical tokens: every window with a pair merges at any threshold
    sim = window_similarity(x, (4, 4), 3)  # windows: 3x3, 3x1, 1x3, 1x1
    assert torch.isinf(sim[0, 3]) and sim[0, 3] < 0 and torch.allclose(sim[0, :3], torch.ones(3))
    tokens, size, _ = window_merge(x, None, (4, 4), window=3, threshold=0.5)
    assert sorted(size[0].tolist()) == [1.0, 3.0, 3.0, 9.0]
