"""Smoke test of the fMRI benchmark (issue 2) at tiny sizes.

Checks that every figure of the table is produced, finite and positive, printed and written as
JSON -- never the bars themselves: timings on a shared CI machine are no test.
"""

import json
import math
import statistics
from pathlib import Path

import pytest
import yaml

from litbrain.benchmarks.fmri import BARS, bench_fmri, format_table

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "bench" / "fmri.yaml"

ROWS = {
    "step_ms_bare", "step_ms_lightning", "step_ratio", "step_ratio_of_medians", "tiny_step_ratio", "implied_step_ratio",
    "step_gflops_bare", "step_gflops_lightning", "step_of_peak_lightning",
    "datamodule_samples_per_s", "step_samples_per_s", "throughput_ratio",
    "train_data_1x_mb", "train_data_big_mb", "baseline_rss_mb", "peak_rss_1x_mb", "peak_rss_big_mb", "rss_ratio",
}

TINY = dict(
    n_subjects=2, n_voxels=60, n_stimuli=120, width=32, n_blocks=1, batch_size=16,
    warmup_steps=1, window_steps=2, repetitions=3,
    memory_voxels=100, memory_trials=40, memory_scale=2, memory_width=16, memory_n_blocks=1, memory_batch_size=8,
    verbose=False,
)


@pytest.mark.slow  # ~30-60 s on 2 busy cores: two fresh child processes import torch + Lightning
def test_bench_fmri_tiny_table(tmp_path, capsys):
    out = tmp_path / "out" / "results.json"
    doc = bench_fmri(work_dir=str(tmp_path / "work"), output=str(out), **TINY)
    printed = capsys.readouterr().out

    on_disk = json.loads(out.read_text())
    assert on_disk["rows"] == doc["rows"]
    assert {r["key"] for r in on_disk["rows"]} == ROWS
    assert len(on_disk["rows"]) == len(ROWS)
    for row in on_disk["rows"]:
        assert math.isfinite(row["value"]) and row["value"] > 0, row
        assert row["figure"] in printed
        if row["key"] in BARS:  # the verdict is reported, whatever it is
            assert isinstance(row["pass"], bool) and row["bar"]
    assert printed.strip() == format_table(on_disk).strip()  # one table, nothing else on stdout
    # The two runs of (a) compute the same thing: same weights, batches and RNG.
    assert max(on_disk["details"]["speed"]["loss_max_abs_diff_per_rep"]) < 1e-3
    # The verdict's ratio is the median of the per-repetition ratios, not the ratio of the medians.
    speed = on_disk["details"]["speed"]
    per_rep = sorted(lb / bb for lb, bb in zip(speed["lightning_ms_per_rep"], speed["bare_ms_per_rep"]))
    step = next(r for r in on_disk["rows"] if r["key"] == "step_ratio")
    assert len(per_rep) == 3 and step["value"] == pytest.approx(statistics.median(per_rep))
    assert on_disk["config"]["memory_scale"] == 2
    # the step against this run's matmul peak: GFLOP/s = FLOPs / the same median time (issue 20)
    rows = {r["key"]: r["value"] for r in on_disk["rows"]}
    assert rows["step_gflops_bare"] == pytest.approx(speed["step_gflop"] / (rows["step_ms_bare"] / 1000))
    assert rows["step_of_peak_lightning"] == pytest.approx(rows["step_gflops_lightning"] / speed["fp32_peak_gflops"])


def test_bench_config_is_complete_and_commented():
    """Every key of configs/bench/fmri.yaml is a parameter of bench_fmri and carries a comment."""
    import inspect

    keys = yaml.safe_load(CONFIG.read_text())
    params = set(inspect.signature(bench_fmri).parameters)
    assert set(keys) <= params, set(keys) - params
    assert set(keys) == params  # no hidden defaults: the config shows every knob
    for line in CONFIG.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert "#" in line, f"uncommented key: {line}"


def test_bench_script_parses_config(tmp_path, capsys):
    """The wrapper accepts the default config (checked with --print_config, nothing runs)."""
    import runpy

    mod = runpy.run_path(str(REPO / "scripts" / "bench_fmri.py"), run_name="bench_fmri_script")
    with pytest.raises(SystemExit) as exc:
        mod["main"](["--print_config"])
    assert exc.value.code in (0, None)
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["width"] == yaml.safe_load(CONFIG.read_text())["width"]


def test_step_benchmark_reports_every_step_against_the_measured_peak(capsys):
    from litbrain.benchmarks.fmri import bench_fmri_step

    res = bench_fmri_step(voxels=[40, 30], width=16, n_blocks=1, target_dim=8, rows_per_subject=4, thread_counts=[1],
                          rounds=1, output=None)
    out = capsys.readouterr().out
    from litbrain.benchmarks.common import native_bf16

    # the bf16 row only where the CPU has bf16 units; elsewhere one line says why it is missing
    assert {r["step"] for r in res["rows"]} == {"fp32 fused", "fp32 foreach", "fp32 default"} | (
        {"bf16-mixed fused"} if native_bf16() else set())
    assert ("bf16-mixed: not measured" in out) != native_bf16()
    assert ("bfloat16/1t" in res["peak_gflops"]) == native_bf16()
    # the FLOP count is the matmuls': adapters + 1 block (2 linears) + head + projector, forward and backward
    assert res["gflop_per_step"] > 0 and res["peak_gflops"]["float32/1t"] > 0
    for r in res["rows"]:
        assert r["ms"] > 0 and 0 < r["of_fp32_peak"] and r["forward_ms"] + r["backward_ms"] + r["optimiser_ms"] > 0
        assert r["step"] in out
    assert "of fp32 peak" in out and "matmul peak" in out
