"""LightningDataModule over a prepared fMRI dataset (see :mod:`.prepare` for the layout).

Batches are plain dicts::

    {"subject":  LongTensor[B],                     # index into dm.subjects, one per row,
                                                    # in the concatenated order of the groups
     "brain":    {subject_id: FloatTensor[b_s, V_s]},  # float32 z-scored voxels, groups in
                                                    # dm.subjects order (only subjects present)
     "stimulus": LongTensor[B],                     # row index into <prepared>/stimuli.tsv
     "image_embedding": FloatTensor[B, *image_embedding_shape],
     "text_embedding":  FloatTensor[B, D]}          # only if the prepared set has text targets

``B = sum_s b_s``; row ``i`` of ``subject``/``stimulus``/embeddings belongs to the ``brain`` group
of ``dm.subjects[subject[i]]`` (groups concatenated in ``dm.subjects`` order), so
``torch.cat([adapter[s](x) for s, x in batch["brain"].items()])`` lines up with the targets.
Within a group, rows come in increasing file-row order (rows are read sorted).

* train loader: every batch holds ``batch_size // len(subjects)`` rows of every subject (the
  last incomplete batch is dropped), reshuffled every epoch (``sampler.set_epoch``, which
  Lightning calls), identical for a given seed. An epoch covers the largest subject once;
  smaller subjects cycle through fresh permutations. Under DDP each rank takes a disjoint
  share of the batches (see :class:`MultiSubjectBatchSampler`); ``batch_size`` is per device.
* val / test / predict loaders: a LIST with one loader per subject (single-subject batches,
  fixed order, no shuffling); ``dataloader_idx`` = index into ``dm.subjects``. Val and test
  rows are the repeat-averaged stimuli.

Lightning infers the logged batch size from the first tensor of the batch (``subject``: B);
with several subjects the brain groups differ in size, so log with ``batch_size=B``.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from litbrain.errors import DataError

from ..base import GroupedRows, MultiSubjectDataModule, ResumableDataLoader
from ..io import MmapRows, read_manifest_json

__all__ = ["FmriDataModule", "read_manifest"]


def read_manifest(data_dir: str | os.PathLike) -> dict:
    """Load and check ``manifest.json`` of a prepared dataset (raises :class:`DataError`)."""
    return read_manifest_json(data_dir, "prepared fMRI dataset", "litbrain fmri prepare",
                              lambda m: m.get("format_version") == 1 and "subjects" in m)


class _Embeddings:
    """Targets shared by all readers (memory-mapped; tiny per-batch gathers)."""

    def __init__(self, data_dir: Path, text: bool):
        self.image = MmapRows(data_dir / "image_embedding.npy")
        self.text = MmapRows(data_dir / "text_embedding.npy") if text else None

    def gather(self, stim: np.ndarray, out: dict) -> None:
        order = np.argsort(stim, kind="stable")
        inv = np.empty_like(order)
        inv[order] = np.arange(order.size)
        out["image_embedding"] = torch.from_numpy(np.ascontiguousarray(self.image.take(stim[order])[inv]))
        if self.text is not None:
            out["text_embedding"] = torch.from_numpy(np.ascontiguousarray(self.text.take(stim[order])[inv]))


class _SubjectSplit:
    """Rows of one subject's split: brain (memory-mapped) + stimulus index (in RAM)."""

    def __init__(self, data_dir: Path, subject: str, split: str, n_keep: int | None = None):
        d = data_dir / subject
        self.brain = MmapRows(d / f"{split}_brain.npy")
        stim = np.load(d / f"{split}_stimulus.npy")
        if len(stim) != len(self.brain):
            raise DataError(f"{d}/{split}_stimulus.npy: {len(stim)} rows but {split}_brain.npy has "
                            f"{len(self.brain)}; fix: re-run prepare with --overwrite true")
        self.stimulus = stim[:n_keep] if n_keep is not None else stim
        self.n = len(self.stimulus)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """rows must be sorted; returns float32 (len(rows), V)."""
        return self.brain.take(rows).astype(np.float32)


class _MultiSubjectBatches(GroupedRows):
    """fMRI batches: brain groups, subject index and stimulus ids, plus the stimulus targets."""

    def __init__(self, splits: list[_SubjectSplit], subjects: list[str], emb: _Embeddings):
        super().__init__(splits, subjects)
        self.emb = emb

    def __getitem__(self, index):
        brain, subj_out, stim_out = {}, [], []
        for s, rows in self._groups(index):
            sp = self.splits[s]
            brain[self.subjects[s]] = torch.from_numpy(sp.read(rows))
            subj_out.append(np.full(rows.size, s, dtype=np.int64))
            stim_out.append(sp.stimulus[rows])
        stim = np.concatenate(stim_out)
        out = {"subject": torch.from_numpy(np.concatenate(subj_out)), "brain": brain,
               "stimulus": torch.from_numpy(stim.astype(np.int64))}
        self.emb.gather(stim, out)
        return out

    __getitems__ = __getitem__  # DataLoader auto-batching: one call per batch


class _SingleSubjectRows(_MultiSubjectBatches):
    """Eval dataset of one subject; global index == row (``subject`` = its dm.subjects index)."""

    def __init__(self, split: _SubjectSplit, subject: str, subject_index: int, emb: _Embeddings):
        super().__init__([split], [subject], emb)
        self.subject_index = subject_index

    def __getitem__(self, index):
        out = super().__getitem__(index)
        out["subject"].fill_(self.subject_index)
        return out

    __getitems__ = __getitem__


class FmriDataModule(MultiSubjectDataModule):
    """Multi-subject fMRI decoding data from a prepared folder (:func:`prepare_fmri`).

    Args:
        data_dir: Prepared dataset folder (holds manifest.json).
        subjects: Subject ids to use, in this order (``dm.subjects``); ``None`` = all prepared subjects.
        batch_size: Rows per training batch per device; each subject gets ``batch_size // len(subjects)``.
            Eval loaders use ``batch_size`` rows of one subject.
        num_workers: DataLoader worker processes.
        train_fraction: Keep only the first fraction of each subject's training trials in session
            order (e.g. 0.1 for new-subject transfer with 10% of the data).
        seed: Seed of the per-epoch shuffling of the train loader.
    """

    def __init__(self, data_dir: str, subjects: list[str] | None = None, batch_size: int = 64, num_workers: int = 0,
                 train_fraction: float = 1.0, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.data_dir = Path(data_dir)
        self.manifest = read_manifest(self.data_dir)
        available = list(self.manifest["subjects"])
        subjects = available if subjects is None else list(subjects)
        unknown = [s for s in subjects if s not in available]
        if unknown:
            raise DataError(f"{self.data_dir}: subject(s) {unknown} not prepared (available: {available}); "
                            f"fix: choose from the available subjects or prepare the missing ones")
        if not subjects or len(set(subjects)) != len(subjects):
            raise DataError(f"subjects={subjects}: give at least one subject, each once; fix: e.g. {available[:2]}")
        if not 0.0 < float(train_fraction) <= 1.0:
            raise DataError(f"train_fraction={train_fraction}: must be in (0, 1]; fix: e.g. 0.1 or 1.0")
        if batch_size < len(subjects):
            raise DataError(f"batch_size={batch_size} < {len(subjects)} subjects: every training batch needs at "
                            f"least one row per subject; fix: batch_size >= {len(subjects)}")
        for split in ("train", "val", "test"):
            for s in subjects:
                if (self.data_dir / s / f"{split}_brain.npy").is_file():
                    continue
                raise DataError(f"{self.data_dir / s / (split + '_brain.npy')}: missing; fix: re-run prepare "
                                f"with --overwrite true")
        self.subjects: list[str] = subjects
        self.subject_voxels: dict[str, int] = {s: int(self.manifest["subjects"][s]["n_voxels"]) for s in subjects}
        self.image_embedding_shape: tuple[int, ...] = tuple(int(x) for x in self.manifest["image_embedding_shape"])
        td = self.manifest.get("text_embedding_dim")
        self.text_embedding_dim: int | None = int(td) if td else None
        self.n_stimuli: int = int(self.manifest["n_stimuli"])
        self.batch_size, self.num_workers = int(batch_size), int(num_workers)
        self.train_fraction, self.seed = float(train_fraction), int(seed)
        self._emb: _Embeddings | None = None
        self._splits: dict[str, list[_SubjectSplit]] = {}
        self._train_loader: ResumableDataLoader | None = None
        self._train_loader_state: dict | None = None

    # ------------------------------------------------------------------ helpers
    @property
    def stimulus_ids(self) -> list[str]:
        """stimulus_id of every stimulus index (row of stimuli.tsv)."""
        import pandas as pd

        return pd.read_csv(self.data_dir / "stimuli.tsv", sep="\t", dtype={"stimulus_id": str})["stimulus_id"].tolist()

    def n_rows(self, split: str) -> dict[str, int]:
        """Rows per subject of a split (train counts honour train_fraction)."""
        return {s: sp.n for s, sp in zip(self.subjects, self._get_splits(split))}

    def _embeddings(self) -> _Embeddings:
        if self._emb is None:
            self._emb = _Embeddings(self.data_dir, self.text_embedding_dim is not None)
        return self._emb

    def _get_splits(self, split: str) -> list[_SubjectSplit]:
        if split not in self._splits:
            out = []
            for s in self.subjects:
                n_keep = None
                if split == "train":
                    n = int(self.manifest["subjects"][s]["n_train"])
                    n_keep = max(1, int(round(self.train_fraction * n)))
                sp = _SubjectSplit(self.data_dir, s, split, n_keep)
                if sp.n == 0:
                    raise DataError(f"{self.data_dir / s / (split + '_brain.npy')}: {split} split is empty; "
                                    f"fix: re-run prepare (it refuses empty splits) or drop subject {s}")
                out.append(sp)
            self._splits[split] = out
        return self._splits[split]

    def _train_dataset(self, splits: list[_SubjectSplit]) -> Dataset:
        return _MultiSubjectBatches(splits, self.subjects, self._embeddings())

    def _eval_dataset(self, split: _SubjectSplit, subject: str, index: int) -> Dataset:
        return _SingleSubjectRows(split, subject, index, self._embeddings())
