#!/usr/bin/env python
"""``python scripts/bench_vit_dropping.py [--config FILE.yaml] [--key value ...]``: the same as
``make bench-vit``.

A thin wrapper around :func:`litbrain.benchmarks.vit_dropping.bench_vit_dropping`; without ``--config`` it reads
``configs/bench/vit_dropping.yaml``. Prints one table (and writes its JSON where the config says).
"""

from __future__ import annotations

import sys
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "bench" / "vit_dropping.yaml"


def main(argv: list[str] | None = None):
    from litbrain.benchmarks.vit_dropping import bench_vit_dropping
    from litbrain.cli.errors import run_with_default_config

    return run_with_default_config(bench_vit_dropping, argv, DEFAULT_CONFIG, "scripts/bench_vit_dropping.py")


if __name__ == "__main__":
    main(sys.argv[1:])
