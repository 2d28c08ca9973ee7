"""The cross-subject fMRI decoder as a plain module: adapters -> shared backbone -> heads."""

from __future__ import annotations

import torch
from huggingface_hub import PyTorchModelHubMixin
from torch import nn

from litbrain.nn.backbone import ContrastiveProjector, EmbeddingHead, ResidualMLPBackbone
from litbrain.nn.subject_adapter import AdapterKind, SubjectAdapter


class BrainDecoder(
    nn.Module,
    PyTorchModelHubMixin,
    library_name="litbrain",
    tags=["brain-decoding", "fmri", "litbrain"],
    license="apache-2.0",
):
    """Maps each subject's voxels to image (and text) embedding space.

    The constructor's arguments are the model's whole config: ``save_pretrained`` writes them
    to config.json beside model.safetensors and ``from_pretrained`` rebuilds the same module.
    """

    def __init__(
        self,
        subjects: dict[str, int],
        image_embedding_shape: list[int] | tuple[int, ...],
        text_embedding_dim: int | None = None,
        width: int = 4096,
        n_blocks: int = 4,
        adapter: AdapterKind = "linear",
        adapter_dropout: float = 0.5,
        dropout: float = 0.15,
        projector: bool = True,
    ) -> None:
        super().__init__()
        self.image_embedding_shape = tuple(int(s) for s in image_embedding_shape)
        self.adapter = SubjectAdapter(dict(subjects), width, kind=adapter, dropout=adapter_dropout)
        self.backbone = ResidualMLPBackbone(width, n_blocks=n_blocks, dropout=dropout)
        self.image_head = EmbeddingHead(width, self.image_embedding_shape)
        self.projector = ContrastiveProjector(self.image_embedding_shape[-1]) if projector else None
        self.text_head = nn.Linear(width, text_embedding_dim) if text_embedding_dim else None

    @property
    def subjects(self) -> dict[str, int]:
        return dict(self.adapter.in_features)

    def forward(self, brain: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """``brain``: ``{subject: (b_s, n_voxels_s)}``; outputs are concatenated in dict order.

        Returns ``image_embedding`` (B, *shape) for regression/retrieval, ``image_projection``
        (the projector's output, for the contrastive loss) and ``text_embedding`` when present.
        """
        h = self.backbone(self.adapter.forward_groups(brain))
        image = self.image_head(h)
        out = {"image_embedding": image}
        out["image_projection"] = self.projector(image) if self.projector is not None else image
        if self.text_head is not None:
            out["text_embedding"] = self.text_head(h)
        return out
