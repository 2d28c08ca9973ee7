"""What every benchmark shares: this machine's matmul peak, FLOP counts, interleaved rounds, ratios.

* :func:`matmul_peak` measures the machine's own peak in the same run (fp32 and bf16, 1 and 2
  threads, a few sizes; the best median of each), so every step can be reported as achieved
  FLOP/s and as a fraction of that peak, beside its time.
* :func:`count_flops` counts a callable's FLOPs with ``torch.utils.flop_counter`` (matmuls,
  convolutions, attention; elementwise work is not counted, so fractions are conservative).
* :func:`interleaved` runs two (or more) measured callables in alternating ABBA order and returns
  each one's times and the median of the per-round ratios, so one noisy round cannot flip a verdict.
"""

from __future__ import annotations

import contextlib
import os
import statistics
import time
from typing import Any, Callable, Iterator

__all__ = ["achieved", "count_flops", "fp32_peak", "interleaved", "matmul_peak", "native_bf16", "peak_line", "threads",
           "time_call"]


@contextlib.contextmanager
def threads(n: int) -> Iterator[None]:
    """Run a block with ``n`` torch intra-op threads, restoring the previous count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def time_call(fn: Callable[[], Any], reps: int = 5, warmup: int = 1) -> list[float]:
    """Seconds of ``reps`` calls of ``fn`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def native_bf16() -> bool:
    """Whether this CPU has bf16 matmul units (AVX-512 BF16 or AMX); without them torch emulates bf16
    matmuls at a small fraction of the fp32 speed, so bf16 figures would say nothing about bf16."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
        return "avx512_bf16" in flags or "amx_bf16" in flags
    except OSError:  # not Linux: torch's own reading of the vector unit
        import torch

        return "AVX512" in torch.backends.cpu.get_cpu_capability()


def matmul_peak(dtypes: tuple[str, ...] = ("float32", "bfloat16"), thread_counts: tuple[int, ...] = (1, 2),
                sizes: tuple[int, ...] = (1024, 2048), reps: int = 5) -> dict[str, float]:
    """GFLOP/s of square matmuls per ``"<dtype>/<threads>t"``: the best size's median over ``reps``.

    bf16 is measured only on CPUs with bf16 units (:func:`native_bf16`); elsewhere its keys are absent.
    """
    import torch

    peaks: dict[str, float] = {}
    for dtype in dtypes:
        if dtype == "bfloat16" and not native_bf16():
            continue  # emulated bf16 takes minutes per matmul and is no peak of anything
        dt = getattr(torch, dtype)
        for n_threads in thread_counts:
            if n_threads > (os.cpu_count() or 1):
                continue
            best = 0.0
            with threads(n_threads):
                for n in sizes:
                    a, b = torch.randn(n, n, dtype=dt), torch.randn(n, n, dtype=dt)
                    sec = statistics.median(time_call(lambda: a @ b, reps=reps, warmup=2))
                    best = max(best, 2 * n ** 3 / sec / 1e9)
            peaks[f"{dtype}/{n_threads}t"] = round(best, 1)
    return peaks


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of one call of ``fn`` (forward and whatever backward it runs) by torch's flop counter."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def interleaved(calls: dict[str, Callable[[], Any]], rounds: int = 5, warmup: int = 1) -> dict[str, Any]:
    """Time every callable once per round, ABBA-ordered (the order reverses every round).

    Returns ``{"seconds": {name: [per round]}, "median": {name: s}, "ratio_median": {name: median over
    rounds of name / first}}``: ratios are taken within a round, where both saw the same machine.
    """
    names = list(calls)
    for _ in range(warmup):
        for name in names:
            calls[name]()
    seconds: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for name in (names if r % 2 == 0 else names[::-1]):
            t = time.perf_counter()
            calls[name]()
            seconds[name].append(time.perf_counter() - t)
    first = names[0]
    return {
        "seconds": seconds,
        "median": {n: statistics.median(v) for n, v in seconds.items()},
        "ratio_median": {n: statistics.median(a / b for a, b in zip(seconds[n], seconds[first])) for n in names},
    }


def fp32_peak(n_threads: int, peak: dict[str, float] | None = None, sizes: tuple[int, ...] = (1024, 2048)) -> float:
    """This machine's fp32 matmul GFLOP/s at ``n_threads`` (measured now unless ``peak`` already holds it)."""
    key = f"float32/{int(n_threads)}t"
    if peak is None or key not in peak:
        peak = matmul_peak(dtypes=("float32",), thread_counts=(int(n_threads),), sizes=sizes)
    return float(peak.get(key) or max(peak.values()))


def achieved(flops: float, seconds: float, peak_gflops: float) -> dict[str, float]:
    """``{"gflops", "of_fp32_peak"}`` of ``flops`` done in ``seconds``, against a measured peak."""
    gflops = float(flops) / max(float(seconds), 1e-12) / 1e9
    return {"gflops": gflops, "of_fp32_peak": gflops / float(peak_gflops)}


def peak_line(peak_gflops: float, n_threads: int) -> str:
    """The header line every benchmark prints under its table: what the fractions are relative to."""
    return (f"fractions are of this machine's fp32 matmul peak, {peak_gflops:.0f} GFLOP/s at {n_threads} thread(s), "
            f"measured in this run (FLOPs by torch.utils.flop_counter: matmuls/convolutions/attention only)")
