"""WAVE as a LightningModule: self-supervised pretraining of the whole-brain encoder, then contrastive decoding.

``objective``:

* ``next_tr`` (WAVE's): causal next-TR prediction, MSE between ``reconstruct(h_t)`` and ``x_{t+1}``;
* ``masked_parcel``: a ``mask_ratio`` share of (TR, parcel) entries is zeroed and predicted, MSE on them;
* ``contrastive``: the time-pooled window of each event is projected to the image and caption spaces;
  InfoNCE against each, with its own learnable logit scale, averaged (WAVE's fMRI-image + fMRI-text).

Batches come from :class:`~litbrain.datamodules.wave.datamodule.WaveDataModule` (``bold`` (B, T, P)
plus the event targets). ``init_from`` starts from a pretraining checkpoint or release (the
projection heads may be new); validation and test report top-1 retrieval both ways (MindEye
protocol) for ``contrastive`` and the objective's loss otherwise.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F

from litbrain import losses
from litbrain.errors import ConfigError
from litbrain.metrics import top1_retrieval
from litbrain.nn.wave import WaveConfig, WaveEncoder
from litbrain.tasks.base import LitbrainTask

__all__ = ["WaveTask", "wave_loss", "OBJECTIVES"]

OBJECTIVES = ("next_tr", "masked_parcel", "contrastive")


def wave_loss(model: WaveEncoder, batch: dict[str, Any], objective: str, mask_ratio: float = 0.2,
              generator: torch.Generator | None = None, parcel_dropout: float = 0.0) -> torch.Tensor:
    """The training loss of one batch (kept free of Lightning).

    ``parcel_dropout`` (contrastive only): each window's parcels are zeroed at that rate (the same parcels at every
    TR; the kept ones scaled by ``1 / (1 - rate)``), an augmentation against memorising a few hundred events.
    """
    x = batch["bold"].float()
    subject = batch.get("subject") if model.subject_embed is not None else None
    if objective == "next_tr":
        pred = model.reconstruct(model(x[:, :-1], subject))
        return F.mse_loss(pred, x[:, 1:])
    if objective == "masked_parcel":
        m = torch.rand(x.shape, generator=generator, device="cpu").to(x.device) < mask_ratio
        pred = model.reconstruct(model(x.masked_fill(m, 0.0), subject))
        return F.mse_loss(pred[m], x[m])
    if model.image_proj is None or model.text_proj is None:
        raise ConfigError("objective 'contrastive' needs net.image_embedding_dim and net.text_embedding_dim; fix: "
                          "train with an events-mode WaveDataModule, which provides them")
    if parcel_dropout > 0:
        keep = torch.rand(x.shape[0], 1, x.shape[2], generator=generator, device="cpu").to(x.device) >= parcel_dropout
        x = x * keep / (1.0 - parcel_dropout)
    out = model.project(model.embed(x, subject))
    scales = model.logit_scales()
    img = losses.info_nce(out["image"], batch["image_embedding"].float(), 1.0 / scales["image"])
    txt = losses.info_nce(out["text"], batch["text_embedding"].float(), 1.0 / scales["text"])
    return (img + txt) / 2


class WaveTask(LitbrainTask):
    """Whole-brain encoder (:class:`~litbrain.nn.wave.WaveEncoder`): pretraining or contrastive decoding.

    Args:
        net: the encoder's config; ``n_parcels`` and the target widths come from the datamodule.
        objective: ``next_tr``, ``masked_parcel`` or ``contrastive``.
        mask_ratio: share of masked entries for ``masked_parcel`` (WAVE-style masked modelling: 0.2).
        parcel_dropout: contrastive training only: rate at which each window's parcels are zeroed (augmentation).
        lr / weight_decay / warmup_fraction: AdamW + one-cycle (tasks/base.py).
        init_from: checkpoint or release of a wave model (e.g. the pretraining run) to start from; its
            architecture is kept, ``net.dropout`` is this run's.
        seed: seed of the masking draws.
    """

    config_class = WaveConfig

    def __init__(self, net: WaveConfig | None = None, objective: Literal["next_tr", "masked_parcel", "contrastive"] = "next_tr",
                 mask_ratio: float = 0.2, parcel_dropout: float = 0.0, lr: float = 3e-4, weight_decay: float = 0.01, warmup_fraction: float = 0.1,
                 init_from: str | None = None, seed: int = 0) -> None:
        super().__init__()
        if objective not in OBJECTIVES:
            raise ConfigError(f"model.objective={objective!r}; fix: one of {list(OBJECTIVES)}")
        if not 0 <= parcel_dropout < 1:
            raise ConfigError(f"model.parcel_dropout={parcel_dropout}; fix: a value in [0, 1)")
        if not 0 < mask_ratio < 1:
            raise ConfigError(f"model.mask_ratio={mask_ratio}; fix: a value in (0, 1)")
        self.save_hyperparameters()
        self.init_net(net)
        self.model: WaveEncoder | None = None
        self._init_state: dict[str, torch.Tensor] | None = None
        self._eval: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self._losses: list[torch.Tensor] = []
        self._gen = torch.Generator().manual_seed(int(seed))

    def checkpoint_monitor(self) -> tuple[str, str] | None:
        return ("val/top1", "max") if self.hparams.objective == "contrastive" else ("val/loss", "min")

    def setup(self, stage: str) -> None:
        net, h = self.net, self.hparams
        if h.init_from and self._init_state is None and self.model is None:
            src = self.read_init(h.init_from)
            # the architecture comes from the checkpoint; dropout is a training choice, so this run's config sets it
            net = src.config.replace(image_embedding_dim=net.image_embedding_dim,
                                     text_embedding_dim=net.text_embedding_dim, dropout=net.dropout)
            self._init_state = src.state
        dm = self.datamodule
        if dm is not None:
            if net.n_parcels is not None and int(net.n_parcels) != dm.n_parcels:
                raise ConfigError(f"model.init_args.net.n_parcels={net.n_parcels} but the data has {dm.n_parcels} "
                                  f"parcels; fix: prepare with the same atlas")
            need = dm.window if dm.mode == "pretrain" else dm.event_window
            if need > net.max_len:
                raise ConfigError(f"data window of {need} TRs exceeds model net.max_len={net.max_len}; fix: a "
                                  f"shorter window or a larger max_len")
            net = net.replace(n_parcels=dm.n_parcels)
            if h.objective == "contrastive":
                net = net.replace(image_embedding_dim=dm.image_embedding_dim, text_embedding_dim=dm.text_embedding_dim)
        self.net = net

    def configure_model(self) -> None:
        if self.model is not None:
            return
        if self.net.missing():
            self.setup("fit")
        self.model = WaveEncoder(self.net)
        if self._init_state is not None:
            self.load_weights(self.model, self._init_state, "model.init_from", self.hparams.init_from,
                              ("image_proj.", "text_proj."))

    def forward(self, bold: torch.Tensor, subject: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        assert self.model is not None, "call configure_model() first"
        return self.model.project(self.model.embed(bold, subject))

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss = wave_loss(self.model, batch, self.hparams.objective, self.hparams.mask_ratio, self._gen,
                         self.hparams.parcel_dropout)
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["bold"].shape[0])
        return loss

    def _eval_step(self, batch: dict[str, Any]) -> None:
        if self.hparams.objective == "contrastive":
            out = self(batch["bold"].float())
            self._eval.append((out["image"].float().cpu(), batch["image_embedding"].float().cpu(),
                               batch["stimulus"].cpu()))
        else:
            self._losses.append(wave_loss(self.model, batch, self.hparams.objective, self.hparams.mask_ratio,
                                          torch.Generator().manual_seed(len(self._losses))).detach().cpu())

    def _eval_end(self, prefix: str) -> None:
        if self._eval:
            brain = torch.cat([e[0] for e in self._eval])
            image = torch.cat([e[1] for e in self._eval])
            r = top1_retrieval(brain, image)
            self.log_dict({f"{prefix}/top1_brain_to_image": r["brain_to_image"],
                           f"{prefix}/top1_image_to_brain": r["image_to_brain"],
                           f"{prefix}/top1": (r["brain_to_image"] + r["image_to_brain"]) / 2}, prog_bar=True)
        if self._losses:
            self.log(f"{prefix}/loss", torch.stack(self._losses).mean(), prog_bar=True)
        self._eval, self._losses = [], []

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        self._eval_end("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        return {"stimulus": batch.get("stimulus"), **self(batch["bold"].float())}
