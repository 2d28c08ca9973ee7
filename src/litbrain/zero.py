"""DeepSpeed ZeRO checkpoints and memory estimates.

Lightning's ``DeepSpeedStrategy`` saves a checkpoint as a *folder* (``latest`` + a tag folder
holding ``*_model_states.pt`` and one ``*_optim_states.pt`` per rank). ``consolidate`` turns it
into one fp32 Lightning ``.ckpt`` with Lightning's ``convert_zero_checkpoint_to_fp32_state_dict``
(tied weights come back as one shared tensor under every name), which ``litbrain export`` then
turns into a release. ``estimate_memory`` prints DeepSpeed's per-GPU estimates for ZeRO-2/3.

Lightning's converter (and DeepSpeed's ``zero_to_fp32``) read the shards with
``torch.load(weights_only=False)``. So that loading never unpickles untrusted data, every file
of the folder is first read with ``weights_only=True``, allowing only the plain DeepSpeed data
classes that ZeRO optimizer states hold (``DEEPSPEED_SAFE_GLOBALS``); anything else is refused
before the converter runs.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch

from litbrain.hub import ReleaseError
from litbrain.nn.subject_adapter import AdapterKind

# Plain data classes inside ZeRO optimizer-state files (checked on deepspeed 0.19): a tensor
# fragment's (start, numel), the stage enum and the (static or dynamic) loss-scaler state.
DEEPSPEED_SAFE_GLOBALS = (
    "deepspeed.utils.tensor_fragment.fragment_address",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
)


class DependencyError(RuntimeError):
    """An optional dependency (an extra) that this verb needs is not installed."""


def _require_deepspeed() -> None:
    try:
        import deepspeed  # noqa: F401
    except ImportError as err:
        raise DependencyError(
            f"DeepSpeed is not installed ({err}); fix: pip install 'litbrain[deepspeed]'"
        ) from None


# ---------------------------------------------------------------- ZeRO checkpoint folders
def zero_tag_dir(path: str | Path) -> Path | None:
    """The tag folder (e.g. ``checkpoint/``) of a ZeRO checkpoint folder, or None if ``path`` isn't one."""
    path = Path(path)
    if not path.is_dir():
        return None
    latest = path / "latest"
    if latest.is_file():
        tag = latest.read_text().strip()
        tag_dir = (path / tag).resolve()
        if tag and tag_dir.parent == path.resolve() and tag_dir.is_dir():
            return tag_dir
        return None
    subdirs = [d for d in sorted(path.iterdir()) if d.is_dir() and any(d.glob("*model_states.pt"))]
    return subdirs[0] if len(subdirs) == 1 else None


def is_zero_checkpoint(path: str | Path) -> bool:
    """True for a folder written by Lightning's DeepSpeedStrategy (ZeRO-2/3 ``.ckpt`` folder)."""
    return zero_tag_dir(path) is not None


def _safe_globals() -> list[Any]:
    found = []
    for dotted in DEEPSPEED_SAFE_GLOBALS:
        module, _, name = dotted.rpartition(".")
        try:
            found.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):
            continue  # another DeepSpeed version: that class just isn't allowed
    return found


def check_zero_checkpoint(path: str | Path) -> Path:
    """Refuse a ZeRO folder unless every file in it loads with ``torch.load(weights_only=True)``.

    Returns the tag folder. Raises ``ReleaseError`` naming the file and the fix.
    """
    path = Path(path)
    tag_dir = zero_tag_dir(path)
    if tag_dir is None:
        raise ReleaseError(
            f"{path}: not a DeepSpeed ZeRO checkpoint folder (no 'latest' file naming a tag folder with "
            f"*_model_states.pt); fix: pass the .ckpt folder that a deepspeed_stage_* fit wrote"
        )
    files = sorted(tag_dir.glob("*.pt"))
    if not any(f.name.endswith("optim_states.pt") for f in files) or not any(f.name.endswith("model_states.pt") for f in files):
        raise ReleaseError(f"{tag_dir}: ZeRO checkpoint lacks its model_states/optim_states files; fix: copy the whole folder")
    _require_deepspeed()
    allowed = _safe_globals()
    for f in files:
        try:
            with torch.serialization.safe_globals(allowed):
                torch.load(f, map_location="cpu", weights_only=True, mmap=True)
        except Exception as err:  # truncated, pickled code, unknown classes: refused before the converter runs
            first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise ReleaseError(
                f"{f}: cannot be read as a safe ZeRO checkpoint shard ({first[:300]}); fix: use an intact "
                f"checkpoint folder written by a deepspeed_stage_* fit (pickled objects are refused on purpose)"
            ) from None
    return tag_dir


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    # Lightning's and DeepSpeed's converters print progress; keep stdout for the result path.
    with contextlib.redirect_stdout(sys.stderr):
        yield


def consolidate_zero_checkpoint(checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> Path:
    """Write a ZeRO checkpoint folder as one fp32 Lightning ``.ckpt`` (atomically).

    Uses Lightning's ``convert_zero_checkpoint_to_fp32_state_dict``: the result holds
    ``state_dict`` (``_forward_module.`` prefixes removed) plus the Lightning client state
    (``hyper_parameters``, ``epoch``, ``global_step``, ...), so ``litbrain export`` and
    ``LightningModule.load_from_checkpoint`` read it like any ``.ckpt``.
    """
    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and not overwrite:
        raise ReleaseError(f"{out}: already exists; fix: choose another --out or pass --overwrite true")
    tag_dir = check_zero_checkpoint(checkpoint)
    from lightning.pytorch.utilities.deepspeed import convert_zero_checkpoint_to_fp32_state_dict

    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{out.name}.tmp-", dir=out.parent)
    os.close(fd)
    try:
        with _stdout_to_stderr():
            convert_zero_checkpoint_to_fp32_state_dict(str(checkpoint), tmp_name, tag=tag_dir.name)
        os.replace(tmp_name, out)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return out


def consolidate_from_cli(checkpoint: str, out: str, overwrite: bool = False) -> str:
    """Consolidate a DeepSpeed ZeRO-2/3 checkpoint folder into one fp32 Lightning ``.ckpt``.

    Args:
        checkpoint: the checkpoint folder a ``deepspeed_stage_*`` fit wrote (e.g. ``checkpoints/last.ckpt/``).
        out: the single-file ``.ckpt`` to write (``litbrain export`` and ``evaluate`` read it).
        overwrite: replace an existing ``out``.
    """
    return str(consolidate_zero_checkpoint(checkpoint, out, overwrite))


def read_zero_hyper_parameters(path: str | Path) -> dict[str, Any]:
    """The Lightning ``hyper_parameters`` kept in a ZeRO folder's model-states file (read safely)."""
    tag_dir = check_zero_checkpoint(path)
    model_files = sorted(tag_dir.glob("*model_states.pt"))
    with torch.serialization.safe_globals(_safe_globals()):
        state = torch.load(model_files[0], map_location="cpu", weights_only=True, mmap=True)
    return dict(state.get("hyper_parameters") or {})


# ---------------------------------------------------------------- memory estimates
def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(total parameters, tied ones counted once; largest single layer's parameters).

    The same quantities as DeepSpeed's ``model_to_params``, but by identity rather than
    ``data_ptr`` so it also works on a model built on the ``meta`` device.
    """
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once
    largest = max((sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()), default=0)
    return int(total), int(largest)


def zero_memory_rows(
    total_params: int, largest_layer_params: int, num_gpus_per_node: int = 1, num_nodes: int = 1,
    additional_buffer_factor: float = 1.5,
) -> list[dict[str, Any]]:
    """DeepSpeed's ZeRO-2 and ZeRO-3 model-state memory estimates, one row per offload option (bytes)."""
    _require_deepspeed()
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    rows = []
    for offload in (False, True):
        cpu, gpu = estimate_zero2_model_states_mem_needs(
            total_params, num_gpus_per_node, num_nodes, cpu_offload=offload, additional_buffer_factor=additional_buffer_factor
        )
        rows.append({"stage": 2, "offload_optimizer": offload, "offload_param": False, "per_gpu_bytes": gpu, "per_node_cpu_bytes": cpu})
    for offload, offload_params in ((False, False), (True, False), (True, True)):
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            total_params, largest_layer_params, num_gpus_per_node, num_nodes, cpu_offload=offload,
            cpu_offload_params=offload_params, zero_init=True, additional_buffer_factor=additional_buffer_factor,
        )
        rows.append({"stage": 3, "offload_optimizer": offload, "offload_param": offload_params, "per_gpu_bytes": gpu, "per_node_cpu_bytes": cpu})
    return rows


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


def estimate_memory(
    checkpoint: str | None = None,
    subjects: dict[str, int] | None = None,
    image_embedding_shape: list[int] | None = None,
    text_embedding_dim: int | None = None,
    width: int | None = None,
    n_blocks: int | None = None,
    adapter: AdapterKind | None = None,
    projector: bool | None = None,
    num_gpus_per_node: int = 1,
    num_nodes: int = 1,
    additional_buffer_factor: float = 1.5,
) -> str:
    """Per-GPU memory for the model states (params, grads, Adam) under ZeRO-2 and ZeRO-3.

    Uses DeepSpeed's estimators (``estimate_zero2/3_model_states_mem_needs``, what the
    ``*_all_live``/``*_all_cold`` helpers print); activations and buffers come on top. The
    model is built on the ``meta`` device, so even a full-size decoder costs no memory here.

    Args:
        checkpoint: a Lightning ``.ckpt``, a ZeRO checkpoint folder or a release folder whose model to size;
            the model keys below override its config.
        subjects: voxel count per subject id (for a model without a checkpoint).
        image_embedding_shape: target shape, e.g. ``[256, 1664]`` for OpenCLIP ViT-bigG tokens.
        text_embedding_dim: text target width (omit for none).
        width: shared backbone width.
        n_blocks: residual MLP blocks.
        adapter: ``linear`` or ``sttm`` per-subject adapters.
        projector: whether the contrastive projector exists.
        num_gpus_per_node: GPUs per node (= ``--ntasks-per-node`` under SLURM).
        num_nodes: nodes.
        additional_buffer_factor: DeepSpeed's safety factor on CPU memory.
    """
    from litbrain.hub import read_decoder_config
    from litbrain.nn import BrainDecoder

    cfg: dict[str, Any] = dict(read_decoder_config(checkpoint)) if checkpoint else {}
    overrides = dict(subjects=subjects, image_embedding_shape=image_embedding_shape, text_embedding_dim=text_embedding_dim,
                     width=width, n_blocks=n_blocks, adapter=adapter, projector=projector)
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    if not cfg.get("subjects") or not cfg.get("image_embedding_shape"):
        raise ReleaseError("estimate-memory needs --checkpoint, or --subjects and --image_embedding_shape; "
                           "fix: see configs/fmri/estimate_memory.yaml")
    if num_gpus_per_node < 1 or num_nodes < 1:
        raise ReleaseError(f"num_gpus_per_node={num_gpus_per_node}, num_nodes={num_nodes}; fix: use positive counts")
    with torch.device("meta"):
        model = BrainDecoder(**cfg)
    total, largest = count_parameters(model)
    rows = zero_memory_rows(total, largest, num_gpus_per_node, num_nodes, additional_buffer_factor)
    gpus = num_gpus_per_node * num_nodes
    lines = [
        f"model: {total:,} parameters ({total / 1e6:.1f}M), largest layer {largest:,}; "
        f"cluster: {num_nodes} node(s) x {num_gpus_per_node} GPU(s) = {gpus} GPU(s)",
        "model states only (fp32 Adam + 16-bit params/grads; DeepSpeed's estimators); activations come on top",
        f"{'stage':<6} {'offload_optimizer':<18} {'offload_param':<14} {'per-GPU':>12} {'per-node CPU':>14}",
    ]
    for r in rows:
        lines.append(
            f"{'ZeRO-' + str(r['stage']):<6} {str(r['offload_optimizer']).lower():<18} {str(r['offload_param']).lower():<14} "
            f"{_gib(r['per_gpu_bytes']):>12} {_gib(r['per_node_cpu_bytes']):>14}"
        )
    return "\n".join(lines)


__all__ = [
    "DEEPSPEED_SAFE_GLOBALS",
    "DependencyError",
    "check_zero_checkpoint",
    "consolidate_from_cli",
    "consolidate_zero_checkpoint",
    "count_parameters",
    "estimate_memory",
    "is_zero_checkpoint",
    "read_zero_hyper_parameters",
    "zero_memory_rows",
    "zero_tag_dir",
]
