"""Data layer of litbrain: LightningDataModules, dataset readers and synthetic generators.

Imported as ``litbrain.datamodules`` (pyproject maps the package to this folder). Never imports
``litbrain.tasks``; batches are plain dicts with documented keys (see :mod:`.fmri`).

The DataModule (which needs Lightning, a slow import) is loaded lazily, so ``prepare_fmri`` and
``synthesize_fmri`` stay light; ``embed_images`` / ``embed_captions`` import torch and the encoder
libraries only when called.
"""

from typing import TYPE_CHECKING, Any

from ._io import DataError
from .fmri_prepare import list_raw_subjects, prepare_fmri
from .fmri_synthetic import load_truth, synthesize_fmri, synthetic_oracle, true_image_embedding, true_text_embedding
from .targets import FrozenImageEncoder, FrozenTextEncoder, embed_captions, embed_images

if TYPE_CHECKING:  # pragma: no cover
    from .fmri import FmriDataModule, MultiSubjectBatchSampler, read_manifest

_LAZY = {"FmriDataModule", "MultiSubjectBatchSampler", "read_manifest"}

__all__ = [
    "DataError",
    "FmriDataModule",
    "MultiSubjectBatchSampler",
    "read_manifest",
    "prepare_fmri",
    "list_raw_subjects",
    "synthesize_fmri",
    "synthetic_oracle",
    "load_truth",
    "true_image_embedding",
    "true_text_embedding",
    "embed_images",
    "embed_captions",
    "FrozenImageEncoder",
    "FrozenTextEncoder",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from . import fmri

        return getattr(fmri, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY)
