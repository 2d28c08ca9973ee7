"""The VLM dropping benchmark at a tiny size: every row of the table, and task arguments reach training."""

import inspect
from pathlib import Path

import pytest
import yaml

from litbrain.benchmarks.vlm_dropping import bench_vlm_dropping
from litbrain.errors import ReleaseError

VISION = {"encoder": "timm:vit_tiny_patch16_224",
          "kwargs": {"img_size": 36, "patch_size": 4, "embed_dim": 32, "depth": 3, "num_heads": 2}}
LM = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
      "num_key_value_heads": 2, "intermediate_size": 64}
DATA = {"n_train": 16, "n_val": 8, "n_test": 8, "batch_size": 8}
TINY = dict(vision=VISION, lm=LM, data=DATA, lm_layers=[0], train_steps=2, eval_batches=1, latency_new_tokens=2,
            latency_reps=1, out_json=None)


def test_tiny_benchmark_prints_every_row(capsys):
    res = bench_vlm_dropping(**TINY, net={"vision_pos": "sincos"})
    table = capsys.readouterr().out
    assert 0 <= res["rows"]["dense"]["acc_colour"] <= 1 and " exists" in next(x for x in table.splitlines() if x.startswith("setting"))
    for row in ("dense", "tome", "fastv", "mustdrop_1", "mustdrop_12", "mustdrop_123",
                "tome (trained with dropping)", "fastv (trained with dropping)", "mustdrop_123 (trained with dropping)"):
        assert row in res["rows"] and row in table
    assert res["rows"]["dense"]["tokens_per_layer"] > res["rows"]["mustdrop_123"]["tokens_per_layer"]
    assert "trained with dropping: mustdrop_123 >= tome" in res["bars"] and set(res["train_seconds"]) == {
        "dense", "tome", "fastv", "mustdrop_123"}
    with pytest.raises(ValueError, match="trained_with"):
        bench_vlm_dropping(**TINY, trained_with=["tome"])
    assert res["trained_with"]["tome"]["proportional_attention"] is True  # no overrides: the setting as is
    # prefill reported against this run's fp32 matmul peak (issue 20)
    lat = res["latency"]["dense"]
    assert 0 < lat["prefill_of_fp32_peak"] < 2 and "of this machine's fp32 matmul peak" in table
    assert lat["prefill_gflops"] == pytest.approx(lat["prefill_gflop"] / (lat["prefill_ms"] / 1e3))


def test_trained_overrides_reach_the_dropping_trainings_only(monkeypatch):
    import litbrain.benchmarks.vlm_dropping as B

    seen, real = [], B._train
    monkeypatch.setattr(B, "_train", lambda kw, *a: (seen.append(kw["net"]["dropping"]), real(kw, *a))[1])
    res = bench_vlm_dropping(**TINY, trained_with=["mustdrop_123"], trained_overrides={"proportional_attention": False})
    assert [d["method"] for d in seen] == ["none", "mustdrop"]
    assert seen[1]["proportional_attention"] is False and seen[1]["stages"] == [1, 2, 3]
    assert res["settings"]["mustdrop_123"]["proportional_attention"] is True  # the dense-trained rows keep the default


def test_task_arguments_reach_both_trainings(tmp_path):
    with pytest.raises(ReleaseError, match="vision_init_from"):
        bench_vlm_dropping(**TINY, task={"vision_init_from": str(tmp_path / "missing.ckpt")})


def test_seeds_run_in_worker_processes_and_the_table_gives_their_mean(capsys):
    res = bench_vlm_dropping(**TINY, seeds=[0, 1], workers=2)
    table = capsys.readouterr().out
    one = bench_vlm_dropping(**TINY, seed=1)  # in-process, the second seed alone
    for name, row in res["rows"].items():
        assert len(row["acc_per_seed"]) == 2
        assert row["acc"] == pytest.approx(sum(row["acc_per_seed"]) / 2)
        assert row["acc_per_seed"][1] == pytest.approx(one["rows"][name]["acc"])  # a worker runs a seed exactly
    assert "acc per seed" in table and "of 2 seeds" in table and res["seeds"] == [0, 1]
    with pytest.raises(ValueError, match="workers"):
        bench_vlm_dropping(**TINY, seeds=[0, 1], workers=0)


def test_bench_config_is_complete_and_commented():
    """Every key of configs/bench/vlm_dropping.yaml is a parameter of the benchmark and carries a comment."""
    config = Path(__file__).resolve().parents[2] / "configs" / "bench" / "vlm_dropping.yaml"
    keys = yaml.safe_load(config.read_text())
    assert set(keys) == set(inspect.signature(bench_vlm_dropping).parameters)  # every knob shown, none unknown
    for line in config.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            assert "#" in line, f"uncommented key: {line}"


def test_bad_dropping_field_is_one_line_before_any_training(capsys):
    """A typo in trained_overrides / mustdrop stops the script at once with one line naming the field."""
    from litbrain.benchmarks import BenchConfigError
    from tests.helpers.scripts import script_main

    main = script_main("bench_vlm_dropping")

    with pytest.raises(BenchConfigError, match=r"mustdrop: unknown DroppingConfig field\(s\) \['merge_treshold'\]"):
        bench_vlm_dropping(**TINY, mustdrop={"merge_treshold": 0.9})
    with pytest.raises(SystemExit) as exc:
        main(["--trained_overrides", '{"proportional": false}', "--out_json", "null"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "trained_overrides: unknown DroppingConfig field(s) ['proportional']" in err


def test_lm_loop_benchmark_matches_hf_generate_token_for_token(capsys):
    from litbrain.benchmarks.vlm_dropping import bench_lm_loop

    lm = {"model_type": "llama", "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
          "num_attention_heads": 2, "num_key_value_heads": 1, "vocab_size": 64, "max_position_embeddings": 128}
    res = bench_lm_loop(lm=lm, prompt_tokens=8, new_tokens=4, batch_sizes=[1, 2], rounds=1, out_json=None)
    out = capsys.readouterr().out
    assert [r["batch"] for r in res["rows"]] == [1, 2]
    for r in res["rows"]:
        assert r["same_tokens"]  # the two loops decode the same greedy tokens, every one of them
        assert r["first_token_ms_hf"] > 0 and r["decode_tok_s_litbrain"] > 0
    assert "decode tok/s HF" in out and "bar:" in out
    assert all(0 < r["decode_of_fp32_peak"]["litbrain"] < 2 and 0 < r["first_token_of_fp32_peak"]["hf"] < 2
               for r in res["rows"]) and "fp32 matmul peak" in out
