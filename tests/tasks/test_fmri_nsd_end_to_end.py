"""The existing decoder trains on prepare-nsd's output: miniature NSD -> prepare-nsd -> embed-images /
embed-captions (tiny local encoders) -> prepare -> fit -> evaluate, every step through its ``litbrain`` verb."""

from __future__ import annotations

import json

import lightning.pytorch  # noqa: F401  (imported outside capsys: it binds logging handlers to sys.stderr)

from litbrain.cli import main
from litbrain.datamodules.fmri.nsd_synthetic import synthesize_nsd
from litbrain.utils.checkpoint import read_checkpoint
from tests.helpers.fit import fit_args

TINY_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 24, "depth": 1, "num_heads": 2}
TINY_CLIP = {"embed_dim": 16,
             "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
             "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def test_the_decoder_trains_end_to_end_on_a_miniature_nsd(tmp_path):
    (tmp_path / "tiny-vit.json").write_text(json.dumps(TINY_VIT))
    (tmp_path / "tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    nsd = synthesize_nsd(tmp_path / "nsd", n_subjects=2, sessions=[4, 3], trials_per_session=60, n_shared=20,
                         image_size=32, betas_format="nifti", seed=0, progress=False)
    raw, prepared, run = tmp_path / "raw", tmp_path / "prepared", tmp_path / "run"
    main(["fmri", "prepare-nsd", "--nsd_dir", str(nsd), "--out_dir", str(raw), "--trials_per_session", "60",
          "--progress", "false"])
    main(["embed-images", "--raw_dir", str(raw), "--encoder", "timm:vit_tiny_patch16_224", "--pretrained", "null",
          "--output", "pooled", "--model_config", str(tmp_path / "tiny-vit.json")])
    main(["embed-captions", "--raw_dir", str(raw), "--encoder", "open_clip:tiny-clip", "--pretrained", "null",
          "--model_config", str(tmp_path / "tiny-clip.json")])
    main(["fmri", "prepare", "--raw_dir", str(raw), "--out_dir", str(prepared)])
    main(fit_args(prepared, run, "--data.init_args.subjects", "null", "--data.init_args.batch_size", "32",
                  "--model.init_args.net.n_blocks", "1", "--trainer.max_epochs", "15",
                  "--trainer.check_val_every_n_epoch", "15"))
    main(["fmri", "evaluate", "--data_dir", str(prepared), "--checkpoint", str(run / "checkpoints" / "last.ckpt"),
          "--raw_dir", str(raw), "--out_dir", str(tmp_path / "results")])

    manifest = json.loads((prepared / "manifest.json").read_text())
    nsd_meta = json.loads((raw / "nsd.json").read_text())
    assert {s: v["n_voxels"] for s, v in manifest["subjects"].items()} == \
        {s: v["n_roi_voxels"] for s, v in nsd_meta["subjects"].items()}  # nsdgeneral's voxels, per subject
    assert all(v["n_test"] == 20 for v in manifest["subjects"].values())  # the 20 shared images
    ckpt = read_checkpoint(run / "checkpoints" / "last.ckpt")
    assert ckpt["litbrain"]["net"]["subjects"] == {s: v["n_voxels"] for s, v in manifest["subjects"].items()}
    assert ckpt["litbrain"]["net"]["text_embedding_dim"] == 16 and ckpt["global_step"] > 0
    rows = {r["method"]: r for r in json.loads((tmp_path / "results" / "metrics.json").read_text())["rows"]}
    # it learned: top-1 among the 20 test images well above chance (5%); seeded, ~30% on this machine
    assert rows["decoder"]["brain_to_image"] > 3 * rows["chance"]["brain_to_image"], rows
    assert rows["decoder"]["two_way_identification"] > 0.7, rows
