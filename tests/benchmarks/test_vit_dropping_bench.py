"""Smoke test of the ViT token-dropping benchmark (issue 5) with ``--quick true``.

Checks that every figure is produced, finite and positive and printed -- never the bars:
timings on a shared CI machine are no test.
"""

import math

import pytest

from litbrain.benchmarks.vit_dropping import BARS
from tests.helpers.scripts import REPO, script_main

main = script_main("bench_vit_dropping")


@pytest.mark.parametrize("library", ["timm", "open_clip"])
def test_quick_benchmark_prints_the_table(capsys, library):
    result = main(["--quick", "true", "--threads", "1", "--libraries", f"[{library}]"])[library]
    printed = capsys.readouterr().out
    rows = {r["method"]: r for r in result["rows"]}
    assert set(rows) == {"dense", "MustDrop stage 1", "ToMe"}
    for r in rows.values():
        assert math.isfinite(r["images_per_s"]) and r["images_per_s"] > 0
        assert r["method"] in printed
    # 36 px / patch 4 -> 9x9 = 81 patches; budget round(0.25 * 81) = 20; 3x3 windows remove 8 tokens
    # each, so MustDrop merges ceil(61 / 8) = 8 windows -> 17 tokens, and ToMe runs at those 17.
    assert rows["dense"]["kept_tokens"] == 81
    assert rows["MustDrop stage 1"]["kept_tokens"] == rows["ToMe"]["kept_tokens"] == 17
    c = result["config"]
    assert (c["img_size"], c["grid"], c["window"], c["keep"]) == ((36, 36), (9, 9), 3, 20)
    assert rows["dense"]["vs_dense"] == 1.0
    assert set(result["bars"]) == set(BARS)
    assert "images/s" in printed and "vs dense" in printed and "of peak" in printed
    # FLOPs by torch's counter: dense counts every patch, and dropping to 17 tokens must count fewer.
    assert rows["MustDrop stage 1"]["gflop_per_batch"] < rows["dense"]["gflop_per_batch"]
    for r in rows.values():
        assert r["gflops"] == pytest.approx(r["gflop_per_batch"] * r["images_per_s"] / c["batch"])
        assert r["of_fp32_peak"] == pytest.approx(r["gflops"] / c["fp32_peak_gflops"]) and r["of_fp32_peak"] > 0
    assert "image 36x36 px" in printed and "grid 9x9" in printed and "window 3x3" in printed


def test_a_bad_window_fails_clearly(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--quick", "true", "--threads", "1", "--window", "1"])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1 and "window=1" in err[0] and "fix:" in err[0]


def test_the_defaults_take_vit_b16_at_224_px_with_ragged_windows():
    """The default image size is 224 px: ViT-B/16's 14x14 grid, which 3x3 windows do not divide."""
    from litbrain.benchmarks.vit_dropping import DEFAULT_IMG_SIZE

    cfg = __import__("yaml").safe_load((REPO / "configs/bench/vit_dropping.yaml").read_text())
    assert DEFAULT_IMG_SIZE == 224 and cfg["img_size"] is None and cfg["window"] == 3
    assert cfg["libraries"] == ["timm", "open_clip"]
