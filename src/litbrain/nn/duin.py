"""Du-IN (sEEG speech decoding): subject layer, region-level patch tokens, Transformer, VQ-VAE.

Input per subject: z-scored epochs ``(b, C_s, T)`` of the channels selected in the speech
regions (vSMC, STG). Pipeline (Du-IN's defaults in brackets):

1. subject layer: the shared :class:`~litbrain.nn.SubjectAdapter` maps each subject's ``C_s``
   channels to ``d_subject`` [16] virtual channels, so the rest never sees the montage;
2. spatial fusion + temporal tokens: the epoch is cut into patches of ``patch_len`` samples
   [100 = 100 ms at 1 kHz]; a conv stack over time [filters 128, 128, 16; kernels 19, 3, 3;
   strides 10, 1, 1] mixes all ``d_subject`` channels of the region and flattens each patch
   into one region-level token of ``d_model`` [160 = 16 filters x 10 steps];
3. a Transformer encoder over the patches [8 blocks, 8 heads, d_ff = 2 * d_model].

Two sets of choices are selectable by config keys (``"authors"`` = what liulab-repository/Du-IN's
code does, ``"litbrain"`` = litbrain's own variant, kept because older runs and releases use it and it
trains well on small CPU demos; the dataclass defaults stay ``"litbrain"`` so old configs load as
they were saved):

================  ===========================================  ==========================================
key               ``"authors"`` (Du-IN's code)                 ``"litbrain"``
================  ===========================================  ==========================================
``block``         post-norm, 8 heads x d_head 64 (inner 512)   pre-norm ``nn.TransformerEncoderLayer``
                  with LayerNorm on q and k, ReLU FFN, dropout  (heads of d_model / n_heads), GELU, final
                  on attention weights and FFN hidden,          LayerNorm, PyTorch default init
                  trunc-normal(0.02) init, block l's linears
                  scaled by 1/sqrt(2(l+1)); no final norm
``tokenizer``     conv + BatchNorm, no nonlinearity; a patch    conv + GroupNorm(4) + GELU; flattened
                  is flattened time-major (steps x filters)     filter-major
``positions``     fixed sin-cos, one table before encoder and   learned, a separate decoder table
                  decoder
``vq``            tanh-MLP into the code space, cosine match,   linear projections; EMA of sums and
                  EMA of each code's normalised batch mean      counts with Laplace smoothing, dead-code
                  (zero-count codes unchanged), k-means init    restarts, k-means++ init (Euclidean on
                  from random samples with cosine distance,     normalised vectors)
                  LayerNorm + linear out of the code space
``decoder_head``  ``deconv``: transposed convs over tokens      ``linear``: one linear per token to its
                  back to samples (Du-IN's TimeRGSHead)         patch's samples
``masking``       two complementary masks per batch, every      one mask, loss on the masked patches
                  token gets a code loss once
``head``          ``mlp``: Flatten -> Linear(P*d, 128) -> ReLU  ``linear``: Flatten -> Dropout -> Linear
                  -> Linear(128, n_classes)                     (with label smoothing in the task)
================  ===========================================  ==========================================

Not copied from the authors' code (defects): their stage 3 puts a sigmoid before the
cross-entropy (the true class' probability is capped, the loss cannot fall below ~3.14), their
softmax does not subtract the maximum (``F.scaled_dot_product_attention`` here), and their stage 3
builds and updates a VQ codebook and a weight-0 contrastive loss that nothing reads (absent here).

Stages, one :class:`DuinModel` per stage (``stage`` is part of the config):
``"vqvae"`` (1) quantises each token (codebook 2048 x 64) and reconstructs the raw epoch
through a small Transformer decoder and a per-subject readout; ``"mae"`` (2) masks half the
patches and predicts the stage-1 code of each masked patch; ``"classify"`` (3) flattens the
tokens into a word classifier (61 words).
"""

from __future__ import annotations

import math
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


Block = Literal["authors", "litbrain"]
BLOCKS: tuple[str, ...] = ("authors", "litbrain")


class QKNormAttention(nn.Module):
    """Du-IN's attention: ``n_heads`` heads of ``d_head`` (inner width ``n_heads * d_head``, not
    ``d_model``), a LayerNorm over each head's q and k (shared by the heads), dropout on the attention
    weights. The softmax is PyTorch's (max-subtracted; the authors' is not)."""

    def __init__(self, d_model: int, n_heads: int, d_head: int, dropout: float) -> None:
        super().__init__()
        self.n_heads, self.d_head, self.dropout = n_heads, d_head, dropout
        inner = n_heads * d_head
        self.q, self.k, self.v = nn.Linear(d_model, inner), nn.Linear(d_model, inner), nn.Linear(d_model, inner)
        self.norm_q, self.norm_k = nn.LayerNorm(d_head), nn.LayerNorm(d_head)
        self.proj = nn.Linear(inner, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, p, _ = x.shape
        heads = lambda t: t.reshape(b, p, self.n_heads, self.d_head).transpose(1, 2)  # noqa: E731
        q, k, v = self.norm_q(heads(self.q(x))), self.norm_k(heads(self.k(x))), heads(self.v(x))
        h = F.scaled_dot_product_attention(q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.proj(h.transpose(1, 2).reshape(b, p, -1))


class PostNormBlock(nn.Module):
    """Du-IN's Transformer block: ``x = LN(x + attn(x)); x = LN(x + W2 drop(relu(W1 x)))``."""

    def __init__(self, d_model: int, n_heads: int, d_head: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.attn = QKNormAttention(d_model, n_heads, d_head, dropout)
        self.norm_attn = nn.LayerNorm(d_model)
        self.ff1, self.ff_drop, self.ff2 = nn.Linear(d_model, d_ff), nn.Dropout(dropout), nn.Linear(d_ff, d_model)
        self.norm_ff = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm_attn(x + self.attn(x))
        return self.norm_ff(x + self.ff2(self.ff_drop(F.relu(self.ff1(x)))))


class PostNormStack(nn.Module):
    """``n_blocks`` :class:`PostNormBlock`; Du-IN's init: every linear weight trunc-normal(0.02), biases 0,
    then block ``l``'s (0-based) linear weights divided by ``sqrt(2 (l + 1))``."""

    def __init__(self, d_model: int, n_heads: int, d_head: int, d_ff: int, dropout: float, n_blocks: int) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(PostNormBlock(d_model, n_heads, d_head, d_ff, dropout) for _ in range(n_blocks))
        with torch.no_grad():
            for l, block in enumerate(self.blocks):
                for m in block.modules():
                    if isinstance(m, nn.Linear):
                        nn.init.trunc_normal_(m.weight, std=0.02)
                        m.weight.div_(math.sqrt(2.0 * (l + 1)))
                        nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def _transformer(c: "DuinEncoderConfig", n_blocks: int) -> nn.Module:
    """The encoder's (or decoder's) Transformer of ``c.block`` kind (d_ff = 2 * d_model unless set)."""
    d_ff = c.d_ff or 2 * c.d_model
    if c.block == "authors":
        return PostNormStack(c.d_model, c.n_heads, c.d_head, d_ff, c.dropout, n_blocks)
    layer = nn.TransformerEncoderLayer(c.d_model, c.n_heads, d_ff, c.dropout, activation="gelu",
                                       batch_first=True, norm_first=True)
    return nn.TransformerEncoder(layer, n_blocks, enable_nested_tensor=False)


def sincos_positions(n: int, d: int) -> torch.Tensor:
    """Du-IN's fixed positions (n, d): even dims sin(i w_j), odd dims cos(i w_j), w_j = 10000^(-2j/d)."""
    if d % 2:
        raise ConfigError(f"positions='sincos' needs an even d_model (got {d}); fix: an even d_model or positions 'learned'")
    i = torch.arange(n, dtype=torch.float32)[:, None]
    w = torch.exp(torch.arange(0, d, 2, dtype=torch.float32) * -(math.log(1e4) / d))
    pe = torch.zeros(n, d)
    pe[:, 0::2], pe[:, 1::2] = torch.sin(i * w), torch.cos(i * w)
    return pe


class DeconvHead(nn.Module):
    """Du-IN's stage-1 regression head (TimeRGSHead): transposed convs over the token axis
    (``d_model`` channels, no nonlinearity between them, as in the authors' code) up to one step per
    sample, then a linear to the ``d_subject`` virtual channels. ``(B, P, d_model) -> (B, P * prod(strides), out)``."""

    def __init__(self, n_tokens: int, d_model: int, filters: Sequence[int], kernels: Sequence[int],
                 strides: Sequence[int], out: int) -> None:
        super().__init__()
        if not (len(filters) == len(kernels) == len(strides)) or not filters:
            raise ConfigError(f"DuinConfig deconv_filters {list(filters)}, deconv_kernels {list(kernels)}, deconv_strides "
                              f"{list(strides)} must have the same (non-zero) length; fix: e.g. [128,128,128,128,16], "
                              f"[3,3,10,9,19], [1,1,10,1,10]")
        layers: list[nn.Module] = []
        c, length = d_model, n_tokens
        for f, k, s in zip(filters, kernels, strides):
            length *= s
            # The authors' padding rule: the conv that maps length * s samples back to ``length``.
            diff = (length - 1) * s + k - length * s
            pad = int(math.ceil(diff / 2))
            layers.append(nn.ConvTranspose1d(c, f, k, stride=s, padding=pad, output_padding=2 * pad - diff))
            c = f
        self.deconvs = nn.Sequential(*layers)
        self.out = nn.Linear(c, out)
        nn.init.trunc_normal_(self.out.weight, std=0.02)
        nn.init.zeros_(self.out.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.out(self.deconvs(h.transpose(1, 2)).transpose(1, 2))


class PatchTokenizer(nn.Module):
    """Du-IN's temporal conv tokenizer: each patch (``patch_len`` x ``in_channels``) -> one token.

    The conv stack runs over the time axis of every patch independently (patches do not see
    each other here; the Transformer mixes them). ``norm="batch"`` is the authors': BatchNorm after
    each conv, no nonlinearity, each patch flattened time-major (steps x filters);
    ``norm="group"`` is litbrain's: GroupNorm(4) + GELU after each conv, flattened filter-major.
    """

    def __init__(
        self,
        in_channels: int = 16,
        patch_len: int = 100,
        filters: Sequence[int] = (128, 128, 16),
        kernels: Sequence[int] = (19, 3, 3),
        strides: Sequence[int] = (10, 1, 1),
        d_model: int = 160,
        norm: Literal["batch", "group"] = "group",
    ) -> None:
        super().__init__()
        if norm not in ("batch", "group"):
            raise ConfigError(f"PatchTokenizer norm={norm!r}; fix: 'batch' (Du-IN's authors) or 'group' (litbrain)")
        if not (len(filters) == len(kernels) == len(strides)) or not filters:
            raise ConfigError(
                f"PatchTokenizer: filters {list(filters)}, kernels {list(kernels)} and strides {list(strides)} "
                f"must have the same (non-zero) length; fix: e.g. filters [128,128,16], kernels [19,3,3], strides [10,1,1]"
            )
        layers: list[nn.Module] = []
        c = in_channels
        steps = patch_len
        for f, k, s in zip(filters, kernels, strides):
            conv = nn.Conv1d(c, f, k, stride=s, padding=k // 2)
            layers += [conv, nn.BatchNorm1d(f)] if norm == "batch" else [conv, nn.GroupNorm(min(4, f), f), nn.GELU()]
            c = f
            steps = (steps + 2 * (k // 2) - k) // s + 1
        if steps < 1:
            raise ConfigError(f"PatchTokenizer: patch_len={patch_len} is too short for strides {list(strides)}")
        self.convs = nn.Sequential(*layers)
        self.patch_len = patch_len
        self.time_major = norm == "batch"
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
        h = self.convs(patches.reshape(b * p, c, self.patch_len))  # (b*p, filters, steps)
        if self.time_major:
            h = h.transpose(1, 2)
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
        d_model, n_blocks, n_heads, d_ff, dropout: the Transformer [160, 8, 8, 2 * d_model; the
            authors' dropout is 0.2, on attention weights and the FFN hidden layer].
        block: ``"authors"`` (Du-IN's post-norm block with QK-norm, heads of ``d_head`` [64], ReLU,
            trunc-normal depth-scaled init) or ``"litbrain"`` (pre-norm GELU ``nn.TransformerEncoderLayer``
            with heads of ``d_model / n_heads`` and a final LayerNorm).
        d_head: width of each attention head, ``block="authors"`` only [64].
        tokenizer: ``"authors"`` (conv + BatchNorm, no nonlinearity) or ``"litbrain"`` (conv + GroupNorm + GELU).
        positions: ``"sincos"`` (the authors' fixed table) or ``"learned"`` (litbrain's).
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
    block: Block = "litbrain"
    d_head: int = 64
    tokenizer: Block = "litbrain"
    positions: Literal["sincos", "learned"] = "learned"

    def __post_init__(self) -> None:
        for key, value, allowed in (("block", self.block, BLOCKS), ("tokenizer", self.tokenizer, BLOCKS),
                                    ("positions", self.positions, ("sincos", "learned"))):
            if value not in allowed:
                raise ConfigError(f"net.encoder.{key}={value!r}; fix: one of {list(allowed)}")
        self.filters, self.kernels, self.strides = ([int(v) for v in x] for x in (self.filters, self.kernels, self.strides))


@dataclass
class DuinConfig(ModelConfig):
    """Hyper-parameters of one Du-IN stage (:class:`DuinModel`; config.json of its releases).

    Args:
        stage: ``vqvae`` (1: codebook tokenizer), ``mae`` (2: masked code prediction) or
            ``classify`` (3: word classifier).
        subjects: channel count per subject id (from the datamodule when omitted).
        encoder: :class:`DuinEncoderConfig`.
        n_codes, code_dim, vq_decay, commitment: the stage-1 codebook [2048 x 64, EMA 0.99,
            commitment 1.0 in the authors' code; litbrain's demo used 0.25].
        vq: ``"authors"`` (tanh-MLP into the code space, normalised-mean EMA, zero-count codes kept,
            cosine k-means from random samples, LayerNorm + linear out) or ``"litbrain"`` (linear
            projections, Laplace-smoothed EMA, dead-code restarts, k-means++).
        vq_init_after: training steps the stage-1 quantiser is bypassed before its k-means init
            [0 = the authors': init on the first batch]; see :class:`~litbrain.nn.VectorQuantizer`.
        decoder_blocks: Transformer blocks of the stage-1 decoder [4].
        decoder_head: ``"deconv"`` (the authors' transposed-conv head, ``deconv_filters/kernels/strides``
            [128,128,128,128,16 / 3,3,10,9,19 / 1,1,10,1,10]; the strides must multiply to ``patch_len``)
            or ``"linear"`` (litbrain's: one linear per token to its patch).
        masking: stage 2: ``"complementary"`` (the authors': each batch is encoded twice, with a mask and
            with its complement, so every patch gets a code loss once) or ``"single"`` (litbrain's: one
            mask, loss on the masked patches).
        n_classes: words of the stage-3 classifier (from the datamodule when omitted).
        head: stage 3: ``"mlp"`` (the authors': Flatten -> Linear(P * d_model, head_hidden) -> ReLU ->
            Linear(head_hidden, n_classes); logits, no sigmoid) or ``"linear"`` (litbrain's).
        head_hidden: hidden width of the ``mlp`` head [128].
        head_dropout: dropout before the head's last linear [authors: 0; litbrain: 0.5].
    """

    model_type = "duin"

    stage: Stage = "classify"
    subjects: dict[str, int] | None = None
    encoder: DuinEncoderConfig = field(default_factory=DuinEncoderConfig)
    n_codes: int = 2048
    code_dim: int = 64
    vq_decay: float = 0.99
    commitment: float = 0.25
    vq: Block = "litbrain"
    vq_init_after: int = 0
    decoder_blocks: int = 4
    decoder_head: Literal["deconv", "linear"] = "linear"
    deconv_filters: list[int] = field(default_factory=lambda: [128, 128, 128, 128, 16])
    deconv_kernels: list[int] = field(default_factory=lambda: [3, 3, 10, 9, 19])
    deconv_strides: list[int] = field(default_factory=lambda: [1, 1, 10, 1, 10])
    masking: Literal["complementary", "single"] = "single"
    n_classes: int | None = None
    head: Literal["mlp", "linear"] = "linear"
    head_hidden: int = 128
    head_dropout: float = 0.5

    def __post_init__(self) -> None:
        if self.stage not in STAGES:
            raise ConfigError(f"net.stage={self.stage!r}; fix: one of {list(STAGES)}")
        for key, value, allowed in (("vq", self.vq, BLOCKS), ("decoder_head", self.decoder_head, ("deconv", "linear")),
                                    ("masking", self.masking, ("complementary", "single")),
                                    ("head", self.head, ("mlp", "linear"))):
            if value not in allowed:
                raise ConfigError(f"net.{key}={value!r}; fix: one of {list(allowed)}")
        self.deconv_filters, self.deconv_kernels, self.deconv_strides = (
            [int(v) for v in x] for x in (self.deconv_filters, self.deconv_kernels, self.deconv_strides))
        if int(self.vq_init_after) < 0:
            raise ConfigError(f"net.vq_init_after={self.vq_init_after}; fix: 0 (k-means on the first batch, the authors') "
                              f"or a number of training steps")
        if isinstance(self.encoder, dict):
            self.encoder = DuinEncoderConfig(**self.encoder)
        if self.subjects is not None:
            self.subjects = {str(s): int(n) for s, n in self.subjects.items()}

    @classmethod
    def authors(cls, **overrides: Any) -> "DuinConfig":
        """Du-IN as its authors' code builds it (sizes at 1 kHz; ``encoder`` overrides merge into the preset)."""
        given = overrides.pop("encoder", None) or {}
        if isinstance(given, DuinEncoderConfig):  # a whole encoder config: take it as it is
            return cls(**dict(AUTHORS_MODEL, encoder=given, **overrides))
        enc = dict(AUTHORS_ENCODER, **given)
        return cls(**dict(AUTHORS_MODEL, encoder=DuinEncoderConfig(**enc), **overrides))

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


# The authors' preset (liulab-repository/Du-IN, params/duin_params.py, dataset seeg_he2023xuanwu); the
# demo configs (configs/seeg/*.yaml) set the same keys at CPU sizes.
AUTHORS_ENCODER: dict[str, Any] = dict(patch_len=100, d_subject=16, filters=[128, 128, 16], kernels=[19, 3, 3],
                                       strides=[10, 1, 1], d_model=160, n_blocks=8, n_heads=8, d_head=64, dropout=0.2,
                                       block="authors", tokenizer="authors", positions="sincos")
AUTHORS_MODEL: dict[str, Any] = dict(n_codes=2048, code_dim=64, vq_decay=0.99, commitment=1.0, vq="authors",
                                     decoder_blocks=4, decoder_head="deconv", masking="complementary",
                                     head="mlp", head_hidden=128, head_dropout=0.0)


class DuinEncoder(nn.Module):
    """Subject layer -> patch tokenizer -> (mask) -> positions -> Transformer (-> LayerNorm, litbrain's block).

    ``mask_token``: whether this encoder has the stage-2 mask embedding (only stage ``mae`` uses it;
    the authors' other stages have none, so their parameter counts match).
    """

    def __init__(self, subjects: dict[str, int], config: DuinEncoderConfig, mask_token: bool = True) -> None:
        super().__init__()
        c = config
        if not c.n_times:
            raise ConfigError("DuinEncoder needs encoder.n_times; fix: set it or train with a datamodule that provides it")
        self.n_patches = c.n_times // c.patch_len
        if self.n_patches < 1:
            raise ConfigError(f"DuinEncoder: n_times={c.n_times} < patch_len={c.patch_len}; fix: longer epochs or shorter patches")
        self.patch_len = c.patch_len
        self.subject_layer = SubjectAdapter(dict(subjects), c.d_subject, kind="linear")
        self.tokenizer = PatchTokenizer(c.d_subject, c.patch_len, c.filters, c.kernels, c.strides, c.d_model,
                                        norm="batch" if c.tokenizer == "authors" else "group")
        if c.positions == "sincos":
            self.register_buffer("pos", sincos_positions(self.n_patches, c.d_model)[None], persistent=False)
        else:
            self.pos = nn.Parameter(torch.zeros(1, self.n_patches, c.d_model))
            nn.init.trunc_normal_(self.pos, std=0.02)
        if mask_token:
            self.mask_token = nn.Parameter(torch.zeros(c.d_model))
            if c.block == "authors":
                nn.init.trunc_normal_(self.mask_token, std=0.02)  # the authors' mask embedding init
        else:
            self.mask_token = None
        self.blocks = _transformer(c, c.n_blocks)
        # Post-norm blocks end in a LayerNorm already (the authors' encoder has no final norm).
        self.norm = nn.Identity() if c.block == "authors" else nn.LayerNorm(c.d_model)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):  # noqa: ANN001
        # Checkpoints from before the mask token was stage-2 only carry it in every stage: drop it.
        if self.mask_token is None:
            state_dict.pop(prefix + "mask_token", None)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def subject_signals(self, brain: dict[str, torch.Tensor]) -> torch.Tensor:
        """``{s: (b_s, C_s, T)}`` -> (B, T, d_subject), groups concatenated in dict order."""
        check_subject_batch(brain, 3, "(batch, channels, samples)", self.subject_layer.in_features, "DuinModel")
        return torch.cat([self.subject_layer(x.transpose(1, 2), s) for s, x in brain.items()], 0)

    def tokens(self, brain: dict[str, torch.Tensor]) -> torch.Tensor:
        """Patch tokens before the Transformer, (B, P, d_model)."""
        return self.tokenizer(self.subject_signals(brain))

    def contextualize(self, h: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """Tokens (B, P, d_model) -> contextual tokens; ``mask`` (B, P) bool replaces those by the mask token."""
        if mask is not None:
            if self.mask_token is None:
                raise ConfigError("DuinEncoder: masking needs the mask token, which only stage 'mae' builds")
            h = torch.where(mask[..., None], self.mask_token.to(h.dtype), h)
        return self.norm(self.blocks(h + self.pos.to(h.dtype)))

    def forward(self, brain: dict[str, torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
        """Contextual tokens (B, P, d_model); ``mask`` (B, P) bool replaces those patches by the mask token."""
        return self.contextualize(self.tokens(brain), mask)


def _trunc_init(module: nn.Module) -> nn.Module:
    """The authors' init of their heads and projections: linear weights trunc-normal(0.02), biases 0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
    return module


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
        self.encoder = DuinEncoder(dict(config.subjects), e, mask_token=self.stage == "mae")
        p = self.encoder.n_patches
        if self.stage == "vqvae":
            if config.vq == "authors":
                # LaBraM's / Du-IN's quantiser: tanh-MLP in, cosine codebook, LayerNorm + linear out.
                self.to_code = _trunc_init(nn.Sequential(nn.Linear(e.d_model, e.d_model), nn.Tanh(),
                                                         nn.Linear(e.d_model, config.code_dim)))
                self.from_code = _trunc_init(nn.Sequential(nn.LayerNorm(config.code_dim), nn.Linear(config.code_dim, e.d_model)))
                self.vq = VectorQuantizer(config.n_codes, config.code_dim, decay=config.vq_decay,
                                          commitment=config.commitment, rule=config.vq, init_after=config.vq_init_after)
            else:
                # litbrain's order (to_code, vq, from_code): the same seed builds the same weights as before
                # the authors' preset existed, so earlier runs and figures reproduce.
                self.to_code = nn.Linear(e.d_model, config.code_dim)
                self.vq = VectorQuantizer(config.n_codes, config.code_dim, decay=config.vq_decay,
                                          commitment=config.commitment, rule=config.vq, init_after=config.vq_init_after)
                self.from_code = nn.Linear(config.code_dim, e.d_model)
            if e.positions == "learned":
                self.dec_pos = nn.Parameter(torch.zeros(1, p, e.d_model))
                nn.init.trunc_normal_(self.dec_pos, std=0.02)
            else:  # the authors reuse the encoder's fixed table
                self.register_buffer("dec_pos", sincos_positions(p, e.d_model)[None], persistent=False)
            self.decoder = _transformer(e, config.decoder_blocks)
            self.dec_norm = nn.Identity() if e.block == "authors" else nn.LayerNorm(e.d_model)
            if config.decoder_head == "deconv":
                if math.prod(config.deconv_strides) != e.patch_len:
                    raise ConfigError(f"net.deconv_strides {config.deconv_strides} multiply to {math.prod(config.deconv_strides)}"
                                      f", not patch_len {e.patch_len}; fix: strides whose product is patch_len, e.g. "
                                      f"[1,1,10,1,10] for 100")
                self.to_signal = DeconvHead(p, e.d_model, config.deconv_filters, config.deconv_kernels,
                                            config.deconv_strides, e.d_subject)
            else:
                self.to_signal = nn.Linear(e.d_model, e.patch_len * e.d_subject)
            # Back from the d_subject virtual channels to each subject's own channels.
            self.readout = SubjectAdapter(dict(config.subjects), e.d_subject, kind="linear", readout=True)
        elif self.stage == "mae":
            self.code_head = nn.Linear(e.d_model, config.n_codes)
            if e.block == "authors":
                _trunc_init(self.code_head)
        else:
            if not config.n_classes or config.n_classes < 2:
                raise ConfigError(f"DuinModel stage='classify' needs n_classes >= 2 (got {config.n_classes})")
            if config.head == "mlp":
                self.head = _trunc_init(nn.Sequential(nn.Flatten(1), nn.Linear(p * e.d_model, config.head_hidden), nn.ReLU(),
                                                      nn.Dropout(config.head_dropout), nn.Linear(config.head_hidden, config.n_classes)))
            else:
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

    def masked_code_logits(self, brain: dict[str, torch.Tensor], mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Stage 2 with ``config.masking``: (logits (B, P, n_codes), the patches that carry a loss (B, P)).

        ``"complementary"`` (the authors'): the tokens are encoded twice, with ``mask`` hidden and with its
        complement hidden; each patch's logits come from the pass in which it was hidden, so every
        patch is predicted once without being seen. ``"single"``: one pass, loss on ``mask`` only.
        """
        if self.config.masking == "single":
            return self.code_logits(brain, mask), mask
        h = self.encoder.tokens(brain)
        a = self.code_head(self.encoder.contextualize(h, mask))
        b = self.code_head(self.encoder.contextualize(h, ~mask))
        return torch.where(mask[..., None], a, b), torch.ones_like(mask)

    def forward(self, brain: dict[str, torch.Tensor]) -> torch.Tensor:
        """Stage 3: word logits (B, n_classes); other stages: the encoder's tokens (B, P, d_model)."""
        h = self.encoder(brain)
        return self.head(h) if self.stage == "classify" else h
