"""LightningDataModule over an image-caption folder (the fMRI world's raw layout).

The folder holds ``stimuli.tsv`` (columns ``stimulus_id``, ``image`` (path relative to the folder),
optional ``shared``) and ``captions.tsv`` (``stimulus_id``, ``caption``; several lines per stimulus
allowed); a synthetic world also holds ``truth.npz``, from which every stimulus' true attributes are
read (:func:`~litbrain.datamodules.fmri.synthetic.stimulus_attributes`).

Split: ``split="shared"`` makes the stimuli flagged ``shared=1`` the test set (the fMRI world's shared
stimuli, never seen in training; a folder without the flag falls back to a seeded draw of
``test_fraction``); ``split="seeded"`` always draws the test stimuli with ``seed``. Validation
stimuli are a seeded ``val_fraction`` of the rest. Splits are by stimulus, so no caption or image
of a held-out stimulus is ever in training.

Batches are plain dicts::

    {"image":      FloatTensor[B, 3, H, W],  # in [-1, 1] (as diffusers' VAEs take them)
     "caption":    list[str],                # one caption of the stimulus
     "stimulus":   list[str],                # stimulus ids
     "attributes": {name: LongTensor[B]}}    # true attribute indices (only with truth.npz)

``items="captions"`` gives one item per (stimulus, caption) line (text-to-image training);
``items="images"`` one per stimulus, with a caption drawn per epoch (VAE, probe).
"""

from __future__ import annotations

import csv
import os
import re
from pathlib import Path
from typing import Any, Literal

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from litbrain.errors import DataError

__all__ = ["ImageCaptionDataModule", "read_image_captions", "stated_attributes"]


def _read_tsv(path: Path, need: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.is_file():
        raise DataError(f"{path}: not found; fix: an image-caption folder holds stimuli.tsv and captions.tsv "
                        f"(`litbrain fmri synthesize` writes one)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    cols = set(rows[0]) if rows else set()
    lacking = [c for c in need if c not in cols]
    if lacking:
        raise DataError(f"{path}: no column(s) {lacking} (has {sorted(cols)}); fix: a tab-separated file with a "
                        f"header naming {list(need)}")
    return rows


def read_image_captions(raw_dir: str | os.PathLike) -> dict[str, Any]:
    """``{"ids": [n], "images": [n paths], "shared": (n,) bool, "captions": {id: [captions]}}`` of a folder.

    Every caption's id must have an image in ``stimuli.tsv`` (one line names the file and an example)."""
    raw = Path(raw_dir)
    if not raw.is_dir():
        raise DataError(f"{raw}: no such folder; fix: give the folder holding stimuli.tsv and captions.tsv")
    stim = _read_tsv(raw / "stimuli.tsv", ("stimulus_id", "image"))
    caps = _read_tsv(raw / "captions.tsv", ("stimulus_id", "caption"))
    ids = [r["stimulus_id"] for r in stim]
    known = set(ids)
    orphans = sorted({r["stimulus_id"] for r in caps} - known)
    if orphans:
        raise DataError(f"{raw / 'captions.tsv'}: {len(orphans)} caption id(s) have no image in stimuli.tsv (e.g. "
                        f"{orphans[0]!r}); fix: add their rows to stimuli.tsv or drop their captions")
    captions: dict[str, list[str]] = {i: [] for i in ids}
    for r in caps:
        captions[r["stimulus_id"]].append(r["caption"])
    return {"ids": ids, "images": [str(raw / r["image"]) for r in stim],
            "shared": np.array([str(r.get("shared", "0")).strip() == "1" for r in stim]), "captions": captions}


def _value_words() -> dict[str, dict[str, int]]:
    from litbrain.datamodules.fmri.synthetic import ATTRIBUTES

    return {a: {w: i for i, w in enumerate(vals)} for a, vals in ATTRIBUTES.items()}


def stated_attributes(caption: str) -> dict[str, int]:
    """The attributes a caption of the synthetic world states, ``{attribute: value index}`` (the value
    words of ATTRIBUTES found in it; an attribute the caption does not mention is absent)."""
    words = set(re.findall(r"[a-z]+", caption.lower()))
    out = {}
    for a, vals in _value_words().items():
        hit = [i for w, i in vals.items() if w in words]
        if len(hit) == 1:
            out[a] = hit[0]
    return out


def _load_images(paths: list[str], size: int | None) -> np.ndarray:
    from PIL import Image

    out = []
    for p in paths:
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")
                if size is not None and im.size != (size, size):
                    im = im.resize((size, size), Image.BICUBIC)
                out.append(np.asarray(im, dtype=np.uint8))
        except (OSError, ValueError) as exc:
            raise DataError(f"{p}: cannot be read as an image ({exc}); fix: a PNG/JPEG file") from None
    shapes = {a.shape for a in out}
    if len(shapes) > 1:
        raise DataError(f"images have different sizes {sorted(shapes)[:3]}; fix: set data.init_args.image_size")
    return np.stack(out)


class _Items(Dataset):
    def __init__(self, images: np.ndarray, ids: list[str], captions: list[list[str]], rows: np.ndarray,
                 attributes: dict[str, np.ndarray] | None, items: str, seed: int):
        self.images, self.ids, self.captions, self.rows = images, ids, captions, rows
        self.attributes, self.seed, self.epoch = attributes, seed, 0
        if items == "captions":
            self.pairs = [(r, k) for r in rows for k in range(max(len(captions[r]), 1))]
        else:
            self.pairs = [(r, -1) for r in rows]

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int) -> dict[str, Any]:
        r, k = self.pairs[i]
        caps = self.captions[r] or [""]
        if k < 0:
            k = int(np.random.default_rng((self.seed, self.epoch, int(r))).integers(len(caps)))
        item = {"image": self.images[r], "caption": caps[k], "stimulus": self.ids[r]}
        if self.attributes is not None:
            item["attributes"] = {a: int(v[r]) for a, v in self.attributes.items()}
        return item


def collate_image_captions(items: list[dict[str, Any]]) -> dict[str, Any]:
    images = torch.from_numpy(np.stack([it["image"] for it in items])).permute(0, 3, 1, 2).float() / 127.5 - 1.0
    batch = {"image": images, "caption": [it["caption"] for it in items], "stimulus": [it["stimulus"] for it in items]}
    if "attributes" in items[0]:
        batch["attributes"] = {a: torch.tensor([it["attributes"][a] for it in items]) for a in items[0]["attributes"]}
    return batch


class ImageCaptionDataModule(pl.LightningDataModule):
    """Images + captions of a folder (see the module docstring).

    Args:
        raw_dir: the folder with ``stimuli.tsv`` and ``captions.tsv`` (e.g. a ``litbrain fmri synthesize`` world).
        image_size: resize images to this side (null: keep the files' size, which must be one).
        items: ``captions`` (one item per caption line) or ``images`` (one per stimulus).
        split: ``shared`` (test = the ``shared=1`` stimuli) or ``seeded`` (test = a seeded ``test_fraction``).
        val_fraction / test_fraction: shares of the stimuli (test_fraction only when no shared flag is used).
        batch_size / num_workers / seed: the loaders'; ``seed`` also draws the seeded splits.
        limit_train: use only the first N training stimuli (null: all), for small runs.
    """

    def __init__(self, raw_dir: str, image_size: int | None = None, items: Literal["captions", "images"] = "captions",
                 split: Literal["shared", "seeded"] = "shared", val_fraction: float = 0.05, test_fraction: float = 0.1,
                 batch_size: int = 64, num_workers: int = 0, seed: int = 0, limit_train: int | None = None) -> None:
        super().__init__()
        if items not in ("captions", "images"):
            raise DataError(f"data.items={items!r}; fix: 'captions' or 'images'")
        if split not in ("shared", "seeded"):
            raise DataError(f"data.split={split!r}; fix: 'shared' (the world's shared flag) or 'seeded'")
        for name, v in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
            if not 0 <= v < 1:
                raise DataError(f"data.{name}={v}; fix: a fraction in [0, 1)")
        self.raw_dir, self.image_size, self.items, self.split = str(raw_dir), image_size, items, split
        self.val_fraction, self.test_fraction = float(val_fraction), float(test_fraction)
        self.batch_size, self.num_workers, self.seed, self.limit_train = int(batch_size), int(num_workers), int(seed), limit_train
        self._data: dict[str, Any] | None = None

    # ------------------------------------------------------------------ reading
    def _read(self) -> dict[str, Any]:
        if self._data is not None:
            return self._data
        table = read_image_captions(self.raw_dir)
        ids = table["ids"]
        n = len(ids)
        rng = np.random.default_rng(self.seed)
        if self.split == "shared" and table["shared"].any():
            test = table["shared"].copy()
            self.split_rule = "shared"
        else:
            test = np.zeros(n, bool)
            test[rng.permutation(n)[:int(round(self.test_fraction * n))]] = True
            self.split_rule = f"seeded(seed={self.seed}, test_fraction={self.test_fraction})"
        rest = np.flatnonzero(~test)
        perm = rng.permutation(rest)
        n_val = int(round(self.val_fraction * len(rest)))
        val = np.sort(perm[:n_val])
        train = np.sort(perm[n_val:])
        if self.limit_train is not None:
            train = train[:int(self.limit_train)]
        attrs = None
        if (Path(self.raw_dir) / "truth.npz").is_file():
            from litbrain.datamodules.fmri.synthetic import stimulus_attributes

            got = stimulus_attributes(self.raw_dir)
            order = {s: i for i, s in enumerate(got["stimulus_id"])}
            idx = np.array([order[s] for s in ids])
            attrs = {a: np.asarray(v)[idx] for a, v in got.items() if a != "stimulus_id"}
        images = _load_images(table["images"], self.image_size)
        self._data = {"ids": ids, "captions": [table["captions"][i] for i in ids], "images": images, "attributes": attrs,
                      "splits": {"train": train, "val": val, "test": np.flatnonzero(test)}}
        return self._data

    @property
    def resolution(self) -> int:
        """The side of the images the batches hold."""
        d = self._read()
        return int(d["images"].shape[1])

    @property
    def attribute_sizes(self) -> dict[str, int] | None:
        """``{attribute: number of values}`` of a synthetic world (null for a plain folder)."""
        if self._read()["attributes"] is None:
            return None
        from litbrain.datamodules.fmri.synthetic import ATTRIBUTES

        return {a: len(v) for a, v in ATTRIBUTES.items()}

    def split_rows(self, split: str) -> dict[str, Any]:
        """Everything about one split: ``ids``, ``captions`` (lists per stimulus), ``images`` (uint8, N x H x W x 3),
        ``attributes`` (``{name: (N,)}`` or None)."""
        d = self._read()
        rows = d["splits"][split]
        return {"ids": [d["ids"][r] for r in rows], "captions": [d["captions"][r] for r in rows],
                "images": d["images"][rows],
                "attributes": None if d["attributes"] is None else {a: v[rows] for a, v in d["attributes"].items()}}

    def setup(self, stage: str | None = None) -> None:
        self._read()

    def _dataset(self, split: str) -> _Items:
        d = self._read()
        return _Items(d["images"], d["ids"], d["captions"], d["splits"][split], d["attributes"], self.items, self.seed)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        ds = self._dataset(split)
        if split == "train" and self.trainer is not None:
            ds.epoch = int(self.trainer.current_epoch)
        g = torch.Generator().manual_seed(self.seed + (int(self.trainer.current_epoch) if self.trainer else 0))
        return DataLoader(ds, batch_size=self.batch_size, shuffle=shuffle, num_workers=self.num_workers,
                          collate_fn=collate_image_captions, generator=g if shuffle else None, drop_last=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", False)
