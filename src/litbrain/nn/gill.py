"""GILL: a frozen causal LM that answers with images (Koh et al. 2023, code kohjingyu/gill).

:class:`GillModel` (``model_type "gill"``) holds a frozen Hugging Face causal LM (``lm``: a folder,
a Hub id, or a config dict that builds a seeded random LM for tests) and GILL's trained parts:

* 8 new tokens ``[IMG0]..[IMG7]`` appended to the vocabulary (ids ``V .. V+7``, ``V`` the LM's
  vocabulary size). The LM's input and output embedding matrices are resized and left trainable,
  but a gradient mask zeroes every row except the [IMG] rows, and :meth:`GillModel.rescale_img_rows`
  (called after each optimiser step) sets those rows to the mean norm of the frozen rows, as GILL's
  training loop does. Everything else in the LM has ``requires_grad=False`` and stays bit-identical.
* visual input for captioning: a frozen image encoder's pooled feature -> ``Linear`` -> 4 visual
  tokens in front of the text (GILL: CLIP ViT-L/14 pooler, 1024 -> 4 x LM width);
* retrieval: ``Linear(width -> 256)`` of the last-layer [IMG0] state and ``Linear(image -> 256)`` of
  the image feature, compared by cosine times a learnable ``exp(logit_scale)`` (init ``log(1/0.07)``);
* generation: :class:`~litbrain.nn.mapping.GillMapper` on the last-layer states of the 8 [IMG]
  positions plus their input embeddings -> ``(B, 77, D)``, a pipeline's ``prompt_embeds``;
* the decision head ``Dropout(0.5) + Linear(width, 2)`` on the [IMG0] state: 0 retrieve, 1 generate.

Releases hold only the trained parts (the LM's weights are named by ``lm``, never copied): the
model's ``state_dict`` drops ``lm.*`` and stores the [IMG] rows as ``img_input_rows`` /
``img_output_rows``; loading writes those rows back into the LM it rebuilt from ``lm``.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litbrain.errors import ConfigError
from litbrain.nn.mapping import GillMapper, GillMapperConfig
from litbrain.nn.registry import ModelCard, ModelConfig

__all__ = ["GillConfig", "GillModel", "IMG_TOKEN", "check_cross_attention_width", "img_token_names",
           "read_lm_config", "tiny_llama"]

IMG_TOKEN = "[IMG{}]"
IGNORE_INDEX = -100


def img_token_names(n: int = 8) -> list[str]:
    return [IMG_TOKEN.format(i) for i in range(n)]


def tiny_llama(vocab_size: int = 64, hidden_size: int = 32, layers: int = 2, heads: int = 2,
               intermediate_size: int = 64, max_positions: int = 128) -> dict[str, Any]:
    """A tiny Llama config dict (untied embeddings, as Llama)."""
    return {"model_type": "llama", "vocab_size": vocab_size, "hidden_size": hidden_size,
            "intermediate_size": intermediate_size, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": heads, "max_position_embeddings": max_positions, "tie_word_embeddings": False,
            "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


def check_cross_attention_width(mapper_width: int, unet_width: int, pipeline: str = "pipeline") -> None:
    """The mapper's output width must be the UNet's ``cross_attention_dim`` (prompt_embeds' last axis)."""
    if int(mapper_width) != int(unet_width):
        raise ConfigError(f"net.mapper.out_dim={mapper_width} but {pipeline}'s UNet has cross_attention_dim="
                          f"{unet_width}; fix: set net.mapper.out_dim to {unet_width} (the text encoder's width) "
                          f"and retrain the mapper")


@dataclass
class GillConfig(ModelConfig):
    """GILL's trained parts on a named frozen LM.

    Args:
        lm: the frozen causal LM: a folder saved with ``save_pretrained`` (tokenizer beside it), a Hub id,
            or a transformers config dict (a random LM seeded by ``lm_seed``: tests).
        pipeline: the diffusers text-to-image pipeline the mapper conditions (folder or Hub id; recorded
            for inference, e.g. ``stable-diffusion-v1-5/stable-diffusion-v1-5``).
        n_img_tokens: the [IMG] tokens (GILL: 8).
        image_dim: width of the frozen image encoder's pooled feature (CLIP ViT-L/14: 1024).
        n_visual_tokens: visual tokens the image feature becomes (GILL: 4).
        retrieval_dim: width of the retrieval space (GILL: 256).
        mapper: :class:`~litbrain.nn.mapping.GillMapperConfig` (``in_dim`` = the LM's hidden size,
            ``out_dim`` = the pipeline's cross-attention width, ``n_output_tokens`` = 77).
        decision_dropout: the decision head's dropout (GILL: 0.5).
        lm_seed: seed of a config-dict LM's random initialisation.
    """

    model_type = "gill"

    lm: str | dict[str, Any] = field(default_factory=tiny_llama)
    pipeline: str | None = None
    n_img_tokens: int = 8
    image_dim: int = 1024
    n_visual_tokens: int = 4
    retrieval_dim: int = 256
    mapper: GillMapperConfig = field(default_factory=GillMapperConfig)
    decision_dropout: float = 0.5
    lm_seed: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.mapper, dict):
            self.mapper = GillMapperConfig(**self.mapper)
        for name in ("n_img_tokens", "image_dim", "n_visual_tokens", "retrieval_dim"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"net.{name}={getattr(self, name)!r} must be >= 1; fix: GILL uses "
                                  f"{getattr(GillConfig, name, '')}")

    @classmethod
    def examples(cls) -> list["GillConfig"]:
        return [cls(lm=tiny_llama(vocab_size=40, hidden_size=16, intermediate_size=32), image_dim=12,
                    retrieval_dim=8, mapper=GillMapperConfig(in_dim=16, out_dim=24, n_output_tokens=6, hidden_dim=16,
                                                             nhead=2, n_encoder_layers=1, n_decoder_layers=1,
                                                             dim_feedforward=32))]

    def example_input(self, batch_size: int = 2, seed: int = 0) -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(seed)
        vocab = int(self.lm["vocab_size"]) if isinstance(self.lm, dict) else 100
        ids = torch.randint(3, vocab, (batch_size, 5), generator=g)
        ids = torch.cat([ids, torch.arange(vocab, vocab + self.n_img_tokens).expand(batch_size, -1)], 1)
        return {"ids": ids, "mask": torch.ones_like(ids, dtype=torch.bool),
                "image": torch.randn(batch_size, self.image_dim, generator=g)}

    def card(self) -> ModelCard:
        lm = self.lm if isinstance(self.lm, str) else f"a {self.lm.get('model_type')} config"
        return ModelCard(title="litbrain GILL (frozen LM + [IMG] tokens + mapper)",
                         summary=(f"GILL's trained parts ([IMG] rows, visual map, retrieval heads, mapper, decision "
                                  f"head) on the frozen LM `{lm}`; images through the pipeline "
                                  f"`{self.pipeline}`.\nThe LM's own weights are not in this release."),
                         tags=["gill", "text-to-image", "retrieval", "causal-lm"],
                         usage="model = litbrain.release.load_release(folder)  # rebuilds the LM named in config.json")


def _lm_vocab_and_width(lm: Any) -> tuple[int, int]:
    return int(lm.get_input_embeddings().num_embeddings), int(lm.config.hidden_size)


class GillModel(nn.Module):
    """The frozen LM + GILL's trained parts (see the module docstring)."""

    config_class = GillConfig

    def __init__(self, config: GillConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        from litbrain.nn.encoders import _seeded, causal_lm

        c = self.config = GillConfig.complete(config, kwargs, "GillModel")
        with _seeded(c.lm_seed):
            # on the meta device (a release's shape check) a named LM is built from its config, not loaded
            lm = causal_lm(read_lm_config(c.lm) if isinstance(c.lm, str) and torch.empty(0).is_meta else c.lm)
            self.base_vocab, width = _lm_vocab_and_width(lm)
            if c.mapper.in_dim != width:
                raise ConfigError(f"net.mapper.in_dim={c.mapper.in_dim} but the LM ({_name(c.lm)}) has hidden size "
                                  f"{width}; fix: set net.mapper.in_dim to {width}")
            lm.resize_token_embeddings(self.base_vocab + c.n_img_tokens, mean_resizing=False)
        lm.requires_grad_(False)
        self.lm = lm.eval()
        self.width = width
        self._grad_mask = torch.zeros(self.base_vocab + c.n_img_tokens, 1)
        self._grad_mask[self.base_vocab:] = 1.0
        for w in self.embedding_matrices():
            w.requires_grad_(True)
            w.register_hook(self._mask_grad)
        self.visual = nn.Linear(c.image_dim, c.n_visual_tokens * width)
        self.text_proj = nn.Linear(width, c.retrieval_dim)
        self.image_proj = nn.Linear(c.image_dim, c.retrieval_dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
        self.mapper = GillMapper(c.mapper)
        self.decision = nn.Sequential(nn.Dropout(c.decision_dropout), nn.Linear(width, 2))
        self.rescale_img_rows()
        self.register_state_dict_post_hook(_only_trained_parts)
        self.register_load_state_dict_pre_hook(_rebuild_lm_state)

    # ------------------------------------------------------------------ [IMG] rows
    @property
    def img_token_ids(self) -> list[int]:
        return list(range(self.base_vocab, self.base_vocab + self.config.n_img_tokens))

    def embedding_matrices(self) -> list[nn.Parameter]:
        """The input and output embedding weights (one, if the LM ties them)."""
        w_in = self.lm.get_input_embeddings().weight
        out = self.lm.get_output_embeddings()
        w_out = out.weight if out is not None else w_in
        return [w_in] if w_out is w_in else [w_in, w_out]

    def _mask_grad(self, grad: Tensor) -> Tensor:
        return grad * self._grad_mask.to(device=grad.device, dtype=grad.dtype)

    @torch.no_grad()
    def rescale_img_rows(self) -> None:
        """GILL's post-step normalisation: each [IMG] row gets the mean norm of the frozen rows."""
        v = self.base_vocab
        for w in self.embedding_matrices():
            frozen_norm = w[:v].float().norm(dim=1).mean()
            w[v:] = (F.normalize(w[v:].float(), dim=-1) * frozen_norm).to(w.dtype)

    def train(self, mode: bool = True) -> "GillModel":
        super().train(mode)
        self.lm.eval()  # frozen: never in training mode
        return self

    # ------------------------------------------------------------------ pieces
    def embed(self, ids: Tensor, image: Tensor | None = None, mask: Tensor | None = None
              ) -> tuple[Tensor, Tensor | None]:
        """Input embeddings of ``ids`` (with 4 visual tokens in front when ``image`` is given), and the mask."""
        x = self.lm.get_input_embeddings()(ids)
        if image is None:
            return x, mask
        vis = self.visual(image.to(x.dtype)).view(ids.shape[0], self.config.n_visual_tokens, self.width)
        if mask is not None:
            mask = torch.cat([torch.ones(vis.shape[:2], dtype=mask.dtype, device=mask.device), mask], 1)
        return torch.cat([vis, x], 1), mask

    def caption_loss(self, image: Tensor, ids: Tensor, mask: Tensor, labels: Tensor) -> Tensor:
        """Captioning CE: [4 visual tokens | caption], labels on the caption (HF shifts them)."""
        x, m = self.embed(ids, image, mask)
        pad = torch.full((ids.shape[0], self.config.n_visual_tokens), IGNORE_INDEX, dtype=labels.dtype,
                         device=labels.device)
        return self.lm(inputs_embeds=x, attention_mask=m, labels=torch.cat([pad, labels], 1)).loss

    def img_positions(self, ids: Tensor) -> Tensor:
        """(B, n_img) positions of the [IMG] tokens of each row (every row must hold all of them, in order)."""
        is_img = ids >= self.base_vocab
        counts = is_img.sum(1)
        if not bool((counts == self.config.n_img_tokens).all()):
            raise ConfigError(f"GILL input: rows hold {counts.tolist()} [IMG] tokens, each needs "
                              f"{self.config.n_img_tokens}; fix: append [IMG0]..[IMG{self.config.n_img_tokens - 1}] "
                              f"to every prompt")
        return is_img.nonzero()[:, 1].view(ids.shape[0], -1)

    def img_forward(self, ids: Tensor, mask: Tensor | None = None, image: Tensor | None = None) -> dict[str, Tensor]:
        """LM forward over prompts that end in the [IMG] tokens: logits, [IMG] states and input embeddings."""
        x, m = self.embed(ids, image, mask)
        out = self.lm(inputs_embeds=x, attention_mask=m, output_hidden_states=True)
        offset = 0 if image is None else self.config.n_visual_tokens
        pos = self.img_positions(ids) + offset
        rows = torch.arange(ids.shape[0], device=ids.device)[:, None]
        return {"logits": out.logits, "img_states": out.hidden_states[-1][rows, pos], "img_embeds": x[rows, pos],
                "offset": torch.tensor(offset)}

    def img_token_loss(self, ids: Tensor, logits: Tensor, offset: int = 0) -> Tensor:
        """CE of producing the [IMG] tokens (labels only at the [IMG] positions; HF-style shift)."""
        labels = ids.masked_fill(ids < self.base_vocab, IGNORE_INDEX)
        logits = logits[:, offset:]
        return F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten(), ignore_index=IGNORE_INDEX)

    def text_embedding(self, img_states: Tensor) -> Tensor:
        """Retrieval embedding of a prompt from its [IMG0] state (unit norm)."""
        return F.normalize(self.text_proj(img_states[:, 0]).float(), dim=-1)

    def image_embedding(self, image: Tensor) -> Tensor:
        return F.normalize(self.image_proj(image).float(), dim=-1)

    def retrieval_logits(self, img_states: Tensor, image: Tensor) -> Tensor:
        return self.logit_scale.exp() * self.text_embedding(img_states) @ self.image_embedding(image).T

    def prompt_embeds(self, img_states: Tensor, img_embeds: Tensor) -> Tensor:
        """(B, 77, D): the pipeline's conditioning from the [IMG] states + their input embeddings."""
        return self.mapper(img_states, img_embeds)

    def decide(self, img_states: Tensor) -> Tensor:
        """Decision logits (B, 2): 0 retrieve, 1 generate."""
        return self.decision(img_states[:, 0])

    def forward(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Prompts ending in the [IMG] tokens (+ optional ``image`` features) -> every head's output."""
        out = self.img_forward(batch["ids"], batch.get("mask"))
        res = {"logits": out["logits"], "prompt_embeds": self.prompt_embeds(out["img_states"], out["img_embeds"]),
               "text_embedding": self.text_embedding(out["img_states"]), "decision": self.decide(out["img_states"])}
        if batch.get("image") is not None:
            res["image_embedding"] = self.image_embedding(batch["image"])
        return res

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def answer(self, ids: Tensor, mask: Tensor, max_new_tokens: int = 12, eos_id: int | None = None,
               image: Tensor | None = None, img_logit_scale: float = 1.0) -> dict[str, Any]:
        """Greedy decoding of right-padded prompts; once a row produces [IMG0], [IMG1..] are forced.

        ``img_logit_scale`` multiplies the [IMG0] logit's magnitude before the argmax (GILL's
        ``ret_scale_factor``: above 1 the model answers with an image more readily; 1 is plain greedy).

        Returns ``tokens`` (B, steps) and ``valid`` (which of them belong to the answer), ``has_img`` (B,)
        and, for the rows that produced [IMG0], their ``img_states`` / ``img_embeds`` (B, n_img, width;
        zeros elsewhere): what the decision head, the retrieval head and the mapper read.
        """
        b, n_img, v = ids.shape[0], self.config.n_img_tokens, self.base_vocab
        dev = ids.device
        mask = mask.bool()
        total = max_new_tokens + n_img
        out = torch.zeros((b, total), dtype=ids.dtype, device=dev)
        valid = torch.zeros((b, total), dtype=torch.bool, device=dev)
        forcing = [0] * b  # next [IMG] index to force (0: none yet)
        done = [False] * b
        off = 0 if image is None else self.config.n_visual_tokens
        steps = 0
        for t in range(total):
            if all(done):
                break
            seq, seq_mask = _append(ids, mask, out[:, :t], valid[:, :t])
            x, m = self.embed(seq, image, seq_mask)
            logits = self.lm(inputs_embeds=x, attention_mask=m).logits[torch.arange(b, device=dev), off + seq_mask.sum(1) - 1]
            if img_logit_scale != 1.0:
                logits = logits.clone()
                logits[:, v] = logits[:, v].abs() * img_logit_scale
            last = logits.argmax(-1).tolist()
            for r in range(b):
                if done[r]:
                    continue
                if forcing[r]:
                    tok = v + forcing[r]
                    forcing[r] += 1
                    done[r] = forcing[r] >= n_img
                else:
                    tok = int(last[r])
                    if tok == v:
                        forcing[r] = 1
                        done[r] = n_img == 1
                    elif tok > v or (eos_id is not None and tok == eos_id) or t + 1 >= max_new_tokens:
                        done[r] = True  # a later [IMG] without [IMG0], <eos>, or out of steps
                out[r, t], valid[r, t] = tok, True
            steps = t + 1
        tokens, valid = out[:, :steps], valid[:, :steps]
        has_img = ((tokens == v) & valid).any(1)
        img_states = torch.zeros(b, n_img, self.width, device=dev)
        img_embeds = torch.zeros(b, n_img, self.width, device=dev)
        if bool(has_img.any()):
            sel = has_img.nonzero()[:, 0]
            seq, seq_mask = _append(ids[sel], mask[sel], tokens[sel], valid[sel])
            res = self.img_forward(seq, seq_mask, None if image is None else image[sel])
            img_states[sel], img_embeds[sel] = res["img_states"].float(), res["img_embeds"].float()
        return {"tokens": tokens, "valid": valid, "has_img": has_img, "img_states": img_states,
                "img_embeds": img_embeds}


def _append(ids: Tensor, mask: Tensor, new: Tensor, new_mask: Tensor) -> tuple[Tensor, Tensor]:
    """``[ids_b | new_b]`` per row (each prompt of its own length), right-padded with 0."""
    b, s = ids.shape
    t = new.shape[1]
    seq = torch.zeros((b, s + t), dtype=ids.dtype, device=ids.device)
    m = torch.zeros((b, s + t), dtype=torch.bool, device=ids.device)
    seq[:, :s] = ids.masked_fill(~mask.bool(), 0)
    m[:, :s] = mask.bool()
    if t:
        pos = mask.sum(1)[:, None] + torch.arange(t, device=ids.device)
        seq.scatter_(1, pos, new.masked_fill(~new_mask, 0))
        m.scatter_(1, pos, new_mask)
    return seq, m


def _name(lm: Any) -> str:
    return lm if isinstance(lm, str) else f"{lm.get('model_type')} config"


# ----------------------------------------------------------------------------- release state (trained parts only)
def _only_trained_parts(module: GillModel, state: dict[str, Tensor], prefix: str, local_metadata: Any) -> None:
    """state_dict hook: drop the frozen LM's tensors, keep its [IMG] rows."""
    mats = module.embedding_matrices()
    v = module.base_vocab
    for key in [k for k in state if k.startswith(prefix + "lm.")]:
        del state[key]
    state[prefix + "img_input_rows"] = mats[0].detach()[v:].clone()
    if len(mats) > 1:
        state[prefix + "img_output_rows"] = mats[1].detach()[v:].clone()


def _rebuild_lm_state(module: GillModel, state: dict[str, Tensor], prefix: str, local_metadata: Any, strict: bool,
                      missing: list[str], unexpected: list[str], errors: list[str]) -> None:
    """load_state_dict pre-hook: the LM's own tensors from the LM this model was built on, [IMG] rows from ``state``."""
    v = module.base_vocab
    mats = module.embedding_matrices()
    rows = [state.pop(prefix + "img_input_rows", None), state.pop(prefix + "img_output_rows", None)]
    for name, tensor in module.lm.state_dict().items():
        state.setdefault(prefix + "lm." + name, tensor)
    for w, r in zip(mats, rows):
        if r is None:
            continue
        full = w.detach().clone()
        full[v:] = r.to(full.dtype)
        for n, p in module.lm.named_parameters(remove_duplicate=False):
            if p is w:
                state[prefix + "lm." + n] = full


def read_lm_config(spec: str | dict[str, Any]) -> dict[str, Any]:
    """The LM's config dict without building it (a folder's config.json, or the dict itself)."""
    if isinstance(spec, dict):
        return dict(spec)
    p = Path(str(spec).removeprefix("hf:"))
    if (p / "config.json").is_file():
        return json.loads((p / "config.json").read_text())
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(str(p)).to_dict()
