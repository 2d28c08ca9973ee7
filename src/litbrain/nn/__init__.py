"""Plain torch.nn: shared layers, one file per model family, the encoder factory and the model registry.

Nothing here imports Lightning. Every released model has a config dataclass beside its class and
a line in :data:`litbrain.nn.registry.MODEL_TYPES`.
"""

from litbrain.nn.blocks import (
    ContrastiveProjector,
    EmbeddingHead,
    ResidualMLPBackbone,
    ResidualMLPBlock,
)
from litbrain.nn.duin import (
    DuinConfig,
    DuinEncoder,
    DuinEncoderConfig,
    DuinModel,
    PatchTokenizer,
)
from litbrain.nn.fmri_decoder import BrainDecoder, BrainDecoderConfig
from litbrain.nn.mustdrop import key_token_set, window_merge
from litbrain.nn.registry import MODEL_TYPES, ModelConfig, build_model, config_from_dict
from litbrain.nn.subject_adapter import SubjectAdapter, freeze_all_but_adapters
from litbrain.nn.tome import bipartite_soft_matching, merge_wavg
from litbrain.nn.vector_quantizer import VectorQuantizer
from litbrain.nn.vision_reduction import VisionTokenReducer, VisionTokens

__all__ = [
    "MODEL_TYPES",
    "BrainDecoder",
    "BrainDecoderConfig",
    "ContrastiveProjector",
    "DuinConfig",
    "DuinEncoder",
    "DuinEncoderConfig",
    "DuinModel",
    "EmbeddingHead",
    "ModelConfig",
    "PatchTokenizer",
    "ResidualMLPBackbone",
    "ResidualMLPBlock",
    "SubjectAdapter",
    "VectorQuantizer",
    "VisionTokenReducer",
    "VisionTokens",
    "bipartite_soft_matching",
    "build_model",
    "config_from_dict",
    "freeze_all_but_adapters",
    "key_token_set",
    "merge_wavg",
    "window_merge",
]
