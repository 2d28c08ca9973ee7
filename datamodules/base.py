"""What every multi-subject DataModule shares: grouped rows, the equal-share batch sampler,
loaders (one per subject for evaluation) and a train loader that resumes mid-epoch.

* :class:`GroupedRows` -- a batch-level dataset over several subjects' splits: an item is an
  int64 array of global indices (subject offset + row), grouped by subject.
* :class:`MultiSubjectBatchSampler` -- equal share of every subject per batch, reshuffled every
  epoch, DDP-aware (each rank takes a disjoint share), resumable.
* :class:`MultiSubjectDataModule` -- the loaders shared by the fMRI and sEEG DataModules.
* :class:`SplitLoaders` -- the four loader hooks of a single-table DataModule (train shuffled,
  val / test / predict in order) over its own ``_loader(split, shuffle)``; :func:`pad_sequences`
  -- right-padded id tensors and their masks, for the token DataModules.
* :class:`ResumableDataLoader` -- Lightning (2.x) saves ``loader.state_dict()`` in the fit loop's
  checkpoint state and calls ``loader.load_state_dict(...)`` when it restarts mid-epoch; without
  it, a resumed epoch starts its batch stream from the beginning again and trains on the wrong
  batches. This loader records (epoch, batches handed out this epoch) and, after a restore, has
  its sampler skip that many batches -- index arrays only, no data is read for the skipped
  batches. Counting happens where Lightning receives the batches (after any worker
  prefetching), and Lightning does not prefetch from loaders that have a length, so the count
  is exactly the number of batches the training loop consumed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

__all__ = ["GroupedRows", "MultiSubjectBatchSampler", "MultiSubjectDataModule", "ResumableDataLoader", "SplitLoaders",
           "pad_sequences"]


def pad_sequences(seqs: list[list[int]], pad: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, mask)``: the sequences right-padded with ``pad`` to the longest, and where they are real."""
    n = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), n), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), n), dtype=torch.bool)
    for b, s in enumerate(seqs):
        ids[b, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[b, : len(s)] = True
    return ids, mask


class SplitLoaders:
    """Lightning's loader hooks for a DataModule with one table per split.

    The DataModule defines ``_loader(split, shuffle) -> DataLoader``; training shuffles (the
    DataModule drops its ragged last batch there), evaluation reads in order, and predict reads
    the test split.
    """

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        raise NotImplementedError

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test", False)


class ResumableDataLoader(DataLoader):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._yielded = 0
        self._resume: dict[str, int] | None = None

    def state_dict(self) -> dict[str, int]:
        return {"epoch": int(getattr(self.sampler, "epoch", 0)), "batches": int(self._yielded)}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self._resume = {"epoch": int(state["epoch"]), "batches": int(state["batches"])}

    def __iter__(self) -> Iterator[Any]:
        # A generator: nothing runs until the first batch is requested, i.e. after Lightning's
        # set_epoch for this epoch, so the restored position is matched against the right epoch.
        skip, resume, self._resume = 0, self._resume, None
        if resume is not None and resume["epoch"] == int(getattr(self.sampler, "epoch", 0)):
            if 0 < resume["batches"] < len(self):
                skip = resume["batches"]
        self.sampler.skip_next_iteration(skip)
        self._yielded = skip
        for batch in super().__iter__():
            self._yielded += 1
            yield batch


def _identity(batch):
    return batch


class GroupedRows(Dataset):
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


class MultiSubjectDataModule(pl.LightningDataModule):
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
