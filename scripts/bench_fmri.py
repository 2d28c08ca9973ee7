#!/usr/bin/env python
"""``python scripts/bench_fmri.py [--config FILE.yaml] [--key value ...]``: the same as
``make bench``.

A thin wrapper around :func:`litbrain.benchmarks.fmri.bench_fmri`; without ``--config`` it reads
``configs/bench/fmri.yaml``. Prints one table (and writes its JSON where the config says).
"""

from __future__ import annotations

import sys
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "bench" / "fmri.yaml"


def main(argv: list[str] | None = None):
    from litbrain.benchmarks.fmri import bench_fmri
    from litbrain.cli.errors import run_with_default_config

    return run_with_default_config(bench_fmri, argv, DEFAULT_CONFIG, "scripts/bench_fmri.py")


if __name__ == "__main__":
    main(sys.argv[1:])
