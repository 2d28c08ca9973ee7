"""The one safe checkpoint reader: every litbrain loader reads Lightning checkpoints through here.

* A ``.ckpt`` file is a zip archive: its CRC-32s are checked member by member first (so a file
  with damaged bytes is refused instead of handing back wrong tensors), then it is read with
  ``torch.load(..., weights_only=True)``, which never unpickles code.
* A DeepSpeed ZeRO-2/3 checkpoint *folder* (Lightning's ``DeepSpeedStrategy`` saves one: ``latest``
  + a tag folder with ``*_model_states.pt`` and one ``*_optim_states.pt`` per rank) is checked
  shard by shard with ``weights_only=True`` (only the plain DeepSpeed data classes of
  :data:`DEEPSPEED_SAFE_GLOBALS` allowed) before Lightning's converter, which itself unpickles,
  merges it into one fp32 state dict.

``torch.load`` appears in this module only.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Any, Iterator

from litbrain.errors import DependencyError, ReleaseError

__all__ = [
    "DEEPSPEED_SAFE_GLOBALS",
    "check_zero_checkpoint",
    "consolidate_zero_checkpoint",
    "is_zero_checkpoint",
    "read_checkpoint",
    "require_deepspeed",
    "read_zero_client_state",
    "strip_prefix",
    "verify_zip",
    "zero_tag_dir",
]

# Plain data classes inside ZeRO optimizer-state files (checked on deepspeed 0.19): a tensor
# fragment's (start, numel), the stage enum and the (static or dynamic) loss-scaler state.
DEEPSPEED_SAFE_GLOBALS = (
    "deepspeed.utils.tensor_fragment.fragment_address",
    "deepspeed.runtime.zero.config.ZeroStageEnum",
    "deepspeed.runtime.fp16.loss_scaler.LossScaler",
    "deepspeed.runtime.fp16.loss_scaler.DynamicLossScaler",
)

_FIX_CKPT = "fix: use an intact .ckpt written by `litbrain fit` (files with pickled objects are refused on purpose)"


def strip_prefix(state: dict[str, Any], prefix: str) -> dict[str, Any]:
    """The entries of ``state`` under ``prefix`` (e.g. ``"model."``), with the prefix removed."""
    return {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def verify_zip(path: str | os.PathLike, what: str = "checkpoint") -> None:
    """Refuse a zip archive (a ``torch.save`` file) whose members fail their CRC-32 or do not read.

    Streams every member once (bounded memory). Raises :class:`ReleaseError` naming the file and
    the damaged member.
    """
    path = Path(path)
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                crc = 0
                with zf.open(info) as f:  # zipfile raises BadZipFile on a CRC mismatch at EOF
                    while chunk := f.read(1 << 20):
                        crc = zlib.crc32(chunk, crc)
                if crc != info.CRC:
                    raise zipfile.BadZipFile(f"Bad CRC-32 for file {info.filename!r}")
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError, NotImplementedError) as err:
        detail = _first_line(err)
        if not zipfile.is_zipfile(path):
            detail = "not a zip archive: a .ckpt is a torch.save zip file; this is some other file"
        raise ReleaseError(f"{path}: damaged or not a {what} ({detail}); {_FIX_CKPT}") from None


def _torch_load(path: Path, allowed: list[Any] | None = None, mmap: bool = False) -> Any:
    import torch

    if allowed:
        with torch.serialization.safe_globals(allowed):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)


def read_checkpoint(path: str | os.PathLike, what: str = "checkpoint") -> dict[str, Any]:
    """A Lightning checkpoint as a dict (``state_dict``, ``hyper_parameters``, ...), read safely.

    ``path`` is a ``.ckpt`` file (integrity-checked, then ``weights_only=True``) or a DeepSpeed
    ZeRO checkpoint folder (checked shard by shard, then consolidated to fp32 in a temporary
    file). Raises :class:`ReleaseError` with the file and the fix.
    """
    path = Path(path)
    if path.is_dir():
        if not is_zero_checkpoint(path):
            raise ReleaseError(f"{path}: a folder that is neither a .ckpt file nor a DeepSpeed ZeRO checkpoint folder; "
                               f"fix: pass a .ckpt file, or the checkpoint folder a deepspeed_stage_* fit wrote")
        with tempfile.TemporaryDirectory(prefix="litbrain-zero-") as tmp:
            return read_checkpoint(consolidate_zero_checkpoint(path, Path(tmp) / "consolidated.ckpt"), what)
    if not path.is_file():
        raise ReleaseError(f"{path}: no such {what} file; fix: pass the path of a .ckpt written by `litbrain fit`")
    verify_zip(path, what)
    try:
        ckpt = _torch_load(path)
    except Exception as err:  # pickled code, wrong format: all end here
        raise ReleaseError(f"{path}: cannot be read as a safe {what} ({_first_line(err)[:300]}); {_FIX_CKPT}") from None
    if not isinstance(ckpt, dict):
        raise ReleaseError(f"{path}: holds a {type(ckpt).__name__}, not a Lightning checkpoint dict; "
                           f"fix: pass a .ckpt written by `litbrain fit`")
    return ckpt


# ---------------------------------------------------------------- ZeRO checkpoint folders
def require_deepspeed() -> None:
    """Import DeepSpeed or raise a DependencyError naming the extra; on a machine without CUDA, DeepSpeed
    is told its accelerator is the CPU (``DS_ACCELERATOR=cpu``) instead of warning that it guessed so."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed  # noqa: F401
    except ImportError as err:
        raise DependencyError(f"DeepSpeed is not installed ({err}); fix: pip install 'litbrain[deepspeed]'") from None


def zero_tag_dir(path: str | os.PathLike) -> Path | None:
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


def is_zero_checkpoint(path: str | os.PathLike) -> bool:
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


def check_zero_checkpoint(path: str | os.PathLike) -> Path:
    """Refuse a ZeRO folder unless every file in it is intact and loads with ``weights_only=True``.

    Returns the tag folder. Raises :class:`ReleaseError` naming the file and the fix.
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
    require_deepspeed()
    allowed = _safe_globals()
    fix = ("fix: use an intact checkpoint folder written by a deepspeed_stage_* fit "
           "(pickled objects are refused on purpose)")
    for f in files:
        verify_zip(f, "ZeRO checkpoint shard")
        try:
            _torch_load(f, allowed, mmap=True)
        except Exception as err:  # pickled code, unknown classes: refused before the converter runs
            raise ReleaseError(f"{f}: cannot be read as a safe ZeRO checkpoint shard ({_first_line(err)[:300]}); {fix}") from None
    return tag_dir


@contextlib.contextmanager
def _stdout_to_stderr() -> Iterator[None]:
    # Lightning's and DeepSpeed's converters print progress; keep stdout for the result path.
    with contextlib.redirect_stdout(sys.stderr):
        yield


def consolidate_zero_checkpoint(checkpoint: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Write a ZeRO checkpoint folder as one fp32 Lightning ``.ckpt`` (atomically).

    Uses Lightning's ``convert_zero_checkpoint_to_fp32_state_dict`` (tied weights come back as one
    shared tensor under every name): the result holds ``state_dict`` (``_forward_module.``
    prefixes removed) plus the Lightning client state (``hyper_parameters``, ``epoch``,
    ``global_step``, ...), so it reads like any ``.ckpt``.
    """
    from litbrain.utils.io import atomic_file

    checkpoint, out = Path(checkpoint), Path(out)
    if out.exists() and not overwrite:
        raise ReleaseError(f"{out}: already exists; fix: choose another --out or pass --overwrite true")
    tag_dir = check_zero_checkpoint(checkpoint)
    from lightning.pytorch.utilities.deepspeed import (
        convert_zero_checkpoint_to_fp32_state_dict,
    )

    with atomic_file(out) as tmp, _stdout_to_stderr():
        convert_zero_checkpoint_to_fp32_state_dict(str(checkpoint), str(tmp), tag=tag_dir.name)
    return out


def read_zero_client_state(path: str | os.PathLike) -> dict[str, Any]:
    """The Lightning client state (``hyper_parameters``, ``litbrain``, ...) of a ZeRO folder, read safely."""
    tag_dir = check_zero_checkpoint(path)
    model_files = sorted(tag_dir.glob("*model_states.pt"))
    state = _torch_load(model_files[0], _safe_globals(), mmap=True)
    return {k: v for k, v in state.items() if k not in ("module", "optimizer", "lr_scheduler")}
