"""`litbrain wave evaluate-seeds`: runs grouped over seeds, and the table it prints."""

import statistics

from litbrain.evaluation.wave import _run_name, format_compare_table, seed_groups


def test_runs_are_grouped_over_seeds_with_mean_and_sample_sd_and_the_table_prints_every_run_and_group():
    runs = {"labels0.2_pretrained_seed0": 0.128, "labels0.2_pretrained_seed1": 0.152,
            "labels0.2_pretrained_seed2": 0.158, "labels0.2_scratch_seed0": 0.075,
            "labels0.2_scratch_seed1": 0.098, "labels1.0_scratch_seed7": 0.7}
    groups = seed_groups(runs)
    assert set(groups) == {"labels0.2_pretrained", "labels0.2_scratch", "labels1.0_scratch"}
    pre = [0.128, 0.152, 0.158]
    assert groups["labels0.2_pretrained"]["n"] == 3
    assert abs(groups["labels0.2_pretrained"]["mean"] - statistics.mean(pre)) < 1e-12
    assert abs(groups["labels0.2_pretrained"]["sd"] - statistics.stdev(pre)) < 1e-12
    assert groups["labels1.0_scratch"] == {"mean": 0.7, "sd": 0.0, "n": 1}

    table = format_compare_table({"runs": runs, "groups": groups, "oracle": 0.705, "chance": 0.01})
    lines = table.splitlines()
    for name, v in runs.items():
        assert any(line.split() == [name, f"{v:.3f}"] for line in lines), name
    pre_line = next(line for line in lines if line.split()[:1] == ["labels0.2_pretrained"])
    assert pre_line.split() == ["labels0.2_pretrained", "3", f"{statistics.mean(pre):.3f}",
                                f"{statistics.stdev(pre):.3f}"]
    assert any(line.split() == ["oracle", "0.705"] for line in lines)
    assert any(line.split() == ["chance", "0.010"] for line in lines)
    assert "oracle" not in format_compare_table({"runs": runs, "groups": groups, "chance": 0.01})


def test_a_run_is_named_by_the_folder_above_lightnings_checkpoints_folder():
    assert _run_name("runs/wave_demo/labels0.2_scratch_seed1/checkpoints/last.ckpt") == "labels0.2_scratch_seed1"
    assert _run_name("releases/labels1.0_pretrained_seed0/model.safetensors") == "labels1.0_pretrained_seed0"
