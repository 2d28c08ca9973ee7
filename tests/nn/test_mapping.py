"""GILL's mapping network and its per-token Euclidean loss."""

import pytest
import torch

from litbrain.errors import ConfigError
from litbrain.losses.mapping import per_token_l2_loss
from litbrain.nn.mapping import GillMapper, GillMapperConfig

TINY = dict(in_dim=24, out_dim=16, n_output_tokens=5, hidden_dim=32, nhead=4, n_encoder_layers=1,
            n_decoder_layers=1, dim_feedforward=64)


def test_gill_defaults_are_the_papers_sizes():
    m = GillMapper()
    t = m.transformer
    assert (len(t.encoder.layers), len(t.decoder.layers)) == (4, 4)
    assert t.encoder.layers[0].self_attn.num_heads == 4 and t.encoder.layers[0].norm_first
    assert t.encoder.layers[0].linear1.out_features == 2048 and t.encoder.layers[0].dropout.p == 0.0
    assert m.fc.in_features == 4096 and m.out.out_features == 768 and tuple(m.queries.shape) == (1, 77, 512)


def test_mapper_output_shape_and_input_embeddings_are_added():
    torch.manual_seed(0)
    m = GillMapper(GillMapperConfig(**TINY)).eval()
    h, e = torch.randn(3, 8, 24), torch.randn(3, 8, 24)
    y = m(h, e)
    assert y.shape == (3, 5, 16)
    assert torch.allclose(y, m(h + e))  # GILL: x = hidden + input embeddings
    assert not torch.allclose(y, m(h))
    with pytest.raises(ConfigError, match="in_dim"):
        m(torch.randn(3, 8, 23))


def test_per_token_l2_is_the_mean_token_distance_not_mse():
    u = torch.zeros(2, 3, 4)
    v = torch.zeros(2, 3, 4)
    v[0, 0] = torch.tensor([3.0, 4.0, 0.0, 0.0])  # one token 5 away, the other 5 tokens exact
    assert per_token_l2_loss(u, v).item() == pytest.approx(5.0 / 6)
    assert torch.nn.functional.mse_loss(u, v).item() == pytest.approx(25.0 / 24)
    with pytest.raises(ConfigError, match="shape"):
        per_token_l2_loss(u, v[:, :2])


def test_bad_mapper_sizes_are_one_line():
    with pytest.raises(ConfigError, match="nhead"):
        GillMapperConfig(hidden_dim=30, nhead=4)
