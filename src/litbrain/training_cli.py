"""LightningCLI for litbrain's training verbs (fit/validate/test/predict).

Any task (``model.class_path``) composes with any datamodule and trainer config:
``litbrain fit --config configs/fmri/demo.yaml --config configs/trainer/cpu.yaml``.
"""

from __future__ import annotations

from lightning.pytorch.cli import LightningCLI

from litbrain._cli_errors import ConciseLightningArgumentParser


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
        )
