"""LightningCLI for the training verbs (fit / validate / test / predict), shared by every family.

Any task (``model.class_path``, short names work: ``FmriDecodingTask``) composes with any
datamodule and trainer config: ``litbrain fit --config configs/fmri/demo.yaml --config
configs/trainer/cpu.yaml``.

Run outputs live under ``trainer.default_root_dir`` for every task, so no config repeats them:
CSV logs in ``<root>/logs/version_0`` (with the run's ``config.yaml``) and checkpoints in
``<root>/checkpoints``: ``best.ckpt`` by the task's monitored metric (``checkpoint_monitor``) and
``last.ckpt``. A config that sets ``trainer.logger`` or its own ``ModelCheckpoint`` keeps it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

import litbrain.datamodules.fmri.datamodule  # noqa: F401  (registers the DataModules' short names)
import litbrain.datamodules.seeg.datamodule  # noqa: F401
import litbrain.datamodules.vqa.datamodule  # noqa: F401
import litbrain.tasks  # noqa: F401  (registers the tasks' short names: class_path: FmriDecodingTask)
from litbrain.callbacks import BatchSeed, SlurmRequeueAtStepBoundary
from litbrain.cli.errors import ConciseErrors, where
from litbrain.errors import ConfigError, HardwareError, LitbrainError

__all__ = ["LitbrainCLI", "check_strategy_hardware", "run_outputs"]


class ConciseLightningArgumentParser(ConciseErrors, LightningArgumentParser):
    pass


def run_outputs(root: str | Path, monitor: tuple[str, str] | None) -> tuple[Any, ModelCheckpoint]:
    """The CSV logger and checkpoint callback every run gets under ``root`` (see the module docstring)."""
    from lightning.pytorch.loggers import CSVLogger

    root = Path(root)
    logger = CSVLogger(save_dir=str(root), name="logs", version=0)  # fixed version: export finds config.yaml
    if monitor is None:
        ckpt = ModelCheckpoint(dirpath=str(root / "checkpoints"), save_last=True, save_top_k=0,
                               enable_version_counter=False)
    else:
        metric, mode = monitor
        ckpt = ModelCheckpoint(dirpath=str(root / "checkpoints"), filename="best", monitor=metric, mode=mode,
                               save_last=True, enable_version_counter=False)  # re-runs overwrite, no -v1, -v2
    return logger, ckpt


class LitbrainCLI(LightningCLI):
    def __init__(self, args: list[str] | None = None, run: bool = True) -> None:
        super().__init__(
            model_class=None,
            datamodule_class=None,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_kwargs={"overwrite": True},
            args=args,
            run=run,
            auto_configure_optimizers=False,
            parser_class=ConciseLightningArgumentParser,
            # Appended to the config's callbacks on every run: exact resume by default, and a
            # SLURM preemption checkpoint taken at a step boundary (inactive outside SLURM).
            trainer_defaults={"callbacks": [BatchSeed(), SlurmRequeueAtStepBoundary()]},
        )

    def instantiate_classes(self) -> None:
        # A LitbrainError raised while the config's classes are built (a DataModule that finds no
        # prepared data, a task with an impossible setting) reaches jsonargparse, which buries it
        # in a page of union-type diagnostics; hand the user the error itself.
        try:
            super().instantiate_classes()
        except LitbrainError:
            raise
        except Exception as err:
            raise _litbrain_cause(err) or err

    def before_instantiate_classes(self) -> None:
        check_strategy_hardware(self.config.get(self.subcommand, self.config) if self.subcommand else self.config)

    def instantiate_trainer(self, **kwargs: Any) -> Any:
        trainer = dict(self._get(self.config_init, "trainer", default={}))
        root = trainer.get("default_root_dir")
        if root:
            monitor = self.model.checkpoint_monitor() if hasattr(self.model, "checkpoint_monitor") else None
            logger, ckpt = run_outputs(root, monitor)
            if trainer.get("logger") in (None, True):
                kwargs.setdefault("logger", logger)
            callbacks = trainer.get("callbacks") or []
            callbacks = list(callbacks) if isinstance(callbacks, (list, tuple)) else [callbacks]
            if trainer.get("enable_checkpointing", True) is not False and not any(
                    isinstance(c, ModelCheckpoint) for c in callbacks):
                kwargs.setdefault("callbacks", [*callbacks, ckpt])
        return super().instantiate_trainer(**kwargs)


def _litbrain_cause(err: BaseException) -> LitbrainError | None:
    """The LitbrainError behind ``err`` (its cause chain, or the one-line message jsonargparse quotes)."""
    seen: set[int] = set()
    e: BaseException | None = err
    while e is not None and id(e) not in seen:
        if isinstance(e, LitbrainError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    for line in str(err).splitlines():
        text = line.strip().lstrip("- ").strip()
        if "; fix:" in text:
            return ConfigError(text)
    return None


def _strategy_name(strategy: Any) -> str:
    if isinstance(strategy, str):
        return strategy
    if isinstance(strategy, dict) or hasattr(strategy, "get"):
        return str(strategy.get("class_path", ""))
    return type(strategy).__name__


def check_strategy_hardware(config: Any) -> None:
    """Fail before training starts when a DeepSpeed strategy or a GPU is chosen without one.

    Lightning's DeepSpeedStrategy only raises deep inside ``fit()``; this names the key and the fix.
    """
    import torch

    trainer = config.get("trainer", {}) if hasattr(config, "get") else {}
    name = _strategy_name(trainer.get("strategy", "auto") if hasattr(trainer, "get") else "auto")
    accelerator = str(trainer.get("accelerator", "auto") if hasattr(trainer, "get") else "auto")
    if "deepspeed" in name.lower() and not torch.cuda.is_available():
        raise HardwareError(
            f"trainer.strategy={name} (from {where()}) needs CUDA GPUs but this machine has none; "
            f"fix: use configs/trainer/cpu.yaml or configs/trainer/cpu_ddp.yaml here, and the DeepSpeed "
            f"configs on a GPU node (e.g. through slurm/)"
        )
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available() and not (
        accelerator == "gpu" and torch.backends.mps.is_available()
    ):
        raise HardwareError(
            f"trainer.accelerator={accelerator} (from {where()}) needs a GPU but this machine has none; "
            f"fix: use configs/trainer/cpu.yaml (or configs/trainer/cpu_ddp.yaml) here, and the GPU configs "
            f"on a GPU node (e.g. through slurm/)"
        )
