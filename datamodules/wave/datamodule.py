"""The WAVE DataModule: windows of prepared parcel series, for pretraining or for contrastive decoding.

``mode="pretrain"``: windows of ``window`` TRs (stride ``window // 2``) from every run that shows no test
stimulus (training task runs and rest runs of the chosen subjects); batches ``{"bold": (B, W, P),
"subject": (B,) int}``.
``mode="events"``: one window per event, ``event_window`` TRs from the event's onset volume (zero-padded
past the run's end); batches add ``stimulus`` (B,), ``image_embedding`` (B, D) and ``text_embedding``
(B, Dt). ``label_fraction`` keeps the events of that share of the training runs (seeded), the
labelled-data regime of the pretraining bar; val is ``val_fraction`` of those events; test is every
event of a shared (test) stimulus.

The parcel space is shared by subjects, so batches mix subjects freely (``subject`` indexes
``dm.subjects`` for models that want a subject embedding).
"""

from __future__ import annotations

from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ..base import SplitLoaders
from litbrain.errors import ConfigError

from ..io import read_tsv
from .prepare import read_wave_manifest

__all__ = ["WaveDataModule", "read_parcels"]


def read_parcels(data_dir: str | Path):
    """``parcels.tsv`` of a prepared set: a DataFrame with index, x, y, z, network."""
    return read_tsv(Path(data_dir) / "parcels.tsv", {"x": float, "y": float, "z": float, "network": str},
                    what="parcel table")


class _Windows(Dataset):
    def __init__(self, series: dict, items: list[tuple], length: int, emb: dict | None):
        self.series, self.items, self.length, self.emb = series, items, length, emb

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        item = self.items[i]
        x = self.series[(item[0], item[1])]
        w = x[item[2]:item[2] + self.length]
        if w.shape[0] < self.length:
            w = np.concatenate([w, np.zeros((self.length - w.shape[0], x.shape[1]), np.float32)])
        out = {"bold": torch.from_numpy(np.ascontiguousarray(w)), "subject": torch.tensor(item[3])}
        if self.emb is not None:
            st = item[4]
            out["stimulus"] = torch.tensor(st)
            out["image_embedding"] = torch.from_numpy(self.emb["image"][st])
            out["text_embedding"] = torch.from_numpy(self.emb["text"][st])
        return out


class WaveDataModule(SplitLoaders, pl.LightningDataModule):
    """Parcel-series windows of a set prepared by ``litbrain wave prepare``.

    Args:
        data_dir: Prepared dataset.
        subjects: Subjects to use (``None`` = all); a held-out subject is simply left out here.
        mode: ``pretrain`` (unlabelled windows) or ``events`` (one window per event, with targets).
        window: Pretraining window length in TRs (WAVE: up to 50).
        event_window: TRs per event window, from the onset volume.
        label_fraction: Share of training runs whose events are used (events mode).
        val_fraction: Share of the labelled events held out for validation.
        batch_size / num_workers / seed: Loader settings; ``seed`` fixes the run and val draws.
    """

    def __init__(self, data_dir: str, subjects: list[str] | None = None, mode: str = "events", window: int = 50,
                 event_window: int = 6, label_fraction: float = 1.0, val_fraction: float = 0.1,
                 batch_size: int = 32, num_workers: int = 0, seed: int = 0):
        super().__init__()
        if mode not in ("pretrain", "events"):
            raise ConfigError(f"data.mode={mode!r}; fix: use 'pretrain' or 'events'")
        if not 0 < label_fraction <= 1:
            raise ConfigError(f"data.label_fraction={label_fraction}; fix: a value in (0, 1]")
        self.data_dir = Path(data_dir)
        self.manifest = read_wave_manifest(data_dir)
        known = list(self.manifest["subjects"])
        if subjects is not None:
            bad = sorted(set(subjects) - set(known))
            if bad:
                raise ConfigError(f"data.subjects: {bad} not in {self.data_dir} (has {known}); fix: pick from those")
        self.subjects = list(subjects) if subjects is not None else known
        self.mode, self.window, self.event_window = mode, int(window), int(event_window)
        self.label_fraction, self.val_fraction = float(label_fraction), float(val_fraction)
        self.batch_size, self.num_workers, self.seed = int(batch_size), int(num_workers), int(seed)
        self.n_parcels = int(self.manifest["n_parcels"])
        self.tr = float(self.manifest["tr"])
        self.image_embedding_dim = int(self.manifest["image_embedding_dim"])
        self.text_embedding_dim = int(self.manifest["text_embedding_dim"])
        self._series: dict | None = None
        self._items: dict[str, list] = {}

    @property
    def networks(self) -> np.ndarray:
        return read_parcels(self.data_dir)["network"].to_numpy().astype(str)

    def _load(self) -> None:
        if self._series is not None:
            return
        self._series = {(s, r): np.load(self.data_dir / s / f"{r}.npy").astype(np.float32)
                        for s in self.subjects for r in self.manifest["subjects"][s]}
        self._emb = {k: np.load(self.data_dir / "embeddings" / f"{k}.npy") for k in ("image", "text")}
        ev = read_tsv(self.data_dir / "events.tsv", {"subject": str, "run": str, "onset": float, "stimulus": int,
                                                      "split": str}, what="events")
        ev = ev[ev["subject"].isin(self.subjects)]
        sidx = {s: i for i, s in enumerate(self.subjects)}
        test_runs = set(zip(ev.loc[ev["split"] == "test", "subject"], ev.loc[ev["split"] == "test", "run"]))
        items = [(s, r, int(round(o / self.tr)), sidx[s], int(st))
                 for s, r, o, st in zip(ev["subject"], ev["run"], ev["onset"], ev["stimulus"])]
        train_runs = sorted({(i[0], i[1]) for i in items if (i[0], i[1]) not in test_runs})
        rng = np.random.default_rng(self.seed)
        n_keep = max(1, int(round(self.label_fraction * len(train_runs)))) if train_runs else 0
        keep = {train_runs[i] for i in rng.permutation(len(train_runs))[:n_keep]}
        labelled = [i for i in items if (i[0], i[1]) in keep]
        order = rng.permutation(len(labelled))
        n_val = int(round(self.val_fraction * len(labelled)))
        self._items["val"] = [labelled[i] for i in sorted(order[:n_val])]
        self._items["train"] = [labelled[i] for i in sorted(order[n_val:])]
        self._items["test"] = [i for i in items if (i[0], i[1]) in test_runs]
        self._items["pretrain"] = [(s, r, a, sidx[s]) for (s, r), x in self._series.items() if (s, r) not in test_runs
                                   for a in range(0, x.shape[0] - self.window + 1, max(1, self.window // 2))]
        self._labelled_runs = sorted(keep)

    @property
    def labelled_runs(self) -> list[tuple[str, str]]:
        """The (subject, run) pairs whose events are used for training (``label_fraction`` of them)."""
        self._load()
        return self._labelled_runs

    def setup(self, stage: str | None = None) -> None:
        self._load()

    def dataset(self, split: str) -> Dataset:
        self._load()
        if self.mode == "pretrain" and split == "train":
            if not self._items["pretrain"]:
                raise ConfigError(f"data.window={self.window}: longer than every run without test stimuli; fix: a "
                                  f"shorter window")
            return _Windows(self._series, self._items["pretrain"], self.window, None)
        return _Windows(self._series, self._items[split], self.event_window, self._emb)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        g = torch.Generator().manual_seed(self.seed)
        ds = self.dataset(split)
        # a small labelled set (label_fraction) is one batch rather than none (training drops the ragged last batch)
        bs = max(1, min(self.batch_size, len(ds)))
        return DataLoader(ds, batch_size=bs, shuffle=shuffle, drop_last=shuffle, num_workers=self.num_workers,
                          generator=g if shuffle else None)
