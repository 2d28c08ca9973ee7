"""Release format: a folder with model.safetensors + config.json + README.md model card.

Lightning ``.ckpt`` files are for resuming; releases are for sharing. Nothing here
unpickles untrusted data: releases are safetensors + JSON, and checkpoints are read with
``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import torch
import yaml
from huggingface_hub import ModelCard, ModelCardData

from litbrain.nn import BrainDecoder

if TYPE_CHECKING:
    from huggingface_hub import HfApi

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
            from litbrain.zero import is_zero_checkpoint, read_zero_hyper_parameters

            if is_zero_checkpoint(path):
                return _decoder_config_from_hparams(read_zero_hyper_parameters(path), path)
            raise ReleaseError(
                f"{path}: release folder has no config.json; fix: re-run `litbrain export` from the checkpoint "
                f"(a release folder holds config.json, model.safetensors and README.md)"
            )
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
    return _decoder_state(load_checkpoint(path))


def _decoder_state(ckpt: dict[str, Any]) -> dict[str, torch.Tensor]:
    state = ckpt.get("state_dict", {})
    return {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}


def _release_class(cfg: dict[str, Any]) -> type:
    """The module a release config describes: Du-IN configs carry their ``stage``."""
    if "stage" in cfg:
        from litbrain.nn.duin import DuinModel

        return DuinModel
    return BrainDecoder


def _model_from_loaded(ckpt: dict[str, Any], source: Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """The trained module (eval mode) and its config from a loaded checkpoint: BrainDecoder or Du-IN."""
    hp = ckpt.get("hyper_parameters", {})
    if "stage" in hp:  # a Du-IN (sEEG) task records its stage
        from litbrain.tasks.seeg_decoding import duin_config

        cfg = duin_config(hp)
    else:
        cfg = _decoder_config_from_hparams(hp, source)
    model = _release_class(cfg)(**cfg)
    try:
        model.load_state_dict(_decoder_state(ckpt), strict=True)
    except RuntimeError as err:
        raise ReleaseError(f"{source}: weights do not match its config ({str(err).splitlines()[0]})") from None
    return model.eval(), cfg


@contextlib.contextmanager
def consolidated(path: str | Path) -> Iterator[Path]:
    """``path`` itself, or for a DeepSpeed ZeRO checkpoint folder a temporary fp32 ``.ckpt`` of it."""
    from litbrain.zero import consolidate_zero_checkpoint, is_zero_checkpoint

    path = Path(path)
    if not (path.is_dir() and is_zero_checkpoint(path)):
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="litbrain-zero-") as tmp:
        yield consolidate_zero_checkpoint(path, Path(tmp) / "consolidated.ckpt")


def decoder_from_checkpoint(path: str | Path) -> BrainDecoder:
    """Rebuild the trained BrainDecoder of a Lightning checkpoint (file or ZeRO folder), in eval mode."""
    if Path(path).is_dir():
        with consolidated(path) as ckpt:
            if ckpt != Path(path):
                return decoder_from_checkpoint(ckpt)
    if not Path(path).is_dir():
        return _model_from_loaded(load_checkpoint(path), Path(path))[0]
    cfg = read_decoder_config(path)
    model = BrainDecoder(**cfg)
    try:
        model.load_state_dict(read_decoder_state_dict(path), strict=True)
    except RuntimeError as err:
        raise ReleaseError(f"{path}: weights do not match its config ({str(err).splitlines()[0]})") from None
    return model.eval()


def check_release_folder(folder: str | Path) -> dict[str, Any]:
    """Check that a release folder's config.json and model.safetensors agree; return the config.

    Reads only JSON and the safetensors header (no weights, no pickles). Raises ``ReleaseError``
    naming the folder, the first mismatching tensor and the fix.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ReleaseError(f"{folder}: not a release folder; fix: pass the folder `litbrain export` wrote")
    cfg = read_decoder_config(folder)
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise ReleaseError(f"{folder}: release folder has no model.safetensors; fix: re-run `litbrain export`")
    fix = "fix: re-export the release from its checkpoint (`litbrain export`), or restore the original config.json"
    try:
        cls = _release_class(cfg)
        with torch.device("meta"):
            expected_model = cls(**cfg)
    except (TypeError, ValueError, KeyError) as err:
        raise ReleaseError(f"{folder}: config.json does not describe a {cls.__name__} ({err}); {fix}") from None
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(weights), framework="pt") as f:
            stored = {k: list(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as err:
        raise ReleaseError(f"{weights}: not a readable safetensors file ({err}); {fix}") from None
    expected = expected_model.state_dict(keep_vars=True)
    by_identity: dict[int, list[str]] = {}
    for k, v in expected.items():
        by_identity.setdefault(id(v), []).append(k)
    for k, v in expected.items():
        if k not in stored:
            if any(t in stored for t in by_identity[id(v)]):
                continue  # a tied tensor: safetensors stores it once, under one of its names
            raise ReleaseError(f"{folder}: model.safetensors lacks {k!r}, which config.json implies; {fix}")
        if stored[k] != list(v.shape):
            raise ReleaseError(
                f"{folder}: tensor {k!r} has shape {stored[k]} in model.safetensors but config.json implies "
                f"{list(v.shape)}; {fix}"
            )
    extra = sorted(set(stored) - set(expected))
    if extra:
        raise ReleaseError(f"{folder}: model.safetensors has tensors config.json does not describe ({extra[:3]}); {fix}")
    return cfg


def load_release(
    path: str | Path,
    revision: str | None = None,
    cache_dir: str | Path | None = None,
    token: str | None = None,
) -> torch.nn.Module:
    """A release in eval mode (a BrainDecoder, or a DuinModel for sEEG): a local folder or a Hub repo id.

    ``BrainDecoder.from_pretrained`` underneath; a repo id is fetched with huggingface_hub
    (or taken from its cache, e.g. with ``HF_HUB_OFFLINE=1``). Only config.json and
    model.safetensors are read: nothing is unpickled.

    Args:
        path: a release folder, or a Hub repo id such as ``user/litbrain-demo``.
        revision: branch, tag or commit of a Hub repo (default: main).
        cache_dir: huggingface_hub cache folder (default: HF_HUB_CACHE).
        token: Hub token for private repos (default: HF_TOKEN or `hf auth login`).
    """
    name = str(path)
    folder = Path(path)
    if not folder.exists():
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import HFValidationError
        from huggingface_hub.utils import validate_repo_id

        try:
            validate_repo_id(name)
        except HFValidationError:
            raise ReleaseError(
                f"{name}: no such release folder, and not a Hub repo id ('name' or 'user/name'); "
                f"fix: pass the folder `litbrain export` wrote or a repo id"
            ) from None
        try:
            folder = Path(snapshot_download(
                name, revision=revision, cache_dir=cache_dir, token=token,
                allow_patterns=["config.json", "model.safetensors", "README.md"],
            ))
        except Exception as err:  # offline and not cached, no such repo, no access, network errors
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ReleaseError(
                f"{name}: no local folder of that name and the Hub repo could not be fetched ({type(err).__name__}: "
                f"{first[:200]}); fix: check the repo id and token, or go online (HF_HUB_OFFLINE=0) once to fill the cache"
            ) from None
    cfg = check_release_folder(folder)
    try:
        model = _release_class(cfg).from_pretrained(str(folder), strict=True)
    except (RuntimeError, TypeError) as err:
        raise ReleaseError(
            f"{name}: config.json and model.safetensors do not match ({str(err).splitlines()[0]}); "
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


def _seeg_card_body(config: dict[str, Any]) -> str:
    subjects = ", ".join(f"{s} ({n} channels)" for s, n in config["subjects"].items())
    return f"""# litbrain Du-IN sEEG model (stage: {config["stage"]})

Du-IN on stereo-EEG epochs: a subject layer per montage, region-level temporal patch tokens
(conv tokenizer) and a Transformer encoder, with this stage's head ({config["stage"]}: vqvae =
codebook tokenizer, mae = masked code prediction, classify = {config.get("n_classes")}-way word classifier).

- Subjects: {subjects}
- Epoch: {config["n_times"]} samples in patches of {config.get("patch_len")}; d_model {config.get("d_model")}, {config.get("n_blocks")} blocks

## Intended use
Research on decoding speech from intracranial recordings. Inputs must be prepared with
`litbrain prepare-seeg` (bipolar, filtered, region-selected, z-scored) like the training data.
Not for clinical or any decision-making use about individuals.

## Use
```python
from litbrain.hub import load_release
model = load_release("path/or/repo-id")
logits = model({{"{next(iter(config["subjects"]))}": epochs}})  # epochs: (batch, channels, samples) float tensor
```
"""


def model_card(config: dict[str, Any], metrics: dict[str, Any] | None, training_config: str | None, license: str) -> ModelCard:
    if "stage" in config:
        data = ModelCardData(library_name="litbrain", license=license, tags=["brain-decoding", "seeg", "du-in", "litbrain"])
        return ModelCard(f"""---
{data.to_yaml()}
---

{_seeg_card_body(config)}
## Evaluation
{_metrics_table(metrics or {})}

## Training config
```yaml
{(training_config or "(not recorded)").strip()}
```

## License
{license}
""")
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

## License
{license}
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
    """Write a release folder from a Lightning checkpoint, atomically (temp dir, then rename).

    ``checkpoint`` is a ``.ckpt`` file or a DeepSpeed ZeRO checkpoint folder (consolidated to a
    temporary fp32 ``.ckpt`` first with Lightning's converter).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not overwrite:
        raise ReleaseError(f"{out_dir}: already exists; fix: choose another --out or pass --overwrite true")
    if Path(checkpoint).is_dir():
        with consolidated(checkpoint) as ckpt:  # a DeepSpeed ZeRO folder: fp32 .ckpt in a temp dir first
            if ckpt != Path(checkpoint):
                return export_release(ckpt, out_dir, metrics, training_config, license, overwrite)
        raise ReleaseError(
            f"{checkpoint}: a folder that is not a DeepSpeed ZeRO checkpoint; fix: pass a .ckpt file or the "
            f"checkpoint folder a deepspeed_stage_* fit wrote"
        )
    ckpt = load_checkpoint(checkpoint)  # read once: config, weights and hyper-parameters
    model, config = _model_from_loaded(ckpt, Path(checkpoint))
    if training_config is None:
        hp = ckpt.get("hyper_parameters", {})
        training_config = yaml.safe_dump({"model": {k: v for k, v in hp.items() if not k.startswith("_")}}, sort_keys=False)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
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
        checkpoint: the ``.ckpt`` to export, or the checkpoint folder of a DeepSpeed ZeRO-2/3 fit
            (consolidated to fp32 first, as ``litbrain consolidate`` does).
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
        m = {k: full[k] for k in ("split", "subjects", "pool", "draws", "rows", "decoder_over_oracle", "n_classes", "duin_over_oracle", "codebook") if k in full}
    cfg_text = Path(training_config).read_text() if training_config else None
    return str(export_release(checkpoint, out, m, cfg_text, license, overwrite))


# ---------------------------------------------------------------- Hugging Face Hub
RELEASE_FILES = ("config.json", "model.safetensors", "README.md", "metrics.json")


def check_repo_id(repo_id: str) -> str:
    """``repo_id`` if huggingface_hub's own validator accepts it, else one clear ``ReleaseError``."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ReleaseError(
            f"repo_id={repo_id!r} is not a valid Hugging Face repo id ({str(err).splitlines()[0]}); "
            f"fix: use 'user/name' or 'org/name' (letters, digits, '-', '_', '.'; at most 96 characters)"
        ) from None
    if "/" not in repo_id:
        raise ReleaseError(
            f"repo_id={repo_id!r} has no namespace; fix: use 'user/name' or 'org/name' so the target is explicit"
        )
    return repo_id


def push_release(
    release: str | Path,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
    api: HfApi | None = None,
) -> str:
    """Upload a release folder to a Hugging Face model repo; returns the repo URL.

    Everything is checked before any network call: the repo id (huggingface_hub's validator),
    the folder (config.json and model.safetensors agree) and the model card (README.md with a
    license). Then ``HfApi.create_repo(exist_ok=True)`` and one ``upload_folder`` commit of the
    release files. ``api`` lets a caller (or a test) supply the ``HfApi`` object to use.
    """
    check_repo_id(repo_id)
    folder = Path(release)
    cfg = check_release_folder(folder)
    card_file = folder / "README.md"
    if not card_file.is_file():
        raise ReleaseError(f"{folder}: release folder has no README.md model card; fix: re-run `litbrain export`")
    card = ModelCard.load(card_file)
    if not getattr(card.data, "license", None):
        raise ReleaseError(f"{card_file}: model card names no license; fix: re-run `litbrain export --license ...`")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    n_subjects = len(cfg["subjects"])
    message = commit_message or f"litbrain release: BrainDecoder, {n_subjects} subjects, width {cfg.get('width')}"
    try:
        url = api.create_repo(repo_id, token=token, private=private, repo_type="model", exist_ok=True)
        api.upload_folder(
            repo_id=repo_id,
            folder_path=str(folder),
            repo_type="model",
            token=token,
            revision=revision,
            commit_message=message,
            allow_patterns=list(RELEASE_FILES),
        )
    except Exception as err:  # offline mode, no network, bad token, no write access: one line, not a traceback
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise ReleaseError(
            f"push of {folder} to {repo_id} failed ({type(err).__name__}: {first[:200]}); fix: check the network "
            f"(HF_HUB_OFFLINE must be unset), the token (--token or `hf auth login`) and write access to {repo_id}"
        ) from None
    return str(url)


def push_from_cli(
    release: str,
    repo_id: str,
    private: bool = False,
    token: str | None = None,
    commit_message: str | None = None,
    revision: str | None = None,
) -> str:
    """Upload a release folder (from ``litbrain export``) to the Hugging Face Hub.

    Args:
        release: the release folder (model.safetensors, config.json, README.md model card).
        repo_id: the target model repo, ``user/name`` or ``org/name``; created if missing.
        private: create the repo as private (an existing repo keeps its visibility).
        token: a Hub write token (default: HF_TOKEN or the one saved by `hf auth login`).
        commit_message: the commit message (default: names the model and its subjects).
        revision: the branch to push to (default: main).
    """
    return push_release(release, repo_id, private=private, token=token, commit_message=commit_message, revision=revision)
