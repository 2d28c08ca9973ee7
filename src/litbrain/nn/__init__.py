"""Plain torch.nn building blocks; nothing here imports Lightning."""

from litbrain.nn.backbone import ContrastiveProjector, EmbeddingHead, ResidualMLPBackbone, ResidualMLPBlock
from litbrain.nn.brain_decoder import BrainDecoder
from litbrain.nn.duin import DuinEncoder, DuinModel, PatchTokenizer
from litbrain.nn.mustdrop import key_token_set, window_merge
from litbrain.nn.subject_adapter import SubjectAdapter, freeze_all_but_adapters
from litbrain.nn.tome import bipartite_soft_matching, merge_wavg
from litbrain.nn.vector_quantizer import VectorQuantizer
from litbrain.nn.vision_reduction import VisionTokenReducer, VisionTokens

__all__ = [
    "BrainDecoder",
    "ContrastiveProjector",
    "DuinEncoder",
    "DuinModel",
    "EmbeddingHead",
    "PatchTokenizer",
    "ResidualMLPBackbone",
    "ResidualMLPBlock",
    "SubjectAdapter",
    "VectorQuantizer",
    "VisionTokenReducer",
    "VisionTokens",
    "bipartite_soft_matching",
    "freeze_all_but_adapters",
    "key_token_set",
    "merge_wavg",
    "window_merge",
]
