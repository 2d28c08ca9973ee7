"""The encoding DataModule: :class:`~litbrain.datamodules.FmriDataModule` over a dataset from ``encoding prepare``.

Batches are the fMRI batches (see :mod:`litbrain.datamodules.fmri.datamodule`), read the other way
round by the encoding task: ``image_embedding`` (B, *shape) are the inputs, ``brain``
``{subject: (b_s, V_s)}`` the targets (rows of the groups in ``dm.subjects`` order, as the
embeddings), ``text_embedding`` (B, D) the embeddings of the stimuli's detailed descriptions.
"""

from __future__ import annotations

from ..fmri.datamodule import FmriDataModule
from .prepare import read_encoding_info

__all__ = ["EncodingDataModule"]


class EncodingDataModule(FmriDataModule):
    """Multi-subject encoding data (same arguments as :class:`FmriDataModule`)."""

    def __init__(self, data_dir: str, subjects: list[str] | None = None, batch_size: int = 64, num_workers: int = 0,
                 train_fraction: float = 1.0, seed: int = 0):
        read_encoding_info(data_dir)  # one clear line when the folder was not prepared for encoding
        super().__init__(data_dir, subjects, batch_size, num_workers, train_fraction, seed)
