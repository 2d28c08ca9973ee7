"""The encoding evaluation verb (table + brain maps), the in-silico verb (a NIfTI per image in the subject's space)
and a subject without repeats (no noise ceiling: said, and scored by r)."""

from __future__ import annotations

import json
import shutil

import nibabel as nib
import numpy as np
import torch
from PIL import Image

from litbrain.cli import main
from litbrain.nn.encoders import FrozenImageEncoder
from litbrain.nn.voxel_encoder import VoxelEncoder, VoxelEncoderConfig
from litbrain.release import save_release

TINY_VIT = {"img_size": 32, "patch_size": 8, "embed_dim": 24, "depth": 1, "num_heads": 2}


def test_evaluate_prints_the_table_and_writes_the_r_map(tiny_encoding_checkpoint, tiny_encoding_prepared,
                                                       tiny_encoding_raw, tmp_path, capsys):
    models = json.dumps({"lambda=0.3": [str(tiny_encoding_checkpoint), str(tiny_encoding_checkpoint)]})
    main(["encoding", "evaluate", "--data_dir", str(tiny_encoding_prepared), "--models", models, "--raw_dir",
          str(tiny_encoding_raw), "--out_dir", str(tmp_path), "--subjects", "[sub-01]", "--banded_iterations", "5"])
    out = capsys.readouterr().out
    for method in ("lambda=0.3", "ridge", "banded ridge", "oracle"):
        assert f"\n{method} " in out
    assert "+- 0.0" in out  # two seeds (the same checkpoint twice): mean +- s.d. over seeds
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    rois = metrics["per_subject"]["sub-01"]["oracle"][0]["per_roi"]
    assert set(rois) == {"V1", "V2", "V3"} and sum(r["n_voxels"] for r in rois.values()) == \
        np.load(tiny_encoding_prepared / "sub-01" / "voxel_ijk.npy").shape[0]
    for name in ("r_map_sub-01.png", "r_vs_noise_ceiling_sub-01.png"):
        with Image.open(tmp_path / name) as im:
            assert im.size[0] > 200


def test_in_silico_volumes_have_the_mask_affine_and_shape_and_zeros_outside(tiny_encoding_prepared,
                                                                           tiny_encoding_raw, tmp_path):
    (tmp_path / "tiny-vit.json").write_text(json.dumps(TINY_VIT))
    config = VoxelEncoderConfig(subjects={"sub-02": 140}, feature_shape=[24], width=16, n_blocks=1,
                                image_encoder="timm:vit_tiny_patch16_224",
                                image_encoder_config=str(tmp_path / "tiny-vit.json"))
    torch.manual_seed(0)
    model = VoxelEncoder(config).eval()
    release = save_release(model, tmp_path / "release")
    images = tmp_path / "images"
    images.mkdir()
    picked = sorted((tiny_encoding_raw / "images").glob("*.png"))[:3]
    for p in picked:
        shutil.copy(p, images / p.name)
    main(["encoding", "synthesize-responses", "--checkpoint", str(release), "--data_dir", str(tiny_encoding_prepared),
          "--images_dir", str(images), "--subject", "sub-02", "--out_dir", str(tmp_path / "insilico")])
    mask = nib.load(tiny_encoding_raw / "sub-02" / "mask.nii.gz")
    inside = np.asarray(mask.dataobj) != 0
    enc = FrozenImageEncoder("timm:vit_tiny_patch16_224", pretrained=None, output="pooled",
                             model_config=str(tmp_path / "tiny-vit.json"))
    with torch.no_grad():
        want = model({"sub-02": torch.from_numpy(enc([Image.open(p).convert("RGB") for p in picked]))})["voxels"]
    for i, p in enumerate(picked):
        img = nib.load(tmp_path / "insilico" / f"{p.stem}.nii.gz")
        vol = np.asarray(img.dataobj)
        assert vol.shape == mask.shape
        np.testing.assert_allclose(img.affine, mask.affine)
        assert np.all(vol[~inside] == 0) and np.count_nonzero(vol[inside]) == inside.sum()
        np.testing.assert_allclose(vol[inside], want["sub-02"][i].numpy(), rtol=1e-5, atol=1e-6)  # C order = voxel order


def test_a_subject_without_repeats_is_said_to_have_no_ceiling_and_scored_by_r(tmp_path, capsys):
    from litbrain.datamodules import prepare_encoding, synthesize_encoding

    raw = synthesize_encoding(tmp_path / "raw", n_subjects=1, n_stimuli=140, n_shared=20, repeats=1,
                              trials_per_session=70, n_voxels=60, latent_dim=4, image_embedding_dim=8,
                              description_dim=4, image_size=8)
    prepared = prepare_encoding(raw, tmp_path / "prepared")
    release = save_release(VoxelEncoder(VoxelEncoderConfig(subjects={"sub-01": int(
        np.load(prepared / "sub-01" / "voxel_ijk.npy").shape[0])}, feature_shape=[8], width=8)), tmp_path / "rel")
    main(["encoding", "evaluate", "--data_dir", str(prepared), "--models", json.dumps({"model": [str(release)]}),
          "--raw_dir", str(raw), "--out_dir", str(tmp_path / "res"), "--banded_iterations", "2"])
    captured = capsys.readouterr()
    assert "sub-01: no test stimulus was shown more than once, so there is no noise ceiling; scoring it by voxel r " \
           "only" in captured.err
    rows = {r["method"]: r for r in json.loads((tmp_path / "res" / "metrics.json").read_text())["rows"]}
    assert np.isnan(rows["oracle"]["mean_score"]) and rows["oracle"]["mean_r"] > 0.3
    assert "n/a" in captured.out
