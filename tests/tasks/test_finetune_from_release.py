"""Config-driven fine-tuning from a release folder (not a .ckpt), for every family with a fit config.

Each case writes a release of a freshly built model, runs ``litbrain fit`` on that family's
config with ``init_from`` (or ``vision_init_from``) pointing at the release folder, and checks
that the weights the run starts from are the release's own.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from litbrain.cli import main
from litbrain.nn import build_model
from litbrain.nn.duin import DuinConfig, DuinEncoderConfig
from litbrain.nn.fmri_decoder import BrainDecoderConfig
from litbrain.nn.vlm import VisionTowerConfig, VlmConfig
from litbrain.release import load_release, save_release
from tests.helpers.fit import REPO, fit_args

VISION = {"encoder": "timm:vit_tiny_patch16_224",
          "kwargs": {"img_size": 36, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}}
LM = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2,
      "num_key_value_heads": 2, "intermediate_size": 64}
VQA_DATA = ["--data.init_args.n_train", "16", "--data.init_args.n_val", "8", "--data.init_args.n_test", "8",
            "--data.init_args.batch_size", "8"]


def _start(argv: list[str], tmp: Path) -> dict[str, torch.Tensor]:
    """Run one training step and return the weights the model had when training started."""
    record = tmp / "start.pt"
    main([*argv, "--trainer.max_steps", "1", "--trainer.max_epochs", "-1", "--trainer.limit_val_batches", "0",
          "--trainer.callbacks+=tests.helpers.finetune.RecordStartingWeights",
          "--trainer.callbacks.init_args.path", str(record)])
    return torch.load(record, weights_only=True)


def _release(config, tmp: Path, **files) -> tuple[Path, dict[str, torch.Tensor]]:
    torch.manual_seed(123)
    model = build_model(config)
    folder = save_release(model, tmp / "release", files=files or None)
    return folder, load_release(folder).state_dict()


def test_fmri_decoder_from_a_release(tiny_prepared, tmp_path):
    manifest = json.loads((tiny_prepared / "manifest.json").read_text())
    cfg = BrainDecoderConfig(subjects={s: v["n_voxels"] for s, v in manifest["subjects"].items()},
                             image_embedding_shape=manifest["image_embedding_shape"],
                             text_embedding_dim=manifest["text_embedding_dim"], width=48, n_blocks=1, adapter="sttm")
    folder, want = _release(cfg, tmp_path)
    got = _start(fit_args(tiny_prepared, tmp_path / "run", "--model.init_args.init_from", str(folder)), tmp_path)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)  # width 48 came from it


def test_seeg_classifier_from_a_stage_two_release(tiny_seeg_prepared, tmp_path):
    manifest = json.loads((tiny_seeg_prepared / "manifest.json").read_text())
    enc = DuinEncoderConfig(n_times=manifest["n_times"], patch_len=25, filters=[16, 16, 8], kernels=[9, 3, 3],
                            strides=[5, 1, 1], d_model=40, n_blocks=1, n_heads=2)
    cfg = DuinConfig(stage="mae", subjects={s: v["n_channels"] for s, v in manifest["subjects"].items()},
                     encoder=enc, n_codes=64, code_dim=16)
    folder, want = _release(cfg, tmp_path)
    argv = ["fit", "--config", str(REPO / "configs" / "seeg" / "classify.yaml"),
            "--data.init_args.data_dir", str(tiny_seeg_prepared), "--data.init_args.batch_size", "24",
            "--trainer.default_root_dir", str(tmp_path / "run"), "--model.init_args.init_from", str(folder)]
    got = _start(argv, tmp_path)
    # every encoder weight carries over but stage 2's mask embedding, which stage 3 does not have
    enc_keys = [k for k in want if k.startswith("encoder.") and k != "encoder.mask_token"]
    assert enc_keys and all(torch.equal(got[k], want[k]) for k in enc_keys) and "encoder.mask_token" not in got
    assert any(k.startswith("head.") for k in got)  # stage 3's own head, fresh


def test_vlm_from_a_release_with_its_tokenizer(tmp_path):
    from litbrain.datamodules.vqa.synthetic import world_tokenizer

    from litbrain.tasks.vlm import tokenizer_files

    tok = world_tokenizer()
    cfg = VlmConfig(vision=VISION, lm={**LM, "vocab_size": len(tok), "pad_token_id": 0, "bos_token_id": 1,
                                        "eos_token_id": 2}, bos_id=1, eos_id=2, pad_id=0)
    folder, want = _release(cfg, tmp_path, **tokenizer_files(tok))
    assert (folder / "tokenizer.json").is_file()
    argv = ["fit", "--config", str(REPO / "configs" / "vlm" / "synthetic_demo.yaml"), *VQA_DATA,
            "--model.init_args.net.vision", json.dumps(VISION), "--model.init_args.net.lm", json.dumps(LM),
            "--trainer.default_root_dir", str(tmp_path / "run"), "--model.init_args.init_from", str(folder)]
    got = _start(argv, tmp_path)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)


def test_vision_tower_from_a_release_for_both_of_its_consumers(tmp_path):
    folder, want = _release(VisionTowerConfig(vision=VISION, grid=3), tmp_path)
    pretrain = ["fit", "--config", str(REPO / "configs" / "vlm" / "vision_pretrain.yaml"), *VQA_DATA,
                "--model.init_args.net.vision", json.dumps(VISION), "--trainer.default_root_dir", str(tmp_path / "a"),
                "--model.init_args.init_from", str(folder)]
    got = _start(pretrain, tmp_path)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    vlm = ["fit", "--config", str(REPO / "configs" / "vlm" / "synthetic_demo.yaml"), *VQA_DATA,
           "--model.init_args.net.vision", json.dumps(VISION), "--model.init_args.net.lm", json.dumps(LM),
           "--trainer.default_root_dir", str(tmp_path / "b"), "--model.init_args.vision_init_from", str(folder)]
    got = _start(vlm, tmp_path)
    vit = [k for k in want if k.startswith("vit.")]
    assert vit and all(torch.equal(got[k], want[k]) for k in vit)


def test_init_from_a_release_of_another_model_type_is_one_clear_error(tiny_prepared, tmp_path, capsys):
    folder, _ = _release(VisionTowerConfig(vision=VISION, grid=3), tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(fit_args(tiny_prepared, tmp_path / "run", "--model.init_args.init_from", str(folder)))
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2 and len(err) == 1
    assert "holds a 'vision_tower' model, but this task trains 'fmri_decoder'" in err[0] and "fix:" in err[0]
