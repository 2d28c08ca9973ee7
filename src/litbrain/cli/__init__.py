"""The one entry point: ``litbrain <verb>`` or ``litbrain <family> <verb>`` (see :mod:`.verbs`).

Training verbs are LightningCLI subcommands; the data, evaluation, release and benchmark verbs
are typed functions parsed by jsonargparse. Every verb takes ``--config FILE.yaml``
(repeatable, later files override earlier ones) plus ``--key value`` overrides. Any
:class:`~litbrain.errors.LitbrainError` is printed as one line and exits with status 2.
"""

from __future__ import annotations

import importlib
import os
import sys
from pathlib import Path

from litbrain.cli import verbs

__all__ = ["main"]


def run_training_verb(args: list[str]) -> None:
    from litbrain.cli.lightning import LitbrainCLI

    # LightningCLI parses sys.argv, which must hold this verb's args: Lightning's DDP launcher
    # re-runs `sys.argv` to start the other local ranks (and it warns when given args while
    # sys.argv holds others, e.g. pytest's).
    saved, sys.argv = sys.argv, [sys.argv[0], *args]
    try:
        LitbrainCLI(args=None)
    finally:
        sys.argv = saved


def _function(target: str):
    module, _, name = target.partition(":")
    return getattr(importlib.import_module(module), name)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(verbs.usage())
        return
    if argv[0] in verbs.FAMILIES and (len(argv) == 1 or argv[1] in ("-h", "--help", "help")):
        print(verbs.usage(argv[0]))
        return
    found = verbs.resolve(argv)
    if found is None:
        family = argv[0] if argv[0] in verbs.FAMILIES else None
        bad = f"{argv[0]} {argv[1]}" if family and len(argv) > 1 else argv[0]
        print(verbs.usage(family), file=sys.stderr)
        known = sorted(verbs.FAMILIES[family]) if family else sorted([*verbs.SHARED, *verbs.FAMILIES])
        print(f"\nlitbrain: error: unknown verb {bad!r}; fix: one of {known}", file=sys.stderr)
        raise SystemExit(2)
    name, verb, rest = found
    from litbrain.cli import errors
    from litbrain.errors import LitbrainError

    errors.CONFIG_FILES[:] = errors.config_files(rest)
    prog = f"litbrain {name}"
    errors.PROG[0] = prog
    try:
        if verb.target == "lightning":
            run_training_verb([name, *rest])
        else:
            from jsonargparse import auto_cli

            result = auto_cli(_function(verb.target), args=rest, as_positional=False,
                              parser_class=errors.ConciseArgumentParser, prog=prog)
            if isinstance(result, (str, Path)):
                print(result)
    except LitbrainError as err:
        errors.fail(prog, str(err))


if __name__ == "__main__":
    main()
