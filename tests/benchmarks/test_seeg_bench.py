import json
import math

import pytest

from litbrain.benchmarks.seeg import BARS, bench_seeg


def test_seeg_benchmark_prints_the_table_and_writes_positive_figures(tmp_path, capsys):
    out = tmp_path / "results.json"
    res = bench_seeg(work_dir=str(tmp_path / "work"), output=str(out), n_subjects=2, n_words=4, trials_per_word=4,
                     sfreq=250.0, batch_size=8, steps=2, repetitions=1, d_model=32, n_blocks=1, n_heads=2, verbose=False)
    table = capsys.readouterr().out
    assert "reading / training step" in table and "encoder forward" in table
    assert all(r["epochs_per_s"] > 0 and math.isfinite(r["epochs_per_s"]) for r in res["rows"])
    assert set(BARS) <= set(res["ratios"])
    assert json.loads(out.read_text())["ratios"] == res["ratios"]
    # the authors' preset by default; its parameter counts and the stage-3 step time head the table
    assert res["preset"] == "authors" and res["step_ms"] > 0
    assert f"{res['parameters']['classify']:,}" in table and "stage-3 step" in table
    assert res["parameters"]["vqvae"] > res["parameters"]["classify"] > 0
    # the measured loops are reported against this run's matmul peak (issue 20)
    step_row = next(r for r in res["rows"] if r["figure"].startswith("training step"))
    assert 0 < step_row["of_fp32_peak"] < 2 and "of this machine's fp32 matmul peak" in table
    assert step_row["gflops"] == pytest.approx(res["gflop_per_epoch"]["step"] * step_row["epochs_per_s"])


def test_a_stale_synthetic_cache_is_regenerated_not_an_error(tmp_path, capsys):
    """The work dir's synthetic set from other parameters (or a newer generator) is rebuilt."""
    small = dict(output=str(tmp_path / "r.json"), n_subjects=2, n_words=4, trials_per_word=4, sfreq=250.0,
                 batch_size=8, steps=1, repetitions=1, d_model=32, n_blocks=1, n_heads=2, verbose=False)
    bench_seeg(work_dir=str(tmp_path / "work"), **small)
    res = bench_seeg(work_dir=str(tmp_path / "work"), **{**small, "n_words": 5})
    truth = json.loads((tmp_path / "work" / "bids" / "truth.json").read_text())
    assert truth["parameters"]["n_words"] == 5 and all(r["epochs_per_s"] > 0 for r in res["rows"])


def test_bench_script_reports_bad_input_in_one_line(tmp_path, capsys):
    import pytest

    from litbrain.cli.errors import run_with_default_config

    with pytest.raises(SystemExit) as exc:
        run_with_default_config(bench_seeg, ["--work_dir", str(tmp_path / "w"), "--n_subjects", "1", "--n_words", "2",
                                             "--trials_per_word", "2", "--batch_size", "0", "--verbose", "false"],
                                tmp_path / "none.yaml", "bench_seeg.py")
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and err[0].startswith("bench_seeg.py: error:") and "fix:" in err[0]
