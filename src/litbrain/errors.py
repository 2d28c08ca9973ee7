"""litbrain's errors: one base class, so the CLI prints any of them as one line.

Every error raised for bad input or an unsuitable environment derives from
:class:`LitbrainError`; its message names the file or field at fault, the cause and the fix
(``"<where>: <what is wrong>; fix: <what to do>"``). The command line catches the base class and
prints that one line (no traceback), so no list of error classes exists to forget. Errors also
derive from the built-in type they refine (``ValueError``, ``RuntimeError``, ...), so code that
catches those keeps working.

A family may define narrower kinds in its own files; they derive from one of these.
"""

from __future__ import annotations

__all__ = [
    "LitbrainError",
    "ConfigError",
    "DataError",
    "ReleaseError",
    "HardwareError",
    "DependencyError",
    "SubjectMismatchError",
]


class LitbrainError(Exception):
    """Bad input or environment; the message says where, why and how to fix it."""


class ConfigError(LitbrainError, ValueError):
    """A config value (YAML key, command-line flag, constructor argument) that cannot work."""


class DataError(LitbrainError, ValueError):
    """Bad or missing input data: a file, a folder, a column or a value in them."""


class ReleaseError(LitbrainError, ValueError):
    """A checkpoint or release that cannot be read, or that is damaged, or that does not fit."""


class HardwareError(LitbrainError, RuntimeError):
    """The config asks for hardware this machine does not have (a GPU, CUDA for DeepSpeed)."""


class DependencyError(LitbrainError, RuntimeError):
    """An optional dependency (an extra) that this feature needs is not installed."""


class SubjectMismatchError(ConfigError):
    """A model's subject maps do not fit the data (a shared subject with another feature count)."""
