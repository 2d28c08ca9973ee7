"""Brain -> image (MindEye2's low- and high-level pathways) as a LightningModule.

The fMRI decoding task (:class:`~litbrain.tasks.FmriDecodingTask`: BiMixCo then SoftCLIP on the
image embedding, the text term) with two more terms on the same forward pass:

* ``low_level_weight`` x L1 between the predicted and the seen image's VAE latents (MindEye2's
  blurry branch, weight 0.5);
* ``conditioning_weight`` x GILL's per-token Euclidean loss between the mapper's output and the
  pipeline's conditioning of the stimulus' caption.

In the BiMixCo phase the model reads mixed voxels, so both targets are mixed with the same
partners and weights (``lam x t + (1 - lam) x t[perm]``). With both weights at 0 the task trains
exactly what :class:`FmriDecodingTask` trains (same weights, same retrieval figures).
Batches come from :class:`~litbrain.datamodules.recon.datamodule.ReconDataModule`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from litbrain.errors import ConfigError, SubjectMismatchError
from litbrain.losses.mapping import per_token_l2_loss
from litbrain.metrics import two_way_identification
from litbrain.nn.brain_to_image import BrainToImageConfig
from litbrain.tasks.fmri_decoding import FmriDecodingTask, decoder_loss

__all__ = ["ReconstructionTask", "reconstruction_loss"]


def _mixed(target: torch.Tensor, keep: dict[str, Any]) -> torch.Tensor:
    if "perm" not in keep:
        return target
    lam = keep["lam"].to(target.dtype).view((-1,) + (1,) * (target.dim() - 1))
    return lam * target + (1 - lam) * target[keep["perm"]]


def _centred_two_way(pred: torch.Tensor, target: torch.Tensor) -> float:
    """2-way identification after removing the split's mean target from both (latents share a large mean
    pattern that would otherwise dominate every correlation); chance 0.5."""
    mean = target.flatten(1).mean(0, keepdim=True)
    return two_way_identification(pred.flatten(1) - mean, target.flatten(1) - mean)


def reconstruction_loss(model: nn.Module, batch: dict[str, Any], progress: float,
                        h: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    """:func:`decoder_loss` + ``h.low_level_weight`` x L1(latents) + ``h.conditioning_weight`` x per-token L2."""
    keep: dict[str, Any] = {}
    loss, logs = decoder_loss(model, batch, progress, h, keep)
    out = keep["out"]
    if h.low_level_weight > 0:
        l1 = F.l1_loss(out["latents"], _mixed(batch["latents"], keep))
        loss = loss + h.low_level_weight * l1
        logs["train/low_level_l1"] = l1.detach()
    if h.conditioning_weight > 0:
        l2 = per_token_l2_loss(out["conditioning"], _mixed(batch["conditioning"], keep))
        loss = loss + h.conditioning_weight * l2
        logs["train/conditioning_l2"] = l2.detach()
    return loss, logs


class ReconstructionTask(FmriDecodingTask):
    """The fMRI decoder plus MindEye2's blurry head and a GILL mapper to the pipeline's conditioning.

    Args:
        net: :class:`~litbrain.nn.brain_to_image.BrainToImageConfig` (the decoder's fields plus the
            heads'); subjects and every target shape come from the datamodule when omitted.
        low_level_weight: weight of the L1 on the VAE latents (MindEye2: 0.5).
        conditioning_weight: weight of GILL's per-token Euclidean loss on the conditioning (1.0).
        **kwargs: those of :class:`~litbrain.tasks.FmriDecodingTask` (lr, BiMixCo/SoftCLIP, init_from, freeze, ...).

    Validation logs the decoder's retrieval figures plus ``val/<subject>/latent_l1``,
    ``conditioning_l2`` and ``latent_two_way`` / ``conditioning_two_way`` (2-way identification of
    the predicted latents / conditioning among the split's targets, the split's mean target removed; chance 0.5).
    """

    config_class = BrainToImageConfig

    def __init__(self, net: BrainToImageConfig | None = None, low_level_weight: float = 0.5,
                 conditioning_weight: float = 1.0, **kwargs: Any) -> None:
        if float(low_level_weight) < 0 or float(conditioning_weight) < 0:
            raise ConfigError(f"model.low_level_weight={low_level_weight}, conditioning_weight={conditioning_weight}; "
                              f"fix: weights >= 0 (MindEye2: 0.5 and 1.0)")
        super().__init__(net=net, **kwargs)
        self.hparams["low_level_weight"] = float(low_level_weight)
        self.hparams["conditioning_weight"] = float(conditioning_weight)
        self._recon_eval: dict[str, dict[str, list[torch.Tensor]]] = {}

    def _net_from_data(self) -> None:
        super()._net_from_data()
        dm = self.datamodule
        if dm is None or not hasattr(dm, "latent_shape"):
            return
        net = self.net
        for key, have in (("latent_shape", list(dm.latent_shape)), ("conditioning_shape", list(dm.conditioning_shape))):
            want = getattr(net, key)
            if want is not None and list(want) != have:
                what = "VAE latents" if key == "latent_shape" else "caption conditioning"
                raise SubjectMismatchError(
                    f"model.init_args.net.{key}={list(want)} but the data's {what} have shape {have}; fix: embed the "
                    f"targets with the model's pipeline, or drop net.{key} to take the data's")
        self.net = net.replace(latent_shape=list(dm.latent_shape), conditioning_shape=list(dm.conditioning_shape),
                               pipeline=net.pipeline or dm.pipeline)

    def training_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, Any]]:
        return reconstruction_loss(self.model, batch, self._progress(), self.hparams)

    # ------------------------------------------------------------------ evaluation
    def _eval_step(self, batch: dict[str, Any], metrics: nn.ModuleDict) -> None:
        out = self(batch["brain"])
        subject = self.subject_of(batch)
        metrics[subject].update(out["image_projection"], batch["image_embedding"])
        store = self._recon_eval.setdefault(subject, {})
        for key in ("latents", "conditioning"):
            store.setdefault(key, []).append(out[key].detach().float().cpu())
            store.setdefault(key + "_target", []).append(batch[key].detach().float().cpu())

    def _eval_epoch_end(self, metrics: nn.ModuleDict, prefix: str) -> None:
        super()._eval_epoch_end(metrics, prefix)
        for subject, store in self._recon_eval.items():
            lat, lat_t = torch.cat(store["latents"]), torch.cat(store["latents_target"])
            cond, cond_t = torch.cat(store["conditioning"]), torch.cat(store["conditioning_target"])
            values = {
                "latent_l1": F.l1_loss(lat, lat_t).item(),
                "conditioning_l2": per_token_l2_loss(cond, cond_t).item(),
                "latent_two_way": _centred_two_way(lat, lat_t),
                "conditioning_two_way": _centred_two_way(cond, cond_t),
            }
            for k, v in values.items():
                self.log(f"{prefix}/{subject}/{k}", float(v), add_dataloader_idx=False)
        self._recon_eval = {}
