"""LightningModules, one file per task family."""

from litbrain.tasks.fmri_decoding import FmriDecodingTask, SubjectMismatchError

__all__ = ["FmriDecodingTask", "SubjectMismatchError"]
