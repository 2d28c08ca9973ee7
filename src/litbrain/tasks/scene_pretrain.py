"""Pretrain a VLM's vision tower on the scene's own labels, the stand-in for LLaVA's CLIP tower.

A LLaVA-style model starts from a vision tower that already sees (CLIP); a tiny tower trained
from scratch on the synthetic VQA world does not, and end-to-end answer loss teaches it slowly.
:class:`ScenePretrainTask` trains the tower alone to read each board cell (its colour and shape,
or empty) from the patch tokens pooled over the cell, and, from the CLS token, which (colour, shape)
objects the scene holds, with the batches of :class:`~litbrain.datamodules.VqaDataModule`
(``cell_colour`` / ``cell_shape``). The VLM then loads the tower by ``model.vision_init_from`` (see
:func:`load_pretrained_vision`).

The CLS objective stands in for CLIP's image-level training: it makes the CLS token summarise the
scene, so its attention in the last block falls on the objects. MustDrop's key-token set (the
top 8% of patches by that attention, never dropped) relies on exactly this; with an untrained
CLS it protects arbitrary patches.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn
from torchmetrics.classification import MulticlassAccuracy, MultilabelF1Score

from litbrain.nn.vlm import build_vision_encoder
from litbrain.tasks.fmri_decoding import build_optimizer

__all__ = ["ScenePretrainTask", "load_pretrained_vision"]

N_COLOURS, N_SHAPES = 4, 3  # the world's vocabulary (vqa_synthetic.COLOURS / SHAPES); + 1 for "empty"


class ScenePretrainTask(L.LightningModule):
    """Per-cell colour and shape classification from a ViT's patch tokens.

    Args:
        vision: the tower, as for :class:`~litbrain.tasks.vlm.VisionLanguageTask` (``library``,
            ``name``, ``kwargs``, ``pos_embed_init``).
        grid: board cells per side; the patch grid must divide into ``grid x grid`` windows.
        scene_weight: weight of the CLS loss (which of the colour x shape objects are present,
            multi-label); 0 trains the cell heads only.
        lr / weight_decay / warmup_fraction: AdamW + one-cycle schedule.
    """

    def __init__(self, vision: dict[str, Any] | None = None, grid: int = 3, scene_weight: float = 1.0, lr: float = 1e-3,
                 weight_decay: float = 1e-2, warmup_fraction: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        if vision is None:
            raise ValueError("ScenePretrainTask needs model.vision (see configs/vlm/vision_pretrain.yaml)")
        from litbrain.nn.vision_reduction import VisionTokenReducer

        self.vit = build_vision_encoder(vision)
        dense = VisionTokenReducer(self.vit, method="none")
        side = int(round(dense.num_patches ** 0.5))
        if side * side != dense.num_patches or side % grid:
            raise ValueError(f"model.grid={grid}: the ViT's {dense.num_patches} patches are not a square grid "
                             f"divisible into {grid} x {grid} cells; fix: match image_size / patch_size to the board")
        object.__setattr__(self, "_tokens", dense)  # wraps self.vit; kept out of the module tree (no new weights)
        self.side, self.grid = side, int(grid)
        self.colour_head = nn.Linear(dense.embed_dim, N_COLOURS + 1)
        self.shape_head = nn.Linear(dense.embed_dim, N_SHAPES + 1)
        self.scene_head = nn.Linear(dense.embed_dim, N_COLOURS * N_SHAPES)
        self.val_colour = MulticlassAccuracy(N_COLOURS + 1, average="micro", ignore_index=0)
        self.val_shape = MulticlassAccuracy(N_SHAPES + 1, average="micro", ignore_index=0)
        self.val_scene = MultilabelF1Score(N_COLOURS * N_SHAPES, average="micro")

    def cell_features(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, grid**2, D)`` patch tokens averaged over each cell's window (row-major), and the CLS token ``(B, D)``."""
        vt = self._tokens(images)  # tokens (B, N, D), spatial order
        B, _, D = vt.tokens.shape
        grid_tok = vt.tokens.transpose(1, 2).reshape(B, D, self.side, self.side)
        return F.adaptive_avg_pool2d(grid_tok, self.grid).flatten(2).transpose(1, 2), vt.cls

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-cell colour ``(B, cells, C+1)`` and shape ``(B, cells, S+1)`` logits, scene logits ``(B, C*S)``."""
        f, cls = self.cell_features(images)
        return self.colour_head(f), self.shape_head(f), self.scene_head(cls)

    @staticmethod
    def scene_objects(cell_colour: torch.Tensor, cell_shape: torch.Tensor) -> torch.Tensor:
        """``(B, C*S)`` 0/1: object (colour c, shape s) is somewhere on the board (index ``c * S + s``)."""
        occ = cell_shape > 0
        idx = ((cell_colour - 1).clamp(min=0) * N_SHAPES + (cell_shape - 1).clamp(min=0)).masked_fill(~occ, N_COLOURS * N_SHAPES)
        out = torch.zeros(idx.shape[0], N_COLOURS * N_SHAPES + 1, device=idx.device)
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

    def configure_optimizers(self) -> Any:
        steps = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 1000
        opt, sched = build_optimizer(self, self.hparams, max(steps, 1))
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}


def load_pretrained_vision(vit: nn.Module, path: str | Path, key: str = "model.vision_init_from") -> None:
    """Load the tower weights of a :class:`ScenePretrainTask` checkpoint into ``vit`` (strict).

    Raises ``ReleaseError`` naming ``key`` when the file is missing, is not a scene-pretraining
    checkpoint, or holds a tower of other sizes.
    """
    from litbrain.hub import ReleaseError

    path = Path(path)
    if not path.is_file():
        raise ReleaseError(f"{key}={path}: no such file; fix: point it at the last.ckpt of a "
                           f"`litbrain fit --config configs/vlm/vision_pretrain.yaml` run")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    state = {k[len("vit."):]: v for k, v in ckpt.get("state_dict", {}).items() if k.startswith("vit.")}
    if not state:
        raise ReleaseError(f"{key}={path}: not a scene-pretraining checkpoint (no 'vit.' weights); fix: use the "
                           f"checkpoint of a ScenePretrainTask run (configs/vlm/vision_pretrain.yaml)")
    try:
        vit.load_state_dict(state, strict=True)
    except RuntimeError as err:
        first = str(err).strip().splitlines()
        raise ReleaseError(f"{key}={path}: its vision tower does not match model.vision ({first[-1].strip()}); "
                           f"fix: use the same vision sizes in both configs") from None
