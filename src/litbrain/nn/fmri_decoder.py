"""The cross-subject fMRI decoder (See Through Their Minds / MindEye2): adapters -> shared backbone -> heads."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import math
from typing import Literal

import torch
from torch import nn

from litbrain.errors import ConfigError
from litbrain.nn.blocks import ContrastiveProjector, EmbeddingHead, ResidualMLPBackbone
from litbrain.nn.registry import ModelCard, ModelConfig
from litbrain.nn.subject_adapter import SubjectAdapter, check_subject_batch

__all__ = ["BrainDecoder", "BrainDecoderConfig"]


@dataclass
class BrainDecoderConfig(ModelConfig):
    """Hyper-parameters of :class:`BrainDecoder` (config.json of its releases).

    Args:
        subjects: voxel count per subject id (from the datamodule when omitted).
        image_embedding_shape: target shape, ``[D]`` pooled or ``[T, D]`` tokens (from the datamodule when omitted).
        text_embedding_dim: width of the caption-embedding head (None: no text head; from the datamodule).
        width: shared width after the adapters (MindEye2/STTM: 4096).
        n_blocks: residual MLP blocks of the shared backbone (4).
        adapter: ``linear`` (MindEye2's ridge-style adapter), ``sttm`` (STTM's shallow block) or ``ridge``:
            a per-subject linear map straight to the target (closed-form ridge, fitted and frozen by
            :class:`~litbrain.tasks.FmriDecodingTask` before training) whose output is both the input of
            a shared ``Linear -> backbone -> head`` and a skip added to the head's output; the head (and
            the projector's last layer) start at zero, so the untrained decoder is the ridge decoder.
        adapter_dropout: dropout inside ``sttm`` adapters (0.5).
        dropout: backbone dropout (0.15).
        projector: MindEye2's 3-layer projector for the contrastive loss (off: the head output is used).
    """

    model_type = "fmri_decoder"

    subjects: dict[str, int] | None = None
    image_embedding_shape: list[int] | None = None
    text_embedding_dim: int | None = None
    width: int = 4096
    n_blocks: int = 4
    adapter: Literal["linear", "sttm", "ridge"] = "linear"
    adapter_dropout: float = 0.5
    dropout: float = 0.15
    projector: bool = True

    def __post_init__(self) -> None:
        if self.subjects is not None:
            self.subjects = {str(s): int(n) for s, n in self.subjects.items()}
        if self.image_embedding_shape is not None:
            self.image_embedding_shape = [int(s) for s in self.image_embedding_shape]
        if self.adapter not in ("linear", "sttm", "ridge"):
            raise ConfigError(f"net.adapter={self.adapter!r}; fix: 'linear' (MindEye2), 'sttm' (STTM) or 'ridge'")
        if self.width < 1 or self.n_blocks < 0:
            raise ConfigError(f"net.width={self.width}, net.n_blocks={self.n_blocks}; fix: width >= 1, n_blocks >= 0")

    def missing(self) -> list[str]:
        return [k for k in ("subjects", "image_embedding_shape") if not getattr(self, k)]

    @classmethod
    def examples(cls) -> list["BrainDecoderConfig"]:
        return [
            cls(subjects={"sub-01": 12, "sub-02": 9}, image_embedding_shape=[6], text_embedding_dim=4, width=16, n_blocks=2),
            cls(subjects={"sub-01": 7}, image_embedding_shape=[3, 5], width=8, n_blocks=1, adapter="sttm", projector=False),
            cls(subjects={"sub-01": 7, "sub-02": 5}, image_embedding_shape=[6], width=8, n_blocks=1, adapter="ridge"),
        ]

    def example_input(self, batch_size: int = 2, seed: int = 0) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(seed)
        return {s: torch.randn(batch_size, n, generator=g) for s, n in (self.subjects or {}).items()}

    def card(self) -> ModelCard:
        subjects = ", ".join(f"{s} ({n} voxels)" for s, n in (self.subjects or {}).items())
        first = next(iter(self.subjects or {"sub-01": 0}))
        return ModelCard(
            title="litbrain cross-subject fMRI decoder",
            summary=(
                "Maps fMRI voxel patterns of the subjects below to image-embedding space (and text space when\n"
                "trained with captions), with one adapter per subject and a shared residual-MLP backbone\n"
                "(See Through Their Minds / MindEye2 recipe).\n\n"
                f"- Subjects: {subjects}\n"
                f"- Target shape: {self.image_embedding_shape}; width {self.width}, {self.n_blocks} blocks, "
                f"{self.adapter} adapters\n\n"
                "Inputs must be prepared with `litbrain fmri prepare` (ROI-masked, z-scored per session) using\n"
                "the same ROI masks as in training."
            ),
            tags=["brain-decoding", "fmri"],
            usage=(
                f'out = model({{"{first}": voxels}})  # voxels: (batch, n_voxels) float tensor, z-scored betas\n'
                'out["image_projection"]              # retrieval embedding; also image_embedding, text_embedding\n'
                "model.subjects                       # {subject: voxel count}; several subjects' rows come back\n"
                "                                     # concatenated in the order of the dict you pass"
            ),
        )


class BrainDecoder(nn.Module):
    """Maps each subject's voxels to image (and text) embedding space.

    ``BrainDecoder(config)`` or ``BrainDecoder(subjects=..., image_embedding_shape=..., ...)``.
    """

    config_class = BrainDecoderConfig

    def __init__(self, config: BrainDecoderConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        config = BrainDecoderConfig.complete(config, kwargs, "BrainDecoder")
        self.config = config
        self.image_embedding_shape = tuple(config.image_embedding_shape)
        self.ridge = config.adapter == "ridge"
        target = math.prod(self.image_embedding_shape)
        self.adapter = SubjectAdapter(dict(config.subjects), target if self.ridge else config.width,
                                      kind="linear" if self.ridge else config.adapter, dropout=config.adapter_dropout)
        # ridge: the adapters' outputs (ridge predictions of the target) enter the shared width through one Linear
        self.stem = nn.Linear(target, config.width) if self.ridge else None
        self.backbone = ResidualMLPBackbone(config.width, n_blocks=config.n_blocks, dropout=config.dropout)
        self.image_head = EmbeddingHead(config.width, self.image_embedding_shape)
        self.projector = ContrastiveProjector(self.image_embedding_shape[-1]) if config.projector else None
        self.text_head = nn.Linear(config.width, config.text_embedding_dim) if config.text_embedding_dim else None
        if self.ridge:  # start at the ridge decoder: no residual yet
            nn.init.zeros_(self.image_head.linear.weight)
            nn.init.zeros_(self.image_head.linear.bias)
            if self.projector is not None:
                nn.init.zeros_(self.projector.net[-1].weight)
                nn.init.zeros_(self.projector.net[-1].bias)

    @property
    def subjects(self) -> dict[str, int]:
        return dict(self.adapter.in_features)

    def add_subject(self, subject: str, n_voxels: int) -> None:
        """A fresh adapter for a new subject (the rest is shared); the config follows."""
        self.adapter.add_subject(subject, n_voxels)
        self.config = self.config.replace(subjects=self.subjects)

    def forward(self, brain: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``brain``: ``{subject: (b_s, n_voxels_s)}``; outputs are concatenated in dict order.

        Returns ``image_embedding`` (B, *shape) for regression/retrieval, ``image_projection``
        (the projector's output, for the contrastive loss) and ``text_embedding`` when present.
        """
        check_subject_batch(brain, 2, "(batch, n_voxels)", self.adapter.in_features, type(self).__name__)
        return self.decode(self.adapter.forward_groups(brain))

    def decode(self, a: torch.Tensor) -> dict[str, torch.Tensor]:
        """The outputs of :meth:`forward` from the adapters' outputs ``a`` (B, width or target size)."""
        skip = a.view(a.shape[0], *self.image_embedding_shape) if self.ridge else None
        return self.heads(self.backbone(self.stem(a) if self.ridge else a), skip)

    def features(self, brain: dict[str, torch.Tensor]) -> torch.Tensor:
        """The shared backbone's output ``(B, width)`` (adapters -> residual MLP), rows in dict order."""
        check_subject_batch(brain, 2, "(batch, n_voxels)", self.adapter.in_features, type(self).__name__)
        a = self.adapter.forward_groups(brain)
        return self.backbone(self.stem(a) if self.ridge else a)

    def heads(self, h: torch.Tensor, skip: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """The retrieval heads on backbone features ``h`` (see :meth:`forward`); ``skip`` (the ridge
        adapters' prediction) is added to the image head's output and to the projection."""
        image = self.image_head(h)
        if skip is not None:
            image = image + skip
        out = {"image_embedding": image}
        out["image_projection"] = image if self.projector is None else (
            self.projector(image) + (skip if skip is not None else 0))
        if self.text_head is not None:
            out["text_embedding"] = self.text_head(h)
        return out
