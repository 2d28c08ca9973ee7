"""A callback that records the model's weights when training starts (what init_from loaded)."""

from __future__ import annotations

import torch
from lightning.pytorch.callbacks import Callback


class RecordStartingWeights(Callback):
    """Saves ``pl_module.model.state_dict()`` to ``path`` at the start of training (before any step)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def on_train_start(self, trainer, pl_module) -> None:
        torch.save({k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}, self.path)
