#!/usr/bin/env python
"""The sEEG benchmark of issue 3: ``python scripts/bench_seeg.py [--config configs/bench/seeg.yaml] [--key value ...]``.

A thin wrapper around :func:`litbrain.benchmarks.seeg.bench_seeg` (same as ``litbrain bench-seeg``):
reading vs training-step epochs/s and Du-IN encoder throughput on CPU, one table.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "bench" / "seeg.yaml"


def main(argv: list[str] | None = None) -> None:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from jsonargparse import auto_cli

    from litbrain import _cli_errors
    from litbrain.benchmarks.seeg import bench_seeg

    args = list(sys.argv[1:] if argv is None else argv)
    if not _cli_errors.config_files(args) and not any(a in ("-h", "--help") for a in args):
        args = ["--config", str(DEFAULT_CONFIG), *args]
    _cli_errors.CONFIG_FILES[:] = _cli_errors.config_files(args)
    auto_cli(bench_seeg, args=args, as_positional=False, parser_class=_cli_errors.ConciseArgumentParser,
             prog="scripts/bench_seeg.py")


if __name__ == "__main__":
    main()
