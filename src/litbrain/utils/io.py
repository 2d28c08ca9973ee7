"""Atomic outputs: everything litbrain writes appears whole or not at all.

A file or folder is built under a temporary name beside its destination (``.<name>.tmp-<pid>-<hex>``)
and renamed into place only when complete; any exception (KeyboardInterrupt included) removes
the temporary. A ``kill -9`` cannot run that clean-up, so :func:`remove_stale_temporaries` drops
the temporaries of dead processes the next time the same destination is written.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from litbrain.errors import LitbrainError

__all__ = [
    "atomic_dir",
    "atomic_file",
    "atomic_write_bytes",
    "atomic_write_text",
    "fmt_list",
    "remove_stale_temporaries",
    "temporary_sibling",
]

_TAGS = ("tmp", "old", "parts")


def fmt_list(items: Sequence[Any], limit: int = 8) -> str:
    """``a, b, c, ... (N in all)``: a list short enough for a one-line message."""
    items = list(items)
    shown = ", ".join(str(x) for x in items[:limit])
    if len(items) > limit:
        shown += f", ... ({len(items)} in all)"
    return shown


def temporary_sibling(dest: str | os.PathLike, tag: str = "tmp") -> Path:
    """A fresh name beside ``dest``: ``.<name>.<tag>-<pid>-<8 hex>`` (not created)."""
    dest = Path(dest)
    return dest.parent / f".{dest.name}.{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale_temporaries(dest: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of ``dest`` left by processes that no longer run; return them.

    Only names this module makes (``.<name>.<tag>-<pid>-<hex>``) whose pid is dead are touched,
    so a concurrent writer of the same destination keeps its work.
    """
    dest = Path(dest)
    removed = []
    if not dest.parent.is_dir():
        return removed
    prefix = f".{dest.name}."
    for p in dest.parent.iterdir():
        if not p.name.startswith(prefix):
            continue
        tag, _, rest = p.name[len(prefix):].partition("-")
        pid_text = rest.split("-", 1)[0]
        if tag not in _TAGS or not pid_text.isdigit() or _pid_alive(int(pid_text)):
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                p.unlink()
        removed.append(p)
    return removed


@contextlib.contextmanager
def atomic_dir(out_dir: str | os.PathLike, overwrite: bool = False,
               exists_error: type[LitbrainError] | None = None, fix: str | None = None) -> Iterator[Path]:
    """Yield a fresh temporary directory beside ``out_dir``; on success rename it to ``out_dir``.

    On any exception the temporary directory is removed and ``out_dir`` is left as it was. With
    ``overwrite=True`` an existing ``out_dir`` is replaced (moved aside, then deleted once the new
    one is in place); without it an existing ``out_dir`` raises ``exists_error`` (DataError by
    default) with ``fix`` as its advice.
    """
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    tmp = temporary_sibling(out, "tmp")
    tmp.mkdir()
    try:
        yield tmp
        if out.exists():
            if not overwrite:
                from litbrain.errors import DataError

                raise (exists_error or DataError)(
                    f"{out}: already exists; fix: {fix or 'pass --overwrite true (overwrite=True in Python) or choose another directory'}")
            old = temporary_sibling(out, "old")
            os.replace(out, old)
            os.replace(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it replaces ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path)
    tmp = temporary_sibling(path, "tmp")
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename)."""
    with atomic_file(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))
