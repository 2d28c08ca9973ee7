"""Export: a trained model (checkpoint or ZeRO folder) -> a release folder, atomically."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import yaml

from litbrain.errors import ReleaseError
from litbrain.nn.registry import build_model
from litbrain.release.cards import model_card
from litbrain.release.source import (
    CARD_FILE,
    CONFIG_FILE,
    MANIFEST_FILE,
    WEIGHTS_FILE,
    ModelSource,
    file_sha256,
    read_model_source,
)
from litbrain.utils.checkpoint import consolidate_zero_checkpoint
from litbrain.utils.io import atomic_dir

__all__ = ["consolidate_from_cli", "export_from_cli", "export_release", "model_from_source", "save_release"]


def model_from_source(src: ModelSource) -> Any:
    """The model a source describes, with its weights loaded (strict), in eval mode."""
    model = build_model(src.config, src.origin)
    try:
        model.load_state_dict(src.state, strict=True)
    except RuntimeError as err:
        lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
        raise ReleaseError(f"{src.origin}: weights do not match its {src.config.model_type} config "
                           f"({' '.join(lines[:2])[:300]}); fix: use a checkpoint or release of the same architecture") from None
    return model.eval()


def _write_release(folder: Path, model: Any, card: Any, metrics: dict[str, Any] | None, files: dict[str, str]) -> None:
    """Write a release's files into ``folder`` (a fresh temporary folder) plus its manifest."""
    from safetensors.torch import save_model

    (folder / CONFIG_FILE).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n")
    save_model(model, str(folder / WEIGHTS_FILE))  # tied tensors are stored once
    card.save(folder / CARD_FILE)
    if metrics:
        (folder / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    for name, text in files.items():
        if Path(name).name != name or name in (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE, MANIFEST_FILE):
            raise ReleaseError(f"release file name {name!r} is not allowed; fix: a plain file name other than the "
                               f"release's own files")
        (folder / name).write_text(text)
    listed = [p for p in sorted(folder.iterdir()) if p.name not in (CARD_FILE, MANIFEST_FILE)]
    manifest = {"format": "litbrain-release", "version": 1,
                "files": {p.name: {"sha256": file_sha256(p), "size": p.stat().st_size} for p in listed}}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n")


def save_release(model: Any, out_dir: str | os.PathLike, metrics: dict[str, Any] | None = None,
                 training_config: str | None = None, license: str = "apache-2.0", files: dict[str, str] | None = None,
                 overwrite: bool = False) -> Path:
    """Write a release folder of a model in memory (its ``config`` says what it is), atomically."""
    out_dir = Path(out_dir)
    config = getattr(model, "config", None)
    if config is None or not hasattr(config, "to_dict"):
        raise ReleaseError(f"{type(model).__name__} has no litbrain config (model.config); fix: build it from its config "
                           f"(litbrain.nn.build_model) so the release can record what it is")
    if out_dir.exists() and not overwrite:
        raise ReleaseError(f"{out_dir}: already exists; fix: choose another --out or pass --overwrite true")
    card = model_card(config, metrics, training_config, license)
    with atomic_dir(out_dir, overwrite=True) as tmp:
        _write_release(tmp, model, card, metrics, dict(files or {}))
    return out_dir


def export_release(
    checkpoint: str | os.PathLike,
    out_dir: str | os.PathLike,
    metrics: dict[str, Any] | None = None,
    training_config: str | None = None,
    license: str = "apache-2.0",
    overwrite: bool = False,
) -> Path:
    """Write a release folder from a checkpoint (``.ckpt`` file or ZeRO folder), atomically.

    The model type comes from the checkpoint (its task's ``net`` config); the weights are loaded
    into a freshly built model first, so a release whose weights do not fit its config cannot
    be written.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ReleaseError(f"{out_dir}: already exists; fix: choose another --out or pass --overwrite true")
    src = read_model_source(checkpoint)
    model = model_from_source(src)
    if training_config is None:
        hp = {k: v for k, v in src.hyper_parameters.items() if not k.startswith("_")}
        training_config = yaml.safe_dump({"model": hp}, sort_keys=False) if hp else None
    return save_release(model, out_dir, metrics, training_config, license, src.files, overwrite=True)


_CARD_METRICS = ("split", "subjects", "pool", "draws", "rows", "decoder_over_oracle", "n_classes", "duin_over_oracle",
                 "codebook")


def export_from_cli(
    checkpoint: str,
    out: str,
    metrics: str | None = None,
    training_config: str | None = None,
    license: str = "apache-2.0",
    overwrite: bool = False,
    hf: bool = False,
) -> str:
    """Export a trained model as a release folder (any model type).

    Args:
        checkpoint: the ``.ckpt`` to export, or the checkpoint folder of a DeepSpeed ZeRO-2/3 fit
            (consolidated to fp32 first, as ``litbrain consolidate`` does).
        out: the release folder to write (model.safetensors, config.json, README.md, manifest.json).
        metrics: a ``metrics.json`` from an evaluate verb to put in the model card.
        training_config: the YAML the model was trained with (e.g. the run's config.yaml).
        license: the license named in the model card.
        overwrite: replace an existing folder.
        hf: write a language model (``causal_lm``, ``seq2seq_lm``) in Hugging Face's own format instead
            (``save_pretrained`` + tokenizer + card; loads with ``AutoModelForSeq2SeqLM`` / ``AutoModelForCausalLM``).
    """
    if hf:
        from litbrain.release.hf_native import save_hf_native

        src = read_model_source(checkpoint)
        return str(save_hf_native(model_from_source(src), out, src.files, overwrite=overwrite))
    m = None
    if metrics:
        mpath = Path(metrics)
        if not mpath.is_file():
            raise ReleaseError(f"{mpath}: no such metrics file; fix: run the family's evaluate verb first or drop --metrics")
        full = json.loads(mpath.read_text())
        m = {k: full[k] for k in _CARD_METRICS if k in full}
    cfg_text = None
    if training_config:
        if not Path(training_config).is_file():
            raise ReleaseError(f"{training_config}: no such training config; fix: pass the run's config.yaml or drop "
                               f"--training_config")
        cfg_text = Path(training_config).read_text()
    return str(export_release(checkpoint, out, m, cfg_text, license, overwrite))


def consolidate_from_cli(checkpoint: str, out: str, overwrite: bool = False) -> str:
    """Consolidate a DeepSpeed ZeRO-2/3 checkpoint folder into one fp32 Lightning ``.ckpt``.

    Args:
        checkpoint: the checkpoint folder a ``deepspeed_stage_*`` fit wrote (e.g. ``checkpoints/last.ckpt/``).
        out: the single-file ``.ckpt`` to write (``litbrain export`` and the evaluate verbs read it).
        overwrite: replace an existing ``out``.
    """
    return str(consolidate_zero_checkpoint(checkpoint, out, overwrite))
