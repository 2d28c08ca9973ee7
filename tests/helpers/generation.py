"""Shared test code of the generation family: a tiny 16-px world, tiny VAE/UNet/probe recipes (the demo
configs shrunk), and a trained tiny pipeline."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIGS = REPO / "configs" / "generation"

# 240 stimuli (40 shared = the held-out test set), 16 px, 2 captions each; 1 subject, few voxels.
TINY_WORLD = dict(n_subjects=1, n_stimuli=240, n_shared=40, n_voxels=20, image_size=16, trials_per_session=300,
                  image_embedding_shape=[4], text_embedding_dim=4, captions_per_stimulus=2, seed=0)

TINY_VAE = ["--model.init_args.net.block_out_channels", "[8,16]", "--model.init_args.net.norm_num_groups", "4"]
TINY_UNET = ["--model.init_args.net.block_out_channels", "[16,32]", "--model.init_args.net.cross_attention",
             "[false,true]", "--model.init_args.net.norm_num_groups", "8", "--model.init_args.net.attention_head_dim", "8"]


def fit_args(stage: str, raw: Path, run: Path, *extra: str) -> list[str]:
    """`litbrain fit` on the demo recipe of ``stage`` (vae, probe, unet), shrunk to test size."""
    tiny = {"vae": TINY_VAE, "unet": TINY_UNET, "probe": ["--model.init_args.net.channels", "[8,16]"]}[stage]
    return ["fit", "--config", str(CONFIGS / f"{stage}.yaml"), "--data.init_args.raw_dir", str(raw),
            "--trainer.default_root_dir", str(run / "run"), "--model.init_args.save_dir", str(run / "out"),
            "--trainer.check_val_every_n_epoch", "1000", "--trainer.log_every_n_steps", "1", *tiny, *extra]


def tiny_vae_config():
    from litbrain.nn.generation import VaeConfig

    return VaeConfig(image_size=16, block_out_channels=[8, 16], norm_num_groups=4)
