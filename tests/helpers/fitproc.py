"""`litbrain fit` in subprocesses, shrunk to test size: shared by the resume, DDP and SLURM tests.

Runs that must agree bit for bit use the same environment: one BLAS/OpenMP thread
(``OMP_NUM_THREADS=1``, as slurm/cpu.sbatch sets for --cpus-per-task=1), deterministic mode, a seed,
and :class:`litbrain.callbacks.BatchSeed`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = str(REPO / "configs" / "fmri" / "demo.yaml")
LITBRAIN = str(Path(sys.executable).parent / "litbrain")
BATCH = 27  # 9 rows per subject -> 10 training batches per epoch on tiny_prepared (90 rows/subject)


def tiny_fit_args(data_dir: Path, run_dir: Path, *extra: str, epochs: int = 2, every_n_train_steps: int = 3,
                  batch_size: int = BATCH) -> list[str]:
    """Arguments after `litbrain`: the demo recipe at width 32, 1 block, deterministic, checkpoints
    (no monitor) every ``every_n_train_steps`` plus last.ckpt in ``run_dir/checkpoints``."""
    args = [
        "fit", "--config", DEMO_CONFIG,
        "--data.init_args.data_dir", str(data_dir),
        "--data.init_args.batch_size", str(batch_size),
        "--model.init_args.net.width", "32",
        "--model.init_args.net.n_blocks", "1",
        "--trainer.max_epochs", str(epochs),
        "--trainer.check_val_every_n_epoch", "1",
        "--trainer.deterministic", "true",
        "--trainer.default_root_dir", str(run_dir),
        # the run's own checkpoint callback instead of the CLI's default (best.ckpt + last.ckpt)
        "--trainer.callbacks+=lightning.pytorch.callbacks.ModelCheckpoint",
        "--trainer.callbacks.init_args.dirpath", str(run_dir / "checkpoints"),
        "--trainer.callbacks.init_args.filename", "step{step}",
        "--trainer.callbacks.init_args.every_n_train_steps", str(every_n_train_steps),
        "--trainer.callbacks.init_args.save_last", "true",
        "--trainer.callbacks.init_args.enable_version_counter", "false",
    ]
    return args + list(extra)  # the CLI adds BatchSeed to every run


def fit_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    for k in [k for k in env if k.startswith("SLURM_")]:  # a local fit must not look like a SLURM task
        if k != "SLURM_CONF":
            env.pop(k)
    env.update(extra)
    return env


def start_fit(args: list[str], log: Path, **env: str) -> subprocess.Popen:
    log.parent.mkdir(parents=True, exist_ok=True)
    return subprocess.Popen([LITBRAIN, *args], cwd=REPO, env=fit_env(**env), stdout=log.open("w"),
                            stderr=subprocess.STDOUT)


def wait_ok(proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise AssertionError(f"litbrain fit ran over {timeout}s; log {log}:\n{log.read_text()[-3000:]}")
    assert rc == 0, f"litbrain fit exited {rc}; log {log}:\n{log.read_text()[-3000:]}"


def weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]


def global_step(ckpt: Path) -> int:
    return int(torch.load(ckpt, map_location="cpu", weights_only=True)["global_step"])


def assert_same_weights(a: Path, b: Path, exact: bool = True, rtol: float = 1e-4, atol: float = 1e-6) -> float:
    """Every tensor of the two checkpoints' state_dicts equal (or allclose); returns the max |diff|."""
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    worst = 0.0
    for k in wa:
        diff = (wa[k].double() - wb[k].double()).abs().max().item() if wa[k].numel() else 0.0
        worst = max(worst, diff)
        if exact:
            assert torch.equal(wa[k], wb[k]), f"{k}: max |diff| {diff:.3g} between {a} and {b}"
        else:
            assert torch.allclose(wa[k], wb[k], rtol=rtol, atol=atol), f"{k}: max |diff| {diff:.3g} between {a} and {b}"
    return worst


def wait_for(predicate, timeout: float, what: str, poll: float = 0.2) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


class PauseAtStep(Callback):
    """Test helper: at the start of optimizer step ``step``, touch ``flag`` and sleep (to be killed)."""

    def __init__(self, step: int, flag: str, seconds: float = 600.0) -> None:
        self.step, self.flag, self.seconds = int(step), flag, float(seconds)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        if trainer.global_step == self.step:
            Path(self.flag).write_text(str(self.step))
            time.sleep(self.seconds)


class Pace(Callback):
    """Test helper: sleep after every training step, so a short run lasts long enough to be preempted."""

    def __init__(self, seconds: float = 0.3) -> None:
        self.seconds = float(seconds)

    def on_train_batch_end(self, *args: Any) -> None:
        time.sleep(self.seconds)


class FailAtStep(Callback):
    """Test helper: raise after optimiser step ``step``, as a crash in the middle of training would."""

    def __init__(self, step: int = 5) -> None:
        self.step = int(step)

    def on_train_batch_end(self, trainer: Any, *args: Any) -> None:
        if trainer.global_step >= self.step:
            raise RuntimeError(f"FailAtStep: stopped at step {trainer.global_step}")
