"""Data layer of litbrain: DataModules, dataset readers, prepare steps and synthetic worlds.

Imported as ``litbrain.datamodules`` (the folder lives at the top level of the repository).
Knows files and formats, never tasks or models: batches are plain dicts with documented keys.
One sub-package per family, each with its DataModule (``datamodule``), its ``prepare`` step and
its ``synthetic`` generator (which knows its own oracle); :mod:`.base` holds what the
multi-subject DataModules share, :mod:`.io` the readers and writers, :mod:`.targets` the
embedding targets computed by frozen encoders.

Names are imported on first access, so ``prepare`` and ``synthesize`` do not pay for Lightning.
"""

from typing import Any

from litbrain.errors import DataError

# name -> submodule that defines it, imported on first access
_LAZY = {
    "MultiSubjectBatchSampler": "base", "MultiSubjectDataModule": "base", "ResumableDataLoader": "base",
    "embed_images": "targets", "embed_captions": "targets",
    "FmriDataModule": "fmri.datamodule", "read_manifest": "fmri.datamodule",
    "prepare_fmri": "fmri.prepare", "list_raw_subjects": "fmri.prepare",
    "synthesize_fmri": "fmri.synthetic", "synthetic_oracle": "fmri.synthetic", "load_truth": "fmri.synthetic",
    "true_image_embedding": "fmri.synthetic", "true_text_embedding": "fmri.synthetic",
    "prepare_nsd": "fmri.nsd", "synthesize_nsd": "fmri.nsd_synthetic", "load_nsd_truth": "fmri.nsd_synthetic",
    "SeegDataModule": "seeg.datamodule", "read_seeg_manifest": "seeg.datamodule", "labelled_subset": "seeg.datamodule",
    "prepare_seeg": "seeg.prepare", "read_seeg_file": "seeg.prepare", "list_bids_subjects": "seeg.prepare",
    "synthesize_seeg": "seeg.synthetic", "load_seeg_truth": "seeg.synthetic", "seeg_oracle_accuracy": "seeg.synthetic",
    "seeg_word_labels": "seeg.synthetic",
    "EncodingDataModule": "encoding.datamodule", "prepare_encoding": "encoding.prepare",
    "synthesize_encoding": "encoding.synthetic", "encoding_oracle": "encoding.synthetic",
    "ImageCaptionDataModule": "generation.datamodule", "read_image_captions": "generation.datamodule",
    "VqaDataModule": "vqa.datamodule", "world_tokenizer": "vqa.synthetic", "make_item": "vqa.synthetic",
    "render_scene": "vqa.synthetic", "vqa_chance_accuracy": "vqa.synthetic",
}

__all__ = ["DataError", *_LAZY]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
