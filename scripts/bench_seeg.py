#!/usr/bin/env python
"""The sEEG benchmark of issue 3: ``python scripts/bench_seeg.py [--config configs/bench/seeg.yaml] [--key value ...]``.

A thin wrapper around :func:`litbrain.benchmarks.seeg.bench_seeg` (same as ``litbrain bench-seeg``):
reading vs training-step epochs/s and Du-IN encoder throughput on CPU, one table.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_CONFIG = Path(__file__).resolve().parents[1] / "configs" / "bench" / "seeg.yaml"


def main(argv: list[str] | None = None) -> None:
    from litbrain._cli_errors import run_with_default_config
    from litbrain.benchmarks.seeg import bench_seeg

    run_with_default_config(bench_seeg, argv, DEFAULT_CONFIG, "scripts/bench_seeg.py")


if __name__ == "__main__":
    main()
