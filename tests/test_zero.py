"""ZeRO checkpoints: consolidate, export, refusal of unsafe shards, memory estimates.

The ZeRO-2/3 checkpoint folders are REAL: ``tests/helpers/zero_ckpt.py`` runs ``deepspeed.initialize``
(DeepSpeed's CPU accelerator, a one-process gloo group, Lightning's ``DeepSpeedStrategy(stage=N)``
config) and ``engine.save_checkpoint`` the way Lightning's ``DeepSpeedStrategy.save_checkpoint``
does. What differs from a GPU run: fp32 instead of bf16, one rank, and Lightning's Trainer is not
in the loop (its DeepSpeedStrategy refuses non-CUDA accelerators).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import lightning.pytorch  # noqa: F401  (imported outside capsys: it binds logging handlers to sys.stderr)
import pytest
import torch
from safetensors.torch import load_file

from litbrain.cli import main
from litbrain.release import export_release, load_model, load_release
from litbrain.utils.checkpoint import read_checkpoint as load_checkpoint

deepspeed = pytest.importorskip("deepspeed")  # also imported outside capsys, for the same reason

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def zero_dir(tiny_checkpoint, tmp_path_factory) -> Path:
    """stage2/, stage3/ (the tiny decoder) and tied2/, tied3/ (tied Linear weights), each with last.ckpt/."""
    out = tmp_path_factory.mktemp("zero")
    env = {**os.environ, "PYTHONPATH": str(REPO), "DS_ACCELERATOR": "cpu"}
    proc = subprocess.run([sys.executable, "-m", "tests.helpers.zero_ckpt", str(tiny_checkpoint), str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


def _one_error_line(capsys) -> str:
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if ln.startswith("litbrain ")]
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize("stage", [2, 3])
def test_consolidate_gives_the_trained_fp32_weights_and_lightning_state(stage, zero_dir, tiny_checkpoint, tmp_path, capsys):
    folder = zero_dir / f"stage{stage}" / "last.ckpt"
    assert (folder / "latest").read_text().strip() == "checkpoint"  # Lightning's tag
    out = tmp_path / "full.ckpt"
    main(["consolidate", "--checkpoint", str(folder), "--out", str(out)])
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)
    full, orig = load_checkpoint(out), load_checkpoint(tiny_checkpoint)  # both with weights_only=True
    assert set(full["state_dict"]) == set(orig["state_dict"])
    for k, v in orig["state_dict"].items():
        assert full["state_dict"][k].dtype == torch.float32 and torch.equal(full["state_dict"][k], v), k
    assert full["hyper_parameters"] == orig["hyper_parameters"]
    assert full["global_step"] == orig["global_step"] and full["epoch"] == orig["epoch"]
    with pytest.raises(SystemExit) as exc:  # never clobbers without --overwrite
        main(["consolidate", "--checkpoint", str(folder), "--out", str(out)])
    assert exc.value.code == 2 and "already exists" in _one_error_line(capsys)


@pytest.mark.parametrize("stage", [2, 3])
def test_tied_weights_survive_consolidation(stage, zero_dir, tmp_path):
    out = tmp_path / "tied.ckpt"
    main(["consolidate", "--checkpoint", str(zero_dir / f"tied{stage}" / "last.ckpt"), "--out", str(out)])
    state = load_checkpoint(out)["state_dict"]
    expected = torch.load(zero_dir / f"tied{stage}" / "expected.pt", weights_only=True)
    assert set(state) == set(expected) == {"encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"}
    for k in expected:
        assert torch.equal(state[k], expected[k]), k
    assert state["encoder.weight"].data_ptr() == state["decoder.weight"].data_ptr()  # still one tensor


def test_export_and_evaluate_accept_a_zero_checkpoint_folder(zero_dir, tiny_checkpoint, tmp_path):
    main(["export", "--checkpoint", str(zero_dir / "stage3" / "last.ckpt"), "--out", str(tmp_path / "from_zero")])
    export_release(tiny_checkpoint, tmp_path / "from_ckpt")
    a, b = load_file(tmp_path / "from_zero" / "model.safetensors"), load_file(tmp_path / "from_ckpt" / "model.safetensors")
    assert set(a) == set(b) and all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "from_zero" / "config.json").read_text() == (tmp_path / "from_ckpt" / "config.json").read_text()
    load_release(tmp_path / "from_zero")
    model = load_model(zero_dir / "stage2" / "last.ckpt")  # what `litbrain evaluate` uses
    assert set(model.state_dict()) == set(b)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _copy_stage2(zero_dir: Path, tmp_path: Path) -> Path:
    folder = tmp_path / "last.ckpt"
    shutil.copytree(zero_dir / "stage2" / "last.ckpt", folder)
    return folder


def test_zero_shard_with_pickled_code_is_refused_before_the_converter_unpickles_it(zero_dir, tmp_path, capsys):
    folder = _copy_stage2(zero_dir, tmp_path)
    marker = tmp_path / "PWNED"
    shard = next((folder / "checkpoint").glob("*optim_states.pt"))
    torch.save({"optimizer_state_dict": {"zero_stage": 2, "payload": _RunsCode(marker)}}, shard)
    for verb in (["consolidate", "--out", str(tmp_path / "x.ckpt")], ["export", "--out", str(tmp_path / "rel")]):
        with pytest.raises(SystemExit) as exc:
            main([verb[0], "--checkpoint", str(folder), *verb[1:]])
        assert exc.value.code == 2
        line = _one_error_line(capsys)
        assert shard.name in line and "safe" in line and "fix:" in line
    assert not marker.exists()
    assert not (tmp_path / "x.ckpt").exists() and not (tmp_path / "rel").exists()


def test_truncated_zero_shard_or_a_plain_folder_is_one_clear_error(zero_dir, tmp_path, capsys):
    folder = _copy_stage2(zero_dir, tmp_path)
    shard = next((folder / "checkpoint").glob("*model_states.pt"))
    shard.write_bytes(shard.read_bytes()[:2000])
    with pytest.raises(SystemExit) as exc:
        main(["consolidate", "--checkpoint", str(folder), "--out", str(tmp_path / "x.ckpt")])
    assert exc.value.code == 2 and shard.name in _one_error_line(capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit) as exc:
        main(["consolidate", "--checkpoint", str(empty), "--out", str(tmp_path / "y.ckpt")])
    line = _one_error_line(capsys)
    assert exc.value.code == 2 and "not a DeepSpeed ZeRO checkpoint folder" in line and "fix:" in line


def test_estimate_memory_prints_zero2_and_zero3_rows_from_deepspeeds_estimators(tiny_checkpoint, capsys):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import (
        estimate_zero2_model_states_mem_needs,
    )

    main(["estimate-memory", "--checkpoint", str(tiny_checkpoint), "--num_gpus_per_node", "4", "--num_nodes", "2"])
    out = capsys.readouterr().out
    rows = [ln.split() for ln in out.splitlines() if ln.startswith("ZeRO-")]
    assert [r[0] for r in rows] == ["ZeRO-2", "ZeRO-2", "ZeRO-3", "ZeRO-3", "ZeRO-3"]
    model = load_model(tiny_checkpoint)
    n = sum(p.numel() for p in model.parameters())
    assert f"{n:,} parameters" in out and "8 GPU(s)" in out
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    _, gpu2 = estimate_zero2_model_states_mem_needs(n, 4, 2, cpu_offload=False)
    _, gpu3, _ = estimate_zero3_model_states_mem_needs(n, largest, 4, 2, cpu_offload=False, cpu_offload_params=False)
    assert rows[0][3] == f"{gpu2 / 2**20:.2f}" and rows[2][3] == f"{gpu3 / 2**20:.2f}"


def test_estimate_memory_from_the_config_file_sizes_a_mindeye2_scale_model(capsys):
    main(["estimate-memory", "--config", str(REPO / "configs" / "fmri" / "estimate_memory.yaml")])
    out = capsys.readouterr().out
    assert "4 GPU(s)" in out and sum(ln.startswith("ZeRO-") for ln in out.splitlines()) == 5
    assert "GiB" in out


def test_help_lists_the_new_verbs(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for verb in ("consolidate", "estimate-memory", "push", "export"):
        assert f"  {verb} " in out
