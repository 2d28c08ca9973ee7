"""LightningModules: :mod:`.base` (what every task shares) + one file per family.

A task's ``model.class_path`` may be given short (``FmriDecodingTask``) or dotted
(``litbrain.tasks.FmriDecodingTask``).
"""

from litbrain.tasks.base import LitbrainTask, merge_subjects
from litbrain.tasks.encoding import EncodingTask
from litbrain.tasks.fmri_decoding import FmriDecodingTask
from litbrain.tasks.reconstruction import ReconstructionTask
from litbrain.tasks.scene_pretrain import ScenePretrainTask
from litbrain.tasks.seeg_decoding import SeegDecodingTask
from litbrain.tasks.vlm import VisionLanguageTask

__all__ = ["EncodingTask", "FmriDecodingTask", "LitbrainTask", "ReconstructionTask", "ScenePretrainTask", "SeegDecodingTask", "VisionLanguageTask",
           "merge_subjects"]
