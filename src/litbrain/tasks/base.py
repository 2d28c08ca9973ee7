"""What every litbrain task shares: the model config, the optimiser recipe, subjects, init_from.

A task is a LightningModule that trains one registered model (``self.model``, built from the
config in ``model.init_args.net``). :class:`LitbrainTask` gives every task

* ``net``: the model's config dataclass, kept in the hyper-parameters as a plain dict with its
  ``model_type`` (so a checkpoint says what it holds; ``litbrain export`` and ``init_from``
  dispatch on it);
* the optimiser recipe (AdamW without decay on biases and norms + one-cycle schedule;
  ``lr``, ``weight_decay``, ``warmup_fraction``);
* subject bookkeeping (:func:`merge_subjects`; a subject shared by a checkpoint and the data
  must agree on its feature count) and per-subject evaluation logs;
* ``init_from``: a Lightning checkpoint, a release folder or a Hub repo id, read through
  :func:`litbrain.release.read_model_source` (the model type is checked).
"""

from __future__ import annotations

from typing import Any, ClassVar, Iterable

import lightning as L
import torch
from torch import nn

from litbrain.errors import ConfigError, LitbrainError, SubjectMismatchError
from litbrain.nn.registry import ModelConfig
from litbrain.release import ModelSource, read_model_source
from litbrain.utils.optim import build_optimizer

__all__ = ["CarriesFiles", "LitbrainTask", "SplitEvaluation", "merge_subjects", "read_source"]


def read_source(path: str, key: str) -> ModelSource:
    """:func:`read_model_source` whose errors name the config key that pointed at ``path``."""
    try:
        return read_model_source(path)
    except LitbrainError as err:
        raise type(err)(f"{key}: {err}") from None


def merge_subjects(known: dict[str, int], data: dict[str, int], source: str, unit: str = "features") -> dict[str, int]:
    """Union of a model's subjects and the data's; a shared subject must agree on its ``unit`` count."""
    for s, n in data.items():
        if s in known and int(known[s]) != int(n):
            raise SubjectMismatchError(
                f"{source}: the adapter of subject {s!r} expects {known[s]} {unit} but the data has {n}; "
                f"fix: prepare {s} as the checkpoint's data was (same ROI mask / channels), or train a new adapter "
                f"under another subject id"
            )
    merged = {str(k): int(v) for k, v in known.items()}
    merged.update({str(k): int(v) for k, v in data.items()})
    return merged


class SplitEvaluation:
    """Validation and test hooks of a task that scores a batch with ``_eval_step(batch, split)`` and
    logs what it accumulated with ``_log_eval(split)`` at the end of the epoch (``split``: ``val``/``test``)."""

    def _eval_step(self, batch: Any, prefix: str) -> None:
        raise NotImplementedError

    def _log_eval(self, prefix: str) -> None:
        raise NotImplementedError

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def on_validation_epoch_end(self) -> None:
        self._log_eval("val")

    def on_test_epoch_end(self) -> None:
        self._log_eval("test")


class CarriesFiles:
    """A task whose model needs files beside its weights (a tokenizer saved with ``save_pretrained``):
    ``_tokenizer_files`` (name -> text) travel in every checkpoint and into every release."""

    _tokenizer_files: dict[str, str]

    def release_files(self) -> dict[str, str]:
        return dict(self._tokenizer_files)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)  # type: ignore[misc]
        checkpoint["litbrain"]["files"] = dict(self._tokenizer_files)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self._tokenizer_files = dict(checkpoint.get("litbrain", {}).get("files", {}))
        self.configure_model()  # type: ignore[attr-defined]


class LitbrainTask(L.LightningModule):
    """Base of every task. Subclasses set ``config_class`` and call :meth:`init_net` in ``__init__``."""

    config_class: ClassVar[type[ModelConfig]]

    # ------------------------------------------------------------------ the model config
    def init_net(self, net: Any) -> None:
        """Record ``net`` (a config, its dict or None) as the ``net`` hyper-parameter, as a plain dict."""
        self.hparams["net"] = self.config_class.coerce(net, "model.init_args.net").fields()

    @property
    def net(self) -> ModelConfig:
        """The model's config (from the hyper-parameters)."""
        return self.config_class.coerce(self.hparams["net"], "model.init_args.net")

    @net.setter
    def net(self, config: ModelConfig) -> None:
        self.hparams["net"] = config.fields()

    def release_files(self) -> dict[str, str]:
        """Files saved beside the weights (e.g. a tokenizer): kept in checkpoints, written into releases."""
        return {}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # What a checkpoint holds, for `litbrain export` and every init_from: the model's config with
        # its model_type (the registry key) and the files saved beside it. Kept apart from the
        # hyper-parameters, which stay the task's own arguments (load_from_checkpoint rebuilds the task).
        checkpoint["litbrain"] = {"net": self.net.to_dict(), "files": dict(self.release_files())}

    @property
    def datamodule(self) -> Any:
        return getattr(self.trainer, "datamodule", None) if self._trainer is not None else None

    # ------------------------------------------------------------------ checkpoints the CLI writes
    def checkpoint_monitor(self) -> tuple[str, str] | None:
        """``(metric, "max"|"min")`` that picks ``best.ckpt``; None: only ``last.ckpt`` is kept."""
        return None

    # ------------------------------------------------------------------ init_from
    def read_init(self, path: str, key: str = "model.init_args.init_from", stage: str | None = None) -> ModelSource:
        """Config + weights of ``path``, which must hold a model of this task's type (and ``stage``)."""
        src = read_source(path, key)
        want = self.config_class.model_type
        if src.config.model_type != want:
            raise ConfigError(f"{key}={path}: holds a {src.config.model_type!r} model, but this task trains "
                              f"{want!r}; fix: point it at a checkpoint or release of a {want} model")
        if stage is not None and getattr(src.config, "stage", None) != stage:
            raise ConfigError(
                f"{key}={path}: is a stage-'{getattr(src.config, 'stage', None)}' checkpoint, but this key needs a "
                f"stage-'{stage}' one; fix: point it at the checkpoint of the '{stage}' run")
        return src

    @staticmethod
    def load_weights(model: nn.Module, state: dict[str, torch.Tensor], key: str, path: str,
                     may_be_missing: Iterable[str] = ()) -> None:
        """Load ``state`` into ``model``; only keys starting with one of ``may_be_missing`` may lack weights."""
        prefixes = tuple(may_be_missing)
        missing, unexpected = model.load_state_dict(state, strict=False)
        bad = [k for k in missing if not (prefixes and k.startswith(prefixes))]
        if bad or unexpected:
            raise ConfigError(f"{key}={path}: weights do not fit the model (missing {bad[:3]}, unexpected "
                              f"{unexpected[:3]}); fix: use a checkpoint or release of the same architecture")

    def load_per_subject_init(self, maps: str) -> None:
        """Load ``self._init_state`` into ``self.model``; subjects new to it keep fresh maps in ``maps``.

        ``maps`` is the model's per-subject module (a SubjectAdapter: ``"adapter"`` for decoders,
        ``"readout"`` for encoding models): a subject of the data that the initial weights do not
        hold gets a freshly initialised map there, and every other weight must load.
        """
        prefix = f"{maps}.maps."
        known = {k[len(prefix):].split(".")[0] for k in self._init_state if k.startswith(prefix)}
        key = getattr(self.model, maps)._key
        new = [f"{prefix}{key(s)}." for s in self.net.subjects if key(s) not in known]
        self.load_weights(self.model, self._init_state, "model.init_from", self.hparams.init_from, new)

    def add_checkpoint_subjects(self, checkpoint: dict[str, Any], unit: str) -> None:
        """Before a checkpoint's weights load: give the model every subject it holds (same sizes for shared ones)."""
        saved = (checkpoint.get("hyper_parameters", {}).get("net") or {}).get("subjects") or {}
        if self.model is None or not saved:
            return
        current = self.model.subjects
        merged = merge_subjects(saved, current, "checkpoint", unit)
        for s, n in saved.items():
            if s not in current:
                self.model.add_subject(s, int(n))
        self.net = self.net.replace(subjects=merged)

    # ------------------------------------------------------------------ evaluation helpers
    @staticmethod
    def subject_of(batch: dict[str, Any]) -> str:
        (subject,) = batch["brain"].keys()  # evaluation loaders hold one subject each
        return subject

    def log_per_subject(self, prefix: str, values: dict[str, dict[str, torch.Tensor]],
                        prog_bar: Iterable[str] = ()) -> None:
        """Log ``{prefix}/{subject}/{name}`` and the mean over subjects ``{prefix}/{name}``."""
        bar = set(prog_bar)
        totals: dict[str, list[torch.Tensor]] = {}
        for subject, named in values.items():
            for name, value in named.items():
                self.log(f"{prefix}/{subject}/{name}", value, sync_dist=False)
                totals.setdefault(name, []).append(torch.as_tensor(value, dtype=torch.float32))
        for name, vals in totals.items():
            self.log(f"{prefix}/{name}", torch.stack(vals).mean(), prog_bar=name in bar)

    # ------------------------------------------------------------------ optimisation
    def optimized_module(self) -> nn.Module:
        """The module whose trainable parameters the optimiser gets (default: the whole task)."""
        return self

    def configure_optimizers(self) -> dict[str, Any]:
        h = self.hparams
        total = max(int(self.trainer.estimated_stepping_batches), 1) if self._trainer is not None else 1000
        opt, sched = build_optimizer(self.optimized_module(), h.lr, h.weight_decay, h.warmup_fraction, total)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
