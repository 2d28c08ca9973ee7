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
from .seeg_prepare import list_bids_subjects, prepare_seeg, read_seeg_file
from .seeg_synthetic import load_seeg_truth, seeg_oracle_accuracy, seeg_word_labels, synthesize_seeg
from .targets import FrozenImageEncoder, FrozenTextEncoder, embed_captions, embed_images

if TYPE_CHECKING:  # pragma: no cover
    from .fmri import FmriDataModule, MultiSubjectBatchSampler, read_manifest
    from .seeg import SeegDataModule, labelled_subset, read_seeg_manifest
    from .vqa import VqaDataModule
    from .vqa_synthetic import WordTokenizer, make_item, render_scene, vqa_chance_accuracy

# name -> submodule, imported on first access
_LAZY = {
    "FmriDataModule": "fmri", "MultiSubjectBatchSampler": "fmri", "read_manifest": "fmri",
    "SeegDataModule": "seeg", "read_seeg_manifest": "seeg", "labelled_subset": "seeg",
    "VqaDataModule": "vqa", "WordTokenizer": "vqa_synthetic", "make_item": "vqa_synthetic",
    "render_scene": "vqa_synthetic", "vqa_chance_accuracy": "vqa_synthetic",
}

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
    "SeegDataModule",
    "read_seeg_manifest",
    "labelled_subset",
    "prepare_seeg",
    "read_seeg_file",
    "list_bids_subjects",
    "synthesize_seeg",
    "load_seeg_truth",
    "seeg_oracle_accuracy",
    "seeg_word_labels",
    "VqaDataModule",
    "WordTokenizer",
    "make_item",
    "render_scene",
    "vqa_chance_accuracy",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

