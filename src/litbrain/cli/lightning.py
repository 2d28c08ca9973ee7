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

import logging
import warnings
from pathlib import Path
from typing import Any

from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.utilities.exceptions import MisconfigurationException

import litbrain.datamodules.fmri.datamodule  # noqa: F401  (registers the DataModules' short names)
import litbrain.datamodules.seeg.datamodule  # noqa: F401
import litbrain.datamodules.vqa.datamodule  # noqa: F401
import litbrain.tasks  # noqa: F401  (registers the tasks' short names: class_path: FmriDecodingTask)
from litbrain.callbacks import BatchSeed, ProgressLines, SlurmRequeueAtStepBoundary
from litbrain.cli.errors import ConciseErrors, where
from litbrain.errors import ConfigError, HardwareError, LitbrainError, ReleaseError

__all__ = ["LitbrainCLI", "check_strategy_hardware", "run_outputs"]


class ConciseLightningArgumentParser(ConciseErrors, LightningArgumentParser):
    pass


def _drop_litlogger_tip(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith("💡 Tip")


def quiet_known_noise() -> None:
    """Silence the known lines that say nothing about the run, each at its source (not all warnings).

    Lightning's advert for its cloud logger on every fit; its warning that ``srun`` exists when a
    machine merely has SLURM installed (the sbatch templates use srun; a local fit is meant);
    its own use of a torch pytree API that torch has deprecated. Any other warning still shows.
    """
    import lightning_utilities.core.rank_zero as rank_zero

    if _drop_litlogger_tip not in rank_zero.log.filters:
        rank_zero.log.addFilter(_drop_litlogger_tip)
    warnings.filterwarnings("ignore", message=r"The `srun` command is available on your system but is not used")
    warnings.filterwarnings("ignore", message=r"`isinstance\(treespec, LeafSpec\)` is deprecated")


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
        quiet_known_noise()
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
            # a misspelt key (max_epoch) is an error, never a silent abbreviation of another one
            parser_kwargs={"allow_abbrev": False},
            # Appended to the config's callbacks on every run: exact resume by default, and a
            # SLURM preemption checkpoint taken at a step boundary (inactive outside SLURM).
            # A line per epoch with an ETA whenever Lightning's bar is off (logs, make targets, jobs).
            trainer_defaults={"callbacks": [BatchSeed(), SlurmRequeueAtStepBoundary(), ProgressLines()]},
        )

    def _parse_ckpt_path(self) -> None:
        # Lightning reads --ckpt_path's hyper-parameters right after parsing: check the file first.
        config = self.config.get(self.config.get("subcommand"), self.config) if self.config.get("subcommand") else self.config
        check_ckpt_path(config.get("ckpt_path") if hasattr(config, "get") else None)
        super()._parse_ckpt_path()

    def _set_seed(self) -> None:
        # Lightning's seeding, without its "Seed set to N" line (the seed is in the run's config.yaml).
        from lightning.fabric.utilities.seed import seed_everything

        config_seed = self._get(self.config, "seed_everything")
        if config_seed is False:
            return
        config_seed = seed_everything(None if config_seed is True else config_seed, workers=True, verbose=False)
        (self.config[self.subcommand] if self.subcommand else self.config)["seed_everything"] = config_seed

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
        config = self.config.get(self.subcommand, self.config) if self.subcommand else self.config
        check_strategy_hardware(config)
        check_ckpt_path(config.get("ckpt_path") if hasattr(config, "get") else None)

    def _run_subcommand(self, subcommand: str) -> None:
        # A run that fails before it trained leaves nothing it created behind (the config.yaml
        # Lightning writes at the start, empty checkpoint folders), so a corrected re-run starts as if
        # the first never happened. A run stopped after it trained (Ctrl-C, a crash, SLURM's requeue
        # SIGTERM after hpc_ckpt_N.ckpt) keeps everything: those checkpoints are what resumes it.
        root = self._get(self.config_init, "trainer", default={}).get("default_root_dir")
        root = Path(root) if root else None
        before = _entries(root)
        try:
            super()._run_subcommand(subcommand)
        except BaseException as err:
            if root is not None and not _trained(getattr(self, "trainer", None), root, before):
                _remove_new(root, before)
            if isinstance(err, MisconfigurationException):
                raise ConfigError(f"{err} (from {where()}); fix: correct that trainer or model setting") from None
            raise

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
        try:
            return super().instantiate_trainer(**kwargs)
        except MisconfigurationException as err:  # e.g. max_epochs -5: Lightning's own check, one line here
            raise ConfigError(f"trainer: {err} (from {where()}); fix: correct that trainer setting") from None


def _entries(root: Path | None) -> set[Path] | None:
    """What exists under a run folder now (None: the folder itself does not exist)."""
    if root is None or not root.exists():
        return None
    return {p for p in root.rglob("*")}


def _trained(trainer: Any, root: Path, before: set[Path] | None) -> bool:
    """Whether a run made progress worth keeping: an optimiser step, or any new checkpoint file."""
    if trainer is not None and getattr(trainer, "global_step", 0) > 0:
        return True
    new = set(root.rglob("*")) - (before or set()) if root.exists() else set()
    return any(p.suffix == ".ckpt" or (p.is_dir() and p.name.endswith(".ckpt")) for p in new)


def _remove_new(root: Path, before: set[Path] | None) -> None:
    import shutil

    if before is None:
        shutil.rmtree(root, ignore_errors=True)
        return
    for p in sorted((set(root.rglob("*")) - before), key=lambda q: len(q.parts), reverse=True):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


def check_ckpt_path(ckpt_path: Any) -> None:
    """``--ckpt_path``: a named checkpoint (last, best, hpc, registry) or an intact file / ZeRO folder."""
    if ckpt_path is None or str(ckpt_path) in ("last", "best", "hpc", "registry") or str(ckpt_path).startswith("registry:"):
        return
    from litbrain.utils.checkpoint import is_zero_checkpoint, verify_zip

    path = Path(str(ckpt_path))
    if path.is_dir() and is_zero_checkpoint(path):
        return
    if not path.is_file():
        raise ReleaseError(f"ckpt_path={path}: no such checkpoint file (from {where()}); fix: pass a .ckpt written by "
                           f"`litbrain fit` (e.g. <default_root_dir>/checkpoints/last.ckpt) or `--ckpt_path last`")
    verify_zip(path, "checkpoint")


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
