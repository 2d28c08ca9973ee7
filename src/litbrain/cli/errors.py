"""One clear line for a bad command line or config, instead of a page of usage text."""

from __future__ import annotations

import re
import sys
from typing import NoReturn

from jsonargparse import ArgumentParser
from lightning.pytorch.cli import LightningArgumentParser

_KEY_PATTERNS = (
    re.compile(r"Option '([^']+)' is not accepted"),
    re.compile(r"Key '([^']+)' is not expected"),
    re.compile(r"Key \"([^\"]+)\" is not expected"),
    re.compile(r"unrecognized arguments?: (.+)"),
)


CONFIG_FILES: list[str] = []  # set by litbrain.cli.main so errors can name the file


def config_files(args: list[str]) -> list[str]:
    files = []
    for i, a in enumerate(args):
        if a in ("-c", "--config") and i + 1 < len(args):
            files.append(args[i + 1])
        elif a.startswith("--config="):
            files.append(a.split("=", 1)[1])
    return files


def concise_message(message: str) -> str:
    """The line of a jsonargparse error that names the bad key, with its context."""
    lines = [ln.strip(" -") for ln in str(message).splitlines() if ln.strip(" -")]
    context = next((ln for ln in lines if ln.startswith("Problem with given class_path")), "")
    for ln in lines:
        for pat in _KEY_PATTERNS:
            m = pat.search(ln)
            if m:
                where = f" ({context.rstrip(':')})" if context else ""
                if CONFIG_FILES:
                    where += f" in {', '.join(CONFIG_FILES)} or the command line"
                return (
                    f"unknown key {m.group(1)!r}{where}; fix: correct or remove it "
                    f"(`--help` lists the accepted keys, `--print_config` shows a valid config)"
                )
    return lines[0] if lines else "invalid arguments"


class _ConciseErrors:
    def error(self, message: str, ex: Exception | None = None) -> NoReturn:  # type: ignore[override]
        prog = getattr(self, "prog", "litbrain") or "litbrain"
        sys.stderr.write(f"{prog}: error: {concise_message(message)}\n")
        raise SystemExit(2)


class ConciseArgumentParser(_ConciseErrors, ArgumentParser):
    pass


class ConciseLightningArgumentParser(_ConciseErrors, LightningArgumentParser):
    pass


def known_errors() -> tuple[type[BaseException], ...]:
    """Errors that mean bad input: the CLI and the benchmark scripts print them in one line."""
    from litbrain.benchmarks import BenchConfigError
    from litbrain.datamodules import DataError
    from litbrain.hub import ReleaseError
    from litbrain.tasks import SubjectMismatchError
    from litbrain.tasks.seeg_decoding import StageConfigError
    from litbrain.training_cli import HardwareError
    from litbrain.zero import DependencyError

    return (DataError, ReleaseError, SubjectMismatchError, StageConfigError, HardwareError, DependencyError,
            BenchConfigError)


def run_with_default_config(fn, argv: list[str] | None, default_config, prog: str):
    """``jsonargparse.auto_cli(fn)`` with concise errors; ``default_config`` is used when no --config is given.

    The benchmark scripts share this: ``python scripts/bench_X.py [--config F.yaml] [--key value ...]``.
    """
    import os
    import sys
    from pathlib import Path

    from jsonargparse import auto_cli

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = list(sys.argv[1:] if argv is None else argv)
    if not config_files(args) and not any(a in ("-h", "--help") for a in args) and Path(default_config).is_file():
        args = ["--config", str(default_config), *args]
    CONFIG_FILES[:] = config_files(args)
    try:
        return auto_cli(fn, args=args, as_positional=False, parser_class=ConciseArgumentParser, prog=prog)
    except known_errors() as err:  # bad input: one line naming the file/field and the fix, no traceback
        print(f"{prog}: error: {err}", file=sys.stderr)
        raise SystemExit(2) from None
