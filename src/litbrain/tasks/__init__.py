"""LightningModules, one file per task family."""

from litbrain.tasks.fmri_decoding import FmriDecodingTask, SubjectMismatchError
from litbrain.tasks.seeg_decoding import SeegDecodingTask

__all__ = ["FmriDecodingTask", "SeegDecodingTask", "SubjectMismatchError"]
