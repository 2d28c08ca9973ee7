"""Pretrain a VLM's vision tower on the scene's own labels, the stand-in for LLaVA's CLIP tower.

A LLaVA-style model starts from a vision tower that already sees (CLIP); a tiny tower trained
from scratch on the synthetic VQA world does not, and end-to-end answer loss teaches it slowly.
:class:`ScenePretrainTask` trains the tower alone (:class:`~litbrain.nn.vlm.SceneVisionTower`) to
read each board cell (its colour and shape, or empty) from the patch tokens pooled over the cell,
and, from the CLS token, which (colour, shape) objects the scene holds, with the batches of
:class:`~litbrain.datamodules.VqaDataModule` (``cell_colour`` / ``cell_shape``). The VLM then loads
the tower by ``model.init_args.vision_init_from`` (a checkpoint or release of this task's model).

The CLS objective stands in for CLIP's image-level training: it makes the CLS token summarise the
scene, so its attention in the last block falls on the objects. MustDrop's key-token set (the
top 8% of patches by that attention, never dropped) relies on exactly this; with an untrained
CLS it protects arbitrary patches.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.classification import MulticlassAccuracy, MultilabelF1Score

from litbrain.nn.vlm import SceneVisionTower, VisionTowerConfig
from litbrain.tasks.base import LitbrainTask

__all__ = ["ScenePretrainTask"]


class ScenePretrainTask(LitbrainTask):
    """Per-cell colour and shape classification from a ViT's patch tokens.

    Args:
        net: the tower and its heads (:class:`~litbrain.nn.vlm.VisionTowerConfig`: ``vision`` spec,
            ``grid`` cells per side, the world's colour and shape counts).
        init_from: a checkpoint, release folder or Hub repo id of a vision tower to continue from.
        scene_weight: weight of the CLS loss (which of the colour x shape objects are present,
            multi-label); 0 trains the cell heads only.
        lr / weight_decay / warmup_fraction: AdamW + one-cycle schedule.
    """

    config_class = VisionTowerConfig

    def __init__(self, net: VisionTowerConfig | None = None, init_from: str | None = None, scene_weight: float = 1.0,
                 lr: float = 1e-3, weight_decay: float = 1e-2, warmup_fraction: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.init_net(net)
        self.model: SceneVisionTower | None = None
        n_colours, n_shapes = self.net.n_colours, self.net.n_shapes
        self.val_colour = MulticlassAccuracy(n_colours + 1, average="micro", ignore_index=0)
        self.val_shape = MulticlassAccuracy(n_shapes + 1, average="micro", ignore_index=0)
        self.val_scene = MultilabelF1Score(n_colours * n_shapes, average="micro")

    def configure_model(self) -> None:
        if self.model is not None:
            return
        self.model = SceneVisionTower(self.net)
        if self.hparams.init_from:
            src = self.read_init(self.hparams.init_from)
            self.load_weights(self.model, src.state, "model.init_args.init_from", self.hparams.init_from)
        self.net = self.model.config

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-cell colour ``(B, cells, C+1)`` and shape ``(B, cells, S+1)`` logits, scene logits ``(B, C*S)``."""
        assert self.model is not None, "call configure_model() first"
        return self.model(images)

    def scene_objects(self, cell_colour: torch.Tensor, cell_shape: torch.Tensor) -> torch.Tensor:
        """``(B, C*S)`` 0/1: object (colour c, shape s) is somewhere on the board (index ``c * S + s``)."""
        n_colours, n_shapes = self.net.n_colours, self.net.n_shapes
        occ = cell_shape > 0
        idx = ((cell_colour - 1).clamp(min=0) * n_shapes + (cell_shape - 1).clamp(min=0)).masked_fill(~occ, n_colours * n_shapes)
        out = torch.zeros(idx.shape[0], n_colours * n_shapes + 1, device=idx.device)
        return out.scatter(1, idx, 1.0)[:, :-1]

    def _loss(self, batch: dict[str, torch.Tensor]):
        colour, shape, scene = self(batch["image"])
        loss = F.cross_entropy(colour.flatten(0, 1), batch["cell_colour"].flatten()) + \
            F.cross_entropy(shape.flatten(0, 1), batch["cell_shape"].flatten())
        objects = self.scene_objects(batch["cell_colour"], batch["cell_shape"])
        if self.hparams.scene_weight:
            loss = loss + self.hparams.scene_weight * F.binary_cross_entropy_with_logits(scene, objects)
        return loss, colour, shape, scene, objects

    def training_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
        loss = self._loss(batch)[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=batch["image"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, torch.Tensor], batch_idx: int) -> None:
        loss, colour, shape, scene, objects = self._loss(batch)
        # accuracy on occupied cells only (ignore_index=0): empty cells are the easy majority
        self.val_colour.update(colour.argmax(-1).flatten(), batch["cell_colour"].flatten())
        self.val_shape.update(shape.argmax(-1).flatten(), batch["cell_shape"].flatten())
        self.val_scene.update(scene, objects.long())  # F1 over (scene, object kind) pairs: empty kinds are the easy majority
        bs = batch["image"].shape[0]
        self.log("val/loss", loss, batch_size=bs)
        self.log("val/colour_acc", self.val_colour, prog_bar=True, batch_size=bs)
        self.log("val/shape_acc", self.val_shape, prog_bar=True, batch_size=bs)
        self.log("val/scene_f1", self.val_scene, prog_bar=True, batch_size=bs)
