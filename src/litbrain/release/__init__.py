"""Releases: export, check, load (dispatch on config.json's ``model_type``), model cards, push.

Lightning ``.ckpt`` files are for resuming; releases are for sharing: a folder with
``model.safetensors`` + ``config.json`` (the model config with its ``model_type``) + ``README.md``
(model card) + ``manifest.json`` (sha256 of each file) + files saved beside the model (a tokenizer).
Nothing here unpickles untrusted data.
"""

from litbrain.release.cards import model_card
from litbrain.release.export import (
    consolidate_from_cli,
    export_from_cli,
    export_release,
    model_from_source,
    save_release,
)
from litbrain.release.load import load_model, load_release, load_tokenizer
from litbrain.release.memory import estimate_memory, read_model_config
from litbrain.release.push import check_repo_id, push_from_cli, push_release
from litbrain.release.source import ModelSource, check_release, read_model_source

__all__ = [
    "ModelSource",
    "check_release",
    "check_repo_id",
    "consolidate_from_cli",
    "estimate_memory",
    "export_from_cli",
    "export_release",
    "load_model",
    "load_release",
    "load_tokenizer",
    "model_card",
    "model_from_source",
    "push_from_cli",
    "push_release",
    "read_model_config",
    "read_model_source",
    "save_release",
]
