"""sEEG word decoding with Du-IN's three stages as one LightningModule (``model.init_args.net.stage``).

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

import dataclasses
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MulticlassConfusionMatrix

from litbrain.errors import ConfigError
from litbrain.nn.duin import DuinConfig, DuinModel
from litbrain.tasks.base import LitbrainTask, merge_subjects

__all__ = ["NEEDED_STAGE", "SeegDecodingTask", "StageConfigError"]


class StageConfigError(ConfigError):
    """A Du-IN stage's config is inconsistent (chaining keys, mask ratio, sizes vs data)."""


# Which stage each chaining key must point at.
NEEDED_STAGE = {("mae", "tokenizer_from"): "vqvae", ("mae", "init_from"): "vqvae", ("classify", "init_from"): "mae"}


class SeegDecodingTask(LitbrainTask):
    """Du-IN on multi-subject sEEG; one stage per run (``net.stage``).

    Args:
        net: the stage's model config (:class:`~litbrain.nn.duin.DuinConfig`: ``stage``, ``encoder``
            sizes, codebook, classifier); subjects, epoch length and word count come from the
            datamodule when omitted, and a chained stage takes its ``encoder`` from the checkpoint
            it starts from.
        mask_ratio: share of patches hidden in stage 2 (0.5).
        tokenizer_from: stage 2: the stage-1 (vqvae) checkpoint or release whose codes are the targets.
        init_from: stage 2: optional stage-1 checkpoint whose encoder starts the model;
            stage 3: the stage-2 (mae) checkpoint or release whose encoder starts the classifier.
        lr, weight_decay, warmup_fraction: AdamW + one-cycle schedule.
        label_smoothing: of the stage-3 cross entropy.
    """

    config_class = DuinConfig

    def __init__(
        self,
        net: DuinConfig | None = None,
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
        self.init_net(net)
        self.model: DuinModel | None = None
        self.tokenizer: DuinModel | None = None
        self._data_subjects: list[str] = []
        self._init_state: dict[str, torch.Tensor] | None = None
        self._metrics = nn.ModuleDict()  # split -> subject -> metric name -> metric

    @property
    def stage(self) -> str:
        return self.hparams["net"]["stage"]

    def checkpoint_monitor(self) -> tuple[str, str] | None:
        return ("val/top1", "max") if self.stage == "classify" else None

    # ------------------------------------------------------------------ building
    def _check_stage_keys(self) -> None:
        # Checked here rather than in __init__: errors raised while the CLI instantiates the
        # model come back wrapped by the config parser, errors from setup() reach the user as is.
        h, stage = self.hparams, self.stage
        if not 0.0 < h.mask_ratio < 1.0:
            raise StageConfigError(f"model.mask_ratio={h.mask_ratio}; fix: a value in (0, 1), Du-IN uses 0.5")
        if stage == "mae" and not h.tokenizer_from:
            raise StageConfigError("model.tokenizer_from is empty; fix: stage 'mae' predicts the codes of a stage-1 "
                                   "tokenizer: set it to the checkpoint of the 'vqvae' run")
        if stage != "mae" and h.tokenizer_from:
            raise StageConfigError(f"model.tokenizer_from is only used by stage 'mae' (this is '{stage}'); fix: remove it")
        if stage == "vqvae" and h.init_from:
            raise StageConfigError("model.init_from: stage 'vqvae' is the first stage and starts from scratch; fix: remove it")

    def _take_upstream_config(self) -> None:
        """The encoder config and subjects of the checkpoint this stage chains from (init_from / tokenizer_from)."""
        h, net = self.hparams, self.net
        for key in ("tokenizer_from", "init_from"):
            path = h.get(key)
            if not path:
                continue
            src = self.read_init(path, f"model.{key}", stage=NEEDED_STAGE[(net.stage, key)])
            net = net.replace(encoder=src.config.encoder,
                              subjects=merge_subjects(src.config.subjects, net.subjects or {}, f"model.{key}={path}", "channels"))
            if key == "tokenizer_from":
                self._tokenizer_src = src
            else:
                self._init_state = src.state
        self.net = net

    def setup(self, stage: str) -> None:
        if getattr(self, "_set_up", False):
            return
        self._check_stage_keys()
        dm, net = self.datamodule, self.net
        if dm is not None:
            data = {s: int(n) for s, n in dm.subject_channels.items()}
            self._data_subjects = list(data)
            enc = net.encoder if net.encoder.n_times else dataclasses.replace(net.encoder, n_times=int(dm.n_times))
            net = net.replace(subjects=merge_subjects(net.subjects or {}, data, "model.init_args.net.subjects", "channels"),
                              encoder=enc, n_classes=net.n_classes or int(dm.n_labels))
            self.net = net
        self._take_upstream_config()
        net = self.net
        if dm is not None and int(net.encoder.n_times) != int(dm.n_times):
            raise StageConfigError(f"model.net.encoder.n_times={net.encoder.n_times} (from the checkpoint) but the data's "
                                   f"epochs have {dm.n_times} samples; fix: prepare the data with the same tmin/tmax/"
                                   f"resample as the pretraining data")
        if not net.subjects or not net.encoder.n_times:
            raise StageConfigError("SeegDecodingTask needs model.init_args.net.subjects and net.encoder.n_times, or a "
                                   "datamodule that provides them (data.init_args.data_dir)")
        subjects = self._data_subjects or list(net.subjects)
        n_classes = int(net.n_classes or 2)
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
        net, h = self.net, self.hparams
        self.model = DuinModel(net)
        if self._init_state is not None:
            # Only the encoder carries over between stages; new subjects keep fresh subject layers.
            enc = {k: v for k, v in self._init_state.items() if k.startswith("encoder.")}
            known = {k.split(".")[3] for k in enc if k.startswith("encoder.subject_layer.maps.")}
            key = self.model.encoder.subject_layer._key
            may_miss = ["encoder.subject_layer.maps." + key(s) + "." for s in net.subjects if key(s) not in known]
            may_miss += [k for k in self.model.state_dict() if not k.startswith("encoder.")]  # this stage's head
            may_miss.append("encoder.mask_token")  # only stage 2 has one; a stage-1 encoder brings none
            self.load_weights(self.model, enc, "model.init_from", h.init_from, may_miss)
        if net.stage == "mae":
            src = self._tokenizer_src
            tok = DuinModel(src.config.replace(subjects=dict(net.subjects)))
            missing, unexpected = tok.load_state_dict(src.state, strict=False)
            if unexpected or missing:
                raise StageConfigError(f"model.tokenizer_from={h.tokenizer_from}: the tokenizer lacks subjects of the data "
                                       f"(missing {missing[:3]}); fix: pretrain stage 1 on every subject of this run")
            self.tokenizer = tok.eval().requires_grad_(False)

    def train(self, mode: bool = True):
        super().train(mode)
        if self.tokenizer is not None:
            self.tokenizer.eval()  # the stage-1 tokenizer is frozen, its dropout stays off
        return self

    def optimized_module(self) -> nn.Module:
        return self.model

    # ------------------------------------------------------------------ steps
    def forward(self, brain: dict[str, torch.Tensor]) -> torch.Tensor:
        assert self.model is not None, "call configure_model() first"
        return self.model(brain)

    def _mask(self, b: int, p: int) -> torch.Tensor:
        # Exactly round(ratio * P) hidden patches per epoch, chosen at random.
        k = max(1, min(p - 1, int(round(self.hparams.mask_ratio * p))))  # 15 of Du-IN's 30 at 0.5
        order = torch.rand(b, p, device=self.device).argsort(1)
        return order < k

    def _stage_loss(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        h, brain = self.hparams, batch["brain"]
        if self.stage == "vqvae":
            mse, commit, _ = self.model.reconstruction_loss(brain)
            return mse + commit, {"recon_mse": mse.detach(), "commitment": commit.detach()}
        if self.stage == "mae":
            target = self.tokenizer.code_indices(brain)
            mask = self._mask(*target.shape)
            # net.masking: 'complementary' (Du-IN's authors) scores every patch once, 'single' the masked ones
            logits, scored = self.model.masked_code_logits(brain, mask)
            loss = F.cross_entropy(logits[scored], target[scored])
            acc = (logits[scored].argmax(-1) == target[scored]).float().mean()
            return loss, {"masked_code_acc": acc.detach()}
        logits = self.model(brain)
        label = batch["label"]
        if (label >= 0).any():
            loss = F.cross_entropy(logits, label, ignore_index=-1, label_smoothing=h.label_smoothing)
        else:  # a batch without labels (label_fraction < 1): keep the graph for DDP, no signal
            loss = logits.sum() * 0.0
        return loss, {}

    def on_train_epoch_start(self) -> None:
        if self.stage == "vqvae":
            self.model.vq.reset_usage()

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, logs = self._stage_loss(batch)
        n = batch["subject"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        for k, v in logs.items():
            self.log(f"train/{k}", v, batch_size=n)
        return loss

    def on_train_epoch_end(self) -> None:
        if self.stage == "vqvae":
            self.log("train/codebook_usage", self.model.vq.usage())
            self.log("train/codebook_perplexity", self.model.vq.perplexity())

    def _eval_step(self, batch: dict[str, Any], split: str) -> None:
        n = batch["subject"].shape[0]
        if self.stage != "classify":
            # One loader per subject: average over all of them here, log once at epoch end.
            loss, logs = self._stage_loss(batch)
            for k, v in {"loss": loss, **logs}.items():
                total, count = self._sums.get(k, (0.0, 0))
                self._sums[k] = (total + float(v) * n, count + n)
            return
        logits = self.model(batch["brain"])
        for metric in self._metrics[split][self.subject_of(batch)].values():
            metric.update(logits, batch["label"])

    def _eval_epoch_end(self, split: str) -> None:
        if self.stage == "vqvae":
            self.log(f"{split}/codebook_usage", self.model.vq.usage())
        if self.stage != "classify":
            for k, (total, count) in self._sums.items():
                self.log(f"{split}/{k}", total / max(count, 1), prog_bar=k == "loss", sync_dist=True)
            self._sums = {}
            return
        values: dict[str, dict[str, torch.Tensor]] = {}
        self.confusion: dict[str, torch.Tensor] = {}
        for subject, metrics in self._metrics[split].items():
            if not metrics["top1"].update_called:
                continue
            values[subject] = {}
            for name, metric in metrics.items():
                value = metric.compute()
                metric.reset()
                if name == "confusion":
                    self.confusion[subject] = value.cpu()
                else:
                    values[subject][name] = value
        self.log_per_subject(split, values, prog_bar=("top1",))

    def _eval_epoch_start(self) -> None:
        self._sums: dict[str, tuple[float, int]] = {}
        if self.stage == "vqvae":
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
        return {"subject": self.subject_of(batch), "logits": self(batch["brain"]), "label": batch["label"]}
