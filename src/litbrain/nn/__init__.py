"""Plain torch.nn building blocks; nothing here imports Lightning."""

from litbrain.nn.backbone import ContrastiveProjector, EmbeddingHead, ResidualMLPBackbone, ResidualMLPBlock
from litbrain.nn.brain_decoder import BrainDecoder
from litbrain.nn.subject_adapter import SubjectAdapter, freeze_all_but_adapters

__all__ = [
    "BrainDecoder",
    "ContrastiveProjector",
    "EmbeddingHead",
    "ResidualMLPBackbone",
    "ResidualMLPBlock",
    "SubjectAdapter",
    "freeze_all_but_adapters",
]
