"""Mapping networks: a model's states -> a diffusion pipeline's conditioning (GILL's GILLMapper).

GILL (Koh et al. 2023, kohjingyu/gill ``gill/layers.py``, mode ``gill_mapper``) turns the LM's
last-layer hidden states at its 8 ``[IMG]`` positions, plus those tokens' input embeddings, into
the 77 x 768 text-encoder space of Stable Diffusion v1.5: ``Linear(width -> 512)``, an
``nn.Transformer`` (4 encoder + 4 decoder layers, 4 heads, FFN 2048, no dropout, pre-norm) whose
decoder reads 77 learned queries, then ``Linear(512 -> 768)``. The output goes to the pipeline as
``prompt_embeds``. The brain-to-image family feeds the same block with a brain decoder's tokens.

Plain ``torch.nn``; the sizes are one config dataclass, written once.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from litbrain.errors import ConfigError

__all__ = ["GillMapper", "GillMapperConfig"]


@dataclass
class GillMapperConfig:
    """Hyper-parameters of :class:`GillMapper` (GILL's values are the defaults).

    Args:
        in_dim: width of the input states (the LM's hidden size; 4096 for OPT-6.7B).
        out_dim: width of the pipeline's text-encoder space, i.e. its UNet's
            ``cross_attention_dim`` (768 for SD v1.5).
        n_output_tokens: conditioning length (77 for SD v1.5's CLIP tokenizer).
        hidden_dim: width inside the Transformer.
        nhead / n_encoder_layers / n_decoder_layers / dim_feedforward / dropout: the ``nn.Transformer``.
    """

    in_dim: int = 4096
    out_dim: int = 768
    n_output_tokens: int = 77
    hidden_dim: int = 512
    nhead: int = 4
    n_encoder_layers: int = 4
    n_decoder_layers: int = 4
    dim_feedforward: int = 2048
    dropout: float = 0.0

    def __post_init__(self) -> None:
        for name in ("in_dim", "out_dim", "n_output_tokens", "hidden_dim", "nhead", "n_encoder_layers",
                     "n_decoder_layers", "dim_feedforward"):
            value = getattr(self, name)
            if int(value) != value or int(value) < 1:
                raise ConfigError(f"mapper.{name}={value!r} must be a positive integer; fix: e.g. "
                                  f"{getattr(GillMapperConfig, name)}")
            setattr(self, name, int(value))
        if self.hidden_dim % self.nhead:
            raise ConfigError(f"mapper.hidden_dim={self.hidden_dim} is not divisible by mapper.nhead={self.nhead}; "
                              f"fix: choose nhead dividing hidden_dim (GILL: 512 and 4)")
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ConfigError(f"mapper.dropout={self.dropout!r} must be in [0, 1); fix: GILL uses 0")


class GillMapper(nn.Module):
    """``(B, T_in, in_dim)`` states (+ optional input embeddings) -> ``(B, n_output_tokens, out_dim)``.

    ``T_in`` is free (GILL: the 8 ``[IMG]`` tokens; a brain decoder: its output tokens).
    """

    def __init__(self, config: GillMapperConfig | None = None, **kwargs) -> None:
        super().__init__()
        if config is None:
            config = GillMapperConfig(**kwargs)
        elif kwargs:
            raise TypeError("pass either a GillMapperConfig or its fields as keywords, not both")
        self.config = c = config
        self.fc = nn.Linear(c.in_dim, c.hidden_dim)
        with warnings.catch_warnings():  # pre-norm layers cannot use nested tensors; torch says so on every build
            warnings.filterwarnings("ignore", message="enable_nested_tensor is True")
            self.transformer = nn.Transformer(d_model=c.hidden_dim, nhead=c.nhead, num_encoder_layers=c.n_encoder_layers,
                                              num_decoder_layers=c.n_decoder_layers,
                                              dim_feedforward=c.dim_feedforward, dropout=c.dropout,
                                              batch_first=True, norm_first=True)
        self.out = nn.Linear(c.hidden_dim, c.out_dim)
        self.queries = nn.Parameter(torch.randn(1, c.n_output_tokens, c.hidden_dim))  # GILL: torch.randn

    def forward(self, states: torch.Tensor, input_embeds: torch.Tensor | None = None) -> torch.Tensor:
        if states.dim() != 3 or states.shape[-1] != self.config.in_dim:
            raise ConfigError(f"mapper input has shape {tuple(states.shape)}, expected (batch, tokens, "
                              f"{self.config.in_dim}); fix: set mapper.in_dim to the width of the states fed to it")
        x = states if input_embeds is None else states + input_embeds  # GILL adds the [IMG] input embeddings
        x = self.fc(x)
        return self.out(self.transformer(x, self.queries.expand(x.shape[0], -1, -1)))
