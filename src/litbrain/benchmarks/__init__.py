"""Benchmarks that print measured figures against the bars of their issue (never timed tests).

``litbrain bench --config configs/bench/fmri.yaml`` (or ``make bench``) runs :func:`bench_fmri`.
"""


class BenchConfigError(ValueError):
    """A benchmark argument is invalid; the benchmark entry points print it in one line (field and fix)."""


from litbrain.benchmarks.fmri import bench_fmri  # noqa: E402

__all__ = ["BenchConfigError", "bench_fmri"]
