"""GILL benchmark: training steps/s of GILL's full step, and seconds per generated image (25 steps).

``litbrain gill bench --config configs/bench/gill.yaml``. The step is GILL's (all five losses,
backward, AdamW, the [IMG] row rescale) on random batches of the demo's shapes; the image time is
one ``StableDiffusionPipeline`` call with ``prompt_embeds`` (classifier-free guidance doubles the
UNet batch) per image. Prints the device (the card's name on a GPU) beside every figure.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from litbrain.benchmarks.common import threads
from litbrain.errors import ConfigError
from litbrain.nn.generation import generate_from_embeddings, load_pipeline
from litbrain.nn.gill import GillConfig, GillModel
from litbrain.tasks.gill import gill_losses
from litbrain.utils.io import atomic_write_text

__all__ = ["bench_gill", "random_batch"]


def random_batch(model: GillModel, batch_size: int, prompt_len: int, caption_len: int,
                 generator: torch.Generator) -> dict[str, torch.Tensor]:
    """A GILL training batch of random tokens, features and targets of the model's shapes."""
    c, v = model.config, model.base_vocab
    ids = torch.randint(3, v, (batch_size, prompt_len), generator=generator)
    ids = torch.cat([ids, torch.tensor(model.img_token_ids).expand(batch_size, -1)], 1)
    cap = torch.randint(3, v, (batch_size, caption_len), generator=generator)
    return {"ids": ids, "mask": torch.ones_like(ids, dtype=torch.bool), "cap_ids": cap,
            "cap_mask": torch.ones_like(cap, dtype=torch.bool), "cap_labels": cap.clone(),
            "image": torch.randn(batch_size, c.image_dim, generator=generator),
            "target": torch.randn(batch_size, c.mapper.n_output_tokens, c.mapper.out_dim, generator=generator),
            "decision": torch.randint(0, 2, (batch_size,), generator=generator)}


def _device_name(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"


def bench_gill(net: dict[str, Any] | None = None, batch_size: int = 32, prompt_len: int = 18, caption_len: int = 16,
               steps: int = 20, warmup: int = 3, pipeline: str | None = None, image_steps: int = 25,
               n_images: int = 3, guidance_scale: float = 3.0, device: str = "cpu", n_threads: int = 1,
               out_json: str | None = "runs/gill_demo/bench.json") -> dict[str, Any]:
    """GILL training steps/s and seconds per generated image.

    Args:
        net: GillConfig fields (the demo's shapes; ``lm`` a config dict or folder).
        batch_size / prompt_len / caption_len: the training batch.
        steps / warmup: timed and untimed training steps.
        pipeline: a diffusers pipeline folder or Hub id for the image time (null: not measured).
        image_steps / n_images / guidance_scale: the pipeline calls timed (after one untimed).
        device: ``cpu`` or ``cuda``; n_threads: torch threads on CPU.
        out_json: where the figures are written (null: printed only).
    """
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r}: CUDA is not available on this machine; fix: device: cpu")
    config = GillConfig.coerce(net or {}, "net")
    res: dict[str, Any] = {"device": _device_name(device)}
    with threads(n_threads):
        res["device"] = _device_name(device)
        model = GillModel(config).to(device).train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3, betas=(0.9, 0.95))
        g = torch.Generator().manual_seed(0)
        batches = [{k: v.to(device) for k, v in random_batch(model, batch_size, prompt_len, caption_len, g).items()}
                   for _ in range(2)]

        def step(b: dict[str, torch.Tensor]) -> None:
            gill_losses(model, b)["loss"].backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            model.rescale_img_rows()

        for i in range(warmup):
            step(batches[i % 2])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        for i in range(steps):
            step(batches[i % 2])
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        res.update({"train_steps_per_s": steps / dt, "train_samples_per_s": steps * batch_size / dt,
                    "batch_size": batch_size, "lm_width": model.width})
        print(f"GILL training on {res['device']}: {res['train_steps_per_s']:.2f} steps/s "
              f"({res['train_samples_per_s']:.1f} samples/s, batch {batch_size})")
        if pipeline:
            pipe = load_pipeline(pipeline, device=device)
            pipe.set_progress_bar_config(disable=True)
            width = int(pipe.unet.config.cross_attention_dim)
            emb = torch.randn(1, config.mapper.n_output_tokens, width, generator=g).to(device)
            neg = torch.zeros_like(emb)
            generate_from_embeddings(pipe, emb, neg, seed=0, steps=image_steps, guidance_scale=guidance_scale, batch_size=1)  # untimed (load, allocator)
            times = []
            for i in range(n_images):
                t = time.perf_counter()
                generate_from_embeddings(pipe, emb, neg, seed=i, steps=image_steps, guidance_scale=guidance_scale, batch_size=1)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t)
            res.update({"seconds_per_image": statistics.median(times), "image_steps": image_steps,
                        "image_size": int(pipe.unet.config.sample_size) * int(getattr(pipe, "vae_scale_factor", 8))})
            print(f"pipeline on {res['device']}: {res['seconds_per_image']:.3f} s per image "
                  f"({image_steps} steps, guidance {guidance_scale}, median of {n_images})")
        else:
            print("seconds per image: not measured (no pipeline given)")
    if out_json:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out_json, json.dumps(res, indent=2) + "\n")
    return res
