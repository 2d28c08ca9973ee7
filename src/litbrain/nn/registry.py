"""The model registry: ``model_type`` -> (config dataclass, ``nn.Module`` class).

Every model litbrain releases declares its hyper-parameters ONCE, as a :class:`ModelConfig`
dataclass beside its class (litgpt's ``Config``). The task takes that config (a YAML block under
``model.init_args.net``), a release writes it into ``config.json`` together with its
``model_type``, and loading rebuilds the model from it. Export, load, model cards, push,
``estimate-memory`` and ``init_from`` all dispatch through :func:`build_model` /
:func:`config_from_dict`, so no list of keys exists anywhere else.

Adding a model is one line in :data:`MODEL_TYPES` (``"my_type": "litbrain.nn.my_family:MyModel"``);
the class sets ``config_class`` and takes ``config`` (or the config's fields as keywords); its
config's :meth:`ModelConfig.examples` gives the tiny configs that the registry test builds,
releases and reloads.
"""

from __future__ import annotations

import dataclasses
import importlib
import typing
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

from litbrain.errors import ConfigError, ReleaseError

__all__ = [
    "MODEL_TYPES",
    "ModelCard",
    "ModelConfig",
    "build_model",
    "config_class",
    "config_from_dict",
    "model_class",
]

# model_type -> "module:Class". The one line a new model family adds.
MODEL_TYPES: dict[str, str] = {
    "fmri_decoder": "litbrain.nn.fmri_decoder:BrainDecoder",
    "duin": "litbrain.nn.duin:DuinModel",
    "vlm": "litbrain.nn.vlm:VisionLanguageModel",
    "vision_tower": "litbrain.nn.vlm:SceneVisionTower",
    "voxel_encoder": "litbrain.nn.voxel_encoder:VoxelEncoder",
    "causal_lm": "litbrain.nn.distill:CausalLm",
    "gill": "litbrain.nn.gill:GillModel",
    "seq2seq_lm": "litbrain.nn.distill:Seq2SeqStudent",
    "wave": "litbrain.nn.wave:WaveEncoder",
    "brain_to_image": "litbrain.nn.brain_to_image:BrainToImage",
    "world_probe": "litbrain.nn.generation:WorldProbe",
}

C = TypeVar("C", bound="ModelConfig")


@dataclass
class ModelCard:
    """What a model card says about one model (filled in by its config's :meth:`ModelConfig.card`)."""

    title: str
    summary: str
    tags: list[str]
    usage: str
    intended_use: str = ("Research only. Not for clinical use or any decision-making about individuals.")


def _plain(value: Any) -> Any:
    """JSON-safe copy: tuples -> lists, nested dataclasses -> dicts."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _coerce_nested(cls: type, data: dict[str, Any], source: str) -> dict[str, Any]:
    """Turn dict values of dataclass-typed fields into those dataclasses (recursively)."""
    hints = typing.get_type_hints(cls)
    out = dict(data)
    for f in dataclasses.fields(cls):
        if f.name not in out or not f.init:
            continue
        hint = hints.get(f.name)
        candidates = [hint, *typing.get_args(hint)]
        sub = next((c for c in candidates if isinstance(c, type) and dataclasses.is_dataclass(c)), None)
        if sub is not None and isinstance(out[f.name], dict):
            out[f.name] = dataclass_from_dict(sub, out[f.name], f"{source}.{f.name}")
    return out


def dataclass_from_dict(cls: type[Any], data: dict[str, Any], source: str = "config") -> Any:
    """``cls(**data)`` with nested dataclasses rebuilt; unknown keys are one clear ConfigError."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of {cls.__name__} fields, got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - known - {"model_type"})
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {unknown} for {cls.__name__}; fix: use only {sorted(known)}")
    kwargs = _coerce_nested(cls, {k: v for k, v in data.items() if k in known}, source)
    return cls(**kwargs)


@dataclass
class ModelConfig:
    """Base of every released model's config. Subclasses set ``model_type`` and add fields."""

    model_type: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        """The config as config.json holds it: ``{"model_type": ..., field: value, ...}``."""
        return {"model_type": self.model_type, **_plain(self)}

    def fields(self) -> dict[str, Any]:
        """The config's fields as a plain dict (no model_type): what a task's ``net`` argument takes."""
        return _plain(self)

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], source: str = "config") -> C:
        got = data.get("model_type", cls.model_type) if isinstance(data, dict) else None
        if got != cls.model_type:
            raise ConfigError(f"{source}: model_type {got!r} is not {cls.model_type!r}; fix: pass a "
                              f"{cls.__name__} (model_type {cls.model_type!r})")
        return dataclass_from_dict(cls, data, source)

    @classmethod
    def coerce(cls: type[C], value: Any, source: str = "net") -> C:
        """A config from itself, a dict of its fields, or None (all defaults)."""
        if value is None:
            return cls()
        if isinstance(value, cls):
            return value
        if dataclasses.is_dataclass(value):
            value = _plain(value)
        return cls.from_dict(value, source)

    @classmethod
    def complete(cls: type[C], config: C | None, kwargs: dict[str, Any], model: str) -> C:
        """A model constructor's config: ``config``, or one built from its fields as keywords; every
        field the data fills in must be set by now."""
        config = config if config is not None else cls(**kwargs)
        if config.missing():
            raise ConfigError(f"{model} needs {config.missing()}; fix: set net.{config.missing()[0]} "
                              f"or train with a datamodule that provides it")
        return config

    def replace(self: C, **changes: Any) -> C:
        return dataclasses.replace(self, **changes)

    def missing(self) -> list[str]:
        """Fields the data must still fill in (e.g. subjects) before a model can be built."""
        return []

    @classmethod
    def examples(cls: type[C]) -> list[C]:
        """Tiny, complete configs: the registry test builds, releases and reloads each one."""
        raise NotImplementedError(f"{cls.__name__}.examples() must give at least one tiny config")

    def example_input(self, batch_size: int = 2, seed: int = 0) -> Any:
        """A random input of the right shapes for ``model(...)`` (tests, shape checks, examples)."""
        raise NotImplementedError(f"{type(self).__name__}.example_input() is not defined")

    def card(self) -> ModelCard:
        """What the release's model card says about this model."""
        return ModelCard(title=f"litbrain {self.model_type} model", summary="", tags=[self.model_type], usage="")


def model_class(model_type: str, source: str = "config") -> type:
    """The nn.Module class registered for ``model_type``."""
    try:
        target = MODEL_TYPES[model_type]
    except KeyError:
        raise ReleaseError(f"{source}: unknown model_type {model_type!r}; fix: one of {sorted(MODEL_TYPES)} "
                           f"(a release written by another tool, or by a newer litbrain?)") from None
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def config_class(model_type: str, source: str = "config") -> type[ModelConfig]:
    return model_class(model_type, source).config_class


def config_from_dict(data: dict[str, Any], source: str = "config") -> ModelConfig:
    """The :class:`ModelConfig` a dict (a config.json, a checkpoint's ``net``) describes."""
    if not isinstance(data, dict) or not data.get("model_type"):
        raise ReleaseError(f"{source}: no 'model_type' in the model config; fix: re-export it with this "
                           f"version of litbrain (`litbrain export`), which records the model type")
    return config_class(str(data["model_type"]), source).from_dict(data, source)


def build_model(config: ModelConfig | dict[str, Any], source: str = "config") -> Any:
    """A freshly initialised model for ``config`` (a ModelConfig or its dict)."""
    if isinstance(config, dict):
        config = config_from_dict(config, source)
    missing = config.missing()
    if missing:
        raise ConfigError(f"{source}: {type(config).__name__} lacks {missing}; fix: set them, or train with a "
                          f"datamodule that provides them")
    cls = model_class(config.model_type, source)
    build = getattr(cls, "from_config", None)
    return build(config) if build is not None else cls(config)
