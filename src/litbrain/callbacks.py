"""Lightning callbacks that make a fit exactly resumable and safe to preempt under SLURM.

* :class:`BatchSeed` reseeds torch / numpy / random before every training batch from
  ``(seed, epoch, global batch index)``. The random draws of a step (dropout masks, BiMixCo's
  permutations and Beta samples) then depend only on where training is, not on what ran
  before, so a run resumed from any checkpoint draws exactly what the uninterrupted run drew,
  and 2 DDP ranks with batch ``B`` draw what 1 process draws with ``accumulate_grad_batches=2``
  over the same batches (the global batch index is ``batch_idx * world_size + rank``, which is
  how :class:`~litbrain.datamodules.MultiSubjectBatchSampler` deals batches to ranks).
* :class:`SlurmRequeueAtStepBoundary` defers Lightning's own SLURM auto-requeue handler
  (``SLURMEnvironment(auto_requeue=True)``: save ``hpc_ckpt_N.ckpt`` + ``scontrol requeue``) from
  "whenever the signal lands" to the end of the next training step, and makes every DDP rank
  run it at the same step. Lightning's handler runs inside the signal handler, i.e. possibly in
  the middle of an optimizer step (the checkpoint is then not a consistent state) and on each
  rank at a different point (its ``save_checkpoint`` barrier can then pair with a gradient
  all-reduce). Nothing is re-implemented: the same Lightning function runs, only later.

Both are stateless (nothing is added to checkpoints) and cheap: one ``manual_seed`` per step,
and under SLURM+DDP one 1-element all-reduce per step.

Add them to a run with ``--trainer.callbacks+=litbrain.callbacks.BatchSeed`` (the sbatch
templates in ``slurm/`` add both).
"""

from __future__ import annotations

import os
import random
import signal
import threading
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

__all__ = ["BatchSeed", "SlurmRequeueAtStepBoundary", "batch_seed"]


def batch_seed(seed: int, epoch: int, global_batch: int) -> int:
    """A 63-bit seed for one training batch (``SeedSequence`` mixing: no collisions in practice)."""
    state = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, int(epoch), int(global_batch)]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


class BatchSeed(Callback):
    """Reseed torch (CPU + CUDA), numpy and random before every training batch.

    Args:
        seed: base seed; ``None`` = the run's ``seed_everything`` value (``PL_GLOBAL_SEED``), else 0.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def _base(self) -> int:
        if self.seed is not None:
            return int(self.seed)
        return int(os.environ.get("PL_GLOBAL_SEED", 0))

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int) -> None:
        g = batch_idx * trainer.world_size + trainer.global_rank
        s = batch_seed(self._base(), trainer.current_epoch, g)
        torch.manual_seed(s)  # also seeds every CUDA device
        np.random.seed(s % (1 << 32))
        random.seed(s)


class SlurmRequeueAtStepBoundary(Callback):
    """Run Lightning's SLURM requeue handler at a step boundary, on all ranks at the same step.

    Active only when the trainer's cluster environment is ``SLURMEnvironment`` with
    ``auto_requeue`` (Lightning's default under SLURM); otherwise it does nothing.
    """

    def __init__(self) -> None:
        self._signum: int | None = None
        self._installed: int | None = None
        self._previous: Any = None

    def _handler(self, signum: int, frame: Any) -> None:
        self._signum = signum

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        from lightning.fabric.plugins.environments import SLURMEnvironment

        env = trainer._accelerator_connector.cluster_environment
        if stage != "fit" or not isinstance(env, SLURMEnvironment) or not env.auto_requeue:
            return
        if threading.current_thread() is not threading.main_thread():
            return
        sig = env.requeue_signal or signal.SIGUSR1
        current = signal.getsignal(sig)
        if getattr(current, "__self__", None).__class__ is type(self):
            return  # another instance already defers this signal
        # Lightning registers its own handler after the setup hooks, and only if the signal has
        # none yet: installing ours first makes Lightning leave SIGUSR1 to us.
        self._previous = current
        signal.signal(sig, self._handler)
        self._installed = int(sig)

    def _pending_on_any_rank(self, trainer: pl.Trainer) -> int | None:
        local = self._signum or 0
        if trainer.world_size > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
            t = torch.tensor([local], dtype=torch.int64, device=trainer.strategy.root_device)
            torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
            local = int(t.item())
        return local or None

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._installed is None:
            return
        signum = self._pending_on_any_rank(trainer)
        if signum is None:
            return
        self._signum = None
        # Lightning's own handler: logger finalize, hpc_ckpt_N.ckpt, `scontrol requeue` on rank 0.
        trainer._signal_connector._slurm_sigusr_handler_fn(signum, None)

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self._installed is not None and threading.current_thread() is threading.main_thread():
            if signal.getsignal(self._installed) == self._handler:
                signal.signal(self._installed, self._previous if self._previous is not None else signal.SIG_DFL)
        self._installed = None
