"""Cross-subject fMRI decoding (See Through Their Minds / MindEye2) as a LightningModule.

Batches follow ``litbrain.datamodules.fmri``: ``brain`` is ``{subject: (b_s, V_s)}``; the
targets are ``image_embedding`` (B, *shape) and optionally ``text_embedding`` (B, D).
Training runs BiMixCo for the first ``mixco_fraction`` of the optimiser steps, then SoftCLIP
with a cosine-annealed temperature, plus the text contrastive term when text targets exist.
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from lightning.pytorch.utilities import rank_zero_info
from torch import nn

from litbrain import losses
from litbrain.errors import ConfigError, SubjectMismatchError
from litbrain.metrics import RetrievalMetrics, retrieval_score
from litbrain.nn.fmri_decoder import BrainDecoder, BrainDecoderConfig
from litbrain.nn.registry import build_model
from litbrain.nn.ridge import fit_ridge, fit_ridge_folds
from litbrain.nn.subject_adapter import freeze_all_but_adapters
from litbrain.tasks.base import LitbrainTask, merge_subjects

__all__ = ["FmriDecodingTask", "decoder_loss"]


class _OutOfFoldRidge:
    """The decoder with each training row's ridge adapter replaced by the fold map that never saw its stimulus.

    Training the shared stage on out-of-fold ridge predictions gives it inputs as noisy as those it
    meets on val/test (in-sample predictions are fitted to their own noise). ``rows`` (one fold index
    per row, per subject, set before each call) picks the map of every row. A plain callable, not a
    module: the fold maps are training-time state, never part of the task's state_dict or a release.
    """

    def __init__(self, model: BrainDecoder, weights: dict[str, torch.Tensor], biases: dict[str, torch.Tensor]):
        self.model = model
        self.weights, self.biases = weights, biases  # {subject: (K, V, D)}, {subject: (K, D)}
        self.rows: dict[str, torch.Tensor] = {}

    def __call__(self, brain: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        parts = []
        for s, x in brain.items():
            fold = self.rows[s]
            a = x.new_empty(x.shape[0], self.weights[s].shape[-1])
            for k in fold.unique().tolist():
                m = fold == k
                a[m] = x[m] @ self.weights[s][k] + self.biases[s][k]
            parts.append(a)
        return self.model.decode(torch.cat(parts))


def decoder_loss(
    model: BrainDecoder, batch: dict[str, Any], progress: float, h: Any, keep: dict[str, Any] | None = None
) -> tuple[torch.Tensor, dict[str, float]]:
    """The training objective at ``progress`` (0..1 of the optimiser steps).

    BiMixCo (mixing within each subject's group) before ``h.mixco_fraction``, then SoftCLIP
    with its temperature cosine-annealed over the rest; plus the text term and optional MSE.
    ``h`` holds the task's hyper-parameters. Kept free of Lightning so a bare PyTorch loop
    (the benchmark's reference) computes exactly the same thing. ``keep``, when given, receives the
    model's outputs (``out``) and, in the BiMixCo phase, the mixing (``perm``, ``lam``), for tasks that
    add terms on the same forward pass.
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
    if keep is not None:
        keep["out"] = out
        if in_mixco:
            keep["perm"], keep["lam"] = perm, lam
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


class FmriDecodingTask(LitbrainTask):
    """Adapters -> shared residual MLP -> image/text heads, trained contrastively.

    Args:
        net: the decoder's config (:class:`~litbrain.nn.fmri_decoder.BrainDecoderConfig`: width,
            n_blocks, adapter, ...); subjects and target shapes come from the datamodule when omitted.
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
        init_from: a Lightning checkpoint, release folder or Hub repo id of a decoder whose config and
            weights start the model; subjects of the data that it lacks get fresh adapters
            (new-subject transfer).
        freeze: "all_but_adapters" trains only the adapters of the data's subjects (STTM);
            "none" fine-tunes everything (MindEye2).
        ridge_alphas: with ``net.adapter: ridge``, the ridge penalties (relative to the mean Gram
            eigenvalue, as the evaluation's baseline) tried per subject; the one with the best val
            retrieval (both directions, the metric the evaluation reports) is fitted on train and frozen.
        ridge_folds: with ``net.adapter: ridge``, folds (grouped by stimulus) of the out-of-fold ridge
            predictions the shared stage trains on; 0 trains on the in-sample predictions.
    """

    config_class = BrainDecoderConfig

    def __init__(
        self,
        net: BrainDecoderConfig | None = None,
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
        ridge_alphas: list[float] = [1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1000.0],
        ridge_folds: int = 5,
    ) -> None:
        super().__init__()
        if freeze not in ("none", "all_but_adapters"):
            raise ConfigError(f"model.freeze={freeze!r}; fix: use 'none' or 'all_but_adapters'")
        self.save_hyperparameters()
        self.init_net(net)
        self.model: BrainDecoder | None = None
        self._data_subjects: list[str] = []
        self._init_state: dict[str, torch.Tensor] | None = None
        self._val_metrics = nn.ModuleDict()
        self._test_metrics = nn.ModuleDict()
        self._oof: _OutOfFoldRidge | None = None
        self._fold_of: dict[str, torch.Tensor] = {}

    def checkpoint_monitor(self) -> tuple[str, str] | None:
        return ("val/brain_to_image", "max")  # mean over subjects of val top-1 brain->image

    # ------------------------------------------------------------------ building
    def _net_from_data(self) -> None:
        """Fill the config from init_from (its architecture and subjects) and the datamodule (subjects, shapes)."""
        net = self.net
        h = self.hparams
        source = "model.init_args.net.subjects"
        if h.init_from:
            source = f"model.init_args.init_from={h.init_from}"
        if h.init_from and self.model is None and self._init_state is None:
            src = self.read_init(h.init_from)
            key = source
            net = src.config.replace(subjects=merge_subjects(src.config.subjects, net.subjects or {}, key, "voxels"),
                                     dropout=net.dropout, adapter_dropout=net.adapter_dropout)
            self._init_state = src.state
        dm = self.datamodule
        if dm is not None:
            data_subjects = {s: int(n) for s, n in dm.subject_voxels.items()}
            self._data_subjects = list(data_subjects)
            subjects = merge_subjects(net.subjects or {}, data_subjects, source, "voxels")
            shape = list(dm.image_embedding_shape)
            if net.image_embedding_shape is not None and list(net.image_embedding_shape) != shape:
                raise SubjectMismatchError(
                    f"model.init_args.net.image_embedding_shape={list(net.image_embedding_shape)} but the data's "
                    f"targets have shape {shape}; fix: prepare matching targets")
            text = net.text_embedding_dim if net.text_embedding_dim is not None else (
                int(dm.text_embedding_dim) if dm.text_embedding_dim else None)
            net = net.replace(subjects=subjects, image_embedding_shape=shape, text_embedding_dim=text)
        self.net = net

    def setup(self, stage: str) -> None:
        self._net_from_data()
        net = self.net
        if net.missing():
            raise ConfigError(f"FmriDecodingTask needs model.init_args.net.{net.missing()[0]}, or a datamodule that "
                              f"provides it (data.init_args.data_dir)")
        for s in self._data_subjects or list(net.subjects):
            self._val_metrics[s] = RetrievalMetrics(self.hparams.retrieval_pool, self.hparams.retrieval_draws)
            self._test_metrics[s] = RetrievalMetrics(self.hparams.retrieval_pool, self.hparams.retrieval_draws)

    def configure_model(self) -> None:
        # Layers are built here, not in __init__, so DeepSpeed ZeRO-3 can shard them at init.
        if self.model is not None:
            return
        if self.net.missing():
            self.setup("fit")
        self.model = build_model(self.net, "model.init_args.net")  # BrainDecoder (or a subclass's model)
        if self._init_state is not None:
            self.load_per_subject_init("adapter")
        if self.net.adapter == "ridge":  # fitted in closed form (fit_ridge_adapters), never by the optimiser
            self.model.adapter.requires_grad_(False)
        if self.hparams.freeze == "all_but_adapters":
            freeze_all_but_adapters(self.model, self._data_subjects or None)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Called after configure_model and before the weights load: make sure the model has
        # every adapter the checkpoint holds, and that shared subjects agree on voxel counts.
        self.add_checkpoint_subjects(checkpoint, "voxels")

    # ------------------------------------------------------------------ training
    def forward(self, brain: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        assert self.model is not None, "call configure_model() first"
        return self.model(brain)

    def on_train_start(self) -> None:
        self._total_steps = max(int(self.trainer.estimated_stepping_batches), 1)

    def on_fit_start(self) -> None:
        if self.net.adapter == "ridge":
            self.fit_ridge_adapters()

    @torch.no_grad()
    def fit_ridge_adapters(self) -> dict[str, float]:
        """``net.adapter: ridge``: fit each data subject's adapter in closed form and freeze it.

        Per subject: ridge from the training rows to the image targets for every ``ridge_alphas``,
        the penalty with the best val top-1 retrieval (brain->image + image->brain) kept; the map is
        scaled so its predictions have unit mean s.d. (the shared stage's input scale) and copied
        into the adapter, which is frozen. With ``ridge_folds`` > 1, also the fold maps whose
        out-of-fold predictions the shared stage trains on. Deterministic given the data, so a
        resumed fit refits the same maps. Returns the chosen penalty per subject.
        """
        if type(self.model) is not BrainDecoder:
            raise ConfigError(f"model.init_args.net.adapter='ridge' is implemented for BrainDecoder, not "
                              f"{type(self.model).__name__}; fix: use adapter 'linear' or 'sttm'")
        dm = self.datamodule
        if dm is None or not hasattr(dm, "_get_splits"):
            raise ConfigError("net.adapter='ridge' fits its adapters on the datamodule's train/val splits; "
                              "fix: fit with an FmriDataModule (data.init_args.data_dir)")
        h = self.hparams
        targets = torch.from_numpy(np.load(dm.data_dir / "image_embedding.npy")).float().flatten(1)
        pool = int(h.retrieval_pool)
        val_score = lambda p, t: retrieval_score(p, t, pool, 5, 0)  # noqa: E731  (as the evaluation's baseline)
        chosen: dict[str, float] = {}
        weights: dict[str, torch.Tensor] = {}
        biases: dict[str, torch.Tensor] = {}
        dev = self.device
        for s, tr, va in zip(dm.subjects, dm._get_splits("train"), dm._get_splits("val")):
            x_tr = torch.from_numpy(tr.read(np.arange(tr.n)))
            x_va = torch.from_numpy(va.read(np.arange(va.n)))
            y_tr = targets[tr.stimulus]
            ridge = fit_ridge(x_tr, y_tr, list(h.ridge_alphas), x_va, targets[va.stimulus], val_score)
            chosen[s] = ridge.alpha
            maps = [ridge]
            if h.ridge_folds > 1:
                folds, fold = fit_ridge_folds(x_tr, y_tr, tr.stimulus, ridge.alpha, h.ridge_folds)
                maps += folds
                self._fold_of[s] = torch.full((int(tr.stimulus.max()) + 1,), -1, dtype=torch.long)
                self._fold_of[s][torch.from_numpy(tr.stimulus)] = torch.from_numpy(fold).long()
            # (x - x_mean) @ W + y_mean = x @ W + b; scale by the s.d. of the predictions
            scale = float(ridge.predict(x_tr).std(0).mean().clamp_min(1e-8))
            w = torch.stack([(m.weight / scale) for m in maps]).float()
            b = torch.stack([((m.y_mean - m.x_mean @ m.weight) / scale) for m in maps]).float()
            lin = self.model.adapter.maps[self.model.adapter._key(s)]
            lin.weight.copy_(w[0].T)
            lin.bias.copy_(b[0])
            weights[s], biases[s] = w[1:].to(dev), b[1:].to(dev)
        self._oof = _OutOfFoldRidge(self.model, weights, biases) if h.ridge_folds > 1 else None
        rank_zero_info("ridge adapters (penalty chosen on val): " + ", ".join(f"{s} alpha={a:g}" for s, a in chosen.items()))
        return chosen

    def _progress(self) -> float:
        total = getattr(self, "_total_steps", None) or max(int(self.trainer.estimated_stepping_batches), 1)
        return self.global_step / total

    def training_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        """The objective of one training batch and its logged terms (:func:`decoder_loss`).

        With ridge adapters and folds, each row goes through the fold map that never saw its stimulus.
        """
        model = self.model
        if self._oof is not None:
            stim, start = batch["stimulus"], 0
            for s, x in batch["brain"].items():
                rows = stim[start:start + x.shape[0]]
                self._oof.rows[s] = self._fold_of[s].to(rows.device)[rows]
                start += x.shape[0]
            model = self._oof
        return decoder_loss(model, batch, self._progress(), self.hparams)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, logs = self.training_loss(batch)
        n = batch["subject"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        # The loss terms only on logging steps: each self.log walks every stored metric, and
        # per-step logging of all terms was most of Lightning's overhead over a bare loop.
        trainer = self.trainer
        if trainer.loggers and (trainer.global_step + 1) % max(trainer.log_every_n_steps, 1) == 0:
            self.log_dict(logs, batch_size=n)
        return loss

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: dict[str, Any], metrics: nn.ModuleDict) -> None:
        out = self(batch["brain"])
        metrics[self.subject_of(batch)].update(out["image_projection"], batch["image_embedding"])

    def _eval_epoch_end(self, metrics: nn.ModuleDict, prefix: str) -> None:
        values = {}
        for subject, metric in metrics.items():
            if metric.update_called:
                values[subject] = metric.compute()
                metric.reset()
        self.log_per_subject(prefix, values, prog_bar=("brain_to_image", "image_to_brain", "two_way_identification"))

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
        return {"subject": self.subject_of(batch), "stimulus": batch["stimulus"], **out}
