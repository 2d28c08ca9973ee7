#!/usr/bin/env python
"""The fMRI benchmark of issue 2: ``python scripts/bench_fmri.py [--config FILE.yaml] [--key value ...]``.

A thin wrapper around :func:`litbrain.benchmarks.bench_fmri` (same as ``litbrain bench``); without
``--config`` it reads ``configs/bench/fmri.yaml``. Prints one table and writes it as JSON.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "bench" / "fmri.yaml"


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from jsonargparse import auto_cli

    from litbrain import _cli_errors
    from litbrain.benchmarks import bench_fmri

    args = list(sys.argv[1:] if argv is None else argv)
    if not _cli_errors.config_files(args) and not any(a in ("-h", "--help") for a in args):
        args = ["--config", str(DEFAULT_CONFIG), *args]
    _cli_errors.CONFIG_FILES[:] = _cli_errors.config_files(args)
    auto_cli(bench_fmri, args=args, as_positional=False, parser_class=_cli_errors.ConciseArgumentParser,
             prog="scripts/bench_fmri.py")


if __name__ == "__main__":
    main()
