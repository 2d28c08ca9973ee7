"""Benchmarks that print measured figures against the bars of their issue (never timed tests).

One module per family (``litbrain <family> bench``); each prints one table and writes it as JSON.
"""

from litbrain.errors import ConfigError


class BenchConfigError(ConfigError):
    """A benchmark argument is invalid; the benchmark entry points print it in one line (field and fix)."""


__all__ = ["BenchConfigError"]
