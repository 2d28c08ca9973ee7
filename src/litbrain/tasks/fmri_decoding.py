"""Cross-subject fMRI decoding (See Through Their Minds / MindEye2) as a LightningModule.

Batches follow ``litbrain.datamodules.fmri``: ``brain`` is ``{subject: (b_s, V_s)}``; the
targets are ``image_embedding`` (B, *shape) and optionally ``text_embedding`` (B, D).
Training runs BiMixCo for the first ``mixco_fraction`` of the optimiser steps, then SoftCLIP
with a cosine-annealed temperature, plus the text contrastive term when text targets exist.
"""

from __future__ import annotations

from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from litbrain import losses
from litbrain.metrics import RetrievalMetrics
from litbrain.nn import BrainDecoder, freeze_all_but_adapters
from litbrain.nn.subject_adapter import AdapterKind


class SubjectMismatchError(ValueError):
    """A checkpoint's adapters do not fit the data (voxel counts differ)."""


def merge_subjects(known: dict[str, int], data: dict[str, int], source: str) -> dict[str, int]:
    """Union of a checkpoint's subjects and the data's; a shared subject must agree on size."""
    for s, n in data.items():
        if s in known and int(known[s]) != int(n):
            raise SubjectMismatchError(
                f"{source}: the adapter of subject {s!r} expects {known[s]} voxels but the data has {n}; "
                f"fix: prepare {s} with the same ROI mask as the checkpoint, or train a new adapter "
                f"under another subject id"
            )
    merged = {k: int(v) for k, v in known.items()}
    merged.update({k: int(v) for k, v in data.items()})
    return merged


def decoder_loss(
    model: BrainDecoder, batch: dict[str, Any], progress: float, h: Any
) -> tuple[torch.Tensor, dict[str, float]]:
    """The training objective at ``progress`` (0..1 of the optimiser steps).

    BiMixCo (mixing within each subject's group) before ``h.mixco_fraction``, then SoftCLIP
    with its temperature cosine-annealed over the rest; plus the text term and optional MSE.
    ``h`` holds the task's hyper-parameters. Kept free of Lightning so a bare PyTorch loop
    (the benchmark's reference) computes exactly the same thing.
    """
    in_mixco = progress < h.mixco_fraction
    target = batch["image_embedding"]
    brain = batch["brain"]
    logs: dict[str, float] = {"train/mixco": float(in_mixco)}
    if in_mixco:
        mixed, perms, lams, offset = {}, [], [], 0
        for s, x in brain.items():
            # Mix only within a subject: voxel spaces of different subjects don't align.
            mixed[s], perm, lam, _ = losses.mixco(x, h.mixco_beta, h.mixco_prob)
            perms.append(perm + offset)
            lams.append(lam)
            offset += x.shape[0]
        out = model(mixed)
        perm, lam = torch.cat(perms), torch.cat(lams)
        clip_loss = losses.mixco_nce(out["image_projection"], target, perm, lam, h.mixco_temperature)
        text_w = h.text_weight_mixco
    else:
        out = model(brain)
        phase = (progress - h.mixco_fraction) / max(1 - h.mixco_fraction, 1e-8)
        temp = losses.cosine_anneal(h.softclip_temperature_start, h.softclip_temperature_end, phase)
        clip_loss = losses.soft_clip_loss(out["image_projection"], target, temp)
        text_w = h.text_weight
        logs["train/softclip_temperature"] = temp
    loss = clip_loss
    logs["train/clip_loss"] = clip_loss.detach()
    if "text_embedding" in out and "text_embedding" in batch and text_w > 0:
        if in_mixco:
            text_loss = losses.mixco_nce(out["text_embedding"], batch["text_embedding"], perm, lam, h.text_temperature)
        else:
            text_loss = losses.info_nce(out["text_embedding"], batch["text_embedding"], h.text_temperature)
        loss = loss + text_w * text_loss
        logs["train/text_loss"] = text_loss.detach()
    if h.image_mse_weight > 0:
        mse = F.mse_loss(out["image_embedding"], target)
        loss = loss + h.image_mse_weight * mse
        logs["train/image_mse"] = mse.detach()
    return loss, logs


def build_optimizer(
    module: nn.Module, h: Any, total_steps: int
) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
    """AdamW (no weight decay on biases and norm gains) + a one-cycle schedule over ``total_steps``.

    Shared by the task and the benchmark's bare PyTorch loop, so both optimise identically.
    """
    decay, no_decay = [], []
    for p in module.parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": h.weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=h.lr
    )
    if total_steps < 4:  # too short for a warm-up and an annealing phase (smoke runs)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, lambda _: 1.0)
    # OneCycleLR divides by the warm-up length in steps: it must be at least 2 steps.
    pct = min(max(h.warmup_fraction, 2.0 / total_steps), 0.5)
    return opt, torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=h.lr, total_steps=total_steps, pct_start=pct, final_div_factor=1000
    )


class FmriDecodingTask(L.LightningModule):
    """Adapters -> shared residual MLP -> image/text heads, trained contrastively.

    Args:
        subject_voxels: voxel count per subject id; taken from the datamodule when omitted.
        image_embedding_shape / text_embedding_dim: target shapes; from the datamodule when omitted.
        width, n_blocks, adapter, adapter_dropout, dropout, projector: see ``BrainDecoder``.
        lr: peak learning rate of the one-cycle schedule (MindEye2: 3e-4).
        weight_decay: AdamW weight decay (MindEye2's "ridge" adapters use 1e-2).
        warmup_fraction: fraction of steps spent warming up in the one-cycle schedule.
        mixco_fraction: fraction of training run with BiMixCo before switching to SoftCLIP (~1/3).
        mixco_beta, mixco_prob, mixco_temperature: Beta(b, b) mixing, share of mixed rows, InfoNCE temperature.
        softclip_temperature_start / _end: SoftCLIP temperature, cosine-annealed over the SoftCLIP phase.
        text_weight_mixco / text_weight: weight of the text contrastive term in each phase (STTM: 0.5 / 0.2).
        text_temperature: temperature of the text InfoNCE.
        image_mse_weight: optional MSE between the image head output and the target (0 = off).
        retrieval_pool / retrieval_draws: evaluation protocol (300 samples, 30 draws).
        init_from: a Lightning checkpoint or release folder whose weights initialise the model;
            subjects of the data that it lacks get fresh adapters (new-subject transfer).
        freeze: "all_but_adapters" trains only the adapters of the data's subjects (STTM);
            "none" fine-tunes everything (MindEye2).
    """

    def __init__(
        self,
        subject_voxels: dict[str, int] | None = None,
        image_embedding_shape: list[int] | None = None,
        text_embedding_dim: int | None = None,
        width: int = 4096,
        n_blocks: int = 4,
        adapter: AdapterKind = "linear",
        adapter_dropout: float = 0.5,
        dropout: float = 0.15,
        projector: bool = True,
        lr: float = 3e-4,
        weight_decay: float = 1e-2,
        warmup_fraction: float = 0.1,
        mixco_fraction: float = 0.33,
        mixco_beta: float = 0.15,
        mixco_prob: float = 0.5,
        mixco_temperature: float = 0.006,
        softclip_temperature_start: float = 0.004,
        softclip_temperature_end: float = 0.0075,
        text_weight_mixco: float = 0.5,
        text_weight: float = 0.2,
        text_temperature: float = 0.006,
        image_mse_weight: float = 0.0,
        retrieval_pool: int = 300,
        retrieval_draws: int = 30,
        init_from: str | None = None,
        freeze: Literal["none", "all_but_adapters"] = "none",
    ) -> None:
        super().__init__()
        if freeze not in ("none", "all_but_adapters"):
            raise ValueError(f"model.freeze={freeze!r}; fix: use 'none' or 'all_but_adapters'")
        self.save_hyperparameters()
        self.model: BrainDecoder | None = None
        self._data_subjects: list[str] = []
        self._val_metrics = nn.ModuleDict()
        self._test_metrics = nn.ModuleDict()

    # ------------------------------------------------------------------ building
    def _hparams_from_datamodule(self) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        if dm is None:
            return
        data_subjects = {s: int(n) for s, n in dm.subject_voxels.items()}
        self._data_subjects = list(data_subjects)
        known = dict(self.hparams.subject_voxels or {})
        init_subjects: dict[str, int] = {}
        if self.hparams.init_from and self.model is None:
            from litbrain.hub import read_decoder_config

            cfg = read_decoder_config(self.hparams.init_from)
            init_subjects = cfg["subjects"]
            for key in ("image_embedding_shape", "text_embedding_dim", "width", "n_blocks", "adapter", "projector"):
                if key in cfg:
                    self.hparams[key] = cfg[key]
        if init_subjects:
            merge_subjects(init_subjects, data_subjects, f"model.init_from={self.hparams.init_from}")
            known = merge_subjects(init_subjects, known, f"model.init_from={self.hparams.init_from}")
        self.hparams.subject_voxels = merge_subjects(known, data_subjects, "model.subject_voxels")
        if self.hparams.image_embedding_shape is None:
            self.hparams.image_embedding_shape = list(dm.image_embedding_shape)
        elif tuple(self.hparams.image_embedding_shape) != tuple(dm.image_embedding_shape):
            raise SubjectMismatchError(
                f"model.image_embedding_shape={list(self.hparams.image_embedding_shape)} but the data's "
                f"targets have shape {list(dm.image_embedding_shape)}; fix: prepare matching targets"
            )
        if self.hparams.text_embedding_dim is None and dm.text_embedding_dim:
            self.hparams.text_embedding_dim = int(dm.text_embedding_dim)

    def setup(self, stage: str) -> None:
        self._hparams_from_datamodule()
        if not self.hparams.subject_voxels or self.hparams.image_embedding_shape is None:
            raise ValueError(
                "FmriDecodingTask needs model.subject_voxels and model.image_embedding_shape, "
                "or a datamodule that provides them (data.data_dir)"
            )
        for s in self._data_subjects or list(self.hparams.subject_voxels):
            self._val_metrics[s] = RetrievalMetrics(self.hparams.retrieval_pool, self.hparams.retrieval_draws)
            self._test_metrics[s] = RetrievalMetrics(self.hparams.retrieval_pool, self.hparams.retrieval_draws)

    def build_decoder(self) -> BrainDecoder:
        h = self.hparams
        return BrainDecoder(
            subjects=dict(h.subject_voxels),
            image_embedding_shape=list(h.image_embedding_shape),
            text_embedding_dim=h.text_embedding_dim,
            width=h.width,
            n_blocks=h.n_blocks,
            adapter=h.adapter,
            adapter_dropout=h.adapter_dropout,
            dropout=h.dropout,
            projector=h.projector,
        )

    def configure_model(self) -> None:
        # Layers are built here, not in __init__, so DeepSpeed ZeRO-3 can shard them at init.
        if self.model is not None:
            return
        if not self.hparams.subject_voxels:
            self.setup("fit")
        self.model = self.build_decoder()
        if self.hparams.init_from:
            from litbrain.hub import read_decoder_state_dict

            state = read_decoder_state_dict(self.hparams.init_from)
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            new = set(self.hparams.subject_voxels) - {k.split(".")[2] for k in state if k.startswith("adapter.maps.")}
            bad_missing = [k for k in missing if not any(k.startswith(f"adapter.maps.{s}.") for s in new)]
            if bad_missing or unexpected:
                raise SubjectMismatchError(
                    f"model.init_from={self.hparams.init_from}: weights do not fit the model "
                    f"(missing {bad_missing[:5]}, unexpected {unexpected[:5]}); fix: use a checkpoint "
                    f"of the same architecture"
                )
        if self.hparams.freeze == "all_but_adapters":
            freeze_all_but_adapters(self.model, self._data_subjects or None)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Called after configure_model and before the weights load: make sure the model has
        # every adapter the checkpoint holds, and that shared subjects agree on voxel counts.
        saved = checkpoint.get("hyper_parameters", {}).get("subject_voxels") or {}
        if self.model is None or not saved:
            return
        current = self.model.subjects
        merge_subjects(saved, current, "checkpoint")
        for s, n in saved.items():
            if s not in current:
                self.model.adapter.add_subject(s, int(n))
        self.hparams.subject_voxels = merge_subjects(saved, current, "checkpoint")

    # ------------------------------------------------------------------ training
    def forward(self, brain: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        assert self.model is not None, "call configure_model() first"
        return self.model(brain)

    def on_train_start(self) -> None:
        self._total_steps = max(int(self.trainer.estimated_stepping_batches), 1)

    def _progress(self) -> float:
        total = getattr(self, "_total_steps", None) or max(int(self.trainer.estimated_stepping_batches), 1)
        return self.global_step / total

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, logs = decoder_loss(self.model, batch, self._progress(), self.hparams)
        n = batch["subject"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        # The loss terms only on logging steps: each self.log walks every stored metric, and
        # per-step logging of all terms was most of Lightning's overhead over a bare loop.
        trainer = self.trainer
        if trainer.loggers and (trainer.global_step + 1) % max(trainer.log_every_n_steps, 1) == 0:
            self.log_dict(logs, batch_size=n)
        return loss

    # ------------------------------------------------------------------ evaluation
    def _subject_of(self, batch: dict[str, Any]) -> str:
        (subject,) = batch["brain"].keys()  # evaluation loaders hold one subject each
        return subject

    def _eval_step(self, batch: dict[str, Any], metrics: nn.ModuleDict) -> None:
        subject = self._subject_of(batch)
        out = self(batch["brain"])
        metrics[subject].update(out["image_projection"], batch["image_embedding"])

    def _eval_epoch_end(self, metrics: nn.ModuleDict, prefix: str) -> None:
        totals: dict[str, list[torch.Tensor]] = {}
        for subject, metric in metrics.items():
            if not metric.update_called:
                continue
            for name, value in metric.compute().items():
                self.log(f"{prefix}/{subject}/{name}", value, sync_dist=False)
                totals.setdefault(name, []).append(value)
            metric.reset()
        for name, values in totals.items():
            self.log(f"{prefix}/{name}", torch.stack(values).mean(), prog_bar=name != "chance")

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, self._val_metrics)

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end(self._val_metrics, "val")

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, self._test_metrics)

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end(self._test_metrics, "test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        out = self(batch["brain"])
        return {"subject": self._subject_of(batch), "stimulus": batch["stimulus"], **out}

    # ------------------------------------------------------------------ optimisation
    def configure_optimizers(self) -> dict[str, Any]:
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        opt, sched = build_optimizer(self, self.hparams, total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
