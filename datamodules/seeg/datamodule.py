"""LightningDataModule over a prepared sEEG dataset (see :mod:`.prepare` for the layout).

Batches are plain dicts, the same shape as the fMRI batches (:mod:`.fmri`)::

    {"subject": LongTensor[B],                          # index into dm.subjects, one per row
     "brain":   {subject_id: FloatTensor[b_s, C_s, T]},  # float32 z-scored epochs, groups in
                                                        # dm.subjects order (only subjects present)
     "label":   LongTensor[B]}                          # word id (row of labels.tsv); -1 = unlabelled

``B = sum_s b_s``; rows of ``subject``/``label`` follow the ``brain`` groups concatenated in
``dm.subjects`` order. The shared ``SubjectAdapter`` maps channels: move the channel axis last
(``x.transpose(1, 2)``: ``(b, T, C_s)``) before calling it.

* train loader: :class:`~litbrain.datamodules.MultiSubjectBatchSampler` (``batch_size //
  len(subjects)`` rows of every subject per batch, reshuffled every epoch, DDP-aware, resumable).
  With ``label_fraction < 1`` every training epoch is still served, but only a seeded,
  per-word stratified fraction of them keeps its label; the others carry ``-1`` (use
  ``ignore_index=-1`` in the loss; self-supervised stages use every epoch).
* val / test / predict loaders: a LIST with one loader per subject (fixed order).
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from litbrain.errors import DataError

from ..base import GroupedRows, MultiSubjectDataModule, ResumableDataLoader
from ..io import MmapRows, read_manifest_json

__all__ = ["SeegDataModule", "read_seeg_manifest", "labelled_subset"]


def labelled_subset(labels: np.ndarray, fraction: float, seed: int, subject: str) -> np.ndarray:
    """Mask of the training epochs that keep their label at ``label_fraction = fraction``.

    Stratified per word (at least one epoch per word), seeded by ``(seed, subject)``: the
    DataModule and the evaluation's logistic-regression baseline draw the same subset.
    """
    if fraction >= 1.0:
        return np.ones(labels.size, dtype=bool)
    rng = np.random.default_rng([int(seed), zlib.crc32(subject.encode())])
    keep = np.zeros(labels.size, dtype=bool)
    for w in np.unique(labels):
        idx = np.flatnonzero(labels == w)
        k = max(1, int(round(fraction * idx.size)))
        keep[rng.choice(idx, size=k, replace=False)] = True
    return keep


def read_seeg_manifest(data_dir: str | os.PathLike) -> dict:
    """Load and check ``manifest.json`` of a prepared sEEG dataset (raises :class:`DataError`)."""
    return read_manifest_json(data_dir, "prepared sEEG dataset", "litbrain seeg prepare",
                              lambda m: m.get("kind") == "seeg" and m.get("format_version") == 1)


class _SeegSplit:
    def __init__(self, data_dir: Path, subject: str, split: str, labels: np.ndarray | None = None):
        d = data_dir / subject
        self.brain = MmapRows(d / f"{split}_brain.npy")
        self.label = np.load(d / f"{split}_label.npy") if labels is None else labels
        if len(self.label) != len(self.brain):
            raise DataError(f"{d}/{split}_label.npy: {len(self.label)} rows but {split}_brain.npy has "
                            f"{len(self.brain)}; fix: re-run prepare_seeg with --overwrite true")
        self.n = len(self.label)


class _SeegBatches(GroupedRows):
    def __init__(self, splits: list[_SeegSplit], subjects: list[str], subject_index: int | None = None):
        super().__init__(splits, subjects)
        self.subject_index = subject_index

    def __getitem__(self, index):
        brain, subj_out, lab_out = {}, [], []
        for s, rows in self._groups(index):
            sp = self.splits[s]
            brain[self.subjects[s]] = torch.from_numpy(sp.brain.take(rows).astype(np.float32))
            subj_out.append(np.full(rows.size, s if self.subject_index is None else self.subject_index, np.int64))
            lab_out.append(sp.label[rows])
        return {"subject": torch.from_numpy(np.concatenate(subj_out)), "brain": brain,
                "label": torch.from_numpy(np.concatenate(lab_out).astype(np.int64))}

    __getitems__ = __getitem__


class SeegDataModule(MultiSubjectDataModule):
    """Multi-subject sEEG word-decoding data from a prepared folder (:func:`prepare_seeg`).

    Args:
        data_dir: Prepared dataset folder (holds manifest.json with kind "seeg").
        subjects: Subject ids in this order (``dm.subjects``); ``None`` = all prepared subjects.
        batch_size: Training rows per batch per device (``batch_size // len(subjects)`` per subject);
            eval loaders use ``batch_size`` rows of one subject.
        num_workers: DataLoader worker processes.
        label_fraction: Fraction of each subject's training epochs that keep their label
            (stratified per word, at least one per word, seeded); the rest get label ``-1``.
        seed: Seed of the shuffling and of the labelled subset.
    """

    def __init__(self, data_dir: str, subjects: list[str] | None = None, batch_size: int = 64,
                 num_workers: int = 0, label_fraction: float = 1.0, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.manifest = read_seeg_manifest(self.data_dir)
        available = list(self.manifest["subjects"])
        subjects = available if subjects is None else list(subjects)
        unknown = [s for s in subjects if s not in available]
        if unknown or not subjects or len(set(subjects)) != len(subjects):
            raise DataError(f"{self.data_dir}: subjects={subjects} unknown or repeated (available: {available}); "
                            f"fix: list each available subject at most once")
        if not 0.0 < float(label_fraction) <= 1.0:
            raise DataError(f"label_fraction={label_fraction}: must be in (0, 1]; fix: e.g. 0.2 or 1.0")
        if batch_size < len(subjects):
            raise DataError(f"batch_size={batch_size} < {len(subjects)} subjects; fix: batch_size >= {len(subjects)}")
        self.subjects: list[str] = subjects
        self.subject_channels: dict[str, int] = {s: int(self.manifest["subjects"][s]["n_channels"]) for s in subjects}
        self.labels: list[str] = list(self.manifest["labels"])
        self.n_labels: int = len(self.labels)
        self.n_times: int = int(self.manifest["n_times"])
        self.sfreq: float = float(self.manifest["sfreq"])
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.label_fraction, self.seed = float(label_fraction), int(seed)
        self._splits: dict[str, list[_SeegSplit]] = {}
        self._train_loader: ResumableDataLoader | None = None
        self._train_loader_state: dict | None = None

    def _train_labels(self, subject: str) -> np.ndarray:
        lab = np.load(self.data_dir / subject / "train_label.npy")
        return np.where(labelled_subset(lab, self.label_fraction, self.seed, subject), lab, -1)

    def _get_splits(self, split: str) -> list[_SeegSplit]:
        if split not in self._splits:
            out = []
            for s in self.subjects:
                sp = _SeegSplit(self.data_dir, s, split, self._train_labels(s) if split == "train" else None)
                if sp.n == 0:
                    raise DataError(f"{self.data_dir / s / (split + '_brain.npy')}: {split} split is empty; "
                                    f"fix: re-run prepare_seeg with another split or drop subject {s}")
                out.append(sp)
            self._splits[split] = out
        return self._splits[split]

    def n_rows(self, split: str) -> dict[str, int]:
        return {s: sp.n for s, sp in zip(self.subjects, self._get_splits(split))}

    def _train_dataset(self, splits: list[_SeegSplit]) -> Dataset:
        return _SeegBatches(splits, self.subjects)

    def _eval_dataset(self, split: _SeegSplit, subject: str, index: int) -> Dataset:
        return _SeegBatches([split], [subject], subject_index=index)
