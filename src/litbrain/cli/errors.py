"""One clear line for a bad command line or config, instead of a page of usage text or a traceback.

Every :class:`~litbrain.errors.LitbrainError` reaching the command line is printed as
``litbrain <verb>: error: <message>`` and exits 2; parser errors are shortened to the line that
names the bad key or value, with the parser's reason kept.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

from jsonargparse import ArgumentParser

from litbrain.errors import LitbrainError

__all__ = ["ConciseArgumentParser", "ConciseErrors", "concise_message", "config_files", "fail",
           "run_with_default_config"]

_KEY_PATTERNS = (
    re.compile(r"Option '([^']+)' is not accepted"),
    re.compile(r"Key '([^']+)' is not expected"),
    re.compile(r"Key \"([^\"]+)\" is not expected"),
    re.compile(r"unrecognized arguments?: (.+)"),
    re.compile(r"does not accept option '([^']+)'"),
)


def _close_trainer_key(key: str) -> str:
    """`` (did you mean 'max_epochs'?)`` for a misspelt trainer key."""
    if not key.lstrip("-").startswith("trainer."):
        return ""
    import difflib
    import inspect

    from lightning.pytorch import Trainer

    name = key.lstrip("-").split(".", 1)[1]
    near = difflib.get_close_matches(name, list(inspect.signature(Trainer).parameters), n=1)
    return f" (did you mean 'trainer.{near[0]}'?)" if near else ""

CONFIG_FILES: list[str] = []  # set by litbrain.cli.main so errors can name the file
PROG: list[str] = ["litbrain"]  # "litbrain <verb>", set by litbrain.cli.main: one prefix for every error line


def config_files(args: list[str]) -> list[str]:
    files = []
    for i, a in enumerate(args):
        if a in ("-c", "--config") and i + 1 < len(args):
            files.append(args[i + 1])
        elif a.startswith("--config="):
            files.append(a.split("=", 1)[1])
    return files


def where() -> str:
    """``(from FILE, ...)`` naming the config files of this command, or the command line."""
    return ", ".join(CONFIG_FILES) or "the command line"


_TYPE_NAMES = {"int": "an integer", "float": "a number", "bool": "true or false", "str": "a string",
               "NoneType": "null", "dict": "a mapping", "list": "a list"}


def _bad_value(message: str) -> str | None:
    """``key: 'value' is not <types> (in <files>); fix: ...`` for a jsonargparse type error, else None."""
    key = re.search(r'Parser key "([^"]+)"', message)
    value = re.search(r"(?:Given value|Got value): (.*)", message)
    types = list(dict.fromkeys(re.findall(r"Expected an? <class '(\w+)'>", message)))
    if not key or not value or not types:
        return None
    wanted = " or ".join(_TYPE_NAMES.get(t, t) for t in types)
    at = f" (in {', '.join(CONFIG_FILES)} or the command line)" if CONFIG_FILES else ""
    return (f"{key.group(1)}: {value.group(1).strip()!r} is not {wanted}{at}; fix: give {_TYPE_NAMES.get(types[0], types[0])} "
            f"(`--help` lists every key with its type)")


def concise_message(message: str) -> str:
    """One line of a jsonargparse error: the bad key or value, the parser's reason, where, and the fix."""
    lines = [ln.strip(" -") for ln in str(message).splitlines() if ln.strip(" -")]
    bad = _bad_value(str(message))
    if bad:
        return bad
    context = next((ln for ln in lines if ln.startswith("Problem with given class_path")), "")
    for ln in lines:
        for pat in _KEY_PATTERNS:
            m = pat.search(ln)
            if m:
                key = m.group(1).split()[0]
                at = f" ({context.rstrip(':')})" if context else ""
                if CONFIG_FILES:
                    at += f" in {', '.join(CONFIG_FILES)} or the command line"
                return (
                    f"unknown key {key!r}{at}; fix: correct or remove it{_close_trainer_key(key)} "
                    f"(`--help` lists the accepted keys, `--print_config` shows a valid config)"
                )
    # Otherwise keep the parser's reason: its first lines joined, where the first alone says little.
    text = "; ".join(lines[:3]) if lines and lines[0].endswith(":") else (lines[0] if lines else "invalid arguments")
    if "fix:" not in text:
        text += "; fix: correct the value (`--help` lists the accepted keys and types)"
    return text


def fail(prog: str, message: str) -> NoReturn:
    sys.stderr.write(f"{prog}: error: {message}\n")
    raise SystemExit(2)


class ConciseErrors:
    """Mixin for jsonargparse parsers: errors in one line (see :func:`concise_message`)."""

    def error(self, message: str, ex: Exception | None = None) -> NoReturn:  # type: ignore[override]
        fail(PROG[0], concise_message(message))


class ConciseArgumentParser(ConciseErrors, ArgumentParser):
    pass


def run_with_default_config(fn: Callable[..., Any], argv: list[str] | None, default_config: str | os.PathLike,
                            prog: str) -> Any:
    """``jsonargparse.auto_cli(fn)`` with concise errors; ``default_config`` is used when no --config is given.

    The benchmark scripts share this: ``python scripts/bench_X.py [--config F.yaml] [--key value ...]``.
    """
    from jsonargparse import auto_cli

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = list(sys.argv[1:] if argv is None else argv)
    if not config_files(args) and not any(a in ("-h", "--help") for a in args) and Path(default_config).is_file():
        args = ["--config", str(default_config), *args]
    CONFIG_FILES[:] = config_files(args)
    PROG[0] = prog
    try:
        return auto_cli(fn, args=args, as_positional=False, parser_class=ConciseArgumentParser, prog=prog)
    except LitbrainError as err:  # bad input: one line naming the file/field and the fix, no traceback
        fail(prog, str(err))
