"""Load a release (or any checkpoint) back into a model, and the tokenizer saved beside it."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from litbrain.errors import DataError, ReleaseError
from litbrain.release.export import model_from_source
from litbrain.release.source import read_model_source

__all__ = ["load_model", "load_release", "load_tokenizer"]


def load_release(path: str | os.PathLike, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                 token: str | None = None) -> Any:
    """A model in eval mode from a release folder or a Hub repo id (``user/name``).

    The class comes from config.json's ``model_type`` (:data:`litbrain.nn.registry.MODEL_TYPES`).
    Only JSON, safetensors and the files listed in the manifest are read (their sha256 checked
    first): nothing is unpickled. A repo id is fetched with huggingface_hub (or taken from its
    cache, e.g. with ``HF_HUB_OFFLINE=1``).

    Args:
        path: a release folder, or a Hub repo id such as ``user/litbrain-demo``.
        revision: branch, tag or commit of a Hub repo (default: main).
        cache_dir: huggingface_hub cache folder (default: HF_HUB_CACHE).
        token: Hub token for private repos (default: HF_TOKEN or `hf auth login`).
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise ReleaseError(f"{p}: a file, not a release folder; fix: export it first (`litbrain export --checkpoint "
                           f"{p} --out <folder>`), or use litbrain.release.load_model for checkpoints")
    return model_from_source(read_model_source(path, revision, cache_dir, token))


def load_model(path: str | os.PathLike, model_type: str | None = None, fix: str = "") -> Any:
    """A model in eval mode from a release folder, a ``.ckpt``, a ZeRO folder or a Hub repo id.

    ``model_type``: the registry type a caller needs; another type is refused (a DataError naming both
    and ``fix``) before the model is built.
    """
    src = read_model_source(path)
    found = getattr(src.config, "model_type", None)
    if model_type is not None and found != model_type:
        raise DataError(f"{path}: holds a {found!r} model, not a {model_type!r} one; "
                        f"fix: {fix or 'pass a checkpoint or release of that model type'}")
    return model_from_source(src)


def load_tokenizer(path: str | os.PathLike) -> Any:
    """The Hugging Face tokenizer saved beside a model (release folder or checkpoint)."""
    src = read_model_source(path)
    if not src.files:
        raise ReleaseError(f"{path}: no tokenizer was saved with this model; fix: use the tokenizer named in its "
                           f"config (e.g. the LM's own)")
    from transformers import AutoTokenizer

    with tempfile.TemporaryDirectory(prefix="litbrain-tok-") as tmp:
        for name, text in src.files.items():
            (Path(tmp) / name).write_text(text)
        return AutoTokenizer.from_pretrained(tmp, local_files_only=True)
