"""Du-IN (sEEG speech decoding): subject layer, region-level patch tokens, Transformer, VQ-VAE.

Input per subject: z-scored epochs ``(b, C_s, T)`` of the channels selected in the speech
regions (vSMC, STG). Pipeline (Du-IN's defaults in brackets):

1. subject layer: the shared :class:`~litbrain.nn.SubjectAdapter` maps each subject's ``C_s``
   channels to ``d_subject`` [16] virtual channels, so the rest never sees the montage;
2. spatial fusion + temporal tokens: the epoch is cut into patches of ``patch_len`` samples
   [100 = 100 ms at 1 kHz]; a conv stack over time [filters 128, 128, 16; kernels 19, 3, 3;
   strides 10, 1, 1] mixes all ``d_subject`` channels of the region and flattens each patch
   into one region-level token of ``d_model`` [160 = 16 filters x 10 steps];
3. a pre-norm Transformer encoder [8 blocks, 8 heads, d_ff = 2 * d_model] with learned
   positions over the patches.

Stages, one :class:`DuinModel` per stage (``stage`` is part of the config):
``"vqvae"`` (1) quantises each token (codebook 2048 x 64) and reconstructs the raw epoch
through a small Transformer decoder and a per-subject readout; ``"mae"`` (2) masks half the
patches and predicts the stage-1 code of each masked patch; ``"classify"`` (3) flattens the
tokens into a word classifier (61 words).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from litbrain.errors import ConfigError
from litbrain.nn.registry import ModelCard, ModelConfig
from litbrain.nn.subject_adapter import SubjectAdapter, check_subject_batch
from litbrain.nn.vector_quantizer import VectorQuantizer

Stage = Literal["vqvae", "mae", "classify"]
STAGES: tuple[str, ...] = ("vqvae", "mae", "classify")


def _transformer(d_model: int, n_heads: int, d_ff: int | None, dropout: float, n_blocks: int) -> nn.TransformerEncoder:
    """Pre-norm GELU Transformer encoder (Du-IN: d_ff = 2 * d_model)."""
    layer = nn.TransformerEncoderLayer(d_model, n_heads, d_ff or 2 * d_model, dropout, activation="gelu",
                                       batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, n_blocks, enable_nested_tensor=False)


class PatchTokenizer(nn.Module):
    """Du-IN's temporal conv tokenizer: each patch (``patch_len`` x ``in_channels``) -> one token.

    The conv stack runs over the time axis of every patch independently (patches do not see
    each other here; the Transformer mixes them), GroupNorm + GELU after each conv.
    """

    def __init__(
        self,
        in_channels: int = 16,
        patch_len: int = 100,
        filters: Sequence[int] = (128, 128, 16),
        kernels: Sequence[int] = (19, 3, 3),
        strides: Sequence[int] = (10, 1, 1),
        d_model: int = 160,
    ) -> None:
        super().__init__()
        if not (len(filters) == len(kernels) == len(strides)) or not filters:
            raise ConfigError(
                f"PatchTokenizer: filters {list(filters)}, kernels {list(kernels)} and strides {list(strides)} "
                f"must have the same (non-zero) length; fix: e.g. filters [128,128,16], kernels [19,3,3], strides [10,1,1]"
            )
        layers: list[nn.Module] = []
        c = in_channels
        steps = patch_len
        for f, k, s in zip(filters, kernels, strides):
            layers += [nn.Conv1d(c, f, k, stride=s, padding=k // 2), nn.GroupNorm(min(4, f), f), nn.GELU()]
            c = f
            steps = (steps + 2 * (k // 2) - k) // s + 1
        if steps < 1:
            raise ConfigError(f"PatchTokenizer: patch_len={patch_len} is too short for strides {list(strides)}")
        self.convs = nn.Sequential(*layers)
        self.patch_len = patch_len
        flat = c * steps
        # Du-IN's sizes flatten to exactly d_model (16 x 10 = 160); other sizes get a projection.
        self.proj = nn.Identity() if flat == d_model else nn.Linear(flat, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` (b, T, C) -> tokens (b, T // patch_len, d_model); a trailing partial patch is dropped."""
        b, t, c = x.shape
        p = t // self.patch_len
        if p == 0:
            raise ConfigError(f"PatchTokenizer: epoch of {t} samples is shorter than one patch ({self.patch_len})")
        patches = x[:, : p * self.patch_len].reshape(b, p, self.patch_len, c).permute(0, 1, 3, 2)
        h = self.convs(patches.reshape(b * p, c, self.patch_len))
        return self.proj(h.reshape(b, p, -1))


@dataclass
class DuinEncoderConfig:
    """The encoder's hyper-parameters (Du-IN's in brackets); a chained stage takes them whole from
    the checkpoint it starts from, so the weights fit.

    Args:
        n_times: samples per epoch (from the datamodule when omitted).
        patch_len: samples per patch [100 = 100 ms at 1 kHz].
        d_subject: virtual channels after the subject layer [16].
        filters / kernels / strides: the conv tokenizer [128,128,16 / 19,3,3 / 10,1,1].
        d_model, n_blocks, n_heads, d_ff, dropout: the Transformer [160, 8, 8, 2 * d_model].
    """

    n_times: int | None = None
    patch_len: int = 100
    d_subject: int = 16
    filters: list[int] = field(default_factory=lambda: [128, 128, 16])
    kernels: list[int] = field(default_factory=lambda: [19, 3, 3])
    strides: list[int] = field(default_factory=lambda: [10, 1, 1])
    d_model: int = 160
    n_blocks: int = 8
    n_heads: int = 8
    d_ff: int | None = None
    dropout: float = 0.1

    def __post_init__(self) -> None:
        self.filters, self.kernels, self.strides = ([int(v) for v in x] for x in (self.filters, self.kernels, self.strides))


@dataclass
class DuinConfig(ModelConfig):
    """Hyper-parameters of one Du-IN stage (:class:`DuinModel`; config.json of its releases).

    Args:
        stage: ``vqvae`` (1: codebook tokenizer), ``mae`` (2: masked code prediction) or
            ``classify`` (3: word classifier).
        subjects: channel count per subject id (from the datamodule when omitted).
        encoder: :class:`DuinEncoderConfig`.
        n_codes, code_dim, vq_decay, commitment: the stage-1 codebook [2048 x 64, EMA 0.99].
        decoder_blocks: Transformer blocks of the stage-1 decoder.
        n_classes: words of the stage-3 classifier (from the datamodule when omitted).
        head_dropout: dropout before the stage-3 linear head.
    """

    model_type = "duin"

    stage: Stage = "classify"
    subjects: dict[str, int] | None = None
    encoder: DuinEncoderConfig = field(default_factory=DuinEncoderConfig)
    n_codes: int = 2048
    code_dim: int = 64
    vq_decay: float = 0.99
    commitment: float = 0.25
    decoder_blocks: int = 4
    n_classes: int | None = None
    head_dropout: float = 0.5

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"net.stage={self.stage!r}; fix: one of {list(STAGES)}")
        if isinstance(self.encoder, dict):
            self.encoder = DuinEncoderConfig(**self.encoder)
        if self.subjects is not None:
            self.subjects = {str(s): int(n) for s, n in self.subjects.items()}

    def missing(self) -> list[str]:
        out = [] if self.subjects else ["subjects"]
        if not self.encoder.n_times:
            out.append("encoder.n_times")
        if self.stage == "classify" and not self.n_classes:
            out.append("n_classes")
        return out

    @classmethod
    def examples(cls) -> list["DuinConfig"]:
        enc = dict(n_times=40, patch_len=10, d_subject=4, filters=[8, 8, 4], kernels=[3, 3, 3], strides=[2, 1, 1],
                   d_model=20, n_blocks=1, n_heads=2)
        subjects = {"sub-01": 3, "sub-02": 5}
        return [cls(stage=stage, subjects=subjects, encoder=DuinEncoderConfig(**enc), n_codes=16, code_dim=8,
                    decoder_blocks=1, n_classes=4) for stage in STAGES]

    def example_input(self, batch_size: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return {s: torch.randn(batch_size, n, int(self.encoder.n_times), generator=g)
                for s, n in (self.subjects or {}).items()}

    def card(self) -> ModelCard:
        subjects = ", ".join(f"{s} ({n} channels)" for s, n in (self.subjects or {}).items())
        first = next(iter(self.subjects or {"sub-01": 0}))
        e = self.encoder
        return ModelCard(
            title=f"litbrain Du-IN sEEG model (stage: {self.stage})",
            summary=(
                "Du-IN on stereo-EEG epochs: a subject layer per montage, region-level temporal patch tokens\n"
                "(conv tokenizer) and a Transformer encoder, with this stage's head (vqvae = codebook tokenizer,\n"
                f"mae = masked code prediction, classify = {self.n_classes}-way word classifier).\n\n"
                f"- Subjects: {subjects}\n"
                f"- Epoch: {e.n_times} samples in patches of {e.patch_len}; d_model {e.d_model}, {e.n_blocks} blocks\n\n"
                "Inputs must be prepared with `litbrain seeg prepare` (bipolar, filtered, region-selected,\n"
                "z-scored) like the training data."
            ),
            tags=["brain-decoding", "seeg", "du-in"],
            usage=f'logits = model({{"{first}": epochs}})  # epochs: (batch, channels, samples) float tensor',
        )


class DuinEncoder(nn.Module):
    """Subject layer -> patch tokenizer -> (mask) -> positions -> Transformer -> LayerNorm."""

    def __init__(self, subjects: dict[str, int], config: DuinEncoderConfig) -> None:
        super().__init__()
        c = config
        if not c.n_times:
            raise ConfigError("DuinEncoder needs encoder.n_times; fix: set it or train with a datamodule that provides it")
        self.n_patches = c.n_times // c.patch_len
        if self.n_patches < 1:
            raise ConfigError(f"DuinEncoder: n_times={c.n_times} < patch_len={c.patch_len}; fix: longer epochs or shorter patches")
        self.patch_len = c.patch_len
        self.subject_layer = SubjectAdapter(dict(subjects), c.d_subject, kind="linear")
        self.tokenizer = PatchTokenizer(c.d_subject, c.patch_len, c.filters, c.kernels, c.strides, c.d_model)
        self.pos = nn.Parameter(torch.zeros(1, self.n_patches, c.d_model))
        nn.init.trunc_normal_(self.pos, std=0.02)
        self.mask_token = nn.Parameter(torch.zeros(c.d_model))
        self.blocks = _transformer(c.d_model, c.n_heads, c.d_ff, c.dropout, c.n_blocks)
        self.norm = nn.LayerNorm(c.d_model)

    def subject_signals(self, brain: dict[str, torch.Tensor]) -> torch.Tensor:
        """``{s: (b_s, C_s, T)}`` -> (B, T, d_subject), groups concatenated in dict order."""
        check_subject_batch(brain, 3, "(batch, channels, samples)", self.subject_layer.in_features, "DuinModel")
        return torch.cat([self.subject_layer(x.transpose(1, 2), s) for s, x in brain.items()], 0)

    def tokens(self, brain: dict[str, torch.Tensor]) -> torch.Tensor:
        """Patch tokens before the Transformer, (B, P, d_model)."""
        return self.tokenizer(self.subject_signals(brain))

    def forward(self, brain: dict[str, torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
        """Contextual tokens (B, P, d_model); ``mask`` (B, P) bool replaces those patches by the mask token."""
        h = self.tokens(brain)
        if mask is not None:
            h = torch.where(mask[..., None], self.mask_token.to(h.dtype), h)
        return self.norm(self.blocks(h + self.pos))


class DuinModel(nn.Module):
    """One Du-IN stage (``config.stage``): the encoder plus that stage's head.

    ``DuinModel(config)`` or ``DuinModel(stage=..., subjects=..., encoder={...}, ...)``.
    """

    config_class = DuinConfig

    def __init__(self, config: DuinConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        config = DuinConfig.complete(config, kwargs, "DuinModel")
        self.config = config
        self.stage = config.stage
        e = config.encoder
        self.encoder = DuinEncoder(dict(config.subjects), e)
        p = self.encoder.n_patches
        if self.stage == "vqvae":
            self.to_code = nn.Linear(e.d_model, config.code_dim)
            self.vq = VectorQuantizer(config.n_codes, config.code_dim, decay=config.vq_decay, commitment=config.commitment)
            self.from_code = nn.Linear(config.code_dim, e.d_model)
            self.dec_pos = nn.Parameter(torch.zeros(1, p, e.d_model))
            nn.init.trunc_normal_(self.dec_pos, std=0.02)
            self.decoder = _transformer(e.d_model, e.n_heads, e.d_ff, e.dropout, config.decoder_blocks)
            self.dec_norm = nn.LayerNorm(e.d_model)
            self.to_signal = nn.Linear(e.d_model, e.patch_len * e.d_subject)
            # Back from the d_subject virtual channels to each subject's own channels.
            self.readout = SubjectAdapter(dict(config.subjects), e.d_subject, kind="linear", readout=True)
        elif self.stage == "mae":
            self.code_head = nn.Linear(e.d_model, config.n_codes)
        else:
            if not config.n_classes or config.n_classes < 2:
                raise ConfigError(f"DuinModel stage='classify' needs n_classes >= 2 (got {config.n_classes})")
            self.head = nn.Sequential(nn.Flatten(1), nn.Dropout(config.head_dropout), nn.Linear(p * e.d_model, config.n_classes))

    @property
    def subjects(self) -> dict[str, int]:
        return dict(self.encoder.subject_layer.in_features)

    def add_subject(self, subject: str, n_channels: int) -> None:
        """A fresh subject layer (and readout) for a new montage; the rest is shared; the config follows."""
        self.encoder.subject_layer.add_subject(subject, n_channels)
        if self.stage == "vqvae":
            self.readout.add_subject(subject, n_channels)
        self.config = self.config.replace(subjects=self.subjects)

    # ------------------------------------------------------------------ stage 1
    def quantize(self, brain: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(quantised codes (B, P, code_dim) straight-through, indices (B, P), commitment loss)."""
        return self.vq(self.to_code(self.encoder(brain)))

    @torch.no_grad()
    def code_indices(self, brain: dict[str, torch.Tensor]) -> torch.Tensor:
        """Stage-2 targets: the code index of every patch (B, P); does not touch usage counters."""
        return self.vq.indices(self.to_code(self.encoder(brain)))

    def reconstruct(self, brain: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.Tensor]:
        """Stage 1 forward: ({s: (b_s, C_s, P*patch_len)} reconstruction, indices, commitment loss)."""
        q, idx, commit = self.quantize(brain)
        h = self.dec_norm(self.decoder(self.from_code(q) + self.dec_pos))
        b, p, _ = h.shape
        sig = self.to_signal(h).reshape(b, p * self.encoder.patch_len, -1)  # (B, T', d_subject)
        out, start = {}, 0
        for s, x in brain.items():
            out[s] = self.readout(sig[start:start + x.shape[0]], s).transpose(1, 2)
            start += x.shape[0]
        return out, idx, commit

    def reconstruction_loss(self, brain: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(MSE on the raw epochs, commitment loss, indices)."""
        recon, idx, commit = self.reconstruct(brain)
        t = self.encoder.n_patches * self.encoder.patch_len
        mse = torch.stack([F.mse_loss(recon[s], x[..., :t], reduction="sum") for s, x in brain.items()]).sum()
        n = sum(x[..., :t].numel() for x in brain.values())
        return mse / n, commit, idx

    # ------------------------------------------------------------------ stages 2 and 3
    def code_logits(self, brain: dict[str, torch.Tensor], mask: torch.Tensor) -> torch.Tensor:
        """Stage 2: logits over the codebook for every patch (B, P, n_codes), masked patches hidden."""
        return self.code_head(self.encoder(brain, mask))

    def forward(self, brain: dict[str, torch.Tensor]) -> torch.Tensor:
        """Stage 3: word logits (B, n_classes); other stages: the encoder's tokens (B, P, d_model)."""
        h = self.encoder(brain)
        return self.head(h) if self.stage == "classify" else h
