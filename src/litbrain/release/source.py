"""Read a model from wherever it is: a release folder, a Lightning checkpoint, a ZeRO folder or a Hub repo.

Every loader of trained weights comes through :func:`read_model_source` (``load_release``,
``export``, ``init_from`` of every task, the evaluation verbs), which dispatches on the
``model_type`` recorded with the weights: ``config.json`` of a release, or the ``net`` entry of
a task's hyper-parameters in a checkpoint.

A release folder holds ``config.json`` (the model's config with ``model_type``),
``model.safetensors``, ``README.md`` (the model card), ``manifest.json`` (sha256 and size of every
file the loader reads) and any files saved beside the model (a tokenizer). It is checked before
anything is loaded: the manifest's hashes, the safetensors header against the shapes the config
implies. Nothing is unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from litbrain.errors import ReleaseError
from litbrain.nn.registry import ModelConfig, build_model, config_from_dict
from litbrain.utils.checkpoint import is_zero_checkpoint, read_checkpoint, strip_prefix

__all__ = [
    "CONFIG_FILE",
    "MANIFEST_FILE",
    "WEIGHTS_FILE",
    "ModelSource",
    "check_release",
    "file_sha256",
    "read_model_source",
]

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
MANIFEST_FILE = "manifest.json"
_FIX_EXPORT = "fix: re-export the release from its checkpoint (`litbrain export`), or restore the original files"


@dataclass
class ModelSource:
    """A model's config, its weights (model-level names) and the files saved beside it."""

    config: ModelConfig
    state: dict[str, Any]
    files: dict[str, str] = field(default_factory=dict)  # e.g. tokenizer.json -> its text
    origin: str = ""
    hyper_parameters: dict[str, Any] = field(default_factory=dict)  # a checkpoint's task hyper-parameters


def file_sha256(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ReleaseError(f"{path}: invalid JSON ({str(err).splitlines()[0]}); {_FIX_EXPORT}") from None


def _check_manifest(folder: Path) -> dict[str, Any]:
    mpath = folder / MANIFEST_FILE
    if not mpath.is_file():
        raise ReleaseError(f"{folder}: release folder has no {MANIFEST_FILE} (sha256 of its files); {_FIX_EXPORT}")
    manifest = _read_json(mpath)
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict) or CONFIG_FILE not in files or WEIGHTS_FILE not in files:
        raise ReleaseError(f"{mpath}: lists no sha256 for {CONFIG_FILE} and {WEIGHTS_FILE}; {_FIX_EXPORT}")
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            raise ReleaseError(f"{path}: missing (listed in {MANIFEST_FILE}); fix: copy the whole release folder")
        if path.stat().st_size != int(entry.get("size", -1)):
            raise ReleaseError(f"{path}: {path.stat().st_size} bytes but {MANIFEST_FILE} records {entry.get('size')} "
                               f"(truncated or changed); {_FIX_EXPORT}")
        if file_sha256(path) != entry.get("sha256"):
            raise ReleaseError(f"{path}: sha256 differs from {MANIFEST_FILE} (the file is damaged or was changed); "
                               f"{_FIX_EXPORT}")
    return files


def check_release(folder: str | os.PathLike) -> ModelConfig:
    """Check a release folder without loading its weights; return its config.

    The manifest's sha256 of every file, config.json's model config, and the safetensors header
    (every tensor the config implies, with its shape, and nothing else). Raises
    :class:`ReleaseError` naming the file, the first problem and the fix.
    """
    import torch
    from safetensors import SafetensorError, safe_open

    folder = Path(folder)
    if not folder.is_dir():
        raise ReleaseError(f"{folder}: not a release folder; fix: pass the folder `litbrain export` wrote")
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise ReleaseError(f"{folder}: release folder has no {name}; fix: re-run `litbrain export` "
                               f"(a release holds {CONFIG_FILE}, {WEIGHTS_FILE}, {CARD_FILE} and {MANIFEST_FILE})")
    _check_manifest(folder)
    config = config_from_dict(_read_json(folder / CONFIG_FILE), str(folder / CONFIG_FILE))
    try:
        with torch.device("meta"):
            expected_model = build_model(config, str(folder / CONFIG_FILE))
    except (TypeError, ValueError, KeyError) as err:
        raise ReleaseError(f"{folder / CONFIG_FILE}: does not describe a {config.model_type} model ({err}); {_FIX_EXPORT}") from None
    weights = folder / WEIGHTS_FILE
    try:
        with safe_open(str(weights), framework="pt") as f:
            stored = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise ReleaseError(f"{weights}: not a readable safetensors file ({err}); {_FIX_EXPORT}") from None
    expected = expected_model.state_dict(keep_vars=True)
    by_identity: dict[int, list[str]] = {}
    for k, v in expected.items():
        by_identity.setdefault(id(v), []).append(k)
    for k, v in expected.items():
        if k not in stored:
            if any(t in stored for t in by_identity[id(v)]):
                continue  # a tied tensor: safetensors stores it once, under one of its names
            raise ReleaseError(f"{folder}: {WEIGHTS_FILE} lacks {k!r}, which {CONFIG_FILE} implies; {_FIX_EXPORT}")
        if stored[k] != list(v.shape):
            raise ReleaseError(f"{folder}: tensor {k!r} has shape {stored[k]} in {WEIGHTS_FILE} but {CONFIG_FILE} "
                               f"implies {list(v.shape)}; {_FIX_EXPORT}")
    extra = sorted(set(stored) - set(expected))
    if extra:
        raise ReleaseError(f"{folder}: {WEIGHTS_FILE} has tensors {CONFIG_FILE} does not describe ({extra[:3]}); {_FIX_EXPORT}")
    return config


def _from_release(folder: Path) -> ModelSource:
    from safetensors.torch import load_file

    config = check_release(folder)
    manifest = _read_json(folder / MANIFEST_FILE)["files"]
    files = {name: (folder / name).read_text() for name in manifest
             if name not in (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE, MANIFEST_FILE)}
    return ModelSource(config, load_file(folder / WEIGHTS_FILE), files, str(folder))


def _from_checkpoint(path: Path) -> ModelSource:
    ckpt = read_checkpoint(path)
    meta = ckpt.get("litbrain")
    net = meta.get("net") if isinstance(meta, dict) else None
    if not isinstance(net, dict) or not net.get("model_type"):
        raise ReleaseError(f"{path}: holds no litbrain model config (the checkpoint's 'litbrain' entry with a "
                           f"model_type); fix: use a checkpoint written by `litbrain fit` with this version of litbrain")
    config = config_from_dict(net, f"{path} (litbrain.net)")
    files = {str(k): str(v) for k, v in (meta.get("files") or {}).items()}
    hp = dict(ckpt.get("hyper_parameters") or {})
    return ModelSource(config, strip_prefix(ckpt.get("state_dict", {}), "model."), files, str(path), hp)


def _download(name: str, revision: str | None, cache_dir: str | os.PathLike | None, token: str | None) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(name)
    except HFValidationError:
        raise ReleaseError(f"{name}: no such file or folder, and not a Hub repo id ('name' or 'user/name'); "
                           f"fix: pass a release folder, a .ckpt, or a repo id") from None
    try:
        return Path(snapshot_download(name, revision=revision, cache_dir=cache_dir, token=token))
    except Exception as err:  # offline and not cached, no such repo, no access, network errors
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ReleaseError(
            f"{name}: no local file or folder of that name and the Hub repo could not be fetched ({type(err).__name__}: "
            f"{first[:200]}); fix: check the repo id and token, or go online (HF_HUB_OFFLINE=0) once to fill the cache"
        ) from None


def read_model_source(path: str | os.PathLike, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                      token: str | None = None) -> ModelSource:
    """Config + weights from a release folder, a ``.ckpt``, a DeepSpeed ZeRO folder or a Hub repo id."""
    p = Path(path)
    if p.is_dir() and is_zero_checkpoint(p):
        return _from_checkpoint(p)
    if p.is_dir():
        return _from_release(p)
    if p.exists():
        return _from_checkpoint(p)
    if p.suffix == ".ckpt":
        raise ReleaseError(f"{p}: no such checkpoint file; fix: pass the path of a .ckpt written by `litbrain fit`")
    return _from_release(_download(str(path), revision, cache_dir, token))
