"""Release format: a folder with model.safetensors + config.json + README.md model card.

Lightning ``.ckpt`` files are for resuming; releases are for sharing. Nothing here
unpickles untrusted data: releases are safetensors + JSON, and checkpoints are read with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from huggingface_hub import ModelCard, ModelCardData

from litbrain.nn import BrainDecoder

DECODER_CONFIG_KEYS = (
    "subjects",
    "image_embedding_shape",
    "text_embedding_dim",
    "width",
    "n_blocks",
    "adapter",
    "adapter_dropout",
    "dropout",
    "projector",
)


class ReleaseError(ValueError):
    """A checkpoint or release folder that cannot be read; the message says which and the fix."""


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a Lightning checkpoint without unpickling arbitrary objects."""
    path = Path(path)
    if not path.is_file():
        raise ReleaseError(f"{path}: no such checkpoint file; fix: pass the path of a .ckpt written by `litbrain fit`")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # truncated zip, pickled code, wrong format: all end here
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ReleaseError(
            f"{path}: cannot be read as a safe checkpoint ({first}); fix: use an intact .ckpt written "
            f"by `litbrain fit` (files with pickled objects are refused on purpose)"
        ) from None


def _decoder_config_from_hparams(hparams: dict[str, Any], source: Path) -> dict[str, Any]:
    # The task calls it subject_voxels (the datamodule's hparams already use "subjects").
    hparams = {**hparams, "subjects": hparams.get("subject_voxels") or hparams.get("subjects")}
    missing = [k for k in ("subjects", "image_embedding_shape") if not hparams.get(k)]
    if missing:
        raise ReleaseError(f"{source}: checkpoint hyper-parameters lack {missing}; fix: use a checkpoint of FmriDecodingTask")
    cfg = {k: hparams[k] for k in DECODER_CONFIG_KEYS if k in hparams}
    cfg["subjects"] = {str(k): int(v) for k, v in cfg["subjects"].items()}
    cfg["image_embedding_shape"] = [int(s) for s in cfg["image_embedding_shape"]]
    return cfg


def read_decoder_config(path: str | Path) -> dict[str, Any]:
    """The BrainDecoder config of a release folder or a Lightning checkpoint."""
    path = Path(path)
    if path.is_dir():
        cfg_file = path / "config.json"
        if not cfg_file.is_file():
            raise ReleaseError(f"{path}: release folder has no config.json; fix: re-run `litbrain export`")
        try:
            return json.loads(cfg_file.read_text())
        except json.JSONDecodeError as err:
            raise ReleaseError(f"{cfg_file}: invalid JSON ({err}); fix: re-run `litbrain export`") from None
    ckpt = load_checkpoint(path)
    return _decoder_config_from_hparams(ckpt.get("hyper_parameters", {}), path)


def read_decoder_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """BrainDecoder weights (no ``model.`` prefix) from a release folder or a checkpoint."""
    path = Path(path)
    if path.is_dir():
        from safetensors.torch import load_file

        weights = path / "model.safetensors"
        if not weights.is_file():
            raise ReleaseError(f"{path}: release folder has no model.safetensors; fix: re-run `litbrain export`")
        return load_file(weights)
    ckpt = load_checkpoint(path)
    state = ckpt.get("state_dict", {})
    return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}


def decoder_from_checkpoint(path: str | Path) -> BrainDecoder:
    """Rebuild the trained BrainDecoder of a Lightning checkpoint, in eval mode."""
    cfg = read_decoder_config(path)
    model = BrainDecoder(**cfg)
    try:
        model.load_state_dict(read_decoder_state_dict(path), strict=True)
    except RuntimeError as err:
        raise ReleaseError(f"{path}: weights do not match its config ({str(err).splitlines()[0]})") from None
    return model.eval()


def load_release(path: str | Path) -> BrainDecoder:
    """``BrainDecoder.from_pretrained`` on a local folder (or, online, a Hub repo id), in eval mode."""
    path_obj = Path(path)
    if path_obj.exists():
        read_decoder_config(path_obj)  # clear errors for a missing/invalid config.json
        if not (path_obj / "model.safetensors").is_file():
            raise ReleaseError(f"{path}: release folder has no model.safetensors; fix: re-run `litbrain export`")
    try:
        model = BrainDecoder.from_pretrained(str(path), strict=True)
    except (RuntimeError, TypeError) as err:
        raise ReleaseError(
            f"{path}: config.json and model.safetensors do not match ({str(err).splitlines()[0]}); "
            f"fix: re-export the release from its checkpoint"
        ) from None
    return model.eval()


def _metrics_table(metrics: dict[str, Any]) -> str:
    if not metrics:
        return "_No evaluation was attached to this release._"
    rows = metrics.get("rows") or []
    if rows:
        cols = list(rows[0].keys())
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        for r in rows:
            lines.append("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
        return "\n".join(lines)
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in metrics.items()]
    return "\n".join(lines)


def model_card(config: dict[str, Any], metrics: dict[str, Any] | None, training_config: str | None, license: str) -> ModelCard:
    data = ModelCardData(library_name="litbrain", license=license, tags=["brain-decoding", "fmri", "litbrain"])
    subjects = ", ".join(f"{s} ({n} voxels)" for s, n in config["subjects"].items())
    content = f"""---
{data.to_yaml()}
---

# litbrain cross-subject fMRI decoder

Maps fMRI voxel patterns of the subjects below to image-embedding space (and text space when
trained with captions), with one adapter per subject and a shared residual-MLP backbone
(See Through Their Minds / MindEye2 recipe).

- Subjects: {subjects}
- Target shape: {config["image_embedding_shape"]}; width {config.get("width")}, {config.get("n_blocks")} blocks, {config.get("adapter")} adapters

## Intended use
Research on decoding visual stimuli from brain activity. Inputs must be prepared with
`litbrain prepare` (ROI-masked, z-scored per session) using the same ROI masks as in training.
Not for clinical or any decision-making use about individuals.

## Use
```python
from litbrain.hub import load_release
model = load_release("path/or/repo-id")
out = model({{"{next(iter(config["subjects"]))}": voxels}})  # voxels: (batch, n_voxels) float tensor
```

## Evaluation
{_metrics_table(metrics or {})}

## Training config
```yaml
{(training_config or "(not recorded)").strip()}
```
"""
    return ModelCard(content)


def export_release(
    checkpoint: str | Path,
    out_dir: str | Path,
    metrics: dict[str, Any] | None = None,
    training_config: str | None = None,
    license: str = "apache-2.0",
    overwrite: bool = False,
) -> Path:
    """Write a release folder from a Lightning checkpoint, atomically (temp dir, then rename)."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ReleaseError(f"{out_dir}: already exists; fix: choose another --out or pass --overwrite true")
    model = decoder_from_checkpoint(checkpoint)
    if training_config is None:
        hp = load_checkpoint(checkpoint).get("hyper_parameters", {})
        training_config = yaml.safe_dump({"model": {k: v for k, v in hp.items() if not k.startswith("_")}}, sort_keys=False)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        config = read_decoder_config(checkpoint)
        model_card(config, metrics, training_config, license).save(tmp / "README.md")
        model.save_pretrained(tmp, config=config)
        if metrics:
            (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


def export_from_cli(
    checkpoint: str,
    out: str,
    metrics: str | None = None,
    training_config: str | None = None,
    license: str = "apache-2.0",
    overwrite: bool = False,
) -> str:
    """Export a Lightning checkpoint as a release folder.

    Args:
        checkpoint: the ``.ckpt`` to export.
        out: the release folder to write (model.safetensors, config.json, README.md).
        metrics: a ``metrics.json`` from ``litbrain evaluate`` to put in the model card.
        training_config: the YAML the model was trained with (e.g. the run's config.yaml).
        license: the license named in the model card.
        overwrite: replace an existing folder.
    """
    m = None
    if metrics:
        mpath = Path(metrics)
        if not mpath.is_file():
            raise ReleaseError(f"{mpath}: no such metrics file; fix: run `litbrain evaluate` first or drop --metrics")
        full = json.loads(mpath.read_text())
        m = {k: full[k] for k in ("split", "subjects", "pool", "draws", "rows", "decoder_over_oracle") if k in full}
    cfg_text = Path(training_config).read_text() if training_config else None
    return str(export_release(checkpoint, out, m, cfg_text, license, overwrite))
