#!/usr/bin/env python
"""``python scripts/bench_seeg.py [--config FILE.yaml] [--key value ...]``: the same as
``make bench-seeg``.

A thin wrapper around :func:`litbrain.benchmarks.seeg.bench_seeg`; without ``--config`` it reads
``configs/bench/seeg.yaml``. Prints one table (and writes its JSON where the config says).
"""

from __future__ import annotations

import sys
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "bench" / "seeg.yaml"


def main(argv: list[str] | None = None):
    from litbrain.benchmarks.seeg import bench_seeg
    from litbrain.cli.errors import run_with_default_config

    return run_with_default_config(bench_seeg, argv, DEFAULT_CONFIG, "scripts/bench_seeg.py")


if __name__ == "__main__":
    main(sys.argv[1:])
