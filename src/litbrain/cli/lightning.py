"""LightningCLI for litbrain's training verbs (fit/validate/test/predict).

Any task (``model.class_path``) composes with any datamodule and trainer config:
``litbrain fit --config configs/fmri/demo.yaml --config configs/trainer/cpu.yaml``.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.cli import LightningCLI

from litbrain._cli_errors import ConciseLightningArgumentParser
from litbrain.callbacks import BatchSeed, SlurmRequeueAtStepBoundary


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

    def before_instantiate_classes(self) -> None:
        check_strategy_hardware(self.config.get(self.subcommand, self.config) if self.subcommand else self.config)


class HardwareError(RuntimeError):
    """The trainer config asks for hardware this machine does not have."""


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
    from litbrain import _cli_errors

    files = ", ".join(_cli_errors.CONFIG_FILES) or "the command line"
    if "deepspeed" in name.lower() and not torch.cuda.is_available():
        raise HardwareError(
            f"trainer.strategy={name} (from {files}) needs CUDA GPUs but this machine has none; "
            f"fix: use configs/trainer/cpu.yaml or configs/trainer/cpu_ddp.yaml here, and the DeepSpeed "
            f"configs on a GPU node (e.g. through slurm/)"
        )
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available() and not (
        accelerator == "gpu" and torch.backends.mps.is_available()
    ):
        raise HardwareError(
            f"trainer.accelerator={accelerator} (from {files}) needs a GPU but this machine has none; "
            f"fix: use configs/trainer/cpu.yaml (or configs/trainer/cpu_ddp.yaml) here, and the GPU configs "
            f"on a GPU node (e.g. through slurm/)"
        )
