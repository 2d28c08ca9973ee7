"""Encoding models, image -> voxels (LLM-VEM), as a LightningModule.

Batches come from :class:`~litbrain.datamodules.EncodingDataModule` (the fMRI batches read the
other way round): ``image_embedding`` (B, *shape) is the input, ``brain`` ``{subject: (b_s, V_s)}``
the z-scored betas to predict, ``text_embedding`` (B, D) the embedding of each stimulus' detailed
description. Loss = voxel regression (``mse`` or ``1 - correlation``) + ``alignment_weight`` x
a contrastive loss between the trunk's projected features and the description embeddings
(LLM-VEM: a small weight is best; 0 = the plain encoding model).
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from litbrain import losses
from litbrain.errors import ConfigError, SubjectMismatchError
from litbrain.nn.subject_adapter import freeze_all_but_adapters
from litbrain.nn.voxel_encoder import VoxelEncoder, VoxelEncoderConfig
from litbrain.tasks.base import LitbrainTask, merge_subjects

__all__ = ["EncodingTask", "encoding_loss", "batch_correlation"]


def batch_correlation(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Pearson r per voxel (column) over the rows of a batch, (V,)."""
    p = pred - pred.mean(0)
    t = target - target.mean(0)
    return (p * t).sum(0) / (p.norm(dim=0) * t.norm(dim=0) + eps)


def split_rows(x: torch.Tensor, brain: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rows of ``x`` (groups concatenated in ``brain``'s order) as ``{subject: rows}``."""
    return dict(zip(brain, torch.split(x, [b.shape[0] for b in brain.values()])))


def encoding_loss(model: VoxelEncoder, batch: dict[str, Any], h: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    """Voxel regression + ``h.alignment_weight`` x contrastive alignment; kept free of Lightning."""
    brain = batch["brain"]
    out = model(split_rows(batch["image_embedding"], brain))
    n = sum(b.shape[0] for b in brain.values())
    terms = []
    for s, y in brain.items():
        pred = out["voxels"][s]
        if h.loss == "mse":
            term = F.mse_loss(pred, y)
        else:
            term = 1.0 - batch_correlation(pred, y).mean()
        terms.append(term * y.shape[0] / n)
    regression = torch.stack(terms).sum()
    logs: dict[str, Any] = {"train/regression": regression.detach()}
    loss = regression
    if h.alignment_weight > 0:
        if "alignment" not in out or "text_embedding" not in batch:
            raise ConfigError("model.alignment_weight > 0 needs description embeddings; fix: prepare with "
                              "`litbrain encoding prepare` (text targets) or set model.init_args.alignment_weight 0")
        if h.alignment_loss == "soft_clip":
            align = losses.soft_clip_loss(out["alignment"], batch["text_embedding"], h.alignment_temperature)
        else:
            align = losses.info_nce(out["alignment"], batch["text_embedding"], h.alignment_temperature)
        loss = loss + h.alignment_weight * align
        logs["train/alignment"] = align.detach()
    return loss, logs


class EncodingTask(LitbrainTask):
    """Frozen image features -> shared trunk -> per-subject readouts, with LLM-VEM's text alignment.

    Args:
        net: the model's config (:class:`~litbrain.nn.voxel_encoder.VoxelEncoderConfig`); subjects,
            feature shape and text width come from the datamodule when omitted.
        lr / weight_decay / warmup_fraction: AdamW with the one-cycle schedule of ``tasks/base.py``.
        loss: ``mse`` (on z-scored betas) or ``correlation`` (1 - mean voxel r over the batch).
        alignment_weight: weight of the contrastive alignment to the description embeddings (0 = off).
        alignment_loss: ``soft_clip`` or ``info_nce``.
        alignment_temperature: temperature of that loss.
        init_from: checkpoint, release or Hub id of an encoding model to start from; data subjects it
            lacks get fresh readouts (a new subject is one more readout).
        freeze: ``all_but_readouts`` trains only the readouts of the data's subjects; ``none`` everything.
    """

    config_class = VoxelEncoderConfig

    def __init__(
        self,
        net: VoxelEncoderConfig | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        warmup_fraction: float = 0.1,
        loss: Literal["mse", "correlation"] = "mse",
        alignment_weight: float = 0.0,
        alignment_loss: Literal["soft_clip", "info_nce"] = "soft_clip",
        alignment_temperature: float = 0.05,
        init_from: str | None = None,
        freeze: Literal["none", "all_but_readouts"] = "none",
    ) -> None:
        super().__init__()
        if loss not in ("mse", "correlation"):
            raise ConfigError(f"model.loss={loss!r}; fix: use 'mse' or 'correlation'")
        if alignment_loss not in ("soft_clip", "info_nce"):
            raise ConfigError(f"model.alignment_loss={alignment_loss!r}; fix: use 'soft_clip' or 'info_nce'")
        if alignment_weight < 0:
            raise ConfigError(f"model.alignment_weight={alignment_weight}; fix: a weight >= 0 (0 = no alignment)")
        if freeze not in ("none", "all_but_readouts"):
            raise ConfigError(f"model.freeze={freeze!r}; fix: use 'none' or 'all_but_readouts'")
        self.save_hyperparameters()
        self.init_net(net)
        self.model: VoxelEncoder | None = None
        self._data_subjects: list[str] = []
        self._init_state: dict[str, torch.Tensor] | None = None
        self._eval: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]] = {}

    def checkpoint_monitor(self) -> tuple[str, str] | None:
        return ("val/mean_r", "max")

    # ------------------------------------------------------------------ building
    def _net_from_data(self) -> None:
        net, h = self.net, self.hparams
        source = f"model.init_args.init_from={h.init_from}" if h.init_from else "model.init_args.net.subjects"
        if h.init_from and self.model is None and self._init_state is None:
            src = self.read_init(h.init_from)
            net = src.config.replace(subjects=merge_subjects(src.config.subjects, net.subjects or {}, source, "voxels"),
                                     dropout=net.dropout)
            self._init_state = src.state
        dm = self.datamodule
        if dm is not None:
            data_subjects = {s: int(n) for s, n in dm.subject_voxels.items()}
            self._data_subjects = list(data_subjects)
            shape = list(dm.image_embedding_shape)
            if net.feature_shape is not None and list(net.feature_shape) != shape:
                raise SubjectMismatchError(f"model.init_args.net.feature_shape={list(net.feature_shape)} but the data's "
                                           f"image features have shape {shape}; fix: prepare with the same features")
            text = net.text_embedding_dim if net.text_embedding_dim is not None else (
                int(dm.text_embedding_dim) if dm.text_embedding_dim else None)
            net = net.replace(subjects=merge_subjects(net.subjects or {}, data_subjects, source, "voxels"),
                              feature_shape=shape, text_embedding_dim=text)
        self.net = net

    def setup(self, stage: str) -> None:
        self._net_from_data()
        if self.net.missing():
            raise ConfigError(f"EncodingTask needs model.init_args.net.{self.net.missing()[0]}, or a datamodule that "
                              f"provides it (data.init_args.data_dir)")

    def configure_model(self) -> None:
        if self.model is not None:
            return
        if self.net.missing():
            self.setup("fit")
        self.model = VoxelEncoder(self.net)
        if self._init_state is not None:
            self.load_per_subject_init("readout")
        if self.hparams.freeze == "all_but_readouts":
            freeze_all_but_adapters(self.model, self._data_subjects or None)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.add_checkpoint_subjects(checkpoint, "voxels")

    # ------------------------------------------------------------------ training
    def forward(self, features: dict[str, torch.Tensor]) -> dict[str, Any]:
        assert self.model is not None, "call configure_model() first"
        return self.model(features)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, logs = encoding_loss(self.model, batch, self.hparams)
        n = batch["subject"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log_dict(logs, batch_size=n)
        return loss

    # ------------------------------------------------------------------ evaluation: voxel r over the whole split
    def _eval_step(self, batch: dict[str, Any]) -> None:
        s = self.subject_of(batch)
        pred = self({s: batch["image_embedding"]})["voxels"][s]
        preds, targets = self._eval.setdefault(s, ([], []))
        preds.append(pred.detach().float().cpu())
        targets.append(batch["brain"][s].float().cpu())

    def _eval_epoch_end(self, prefix: str) -> None:
        values = {}
        for s, (preds, targets) in self._eval.items():
            r = batch_correlation(torch.cat(preds), torch.cat(targets))
            values[s] = {"mean_r": r.mean(), "median_r": r.median()}
        self._eval = {}
        if values:
            self.log_per_subject(prefix, values, prog_bar=("mean_r",))

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        s = self.subject_of(batch)
        return {"subject": s, "stimulus": batch["stimulus"], "voxels": self({s: batch["image_embedding"]})["voxels"][s]}
