import json
import math

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
