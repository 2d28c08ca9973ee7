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

* :class:`ProgressLines` prints one line per epoch (and every ``every_s`` seconds inside long
  epochs): where training is, the elapsed time, an ETA and the latest monitored figures. It speaks
  only when Lightning's own progress bar is off (logs, ``make`` targets, batch jobs), so a run is
  never silent and never prints two progress displays.

They are stateless (nothing is added to checkpoints) and cheap: one ``manual_seed`` per step,
and under SLURM+DDP one 1-element all-reduce per step.

Add them to a run with ``--trainer.callbacks+=litbrain.callbacks.BatchSeed`` (the sbatch
templates in ``slurm/`` add both).
"""

from __future__ import annotations

import os
import random
import signal
import sys
import threading
import time
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback

__all__ = ["BatchSeed", "ProgressLines", "SlurmRequeueAtStepBoundary", "batch_seed"]


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


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else (f"{m}m{s:02d}s" if m else f"{s}s")


class ProgressLines(Callback):
    """One line per epoch (and every ``every_s`` seconds within an epoch) with an ETA, when the bar is off.

    Args:
        every_s: seconds between lines inside an epoch (long epochs, ``max_steps`` runs).
        stream: where the lines go (default: stderr, beside Lightning's own messages).
    """

    def __init__(self, every_s: float = 30.0, stream: Any = None) -> None:
        self.every_s = float(every_s)
        self.stream = stream
        self._t0 = self._last = 0.0
        self._total = 0

    def _active(self, trainer: pl.Trainer) -> bool:
        return trainer.is_global_zero and trainer.progress_bar_callback is None and not trainer.sanity_checking

    def _print(self, text: str) -> None:
        print(text, file=self.stream or sys.stderr, flush=True)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._t0 = self._last = time.monotonic()
        self._start_step = int(trainer.global_step)
        total = trainer.estimated_stepping_batches
        self._total = int(total) if total not in (None, float("inf")) else 0

    def _where(self, trainer: pl.Trainer) -> str:
        step, elapsed = int(trainer.global_step), time.monotonic() - self._t0
        done = step - self._start_step
        parts = [f"step {step}" + (f"/{self._total}" if self._total else "")]
        if trainer.max_epochs and trainer.max_epochs > 0:
            parts.insert(0, f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}")
        parts.append(f"{_duration(elapsed)} elapsed")
        if self._total and done > 0:
            parts.append(f"ETA {_duration(elapsed / done * max(self._total - step, 0))}")
        return " | ".join(parts)

    @staticmethod
    def _figures(trainer: pl.Trainer) -> str:
        shown = []
        for k, v in trainer.callback_metrics.items():
            if k.count("/") != 1 or not k.startswith(("train/", "val/")):  # means only, not per subject
                continue
            try:
                shown.append(f"{k} {float(v):.4g}")
            except (TypeError, ValueError):
                continue
        return " | ".join(shown[:6])

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self._active(trainer) and time.monotonic() - self._last >= self.every_s:
            self._last = time.monotonic()
            self._print(f"[litbrain] {self._where(trainer)}")

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._active(trainer):
            self._last = time.monotonic()
            figures = self._figures(trainer)
            self._print(f"[litbrain] {self._where(trainer)}" + (f" | {figures}" if figures else ""))
