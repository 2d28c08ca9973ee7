"""A LLaVA-style vision-language task with vision-token dropping (issue 5) as a LightningModule.

``images -> ViT (timm / open_clip; ToMe or MustDrop stage 1) -> MLP projector -> causal LM
(FastV or MustDrop stages 2-3)``, trained with cross-entropy on the answer tokens only.

Batches follow ``litbrain.datamodules.vqa``: ``image`` (B, 3, H, W), ``question`` /
``question_mask``, ``answer`` / ``answer_mask`` (answer words + <eos>), ``qtype``. The word ids,
vocabulary size and special tokens come from the datamodule's tokenizer (``dm.tokenizer``) when
the LM is built from a config dict; an LM loaded by name brings its own vocabulary, and then the
datamodule must tokenize with that LM's tokenizer.

Validation / test generate answers greedily with the configured dropping (prefill dropping +
compacted-cache decoding) and log exact-match accuracy (``val/acc``), the vision tokens that
entered the LM (``val/vision_tokens``) and per question type accuracy.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAccuracy

from litbrain.errors import ConfigError
from litbrain.nn.vlm import DroppingConfig, VisionLanguageModel, VlmConfig
from litbrain.tasks.base import LitbrainTask, read_source
from litbrain.utils.checkpoint import strip_prefix

__all__ = ["VisionLanguageTask"]

QTYPES = ("colour", "shape", "exists", "count")


def tokenizer_files(tokenizer: Any) -> dict[str, str]:
    """A Hugging Face tokenizer's saved files as ``{name: text}`` (kept in checkpoints, written into releases)."""
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory(prefix="litbrain-tok-") as tmp:
        tokenizer.save_pretrained(tmp)
        return {p.name: p.read_text() for p in sorted(Path(tmp).iterdir()) if p.is_file()}


class VisionLanguageTask(LitbrainTask):
    """ViT -> projector -> causal LM with MustDrop / ToMe / FastV token dropping.

    Args:
        net: the model's config (:class:`~litbrain.nn.vlm.VlmConfig`: ``vision`` tower spec, ``lm``
            as a Hugging Face id or config dict, ``dropping``, ...); the LM's vocabulary and special
            ids come from the datamodule's tokenizer when omitted.
        init_from: a checkpoint, release folder or Hub repo id of a VLM whose weights start the model.
        vision_init_from: a checkpoint or release of a ``vision_tower`` (configs/vlm/vision_pretrain.yaml)
            whose tower weights start ``net.vision`` (LLaVA starts from a pretrained CLIP tower; this is
            the offline stand-in). Same tower sizes required.
        freeze_vision / freeze_lm: train only the other parts (LLaVA stage 1 = both frozen).
        lr / weight_decay / warmup_fraction: AdamW + one-cycle schedule.
        max_new_tokens: greedy decoding length in validation / test.
    """

    config_class = VlmConfig

    def __init__(
        self,
        net: VlmConfig | None = None,
        init_from: str | None = None,
        vision_init_from: str | None = None,
        freeze_vision: bool = False,
        freeze_lm: bool = False,
        lr: float = 1e-3,
        weight_decay: float = 1e-2,
        warmup_fraction: float = 0.05,
        max_new_tokens: int = 3,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.init_net(net)
        self.dropping_config = self.net.dropping
        self.model: VisionLanguageModel | None = None
        self._tokenizer_files: dict[str, str] = {}
        self.val_acc = BinaryAccuracy()
        self.test_acc = BinaryAccuracy()
        self.val_tokens = MeanMetric()
        self.test_tokens = MeanMetric()
        self.val_type_acc = nn.ModuleDict({q: BinaryAccuracy() for q in QTYPES})
        self.test_type_acc = nn.ModuleDict({q: BinaryAccuracy() for q in QTYPES})

    def checkpoint_monitor(self) -> tuple[str, str] | None:
        return ("val/acc", "max")  # exact-match answer accuracy (greedy decoding with dropping)

    # ------------------------------------------------------------------ building
    def _from_datamodule(self) -> None:
        tok = getattr(self.datamodule, "tokenizer", None)
        if tok is None:
            return
        net = self.net
        ids = {k: getattr(net, k) if getattr(net, k) is not None else int(getattr(tok, f"{k[:-3]}_token_id"))
               for k in ("bos_id", "eos_id", "pad_id")}
        lm = net.lm
        if isinstance(lm, dict):
            lm = {"vocab_size": len(tok), "pad_token_id": ids["pad_id"], "bos_token_id": ids["bos_id"],
                  "eos_token_id": ids["eos_id"], **lm}
        self.net = net.replace(lm=lm, **ids)
        if not self._tokenizer_files:
            self._tokenizer_files = tokenizer_files(tok)

    def build_model(self) -> VisionLanguageModel:
        net = self.net
        if net.lm is None:
            raise ConfigError("VisionLanguageTask needs model.init_args.net.lm (see configs/vlm/synthetic_demo.yaml)")
        if isinstance(net.lm, dict) and "vocab_size" not in net.lm:
            raise ConfigError("model.init_args.net.lm is a config dict without vocab_size and no datamodule tokenizer "
                              "provides one; fix: set net.lm.vocab_size or use litbrain.datamodules.VqaDataModule")
        h = self.hparams
        vit_state = None
        if h.vision_init_from:
            vit_state = strip_prefix(read_tower(h.vision_init_from).state, "vit.")
        model = VisionLanguageModel.from_config(net, vit_state, f"model.init_args.vision_init_from={h.vision_init_from}")
        if h.init_from:
            src = self.read_init(h.init_from)
            self.load_weights(model, src.state, "model.init_args.init_from", h.init_from)
            self._tokenizer_files = self._tokenizer_files or dict(src.files)
        if h.freeze_vision:
            model.vit.requires_grad_(False)
        if h.freeze_lm:
            model.lm.requires_grad_(False)
        return model

    def setup(self, stage: str) -> None:
        self._from_datamodule()

    def configure_model(self) -> None:
        # Layers are built here, not in __init__, so DeepSpeed ZeRO-3 can shard them at init.
        if self.model is not None:
            return
        self._from_datamodule()
        self.model = self.build_model()
        self.net = self.model.config  # release form: the LM as its full config dict

    def release_files(self) -> dict[str, str]:
        # The tokenizer travels with the weights: `litbrain export` writes these files into the release.
        return dict(self._tokenizer_files)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._tokenizer_files = dict((checkpoint.get("litbrain") or {}).get("files") or self._tokenizer_files)

    def set_dropping(self, dropping: DroppingConfig | dict[str, Any]) -> None:
        """Swap the dropping setting (e.g. evaluate a densely trained model with MustDrop)."""
        cfg = dropping if isinstance(dropping, DroppingConfig) else DroppingConfig(**dropping)
        self.dropping_config = cfg
        if self.model is not None:
            self.model.dropping = cfg

    def optimized_module(self) -> nn.Module:
        assert self.model is not None
        return self.model

    # ------------------------------------------------------------------ steps
    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, Any]:
        assert self.model is not None
        return self.model(batch)

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        out = self(batch)
        bs = batch["image"].shape[0]
        self.log("train/loss", out["loss"], prog_bar=True, batch_size=bs)
        self.log("train/vision_tokens", out["vision_tokens"], batch_size=bs)
        return out["loss"]

    def _eval_step(self, batch: dict[str, torch.Tensor], prefix: str) -> None:
        assert self.model is not None
        gen, pre = self.model.generate(batch, self.hparams.max_new_tokens)
        ok = self.model.answer_correct(gen, batch["answer"], batch["answer_mask"])
        acc = self.val_acc if prefix == "val" else self.test_acc
        tokens = self.val_tokens if prefix == "val" else self.test_tokens
        per_type = self.val_type_acc if prefix == "val" else self.test_type_acc
        acc.update(ok.long(), torch.ones_like(ok, dtype=torch.long))
        tokens.update(pre.vision_per_layer.float().mean())  # vision tokens per LM layer, batch mean
        for i, q in enumerate(QTYPES):
            sel = batch["qtype"] == i
            if bool(sel.any()):
                per_type[q].update(ok[sel].long(), torch.ones_like(ok[sel], dtype=torch.long))
        bs = batch["image"].shape[0]
        self.log(f"{prefix}/acc", acc, prog_bar=True, batch_size=bs)
        self.log(f"{prefix}/vision_tokens", tokens, batch_size=bs)
        loss = self.model(batch)["loss"]
        self.log(f"{prefix}/loss", loss, batch_size=bs)

    def on_validation_epoch_end(self) -> None:
        self._log_types("val", self.val_type_acc)

    def on_test_epoch_end(self) -> None:
        self._log_types("test", self.test_type_acc)

    def _log_types(self, prefix: str, metrics: nn.ModuleDict) -> None:
        for q, m in metrics.items():
            if m.update_count:
                self.log(f"{prefix}/acc_{q}", m.compute())
            m.reset()

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def predict_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        assert self.model is not None
        return self.model.generate(batch, self.hparams.max_new_tokens)[0]


def read_tower(path: str):
    """Config + weights of a ``vision_tower`` checkpoint or release (refuses other model types)."""
    src = read_source(path, "model.init_args.vision_init_from")
    if src.config.model_type != "vision_tower":
        raise ConfigError(f"model.init_args.vision_init_from={path}: holds a {src.config.model_type!r} model, not a "
                          f"'vision_tower'; fix: point it at the last.ckpt of a `litbrain fit --config "
                          f"configs/vlm/vision_pretrain.yaml` run, or its release")
    return src
