"""Benchmarks that print measured figures against the bars of their issue (never timed tests).

``litbrain bench --config configs/bench/fmri.yaml`` (or ``make bench``) runs :func:`bench_fmri`.
"""

from litbrain.benchmarks.fmri import bench_fmri

__all__ = ["bench_fmri"]
