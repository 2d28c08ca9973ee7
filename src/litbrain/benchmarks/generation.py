"""Speed of text-to-image latent diffusion: UNet training samples/s and seconds per generated image.

* **UNet training**: one optimiser step of the noise-prediction loss (the UnetTask's step without
  Lightning: frozen-VAE latents and caption embeddings precomputed, as the task caches them) on a
  batch of latents, as samples/s; its FLOPs by torch's counter, as achieved GFLOP/s and as a fraction
  of this machine's fp32 matmul peak measured in the same run (:mod:`litbrain.benchmarks.common`).
* **Generation**: seconds per image of the saved pipeline at ``steps`` DDIM steps with classifier-free
  guidance (two UNet passes per step) + VAE decoding, at batch 1 and at ``batch_size``.

Models come from their configs at random init (speed does not depend on the weights) or from a
pipeline folder (``pipeline``). On a GPU (``device: cuda``) the card's name is printed.
"""

from __future__ import annotations

import json
import platform
import statistics
from typing import Any

import torch

from litbrain.benchmarks.common import count_flops, matmul_peak, threads, time_call
from litbrain.utils.io import atomic_write_text

__all__ = ["bench_generation"]


def _device_name(device: str) -> str:
    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU {platform.processor() or platform.machine()}"


def bench_generation(unet: dict[str, Any] | None = None, vae: dict[str, Any] | None = None,
                     pipeline: str | None = None, batch_size: int = 64, steps: int = 25, guidance_scale: float = 3.0,
                     gen_batch_size: int = 8, rounds: int = 3, n_threads: int = 1, device: str = "cpu",
                     out_json: str | None = None) -> dict[str, Any]:
    """UNet training samples/s and seconds per generated image (see the module docstring).

    Args:
        unet / vae: :class:`~litbrain.nn.generation.UnetConfig` / ``VaeConfig`` fields (the demo's when null);
            ignored with ``pipeline``.
        pipeline: a saved pipeline folder (or ``diffusers:<id>``) to time instead.
        batch_size: training batch; steps / guidance_scale / gen_batch_size: generation.
        rounds: timed repetitions (medians are reported); n_threads: torch threads (CPU).
        device: ``cpu`` or ``cuda``; out_json: where the results go (null: nowhere).
    """
    from litbrain.nn.encoders import PromptEncoder
    from litbrain.nn.generation import (GENERATION_TEXT_ENCODER, UnetConfig, VaeConfig, assemble_pipeline,
                                        generate_from_embeddings, load_pipeline, resolve_text_encoder,
                                        sampling_scheduler, training_scheduler)
    from litbrain.tasks.generation import diffusion_loss

    torch.manual_seed(0)
    with threads(n_threads):
        if pipeline:
            pipe = load_pipeline(pipeline, device=device)
            enc = PromptEncoder(pipeline, max_length=None, device=device)
        else:
            enc = PromptEncoder(resolve_text_encoder(GENERATION_TEXT_ENCODER), max_length=77, device=device)
            vc = VaeConfig(**(vae or {}))
            uc = UnetConfig(**{**(unet or {}), "sample_size": vc.image_size // vc.factor,
                               "in_channels": vc.latent_channels, "cross_attention_dim": enc.width})
            pipe = assemble_pipeline(vc.build(), uc.build(), enc.text_model, enc.tokenizer,
                                     sampling_scheduler(training_scheduler())).to(device)
            pipe.set_progress_bar_config(disable=True)
        model = pipe.unet.train()
        cfg = model.config
        sched = training_scheduler()
        z = torch.randn(batch_size, cfg.in_channels, cfg.sample_size, cfg.sample_size, device=device)
        cond = enc(["a large red blob at the top left with vertical stripes"] * batch_size).to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def train_step() -> None:
            loss = diffusion_loss(model, sched, z, cond)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            if device.startswith("cuda"):
                torch.cuda.synchronize()

        flops = count_flops(train_step)
        step_s = statistics.median(time_call(train_step, reps=rounds, warmup=1))
        model.eval()
        pe = enc(["a small blue disc"] * gen_batch_size).to(device)
        ne = enc([""]).to(device)
        gen: dict[str, float] = {}
        for b in sorted({1, gen_batch_size}):
            secs = time_call(lambda: generate_from_embeddings(pipe, pe[:b], ne, steps=steps,
                                                              guidance_scale=guidance_scale, batch_size=b),
                             reps=max(1, rounds - 1), warmup=1)
            gen[f"s_per_image_batch{b}"] = statistics.median(secs) / b
        peak = matmul_peak(("float32",), (n_threads,)) if device == "cpu" else {}
    fp32 = peak.get(f"float32/{n_threads}t")
    res = {
        "device": _device_name(device), "threads": n_threads,
        "unet_parameters_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "latent_shape": [cfg.in_channels, cfg.sample_size, cfg.sample_size], "batch_size": batch_size,
        "train_step_s": step_s, "train_samples_per_s": batch_size / step_s,
        "train_gflop_per_step": flops / 1e9, "train_gflops": flops / step_s / 1e9,
        "fp32_peak_gflops": fp32, "peak_fraction": (flops / step_s / 1e9 / fp32) if fp32 else None,
        "steps": steps, "guidance_scale": guidance_scale, **gen,
    }
    print(f"\ngeneration benchmark on {res['device']} ({n_threads} thread(s)); UNet {res['unet_parameters_m']:.2f} M "
          f"params, latents {res['latent_shape']}")
    print(f"  UNet training          {res['train_samples_per_s']:9.1f} samples/s  (batch {batch_size}, "
          f"{res['train_gflops']:.1f} GFLOP/s" + (f" = {res['peak_fraction']:.2f} of the fp32 matmul peak "
                                                  f"{fp32:.0f} GFLOP/s)" if fp32 else ")"))
    for k, v in gen.items():
        print(f"  generation {k:<20}{v:9.3f} s  ({steps} steps, guidance {guidance_scale})")
    if out_json:
        from pathlib import Path

        atomic_write_text(Path(out_json), json.dumps(res, indent=2) + "\n")
    return res
