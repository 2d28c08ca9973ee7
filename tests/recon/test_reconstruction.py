"""Brain -> image: targets through the pipeline, the two pathways, the reconstruction chain, the MindEye metrics."""

import json

import numpy as np
import pytest
import torch

from litbrain.errors import ConfigError, LitbrainError
from litbrain.evaluation.reconstruction import (check_conditioning, evaluate_reconstruction, img2img, load_pipeline,
                                                pixcorr, reconstruct, ssim, to_gray, vae_decode)


def _images(seed: int = 0, n: int = 5, size: int = 24) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    a = torch.rand(n, 3, size, size, generator=g)
    b = (0.6 * a + 0.4 * torch.rand(n, 3, size, size, generator=g)).clamp(0, 1)
    return a, b


# ----------------------------------------------------------------------------- metrics
def test_pixcorr_is_mindeyes_definition_on_a_fixed_case():
    images, recons = _images()
    # MindEye (recon_eval): corrsum += np.corrcoef(all_images_flattened[i], all_recons_flattened[i])[0][1]; / n
    ref = np.mean([np.corrcoef(images[i].reshape(-1).numpy(), recons[i].reshape(-1).numpy())[0][1] for i in range(5)])
    assert pixcorr(recons, images) == pytest.approx(ref, abs=1e-9)
    assert pixcorr(images, images) == pytest.approx(1.0)
    small = torch.nn.functional.interpolate(recons, size=(12, 12), mode="bilinear", align_corners=False)
    big = torch.nn.functional.interpolate(small, size=(24, 24), mode="bilinear", align_corners=False)
    assert pixcorr(small, images) == pytest.approx(pixcorr(big, images), abs=1e-9)  # resized to the seen size


def test_ssim_equals_skimage_structural_similarity_on_grayscale():
    skimage = pytest.importorskip("skimage", reason="scikit-image is not installed (pip install scikit-image)")
    from skimage.color import rgb2gray
    from skimage.metrics import structural_similarity

    images, recons = _images(1, n=4, size=32)
    gi = rgb2gray(images.permute(0, 2, 3, 1).numpy().astype(np.float64))
    gr = rgb2gray(recons.permute(0, 2, 3, 1).numpy().astype(np.float64))
    assert np.abs(gi - to_gray(images.double())[:, 0].numpy()).max() < 1e-6
    # MindEye: ssim(rec, im, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
    ref = [structural_similarity(r, i, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1.0)
           for i, r in zip(gi, gr)]
    assert np.abs(ssim(recons, images, per_image=True).numpy() - np.asarray(ref)).max() < 1e-4
    assert skimage.__version__


# ----------------------------------------------------------------------------- targets
def test_pipeline_targets_are_the_vae_latents_and_the_prompt_conditioning(recon_world):
    from litbrain.datamodules.recon.datamodule import read_recon_manifest
    from litbrain.nn.encoders import PromptEncoder, VaeEncoder

    raw, pipe = recon_world["raw"], recon_world["pipeline"]
    with np.load(raw / "embeddings" / "latents.npz") as f:
        ids, lat = f["ids"], f["embeddings"]
    with np.load(raw / "embeddings" / "conditioning.npz") as f:
        cond = f["embeddings"]
    assert lat.shape == (len(ids), 4, 8, 8) and cond.shape == (len(ids), 16, 16)
    from PIL import Image

    vae = VaeEncoder(str(pipe))
    first = Image.open(raw / "stimuli" / f"{ids[0]}.png") if (raw / "stimuli" / f"{ids[0]}.png").is_file() else None
    if first is None:
        import pandas as pd

        table = pd.read_csv(raw / "stimuli.tsv", sep="\t", dtype=str)
        first = Image.open(raw / table["image"][0])
    np.testing.assert_allclose(vae([first])[0], lat[0], atol=1e-5)
    x = vae.to_tensor([first])
    assert torch.allclose(vae.encode(x), vae.encode(x)) and vae.decode(torch.from_numpy(lat[:1])).shape == (1, 3, 16, 16)
    pe = PromptEncoder(str(pipe), max_length=16)
    caps = (raw / "captions.tsv").read_text().splitlines()[1:]
    own = [c.split("\t")[1] for c in caps if c.split("\t")[0] == str(ids[0])]
    assert len(own) == 4  # reduce="mean": the mean of its captions' conditioning
    np.testing.assert_allclose(pe(own).mean(0).numpy(), cond[0], atol=1e-5)
    meta = read_recon_manifest(recon_world["prepared"])
    assert meta["latent_shape"] == [4, 8, 8] and meta["conditioning_shape"] == [16, 16]
    # cached like today's targets: same inputs = no work
    from litbrain.datamodules import embed_images

    before = (raw / "embeddings" / "latents.npz").stat().st_mtime_ns
    embed_images(raw, encoder=str(pipe), out="embeddings/latents.npz")
    assert (raw / "embeddings" / "latents.npz").stat().st_mtime_ns == before


# ----------------------------------------------------------------------------- training
def _trainer(root, epochs: int = 2):
    import lightning as L

    return L.Trainer(accelerator="cpu", devices=1, max_epochs=epochs, logger=False, enable_checkpointing=False,
                     enable_progress_bar=False, enable_model_summary=False, default_root_dir=str(root),
                     check_val_every_n_epoch=epochs, num_sanity_val_steps=0)


NET = dict(width=32, n_blocks=1, adapter="linear")
HEADS = dict(low_level_channels=8, n_tokens=4, token_dim=16, mapper_hidden_dim=64, mapper_heads=2, mapper_layers=1,
             mapper_ffn=128)


def _fit_test(task, dm, root, epochs=2):
    import lightning as L

    L.seed_everything(0, verbose=False)
    trainer = _trainer(root, epochs)
    trainer.fit(task, datamodule=dm)
    return trainer, trainer.test(task, datamodule=dm, verbose=False)


def test_with_the_head_weights_at_zero_the_retrieval_figures_are_exactly_todays(recon_world, tmp_path):
    import lightning as L

    from litbrain.datamodules import FmriDataModule
    from litbrain.datamodules.recon.datamodule import ReconDataModule
    from litbrain.tasks import FmriDecodingTask, ReconstructionTask

    prepared = str(recon_world["prepared"])
    kw = dict(lr=1e-3, retrieval_pool=30, retrieval_draws=5)
    L.seed_everything(0, verbose=False)
    base = FmriDecodingTask(net=NET, **kw)
    _, today = _fit_test(base, FmriDataModule(prepared, batch_size=30), tmp_path / "a", 8)
    L.seed_everything(0, verbose=False)
    recon = ReconstructionTask(net={**NET, **HEADS}, low_level_weight=0.0, conditioning_weight=0.0, **kw)
    _, ours = _fit_test(recon, ReconDataModule(prepared, batch_size=30), tmp_path / "b", 8)
    keys = [k for k in today[0] if k.split("/")[-1] in ("brain_to_image", "image_to_brain", "two_way_identification")]
    assert keys and all(today[0][k] == ours[0][k] for k in keys), {k: (today[0][k], ours[0][k]) for k in keys}
    sd_a, sd_b = base.model.state_dict(), recon.model.state_dict()
    assert all(torch.equal(v, sd_b[k]) for k, v in sd_a.items())  # the decoder trained bit-identically


@pytest.fixture(scope="module")
def recon_fit(recon_world, tmp_path_factory):
    """ReconstructionTask fitted on the tiny world (both pathways on), exported as a release."""
    from litbrain.datamodules.recon.datamodule import ReconDataModule
    from litbrain.release import export_release
    from litbrain.tasks import ReconstructionTask

    import lightning as L

    from litbrain.losses.mapping import per_token_l2_loss
    from litbrain.nn.brain_to_image import BrainToImage

    root = tmp_path_factory.mktemp("recon_fit")
    dm = ReconDataModule(str(recon_world["prepared"]), batch_size=60)
    task = ReconstructionTask(net={**NET, **HEADS}, lr=3e-3, retrieval_pool=30, retrieval_draws=5)
    L.seed_everything(0, verbose=False)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=25, logger=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=str(root), check_val_every_n_epoch=25,
                        num_sanity_val_steps=0)
    trainer.fit(task, datamodule=dm)
    batch = next(iter(dm.val_dataloader()[0]))
    torch.manual_seed(0)
    with torch.no_grad():
        out = BrainToImage(task.net).eval()(batch["brain"])  # the same model, untrained
    untrained = {"l1": torch.nn.functional.l1_loss(out["latents"], batch["latents"]).item(),
                 "l2": per_token_l2_loss(out["conditioning"], batch["conditioning"]).item()}
    tested = trainer.test(task, datamodule=dm, verbose=False)[0]
    ckpt = root / "last.ckpt"
    trainer.save_checkpoint(ckpt)
    release = export_release(ckpt, root / "release")
    return {"task": task, "tested": tested, "untrained": untrained, "batch": batch, "release": release, "ckpt": ckpt}


def test_the_blurry_head_and_the_mapper_train(recon_fit):
    from litbrain.losses.mapping import per_token_l2_loss

    task, batch, tested = recon_fit["task"], recon_fit["batch"], recon_fit["tested"]
    with torch.no_grad():
        out = task.model.eval()(batch["brain"])
    l1 = torch.nn.functional.l1_loss(out["latents"], batch["latents"]).item()
    l2 = per_token_l2_loss(out["conditioning"], batch["conditioning"]).item()
    assert l1 < 0.8 * recon_fit["untrained"]["l1"] and l2 < 0.8 * recon_fit["untrained"]["l2"], (l1, l2, recon_fit["untrained"])
    for s in ("sub-01", "sub-02"):  # 2-way identification of held-out test stimuli: chance is 0.5
        assert tested[f"test/{s}/latent_two_way"] > 0.6, {k: v for k, v in tested.items() if "two_way" in k}
        assert tested[f"test/{s}/conditioning_two_way"] > 0.6, {k: v for k, v in tested.items() if "two_way" in k}


def test_the_reconstruction_chain_runs_end_to_end_from_a_release_folder(recon_fit, recon_world, tmp_path):
    from tests.helpers.recon import TinyProbe

    from litbrain.datamodules.fmri.synthetic import ATTRIBUTES

    release = recon_fit["release"]
    assert json.loads((release / "config.json").read_text())["model_type"] == "brain_to_image"
    out = tmp_path / "res"
    summary = evaluate_reconstruction(str(release), str(recon_world["prepared"]), str(recon_world["raw"]),
                                      pipeline=str(recon_world["pipeline"]),
                                      probe=TinyProbe({k: len(v) for k, v in ATTRIBUTES.items()}),
                                      out_dir=str(out), num_inference_steps=4, n_figure=2, retrieval_pool=30,
                                      retrieval_draws=5, ridge_alphas=[1.0, 100.0])
    methods = [r["method"] for r in summary["rows"]]
    assert methods == ["decoder blurry", "decoder final", "ridge blurry", "ridge final", "oracle", "chance"]
    for r in summary["rows"]:
        for k in ("pixcorr", "ssim", "probe_early", "probe_late", "attributes", "brain_to_image", "image_to_brain"):
            assert np.isfinite(r[k]), (r["method"], k)
    by = {r["method"]: r for r in summary["rows"]}
    assert by["chance"]["brain_to_image"] == pytest.approx(1 / 30)
    assert (out / "metrics.json").is_file() and (out / "table.txt").is_file()
    for s in ("sub-01", "sub-02"):
        assert (out / f"grid_{s}.png").is_file() and len(list((out / s).glob("*_final.png"))) == 2
    # reconstruct alone, seeded: the same images twice
    a = reconstruct(str(release), str(recon_world["prepared"]), str(recon_world["raw"]), str(recon_world["pipeline"]),
                    out_dir=str(tmp_path / "r1"), subjects=["sub-02"], n_images=2, num_inference_steps=3)
    reconstruct(str(release), str(recon_world["prepared"]), str(recon_world["raw"]), str(recon_world["pipeline"]),
                out_dir=str(tmp_path / "r2"), subjects=["sub-02"], n_images=2, num_inference_steps=3)
    first = sorted((tmp_path / "r1" / "sub-02").glob("*_final.png"))
    assert a["sub-02"].endswith("grid_sub-02.png") and len(first) == 2
    for p in first:
        assert p.read_bytes() == (tmp_path / "r2" / "sub-02" / p.name).read_bytes()


# ----------------------------------------------------------------------------- bad input, one line each
def test_latents_whose_shape_does_not_fit_the_head(recon_world, tmp_path):
    from litbrain.datamodules.recon.datamodule import ReconDataModule
    from litbrain.tasks import ReconstructionTask

    task = ReconstructionTask(net={**NET, **HEADS, "latent_shape": [4, 4, 4]})
    dm = ReconDataModule(str(recon_world["prepared"]), batch_size=30)
    with pytest.raises(LitbrainError, match=r"net.latent_shape=\[4, 4, 4\] but the data's VAE latents have shape "
                                            r"\[4, 8, 8\]; fix:") as err:
        _trainer(tmp_path, 1).fit(task, datamodule=dm)
    assert "\n" not in str(err.value)
    pipe = load_pipeline(str(recon_world["pipeline"]))
    with pytest.raises(ConfigError, match="do not fit the pipeline's VAE"):
        vae_decode(pipe, torch.zeros(2, 3, 8, 8))
    with pytest.raises(ConfigError, match="latent_shape"):
        from litbrain.nn.brain_to_image import BrainToImageConfig

        BrainToImageConfig(latent_shape=[4, 8])


def test_conditioning_width_other_than_the_cross_attention_width(recon_world):
    pipe = load_pipeline(str(recon_world["pipeline"]))
    with pytest.raises(ConfigError, match=r"conditioning width 8 != the pipeline UNet's cross_attention_dim 16; fix:"):
        img2img(pipe, torch.rand(1, 3, 16, 16), torch.zeros(1, 16, 8), num_inference_steps=2)
    check_conditioning(pipe, 16, "ok")


def test_a_pipeline_without_a_vae(recon_world, tmp_path):
    from litbrain.datamodules import embed_images
    from tests.helpers.recon import tiny_pipeline

    novae = tiny_pipeline(tmp_path / "novae", vae=False)
    with pytest.raises(ConfigError, match="the pipeline has no VAE") as err:
        load_pipeline(str(novae))
    assert "\n" not in str(err.value) and "fix:" in str(err.value)
    with pytest.raises(ConfigError, match="no vae/ folder"):
        embed_images(recon_world["raw"], encoder=str(novae), out=str(tmp_path / "lat.npz"))
    assert not (tmp_path / "lat.npz").exists()


@pytest.mark.parametrize("strength", [0.0, -0.1, 1.5])
def test_strength_outside_0_1(recon_world, recon_fit, strength):
    with pytest.raises(ConfigError, match=rf"strength={strength}: must be in \(0, 1\]"):
        reconstruct(str(recon_fit["release"]), str(recon_world["prepared"]), str(recon_world["raw"]),
                    str(recon_world["pipeline"]), strength=strength)
