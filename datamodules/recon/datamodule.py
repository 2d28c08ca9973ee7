"""Reconstruction targets beside a prepared fMRI dataset, and the DataModule that serves them.

``prepare_recon`` aligns the two pipeline targets computed by ``embed-images`` / ``embed-captions``
with a pipeline (``<raw>/embeddings/latents.npz``: VAE latents ``(N, C, h, w)``;
``<raw>/embeddings/conditioning.npz``: caption conditioning ``(N, 77, D)``) to the rows of the
prepared ``stimuli.tsv`` and writes, under ``<prepared>/recon/``::

    latents.npy        (N, C, h, w) float32   VAE latents x scaling factor
    conditioning.npy   (N, T, D)    float16   the pipeline's prompt conditioning (float16: it is large)
    recon.json         shapes, sources, the pipeline, a fingerprint of the inputs

:class:`ReconDataModule` is the :class:`~litbrain.datamodules.FmriDataModule` (same loaders and
batches) whose batches also hold ``latents`` (B, C, h, w) and ``conditioning`` (B, T, D) float32.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from litbrain.errors import DataError
from litbrain.utils.io import atomic_dir

from ..fmri.datamodule import FmriDataModule, _Embeddings
from ..io import MmapRows, content_fingerprint

__all__ = ["ReconDataModule", "prepare_recon", "read_recon_manifest"]

_FORMAT = "litbrain-recon-targets/1"


def _load_targets(path: Path, what: str, ndim: int, fix: str) -> tuple[np.ndarray, np.ndarray, dict]:
    if not path.is_file():
        raise DataError(f"{path}: {what} not found; fix: {fix}")
    with np.load(path, allow_pickle=False) as f:
        ids, emb, meta = f["ids"].astype(str), f["embeddings"], json.loads(str(f["meta"][()]))
    if emb.ndim != ndim + 1:
        raise DataError(f"{path}: {what} have shape {emb.shape[1:]} per stimulus, expected {ndim} dimensions; fix: {fix}")
    return ids, emb, meta


def prepare_recon(prepared_dir: str | os.PathLike, raw_dir: str | os.PathLike,
                  latents: str = "embeddings/latents.npz", conditioning: str = "embeddings/conditioning.npz",
                  overwrite: bool = False) -> Path:
    """Write ``<prepared_dir>/recon/`` (latents + conditioning aligned to the prepared stimuli).

    Args:
        prepared_dir: a dataset written by ``litbrain fmri prepare``.
        raw_dir: its raw folder (``latents`` / ``conditioning`` are relative to it unless absolute).
        latents: ``embed-images`` output of a pipeline's VAE (``encoder: <pipeline folder>``).
        conditioning: ``embed-captions`` output of the pipeline's text encoder.
        overwrite: replace targets made from other inputs (same inputs = no work).
    """
    prep, raw = Path(prepared_dir), Path(raw_dir)
    if not (prep / "stimuli.tsv").is_file():
        raise DataError(f"{prep / 'stimuli.tsv'}: not found; fix: run `litbrain fmri prepare` first")
    lat_p = Path(latents) if Path(latents).is_absolute() else raw / latents
    cond_p = Path(conditioning) if Path(conditioning).is_absolute() else raw / conditioning
    fp = content_fingerprint([("stimuli.tsv", prep / "stimuli.tsv"), ("latents", lat_p), ("conditioning", cond_p)],
                             {"format": _FORMAT})
    out = prep / "recon"
    if (out / "recon.json").is_file() and not overwrite:
        if json.loads((out / "recon.json").read_text()).get("fingerprint") == fp:
            return out
        raise DataError(f"{out}: holds targets from other inputs; fix: pass --overwrite true to replace them")
    fix_l = "run `litbrain embed-images` with the pipeline folder as encoder (configs/recon/embed_latents_demo.yaml)"
    fix_c = "run `litbrain embed-captions` with the pipeline folder as encoder (configs/recon/embed_conditioning_demo.yaml)"
    lid, lat, lmeta = _load_targets(lat_p, "VAE latents", 3, fix_l)
    cid, cond, cmeta = _load_targets(cond_p, "caption conditioning", 2, fix_c)
    import pandas as pd

    ids = pd.read_csv(prep / "stimuli.tsv", sep="\t", dtype={"stimulus_id": str})["stimulus_id"].tolist()
    rows = []
    for name, have in (("latents", lid), ("conditioning", cid)):
        pos = {s: i for i, s in enumerate(have)}
        miss = [s for s in ids if s not in pos]
        if miss:
            raise DataError(f"{lat_p if name == 'latents' else cond_p}: no {name} for {len(miss)} prepared stimuli "
                            f"(e.g. {miss[:3]}); fix: embed the same raw folder's stimuli")
        rows.append(np.asarray([pos[s] for s in ids]))
    with atomic_dir(out, overwrite=True) as tmp:
        np.save(tmp / "latents.npy", np.ascontiguousarray(lat[rows[0]], dtype=np.float32))
        np.save(tmp / "conditioning.npy", np.ascontiguousarray(cond[rows[1]], dtype=np.float16))
        meta = {"format": _FORMAT, "fingerprint": fp, "latent_shape": list(lat.shape[1:]),
                "conditioning_shape": list(cond.shape[1:]), "latents": str(lat_p), "conditioning": str(cond_p),
                "pipeline": lmeta.get("encoder"), "text_pipeline": cmeta.get("encoder")}
        (tmp / "recon.json").write_text(json.dumps(meta, indent=2))
    print(f"wrote {out}: latents {tuple(lat.shape[1:])}, conditioning {tuple(cond.shape[1:])} for {len(ids)} stimuli")
    return out


def read_recon_manifest(prepared_dir: str | os.PathLike) -> dict:
    path = Path(prepared_dir) / "recon" / "recon.json"
    if not path.is_file():
        raise DataError(f"{path}: not found; fix: run `litbrain recon prepare` for {prepared_dir}")
    meta = json.loads(path.read_text())
    if meta.get("format") != _FORMAT:
        raise DataError(f"{path}: unknown format {meta.get('format')!r}; fix: re-run `litbrain recon prepare`")
    return meta


class _ReconEmbeddings(_Embeddings):
    def __init__(self, data_dir: Path, text: bool):
        super().__init__(data_dir, text)
        self.latents = MmapRows(data_dir / "recon" / "latents.npy")
        self.conditioning = MmapRows(data_dir / "recon" / "conditioning.npy")

    def gather(self, stim: np.ndarray, out: dict) -> None:
        super().gather(stim, out)
        order = np.argsort(stim, kind="stable")
        inv = np.empty_like(order)
        inv[order] = np.arange(order.size)
        for key, rows in (("latents", self.latents), ("conditioning", self.conditioning)):
            out[key] = torch.from_numpy(np.ascontiguousarray(rows.take(stim[order])[inv], dtype=np.float32))


class ReconDataModule(FmriDataModule):
    """:class:`FmriDataModule` whose batches also hold ``latents`` and ``conditioning`` (see the module doc).

    Args: those of :class:`FmriDataModule`; ``data_dir`` must hold ``recon/`` (``litbrain recon prepare``).
    """

    def __init__(self, data_dir: str, subjects: list[str] | None = None, batch_size: int = 64, num_workers: int = 0,
                 train_fraction: float = 1.0, seed: int = 0):
        super().__init__(data_dir, subjects, batch_size, num_workers, train_fraction, seed)
        self.recon = read_recon_manifest(self.data_dir)
        self.latent_shape: tuple[int, ...] = tuple(int(x) for x in self.recon["latent_shape"])
        self.conditioning_shape: tuple[int, ...] = tuple(int(x) for x in self.recon["conditioning_shape"])
        self.pipeline: str | None = self.recon.get("pipeline")

    def _embeddings(self) -> _Embeddings:
        if self._emb is None:
            self._emb = _ReconEmbeddings(self.data_dir, self.text_embedding_dim is not None)
        return self._emb
