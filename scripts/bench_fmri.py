#!/usr/bin/env python
"""The fMRI benchmark of issue 2: ``python scripts/bench_fmri.py [--config FILE.yaml] [--key value ...]``.

A thin wrapper around :func:`litbrain.benchmarks.bench_fmri` (same as ``litbrain bench``); without
``--config`` it reads ``configs/bench/fmri.yaml``. Prints one table and writes it as JSON.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "bench" / "fmri.yaml"


def main(argv: list[str] | None = None) -> None:
    from litbrain._cli_errors import run_with_default_config
    from litbrain.benchmarks import bench_fmri

    run_with_default_config(bench_fmri, argv, DEFAULT_CONFIG, "scripts/bench_fmri.py")


if __name__ == "__main__":
    main()
