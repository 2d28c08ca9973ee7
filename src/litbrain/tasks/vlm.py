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

import lightning as L
import torch
from torch import nn
from torchmetrics import MeanMetric
from torchmetrics.classification import BinaryAccuracy

from litbrain.nn.vlm import DroppingConfig, VisionLanguageModel, build_causal_lm, build_vision_encoder
from litbrain.tasks.fmri_decoding import build_optimizer

__all__ = ["VisionLanguageTask"]

QTYPES = ("colour", "shape", "exists", "count")


class VisionLanguageTask(L.LightningModule):
    """ViT -> projector -> causal LM with MustDrop / ToMe / FastV token dropping.

    Args:
        vision: ``{"library": "timm"|"open_clip", "name": ..., "pretrained": ..., "kwargs": {...}}``
            (see :func:`litbrain.nn.vlm.build_vision_encoder`).
        lm: a Hugging Face model id (``from_pretrained``) or a config dict with ``model_type``
            (``llama`` / ``qwen2`` / ``mistral``) for a locally built LM; ``vocab_size`` and the
            special token ids default to the datamodule's tokenizer.
        attn_implementation: the LM's attention; dropping needs ``eager`` (attention weights).
        dropping: a :class:`~litbrain.nn.vlm.DroppingConfig` as a dict (method, stages, keep, ...).
        projector_hidden: hidden width of the projector (default: the LM width).
        vision_pos: ``"sincos"``: add a 2-D sine-cosine embedding of each vision token's patch centre
            to the projected tokens (see :class:`~litbrain.nn.vlm.VisionLanguageModel`).
        vision_rope: ``"grid"`` (default): vision tokens keep their patch centre's position in the LM,
            so merging never shifts positions; ``"packed"``: consecutive positions.
        bos_id / eos_id / pad_id: special token ids (default: from the datamodule's tokenizer).
        vision_init_from: a :class:`~litbrain.tasks.scene_pretrain.ScenePretrainTask` checkpoint whose
            tower weights start ``vision`` (LLaVA starts from a pretrained CLIP tower; this is the
            offline stand-in). Same ``vision`` sizes required.
        freeze_vision / freeze_lm: train only the other parts (LLaVA stage 1 = both frozen).
        lr / weight_decay / warmup_fraction: AdamW + one-cycle schedule.
        max_new_tokens: greedy decoding length in validation / test.
    """

    def __init__(
        self,
        vision: dict[str, Any] | None = None,
        lm: str | dict[str, Any] | None = None,
        attn_implementation: str = "eager",
        dropping: dict[str, Any] | None = None,
        projector_hidden: int | None = None,
        vision_pos: str | None = None,
        vision_rope: str = "grid",
        bos_id: int | None = None,
        eos_id: int | None = None,
        pad_id: int | None = None,
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
        self.dropping_config = DroppingConfig(**(dropping or {}))
        self.model: VisionLanguageModel | None = None
        self.val_acc = BinaryAccuracy()
        self.test_acc = BinaryAccuracy()
        self.val_tokens = MeanMetric()
        self.test_tokens = MeanMetric()
        self.val_type_acc = nn.ModuleDict({q: BinaryAccuracy() for q in QTYPES})
        self.test_type_acc = nn.ModuleDict({q: BinaryAccuracy() for q in QTYPES})

    # ------------------------------------------------------------------ building
    def _from_datamodule(self) -> None:
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        tok = getattr(dm, "tokenizer", None)
        if tok is None:
            return
        h = self.hparams
        for name, val in (("bos_id", tok.bos_id), ("eos_id", tok.eos_id), ("pad_id", tok.pad_id)):
            if h[name] is None:
                h[name] = int(val)
        if isinstance(h.lm, dict):
            lm = dict(h.lm)
            lm.setdefault("vocab_size", int(dm.vocab_size))
            lm.setdefault("pad_token_id", int(tok.pad_id))
            lm.setdefault("bos_token_id", int(tok.bos_id))
            lm.setdefault("eos_token_id", int(tok.eos_id))
            h.lm = lm

    def build_model(self) -> VisionLanguageModel:
        h = self.hparams
        if h.vision is None or h.lm is None:
            raise ValueError("VisionLanguageTask needs model.vision and model.lm (see configs/vlm/synthetic_demo.yaml)")
        if isinstance(h.lm, dict) and "vocab_size" not in h.lm:
            raise ValueError("model.lm is a config dict without vocab_size and no datamodule tokenizer provides one; "
                             "fix: set model.lm.vocab_size or use litbrain.datamodules.VqaDataModule")
        lm = build_causal_lm(h.lm, h.attn_implementation)
        ids = {k: h[k] if h[k] is not None else getattr(lm.config, f"{k[:-3]}_token_id", None)
               for k in ("bos_id", "eos_id", "pad_id")}
        if ids["pad_id"] is None:
            ids["pad_id"] = ids["eos_id"]
        missing = [k for k, v in ids.items() if v is None]
        if missing:
            raise ValueError(f"model.{missing[0]} is unknown (not in the LM config nor the datamodule); fix: set it")
        vit = build_vision_encoder(h.vision)
        if h.get("vision_init_from"):
            from litbrain.tasks.scene_pretrain import load_pretrained_vision

            load_pretrained_vision(vit, h.vision_init_from)
        model = VisionLanguageModel(vit, lm, dropping=self.dropping_config, projector_hidden=h.projector_hidden,
                                    vision_pos=h.get("vision_pos"),
                                    vision_rope=h.get("vision_rope", "grid"), **ids)
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

    def set_dropping(self, dropping: DroppingConfig | dict[str, Any]) -> None:
        """Swap the dropping setting (e.g. evaluate a densely trained model with MustDrop)."""
        cfg = dropping if isinstance(dropping, DroppingConfig) else DroppingConfig(**dropping)
        self.dropping_config = cfg
        if self.model is not None:
            self.model.dropping = cfg

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

    def configure_optimizers(self) -> Any:
        assert self.model is not None
        steps = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1000
        opt, sched = build_optimizer(self.model, self.hparams, max(int(steps), 1))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
