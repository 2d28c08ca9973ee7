"""sEEG word decoding with Du-IN's three stages as one LightningModule (``model.stage``).

* ``stage: vqvae``   -- VQ-VAE tokenizer: reconstruct the epoch through the codebook.
* ``stage: mae``     -- masked modelling: hide ``mask_ratio`` of the patches, predict the
  stage-1 code of each hidden patch. ``tokenizer_from`` = the stage-1 checkpoint (required).
* ``stage: classify``-- word classification. ``init_from`` = the stage-2 checkpoint whose
  encoder starts the classifier; leave it empty for the no-pretraining baseline.

Checkpoints are chained by these config keys; a checkpoint of the wrong stage is refused with
one line naming the key, the stage found and the stage needed. Batches follow
``litbrain.datamodules.seeg``; unlabelled epochs (label -1) only count in stages 1-2.
"""

from __future__ import annotations

from typing import Any, Sequence

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from litbrain.nn.duin import STAGES, DuinModel, Stage
from litbrain.tasks.fmri_decoding import build_optimizer, merge_subjects

class StageConfigError(ValueError):
    """A Du-IN stage's config is inconsistent (chaining keys, mask ratio, sizes vs data)."""


# Keys of the task's hyper-parameters that define the encoder; a chained stage takes them from
# the previous stage's checkpoint so the weights fit.
ENCODER_KEYS = ("n_times", "patch_len", "d_subject", "filters", "kernels", "strides", "d_model", "n_blocks",
                "n_heads", "d_ff")
MODEL_KEYS = ENCODER_KEYS + ("dropout", "n_codes", "code_dim", "vq_decay", "commitment", "decoder_blocks",
                             "n_classes", "head_dropout")
# Which stage each chaining key must point at.
NEEDED_STAGE = {("mae", "tokenizer_from"): "vqvae", ("mae", "init_from"): "vqvae", ("classify", "init_from"): "mae"}


def duin_config(hparams: dict[str, Any], stage: str | None = None) -> dict[str, Any]:
    """The :class:`DuinModel` config (constructor kwargs) of a task's hyper-parameters."""
    cfg = {k: hparams[k] for k in MODEL_KEYS if k in hparams}
    cfg["stage"] = stage or hparams["stage"]
    cfg["subjects"] = {s: int(n) for s, n in (hparams.get("subject_channels") or {}).items()}
    for k in ("filters", "kernels", "strides"):
        if k in cfg:
            cfg[k] = [int(v) for v in cfg[k]]
    return cfg


def load_duin_stage(path: str, key: str, needed: str) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config, model state) of a Du-IN checkpoint or release folder, which must be of stage ``needed``."""
    from pathlib import Path

    from litbrain.hub import ReleaseError, load_checkpoint

    p = Path(path)
    if p.is_dir():
        import json

        from safetensors.torch import load_file

        if not (p / "config.json").is_file() or not (p / "model.safetensors").is_file():
            raise ReleaseError(f"model.{key}={path}: not a Du-IN checkpoint or release folder; fix: point it at the "
                               f"stage-'{needed}' .ckpt written by `litbrain fit`")
        cfg = json.loads((p / "config.json").read_text())
        state = load_file(p / "model.safetensors")
    else:
        ckpt = load_checkpoint(p)
        hp = ckpt.get("hyper_parameters", {})
        if "stage" not in hp:
            raise ReleaseError(f"model.{key}={path}: not a Du-IN (sEEG) checkpoint (no 'stage' in its hyper-parameters); "
                               f"fix: point it at the stage-'{needed}' .ckpt of configs/seeg/")
        cfg = duin_config(hp)
        state = {k[len("model."):]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith("model.")}
    if cfg.get("stage") != needed:
        raise ReleaseError(
            f"model.{key}={path}: is a stage-'{cfg.get('stage')}' checkpoint, but this key needs a stage-'{needed}' one; "
            f"fix: point it at the checkpoint of the '{needed}' run (stages chain vqvae -> mae -> classify)"
        )
    return cfg, state


class SeegDecodingTask(L.LightningModule):
    """Du-IN on multi-subject sEEG; one stage per run.

    Args:
        stage: "vqvae" (1), "mae" (2) or "classify" (3).
        subject_channels / n_times / n_classes: from the datamodule when omitted.
        patch_len: samples per patch (Du-IN: 100 = 100 ms at 1 kHz).
        d_subject: virtual channels after the subject layer (16).
        filters / kernels / strides: the conv tokenizer (128,128,16 / 19,3,3 / 10,1,1).
        d_model, n_blocks, n_heads, d_ff, dropout: the Transformer (160, 8, 8, 2*d_model).
        n_codes, code_dim, vq_decay, commitment: the codebook (2048 x 64, EMA 0.99).
        decoder_blocks: Transformer blocks of the stage-1 decoder.
        head_dropout: dropout before the stage-3 linear head.
        mask_ratio: share of patches hidden in stage 2 (0.5).
        tokenizer_from: stage 2: the stage-1 (vqvae) checkpoint whose codes are the targets.
        init_from: stage 2: optional stage-1 checkpoint whose encoder starts the model;
            stage 3: the stage-2 (mae) checkpoint whose encoder starts the classifier.
        lr, weight_decay, warmup_fraction: AdamW + one-cycle schedule.
        label_smoothing: of the stage-3 cross entropy.
    """

    def __init__(
        self,
        stage: Stage = "classify",
        subject_channels: dict[str, int] | None = None,
        n_times: int | None = None,
        n_classes: int | None = None,
        patch_len: int = 100,
        d_subject: int = 16,
        filters: Sequence[int] = (128, 128, 16),
        kernels: Sequence[int] = (19, 3, 3),
        strides: Sequence[int] = (10, 1, 1),
        d_model: int = 160,
        n_blocks: int = 8,
        n_heads: int = 8,
        d_ff: int | None = None,
        dropout: float = 0.1,
        n_codes: int = 2048,
        code_dim: int = 64,
        vq_decay: float = 0.99,
        commitment: float = 0.25,
        decoder_blocks: int = 4,
        head_dropout: float = 0.5,
        mask_ratio: float = 0.5,
        tokenizer_from: str | None = None,
        init_from: str | None = None,
        lr: float = 3e-4,
        weight_decay: float = 0.05,
        warmup_fraction: float = 0.1,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model: DuinModel | None = None
        self.tokenizer: DuinModel | None = None
        self._data_subjects: list[str] = []
        self._init_state: dict[str, torch.Tensor] | None = None
        self._metrics = nn.ModuleDict()  # split -> subject -> metric name -> metric

    # ------------------------------------------------------------------ building
    def _check_stage_keys(self) -> None:
        # Checked here rather than in __init__: errors raised while the CLI instantiates the
        # model come back wrapped by the config parser, errors from setup() reach the user as is.
        h = self.hparams
        if h.stage not in STAGES:
            raise StageConfigError(f"model.stage={h.stage!r}; fix: one of {list(STAGES)}")
        if not 0.0 < h.mask_ratio < 1.0:
            raise StageConfigError(f"model.mask_ratio={h.mask_ratio}; fix: a value in (0, 1), Du-IN uses 0.5")
        if h.stage == "mae" and not h.tokenizer_from:
            raise StageConfigError("model.tokenizer_from is empty; fix: stage 'mae' predicts the codes of a stage-1 "
                             "tokenizer: set it to the checkpoint of the 'vqvae' run")
        if h.stage != "mae" and h.tokenizer_from:
            raise StageConfigError(f"model.tokenizer_from is only used by stage 'mae' (this is '{h.stage}'); fix: remove it")
        if h.stage == "vqvae" and h.init_from:
            raise StageConfigError("model.init_from: stage 'vqvae' is the first stage and starts from scratch; fix: remove it")

    def _take_upstream_config(self) -> None:
        """Architecture keys from the checkpoint this stage chains from (init_from / tokenizer_from)."""
        h = self.hparams
        for key in ("tokenizer_from", "init_from"):
            path = h.get(key)
            if not path:
                continue
            cfg, state = load_duin_stage(path, key, NEEDED_STAGE[(h.stage, key)])
            for k in ENCODER_KEYS:
                if k in cfg:
                    h[k] = cfg[k]
            h.subject_channels = merge_subjects(cfg["subjects"], dict(h.subject_channels or {}), f"model.{key}={path}")
            if key == "tokenizer_from":
                self._tokenizer_cfg, self._tokenizer_state = cfg, state
            else:
                self._init_state = state

    def setup(self, stage: str) -> None:
        if getattr(self, "_set_up", False):
            return
        self._check_stage_keys()
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        h = self.hparams
        if dm is not None:
            data = {s: int(n) for s, n in dm.subject_channels.items()}
            self._data_subjects = list(data)
            h.subject_channels = merge_subjects(dict(h.subject_channels or {}), data, "model.subject_channels")
            if h.n_times is None:
                h.n_times = int(dm.n_times)
            if h.n_classes is None:
                h.n_classes = int(dm.n_labels)
        self._take_upstream_config()
        if dm is not None and int(h.n_times) != int(dm.n_times):
            raise StageConfigError(f"model.n_times={h.n_times} (from the checkpoint) but the data's epochs have {dm.n_times} "
                             f"samples; fix: prepare the data with the same tmin/tmax/resample as the pretraining data")
        if not h.subject_channels or not h.n_times:
            raise StageConfigError("SeegDecodingTask needs model.subject_channels and model.n_times, or a datamodule "
                             "that provides them (data.data_dir)")
        subjects = self._data_subjects or list(h.subject_channels)
        n_classes = int(h.n_classes or 2)
        for split in ("val", "test"):
            md = nn.ModuleDict()
            for s in subjects:
                md[s] = nn.ModuleDict({
                    "top1": MulticlassAccuracy(n_classes, top_k=1, average="micro", ignore_index=-1),
                    "top5": MulticlassAccuracy(n_classes, top_k=min(5, n_classes), average="micro", ignore_index=-1),
                    "balanced": MulticlassAccuracy(n_classes, average="macro", ignore_index=-1),
                    "confusion": MulticlassConfusionMatrix(n_classes, ignore_index=-1),
                })
            self._metrics[split] = md
        self._set_up = True

    def configure_model(self) -> None:
        if self.model is not None:
            return
        if not getattr(self, "_set_up", False):
            self.setup("fit")
        h = self.hparams
        self.model = DuinModel(**duin_config(h))
        if self._init_state is not None:
            # Only the encoder carries over between stages; new subjects keep fresh subject layers.
            enc = {k: v for k, v in self._init_state.items() if k.startswith("encoder.")}
            missing, unexpected = self.model.load_state_dict(enc, strict=False)
            new = set(h.subject_channels) - {k.split(".")[3] for k in enc if k.startswith("encoder.subject_layer.maps.")}
            bad = [k for k in missing if k.startswith("encoder.") and not any(f".maps.{s}." in k for s in new)]
            if bad or unexpected:
                raise StageConfigError(f"model.init_from={h.init_from}: encoder weights do not fit (missing {bad[:3]}, "
                                 f"unexpected {unexpected[:3]}); fix: use a checkpoint of the same architecture")
        if h.stage == "mae":
            tok = DuinModel(**{**self._tokenizer_cfg, "subjects": dict(h.subject_channels)})
            missing, unexpected = tok.load_state_dict(self._tokenizer_state, strict=False)
            if unexpected or missing:
                raise StageConfigError(f"model.tokenizer_from={h.tokenizer_from}: the tokenizer lacks subjects of the data "
                                 f"(missing {missing[:3]}); fix: pretrain stage 1 on every subject of this run")
            self.tokenizer = tok.eval().requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.tokenizer is not None:
            self.tokenizer.eval()  # the stage-1 tokenizer is frozen, its dropout stays off
        return self

    # ------------------------------------------------------------------ steps
    def forward(self, brain: dict[str, torch.Tensor]) -> torch.Tensor:
        assert self.model is not None, "call configure_model() first"
        return self.model(brain)

    def _mask(self, b: int, p: int) -> torch.Tensor:
        # Exactly round(ratio * P) hidden patches per epoch, chosen at random.
        k = max(1, min(p - 1, int(round(self.hparams.mask_ratio * p))))
        order = torch.rand(b, p, device=self.device).argsort(1)
        return order < k

    def _stage_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        h, brain = self.hparams, batch["brain"]
        if h.stage == "vqvae":
            mse, commit, _ = self.model.reconstruction_loss(brain)
            return mse + commit, {"recon_mse": mse.detach(), "commitment": commit.detach()}
        if h.stage == "mae":
            target = self.tokenizer.code_indices(brain)
            mask = self._mask(*target.shape)
            logits = self.model.code_logits(brain, mask)
            loss = F.cross_entropy(logits[mask], target[mask])
            acc = (logits[mask].argmax(-1) == target[mask]).float().mean()
            return loss, {"masked_code_acc": acc.detach()}
        logits = self.model(brain)
        label = batch["label"]
        if (label >= 0).any():
            loss = F.cross_entropy(logits, label, ignore_index=-1, label_smoothing=h.label_smoothing)
        else:  # a batch without labels (label_fraction < 1): keep the graph for DDP, no signal
            loss = logits.sum() * 0.0
        return loss, {}

    def on_train_epoch_start(self) -> None:
        if self.hparams.stage == "vqvae":
            self.model.vq.reset_usage()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, logs = self._stage_loss(batch)
        n = batch["subject"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        for k, v in logs.items():
            self.log(f"train/{k}", v, batch_size=n)
        return loss

    def on_train_epoch_end(self) -> None:
        if self.hparams.stage == "vqvae":
            self.log("train/codebook_usage", self.model.vq.usage())
            self.log("train/codebook_perplexity", self.model.vq.perplexity())

    def _subject_of(self, batch: dict[str, Any]) -> str:
        (subject,) = batch["brain"].keys()  # evaluation loaders hold one subject each
        return subject

    def _eval_step(self, batch: dict[str, Any], split: str) -> None:
        h, n = self.hparams, batch["subject"].shape[0]
        if h.stage != "classify":
            # One loader per subject: average over all of them here, log once at epoch end.
            loss, logs = self._stage_loss(batch)
            for k, v in {"loss": loss, **logs}.items():
                total, count = self._sums.get(k, (0.0, 0))
                self._sums[k] = (total + float(v) * n, count + n)
            return
        logits = self.model(batch["brain"])
        for metric in self._metrics[split][self._subject_of(batch)].values():
            metric.update(logits, batch["label"])

    def _eval_epoch_end(self, split: str) -> None:
        if self.hparams.stage == "vqvae":
            self.log(f"{split}/codebook_usage", self.model.vq.usage())
        if self.hparams.stage != "classify":
            for k, (total, count) in self._sums.items():
                self.log(f"{split}/{k}", total / max(count, 1), prog_bar=k == "loss", sync_dist=True)
            self._sums = {}
            return
        totals: dict[str, list[torch.Tensor]] = {}
        self.confusion: dict[str, torch.Tensor] = {}
        for subject, metrics in self._metrics[split].items():
            if not metrics["top1"].update_called:
                continue
            for name, metric in metrics.items():
                value = metric.compute()
                metric.reset()
                if name == "confusion":
                    self.confusion[subject] = value.cpu()
                    continue
                self.log(f"{split}/{subject}/{name}", value)
                totals.setdefault(name, []).append(value)
        for name, values in totals.items():
            self.log(f"{split}/{name}", torch.stack(values).mean(), prog_bar=name == "top1")

    def _eval_epoch_start(self) -> None:
        self._sums: dict[str, tuple[float, int]] = {}
        if self.hparams.stage == "vqvae":
            self.model.vq.reset_usage()

    def on_validation_epoch_start(self) -> None:
        self._eval_epoch_start()

    def on_test_epoch_start(self) -> None:
        self._eval_epoch_start()

    def validation_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "val")

    def on_validation_epoch_end(self) -> None:
        self._eval_epoch_end("val")

    def test_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> None:
        self._eval_step(batch, "test")

    def on_test_epoch_end(self) -> None:
        self._eval_epoch_end("test")

    def predict_step(self, batch: dict[str, Any], batch_idx: int, dataloader_idx: int = 0) -> dict[str, Any]:
        return {"subject": self._subject_of(batch), "logits": self(batch["brain"]), "label": batch["label"]}

    def configure_optimizers(self) -> dict[str, Any]:
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        opt, sched = build_optimizer(self.model, self.hparams, total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
