"""Tiny GILL worlds, LMs and pipelines for tests (seconds, CPU)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

WORLD = dict(n_subjects=1, n_stimuli=160, n_shared=10, repeats=1, trials_per_session=200, n_voxels=20, latent_dim=16,
             image_embedding_shape=(12,), text_embedding_dim=None, image_size=16, captions_per_stimulus=2, seed=0)
SPLIT = dict(bank_size=12, n_heldout=20, bank_rule={"background": "dark"})
WIDTH = 16  # the tiny LM's hidden size
TEXT_WIDTH = 384  # MiniLM


def tiny_world(folder: Path) -> Path:
    from litbrain.datamodules import synthesize_fmri

    return synthesize_fmri(folder, **WORLD)


def tiny_lm_folder(world: Path, folder: Path, seed: int = 0) -> Path:
    """A random tiny Llama with the world-text tokenizer, saved as a Hugging Face folder (what GILL's lm names)."""
    from litbrain.datamodules.gill import WorldTextDataModule
    from litbrain.nn.encoders import causal_lm
    from litbrain.nn.gill import tiny_llama

    tok = WorldTextDataModule(str(world), **SPLIT).tokenizer
    torch.manual_seed(seed)
    lm = causal_lm({**tiny_llama(vocab_size=len(tok), hidden_size=WIDTH, intermediate_size=32),
                    "pad_token_id": tok.pad_token_id, "bos_token_id": tok.bos_token_id,
                    "eos_token_id": tok.eos_token_id})
    lm.save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


def tiny_net(lm: Any, out_dim: int = TEXT_WIDTH, tokens: int = 16, image_dim: int = 12, **kw: Any):
    from litbrain.nn.gill import GillConfig
    from litbrain.nn.mapping import GillMapperConfig

    return GillConfig(lm=lm, image_dim=image_dim, retrieval_dim=8,
                      mapper=GillMapperConfig(in_dim=WIDTH, out_dim=out_dim, n_output_tokens=tokens, hidden_dim=16,
                                              nhead=2, n_encoder_layers=1, n_decoder_layers=1, dim_feedforward=32),
                      **kw)


def tiny_pipeline(cross_attention_dim: int, sample_size: int = 8) -> Any:
    """A randomly initialised StableDiffusionPipeline (tiny UNet + VAE, a tiny BERT text encoder)."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import BertConfig, BertModel

    from litbrain.datamodules.distill.synthetic import train_tokenizer

    torch.manual_seed(0)
    unet = UNet2DConditionModel(sample_size=sample_size, in_channels=4, out_channels=4, layers_per_block=1,
                                block_out_channels=(32, 32), down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
                                up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
                                cross_attention_dim=cross_attention_dim, attention_head_dim=8, norm_num_groups=8)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
                        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"), block_out_channels=(8, 8),
                        latent_channels=4, norm_num_groups=4, layers_per_block=1)
    text = BertModel(BertConfig(vocab_size=16, hidden_size=cross_attention_dim, num_hidden_layers=1,
                                num_attention_heads=2, intermediate_size=32))
    tok = train_tokenizer(["a b c"])
    return StableDiffusionPipeline(vae=vae, text_encoder=text, tokenizer=tok, unet=unet, scheduler=DDIMScheduler(),
                                   safety_checker=None, feature_extractor=None, requires_safety_checker=False)
