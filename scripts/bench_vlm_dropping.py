#!/usr/bin/env python
"""``python scripts/bench_vlm_dropping.py [--config FILE.yaml] [--key value ...]``: the same as
``make bench-vlm``.

A thin wrapper around :func:`litbrain.benchmarks.vlm_dropping.bench_vlm_dropping`; without ``--config`` it reads
``configs/bench/vlm_dropping.yaml``. Prints one table (and writes its JSON where the config says).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "bench" / "vlm_dropping.yaml"


def main(argv: list[str] | None = None):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    from litbrain.benchmarks.vlm_dropping import bench_vlm_dropping
    from litbrain.cli.errors import run_with_default_config

    return run_with_default_config(bench_vlm_dropping, argv, DEFAULT_CONFIG, "scripts/bench_vlm_dropping.py")


if __name__ == "__main__":
    main(sys.argv[1:])
