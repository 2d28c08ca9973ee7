"""Vision-tower pretraining on the VQA world's per-cell labels, and the VLM starting from it."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from litbrain.errors import ConfigError, LitbrainError
from litbrain.nn.vlm import SceneVisionTower, VisionTowerConfig
from litbrain.tasks.scene_pretrain import ScenePretrainTask

REPO = Path(__file__).resolve().parents[2]
VISION = {"encoder": "timm:vit_tiny_patch16_224", "pos_embed_init": "sincos",
          "kwargs": {"img_size": 36, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}}


def _run_args(run: Path) -> list[str]:
    return ["--trainer.default_root_dir", str(run)]


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> Path:
    """`litbrain fit --config configs/vlm/vision_pretrain.yaml` at test size; returns the run folder."""
    from litbrain.cli import main

    run = tmp_path_factory.mktemp("vision_pretrain")
    torch.set_num_threads(1)
    main(["fit", "--config", str(REPO / "configs" / "vlm" / "vision_pretrain.yaml"),
          "--data.init_args.n_train", "9600", "--data.init_args.n_val", "256", "--data.init_args.batch_size", "32",
          "--model.init_args.net.vision", json.dumps(VISION), "--trainer.max_steps", "300",
          "--trainer.val_check_interval", "300", *_run_args(run)])
    return run


def test_the_tower_learns_to_read_every_cell(pretrained):
    rows = list(csv.DictReader(open(pretrained / "logs" / "version_0" / "metrics.csv")))
    last = [r for r in rows if r.get("val/colour_acc")][-1]
    colour, shape = float(last["val/colour_acc"]), float(last["val/shape_acc"])
    scene = float(last["val/scene_f1"])
    print(f"\nper occupied cell after 300 steps: colour {colour:.3f} (chance 0.25), shape {shape:.3f} (chance 0.33); "
          f"scene objects F1 {scene:.3f}")
    assert colour > 0.9 and shape > 0.8


def test_scene_objects_lists_each_colour_shape_pair_once():
    # cells: empty, (colour 2, shape 1), (colour 2, shape 1) again, (colour 4, shape 3)
    colour = torch.tensor([[0, 2, 2, 4]])
    shape = torch.tensor([[0, 1, 1, 3]])
    got = ScenePretrainTask().scene_objects(colour, shape)
    want = torch.zeros(1, 12)
    want[0, 1 * 3 + 0] = want[0, 3 * 3 + 2] = 1
    assert torch.equal(got, want)


def test_the_cls_attention_key_set_falls_on_the_objects(pretrained):
    """The CLS objective makes the last block's CLS attention pick object patches, which is what
    MustDrop's key-token set (top 8% by that attention, never dropped) is for. Measured at this size:
    1.000 of the key tokens on occupied cells; with scene_weight=0 (no CLS objective) 0.001, all on
    the background."""
    from litbrain.datamodules.vqa.datamodule import VqaDataModule

    from litbrain.nn.vision_reduction import VisionTokenReducer

    task = ScenePretrainTask.load_from_checkpoint(pretrained / "checkpoints" / "last.ckpt", map_location="cpu",
                                                  weights_only=True).eval()
    dm = VqaDataModule(n_train=8, n_val=128, n_test=8, batch_size=128, seed=5)
    dm.setup("fit")
    b = next(iter(dm.val_dataloader()))
    with torch.no_grad():
        key = VisionTokenReducer(task.model.vit, method="mustdrop", threshold=2.0)(b["image"]).key  # nothing merges
    cell = (torch.arange(81) // 27) * 3 + torch.arange(81) % 9 // 3
    occupied = (b["cell_shape"] > 0)[:, cell]
    on_objects = float((key & occupied).sum() / key.sum())
    print(f"\nkey tokens on occupied cells: {on_objects:.3f} (occupied share of patches {float(occupied.float().mean()):.3f})")
    assert on_objects > 0.8


def test_cell_features_pool_each_window(pretrained):
    task = SceneVisionTower(VisionTowerConfig(vision=VISION, grid=3)).eval()
    images = torch.randn(2, 3, 36, 36)
    with torch.no_grad():
        tok = task._tokens(images).tokens.view(2, 9, 9, -1)
        feats, cls = task.cell_features(images)
        assert cls.shape == (2, 32)
    # cell (row 1, col 2) = the mean of patch rows 3..5, columns 6..8
    torch.testing.assert_close(feats[:, 1 * 3 + 2], tok[:, 3:6, 6:9].mean((1, 2)))


def test_the_vlm_starts_from_the_pretrained_tower(pretrained):
    from litbrain.tasks.vlm import VisionLanguageTask

    ckpt = pretrained / "checkpoints" / "last.ckpt"
    lm = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
          "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 40}
    net = {"vision": VISION, "lm": lm, "bos_id": 1, "eos_id": 2, "pad_id": 0}
    task = VisionLanguageTask(net=net, vision_init_from=str(ckpt))
    task.configure_model()
    saved = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    got = task.model.vit.state_dict()
    assert got.keys() == {k[10:] for k in saved if k.startswith("model.vit.")}
    assert all(torch.equal(got[k[10:]], v) for k, v in saved.items() if k.startswith("model.vit."))
    fresh = VisionLanguageTask(net=net)
    fresh.configure_model()
    assert not torch.equal(fresh.model.vit.patch_embed.proj.weight, task.model.vit.patch_embed.proj.weight)


def test_a_wrong_vision_checkpoint_is_one_clear_error(pretrained, tmp_path):
    from litbrain.tasks.vlm import VisionLanguageTask

    lm = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
          "num_key_value_heads": 2, "intermediate_size": 64, "vocab_size": 40}
    net = {"vision": VISION, "lm": lm, "bos_id": 1, "eos_id": 2, "pad_id": 0}

    def build(path: Path, vision: dict = VISION) -> None:
        VisionLanguageTask(net={**net, "vision": vision}, vision_init_from=str(path)).configure_model()

    with pytest.raises(LitbrainError, match=r"vision_init_from: .*missing.ckpt: no such checkpoint file.*fix:"):
        build(tmp_path / "missing.ckpt")
    other = tmp_path / "other.ckpt"
    torch.save({"state_dict": {"model.projector.0.weight": torch.zeros(2, 2)}}, other)
    with pytest.raises(LitbrainError, match=r"vision_init_from: .*holds no litbrain model config.*fix:"):
        build(other)
    wider = {**VISION, "kwargs": {**VISION["kwargs"], "embed_dim": 64, "num_heads": 4}}
    with pytest.raises(ConfigError, match=r"does not match net.vision.*fix: use the same vision sizes"):
        build(pretrained / "checkpoints" / "last.ckpt", wider)


def test_a_patch_grid_that_does_not_split_into_the_board_is_refused():
    with pytest.raises(ValueError, match="net.grid=4.*not a square grid divisible"):
        SceneVisionTower(VisionTowerConfig(vision=VISION, grid=4))
