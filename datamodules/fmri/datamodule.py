"""LightningDataModule over a prepared fMRI dataset (see ``fmri_prepare`` for the layout).

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

import json
import math
import os
from collections.abc import Iterator
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from ._io import DataError, MmapRows
from ._resumable import ResumableDataLoader

__all__ = ["FmriDataModule", "MultiSubjectBatchSampler", "read_manifest"]


def read_manifest(data_dir: str | os.PathLike) -> dict:
    """Load and check ``manifest.json`` of a prepared dataset (raises :class:`DataError`)."""
    d = Path(data_dir)
    if not d.is_dir():
        raise DataError(f"{d}: prepared data folder not found; fix: run `litbrain prepare` (prepare_fmri) "
                        f"to create it, or correct data_dir")
    mpath = d / "manifest.json"
    if not mpath.is_file():
        raise DataError(f"{mpath}: not found, {d} is not a prepared dataset; fix: run `litbrain prepare` "
                        f"(prepare_fmri) on the raw data with this folder as out_dir")
    try:
        m = json.loads(mpath.read_text())
    except Exception as exc:
        raise DataError(f"{mpath}: unreadable ({exc}); fix: re-run prepare with overwrite=True") from exc
    if m.get("format_version") != 1 or "subjects" not in m:
        raise DataError(f"{mpath}: unknown format_version {m.get('format_version')}; fix: re-run prepare "
                        f"with this version of litbrain (overwrite=True)")
    return m


def _identity(batch):
    return batch


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
                            f"{len(self.brain)}; fix: re-run prepare with overwrite=True")
        self.stimulus = stim[:n_keep] if n_keep is not None else stim
        self.n = len(self.stimulus)

    def read(self, rows: np.ndarray) -> np.ndarray:
        """rows must be sorted; returns float32 (len(rows), V)."""
        return self.brain.take(rows).astype(np.float32)


class _GroupedRows(Dataset):
    """Batch-level dataset over several subjects' splits: item = an int64 array of global indices
    (subject offset + row). Subclasses build the batch from :meth:`_groups`. Shared by fMRI and sEEG."""

    def __init__(self, splits: list, subjects: list[str]):
        self.splits, self.subjects = splits, subjects
        self.offsets = np.cumsum([0] + [s.n for s in splits])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def _groups(self, index) -> Iterator[tuple[int, np.ndarray]]:
        """(subject position, sorted rows of it) for each subject in ``index``, in dm.subjects order."""
        idx = np.atleast_1d(np.asarray(index, dtype=np.int64))
        subj = np.searchsorted(self.offsets, idx, side="right") - 1
        for s in np.unique(subj):  # ascending = dm.subjects order
            yield int(s), np.sort(idx[subj == s] - self.offsets[s])


class _MultiSubjectBatches(_GroupedRows):
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


class MultiSubjectBatchSampler(DistributedSampler):
    """Yields batches (int64 arrays of global indices) with an equal share of every subject.

    It is a :class:`~torch.utils.data.DistributedSampler` on purpose: Lightning (2.x) replaces a
    loader's sampler with a DistributedSampler under DDP unless it already is one, and cannot
    inject one into a custom batch sampler (it raises). So the DataModule hands this to a
    ``DataLoader(batch_size=None, sampler=...)``: Lightning leaves it alone, calls
    :meth:`set_epoch` every epoch, and this class splits the batches between ranks itself.

    Per epoch: for every subject, concatenated seeded permutations of its rows (enough for
    ``n_batches * per_subject`` draws, where ``n_batches`` covers the largest subject once) are
    cut into per-batch groups; the global batch list (identical on every rank) is truncated to a
    multiple of ``num_replicas`` and rank ``r`` takes batches ``r, r + R, ...`` -- disjoint shares.
    """

    def __init__(self, sizes: list[int], per_subject: int, seed: int = 0, num_replicas: int = 1, rank: int = 0):
        if per_subject < 1:
            raise ValueError("per_subject must be >= 1")
        if min(sizes) < 1:
            raise ValueError("every subject needs at least one training row")
        self.sizes = [int(s) for s in sizes]
        self.offsets = np.cumsum([0] + self.sizes)
        self.per_subject = int(per_subject)
        self.seed = int(seed)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(f"rank {rank} not in [0, {num_replicas})")
        self.epoch = 0
        self._skip = 0  # batches of this rank to skip in the next iteration (mid-epoch resume)
        self.shuffle = True
        self.drop_last = True
        n_global = max(1, max(self.sizes) // self.per_subject)
        self.num_batches = n_global // self.num_replicas
        self.num_samples = self.num_batches
        self.total_size = self.num_batches * self.num_replicas
        self.dataset = None  # DistributedSampler attribute; unused

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_batches

    def skip_next_iteration(self, n: int) -> None:
        """The next ``iter(self)`` starts at this rank's batch ``n`` of the epoch (resume)."""
        self._skip = int(n)

    def __iter__(self):
        skip, self._skip = self._skip, 0  # read now: iter() is called right after skip_next_iteration
        return self._batches(skip)

    def _batches(self, skip: int):
        rng = np.random.default_rng([self.seed, self.epoch])
        need = self.total_size * self.per_subject
        per = []
        for s, n in enumerate(self.sizes):
            reps = math.ceil(need / n) if need else 0
            perm = np.concatenate([rng.permutation(n) for _ in range(reps)])[:need] if reps else np.empty(0, np.int64)
            per.append(perm.reshape(self.total_size, self.per_subject) + self.offsets[s])
        if self.total_size == 0:
            return
        batches = np.concatenate(per, axis=1)  # (total_size, S * per_subject)
        for b in range(self.rank + skip * self.num_replicas, self.total_size, self.num_replicas):
            yield batches[b]


class _MultiSubjectDataModule(pl.LightningDataModule):
    """Loaders shared by the fMRI and sEEG DataModules (subclasses provide the splits and datasets).

    Train: :class:`MultiSubjectBatchSampler` in a resumable loader; val/test/predict: one
    loader per subject. Subclasses set ``subjects``, ``batch_size``, ``num_workers``, ``seed``,
    ``_train_loader = None``, ``_train_loader_state = None`` and implement ``_get_splits``,
    ``_train_dataset`` and ``_eval_dataset``.
    """

    def _get_splits(self, split: str) -> list:
        raise NotImplementedError

    def _train_dataset(self, splits: list) -> Dataset:
        raise NotImplementedError

    def _eval_dataset(self, split, subject: str, index: int) -> Dataset:
        raise NotImplementedError

    def _dist(self) -> tuple[int, int]:
        trainer = getattr(self, "trainer", None)
        if trainer is not None:
            return int(trainer.world_size), int(trainer.global_rank)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            return torch.distributed.get_world_size(), torch.distributed.get_rank()
        return 1, 0

    def _loader_kwargs(self) -> dict:
        return {"num_workers": self.num_workers, "persistent_workers": self.num_workers > 0,
                "pin_memory": torch.cuda.is_available(), "collate_fn": _identity}

    def setup(self, stage: str | None = None) -> None:
        if stage in (None, "fit"):
            self._get_splits("train")
        if stage in (None, "fit", "validate"):
            self._get_splits("val")
        if stage in (None, "test", "predict"):
            self._get_splits("test")

    def train_dataloader(self) -> DataLoader:
        splits = self._get_splits("train")
        ds = self._train_dataset(splits)
        world, rank = self._dist()
        sampler = MultiSubjectBatchSampler([sp.n for sp in splits], self.batch_size // len(self.subjects),
                                           seed=self.seed, num_replicas=world, rank=rank)
        # Stateful, so a mid-epoch checkpoint resumes at the right batch (see _resumable).
        loader = ResumableDataLoader(ds, batch_size=None, sampler=sampler, **self._loader_kwargs())
        if self._train_loader_state:
            loader.load_state_dict(self._train_loader_state)
        self._train_loader = loader
        return loader

    # The train loader's position also travels through the DataModule's own checkpoint state:
    # Lightning restores a loader's state only if the loader is created after the loop state is
    # loaded, but configure_optimizers' `trainer.estimated_stepping_batches` creates it before.
    def state_dict(self) -> dict:
        return {"train_loader": self._train_loader.state_dict()} if self._train_loader is not None else {}

    def load_state_dict(self, state_dict: dict) -> None:
        self._train_loader_state = state_dict.get("train_loader")
        if self._train_loader is not None and self._train_loader_state:
            self._train_loader.load_state_dict(self._train_loader_state)

    def _eval_loaders(self, split: str) -> list[DataLoader]:
        loaders = []
        for i, (s, sp) in enumerate(zip(self.subjects, self._get_splits(split))):
            ds = self._eval_dataset(sp, s, i)
            loaders.append(DataLoader(ds, batch_size=self.batch_size, shuffle=False, drop_last=False,
                                      **self._loader_kwargs()))
        return loaders

    def val_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("val")

    def test_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test")

    def predict_dataloader(self) -> list[DataLoader]:
        return self._eval_loaders("test")


class FmriDataModule(_MultiSubjectDataModule):
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
                                f"with overwrite=True")
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
