"""A LLaVA-style vision-language model with vision-token dropping, as plain nn blocks.

``images -> ViT (timm or open_clip, optionally ToMe / MustDrop stage 1) -> 2-layer MLP
projector (LLaVA-1.5) -> Llama-family causal LM (optionally FastV / MustDrop stages 2-3)``.

A sequence is ``<bos> [vision tokens] [question words] ([answer words] <eos>)``; every image
may contribute a different number of vision tokens (merging with thresholds), so sequences are
built per sample and padded: right-padded for training, left-padded for generation.

:class:`DroppingConfig` names one point of the design space (dense / ToMe / FastV / MustDrop
with stages) and is turned into a :class:`~litbrain.nn.vision_reduction.VisionTokenReducer`
setting and an LM :class:`~litbrain.nn.lm_dropping.DropPolicy`; it can be swapped on a trained
model (``model.dropping = ...``) to evaluate other settings. Nothing here imports Lightning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from litbrain.errors import ConfigError
from litbrain.nn.encoders import (
    VisionTowerSpec,
    causal_lm,
    sincos_position,
    vision_tower,
)
from litbrain.nn.lm_dropping import (
    KIND_PAD,
    KIND_TEXT,
    KIND_VISION,
    DropPolicy,
    check_lm,
    generate,
    prefill,
    scatter_to_full,
)
from litbrain.nn.registry import ModelCard, ModelConfig

__all__ = ["DroppingConfig", "VisionLanguageModel", "VlmConfig", "LmInputs", "MlpProjector", "SceneVisionTower",
           "VisionTowerConfig", "grid_positions"]

Method = Literal["none", "tome", "fastv", "mustdrop"]


@dataclass
class DroppingConfig:
    """One vision-token dropping setting.

    Args:
        method: ``none`` | ``tome`` (ViT merging) | ``fastv`` (LM, after one layer) | ``mustdrop``.
        stages: MustDrop stages in use (1 = ViT window merge + key set, 2 = LM prefill filtering,
            3 = output-aware KV-cache compaction for decoding).
        keep: final vision-token budget: a count (int >= 1) or a fraction of the ViT's patch
            tokens (float in (0, 1]); ``None`` = thresholds only (MustDrop) / nothing (others).
        stage1_keep: MustDrop stage-1 budget when stage 2 is also on (count or fraction);
            ``None`` = the merge threshold alone decides.
        merge_threshold / window / merge_layer / key_fraction: MustDrop stage 1.
        lm_layers: 0-based LM layers after which tokens are dropped (FastV uses the first).
        global_thr / individual_thr: MustDrop stage-2 thresholds.
        output_thr: stage-3 threshold (fraction of uniform attention).
        in_training: apply the dropping in training forward passes too (else only in eval).
        proportional_attention: a merged vision token (ToMe, MustDrop stage 1) counts ``size`` times
            in the LM's attention softmax (``+ log size`` on its logits), as ToMe's proportional
            attention does inside the ViT; a densely trained LM then sees the attention mass of the
            patches it was trained on. False: each merged token counts once; when the LM is trained
            with merging on, this trained better in ``scripts/bench_vlm_dropping.py`` (a merged
            background window weighs as one token, so the objects stand out).
    """

    method: Method = "none"
    stages: list[int] = field(default_factory=lambda: [1, 2, 3])
    keep: float | int | None = None
    stage1_keep: float | int | None = None
    merge_threshold: float = 0.8
    window: int = 3
    merge_layer: int = 1
    key_fraction: float = 0.08
    lm_layers: list[int] = field(default_factory=lambda: [2, 6, 10, 14])
    global_thr: float = 0.001
    individual_thr: float = 0.001
    output_thr: float = 0.1
    in_training: bool = True
    proportional_attention: bool = True

    def __post_init__(self) -> None:
        if self.method not in ("none", "tome", "fastv", "mustdrop"):
            raise ConfigError(f"dropping.method={self.method!r}: unknown; fix: none, tome, fastv or mustdrop")
        bad = [s for s in self.stages if s not in (1, 2, 3)]
        if bad or (self.method == "mustdrop" and not self.stages):
            raise ConfigError(f"dropping.stages={self.stages}: use a non-empty subset of [1, 2, 3]")
        if self.method in ("tome", "fastv") and self.keep is None:
            raise ConfigError(f"dropping.method={self.method!r} needs dropping.keep (count or fraction of patches)")

    @staticmethod
    def _count(x: float | int | None, n_patches: int, name: str) -> int | None:
        if x is None:
            return None
        if isinstance(x, bool):
            raise ConfigError(f"{name}={x!r}: give a count >= 1 or a fraction in (0, 1]")
        if isinstance(x, float) and x <= 1.0:
            if x <= 0:
                raise ConfigError(f"{name}={x}: must be > 0; fix: e.g. 0.25 (a quarter of the patches) or a count")
            return max(1, int(round(x * n_patches)))
        n = int(x)
        if n <= 0 or n > n_patches:
            raise ConfigError(f"{name}={x}: must be in 1..{n_patches} (the ViT's patch tokens) or a fraction in (0, 1]")
        return n

    def reducer_kwargs(self, n_patches: int) -> dict[str, Any]:
        keep = self._count(self.keep, n_patches, "dropping.keep")
        if self.method == "tome":
            return {"method": "tome", "keep": keep}
        if self.method == "mustdrop" and 1 in self.stages:
            k1 = keep if 2 not in self.stages else self._count(self.stage1_keep, n_patches, "dropping.stage1_keep")
            return {"method": "mustdrop", "keep": k1, "threshold": self.merge_threshold, "window": self.window,
                    "merge_layer": self.merge_layer, "key_fraction": self.key_fraction}
        return {"method": "none"}

    def policy(self, n_patches: int) -> DropPolicy:
        keep = self._count(self.keep, n_patches, "dropping.keep")
        if self.method == "fastv":
            return DropPolicy("fastv", layers=self.lm_layers[:1], budget=keep)
        if self.method == "mustdrop" and (2 in self.stages or 3 in self.stages):
            return DropPolicy("mustdrop" if 2 in self.stages else "none", layers=self.lm_layers,
                              global_thr=self.global_thr, individual_thr=self.individual_thr,
                              budget=keep if 2 in self.stages else None, stage3=3 in self.stages,
                              output_thr=self.output_thr)
        return DropPolicy("none")


def grid_positions(centre: Tensor, grid_w: int) -> Tensor:
    """Raster index ``round(row) * grid_w + round(col)`` of each vision token's patch centre, ``(B, N)`` long.

    A dense token gets its own patch's index; a merged token (MustDrop window, ToMe group) the
    patch nearest its size-weighted mean position, e.g. a 3x3 window its middle patch.
    """
    rc = centre.round().long()
    return rc[..., 0] * int(grid_w) + rc[..., 1]


@dataclass
class LmInputs:
    """One batch of LM inputs built by :meth:`VisionLanguageModel.build_inputs`.

    ``embeds (B, L, D)``, ``attention_mask (B, L)``, ``kind (B, L)``, ``key (B, L)``,
    ``targets (B, L)`` (``targets[p]`` = id of token ``p + 1`` where that is an answer token,
    else -100), ``position_ids (B, L)`` (rotary ids; 0 on padding) and ``size (B, L)`` (patches a
    vision token stands for; 1 for text and padding).
    """

    embeds: Tensor
    attention_mask: Tensor
    kind: Tensor
    key: Tensor
    targets: Tensor
    position_ids: Tensor
    size: Tensor


class MlpProjector(nn.Sequential):
    """LLaVA-1.5's projector: Linear -> GELU -> Linear."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int | None = None):
        hidden = hidden or out_dim
        super().__init__(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))


def _lm_config_dict(lm: nn.Module) -> dict[str, Any]:
    """The LM's full transformers config as a plain dict with ``model_type`` (rebuilds it offline)."""
    d = lm.config.to_dict()
    for k in ("architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype"):
        d.pop(k, None)
    return d


def _tiny_llama(vocab: int = 24) -> dict[str, Any]:
    return {"model_type": "llama", "vocab_size": vocab, "hidden_size": 16, "intermediate_size": 32,
            "num_hidden_layers": 2, "num_attention_heads": 2, "num_key_value_heads": 1,
            "max_position_embeddings": 64, "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


def _tiny_vit() -> VisionTowerSpec:
    return VisionTowerSpec("timm:vit_tiny_patch16_224", kwargs={"img_size": 12, "patch_size": 4, "embed_dim": 16,
                                                                "depth": 2, "num_heads": 2})


@dataclass
class VlmConfig(ModelConfig):
    """Hyper-parameters of :class:`VisionLanguageModel` (config.json of its releases).

    Args:
        vision: the ViT tower (:class:`~litbrain.nn.encoders.VisionTowerSpec`).
        lm: a causal LM: ``hf:<id or folder>``, or a transformers config dict with ``model_type``
            (``vocab_size`` and the special ids default to the datamodule's tokenizer). A release
            stores the LM's full config dict, so it rebuilds offline.
        attn_implementation: the LM's attention; dropping needs ``eager`` (attention weights).
        projector_hidden: hidden width of the projector (default: the LM width).
        vision_pos: ``sincos`` adds a 2-D sine-cosine embedding of each vision token's patch centre.
        vision_rope: ``grid`` (vision tokens keep their patch centre's LM position) or ``packed``.
        bos_id / eos_id / pad_id: special token ids (default: the tokenizer's / the LM config's).
        dropping: the :class:`DroppingConfig` in use (swappable on a trained model).
    """

    model_type = "vlm"

    vision: VisionTowerSpec = field(default_factory=VisionTowerSpec)
    lm: str | dict[str, Any] | None = None
    attn_implementation: str = "eager"
    projector_hidden: int | None = None
    vision_pos: Literal["sincos"] | None = None
    vision_rope: Literal["grid", "packed"] = "grid"
    bos_id: int | None = None
    eos_id: int | None = None
    pad_id: int | None = None
    dropping: DroppingConfig = field(default_factory=DroppingConfig)

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            from litbrain.nn.registry import dataclass_from_dict

            self.vision = dataclass_from_dict(VisionTowerSpec, self.vision, "net.vision")
        if isinstance(self.dropping, dict):
            self.dropping = DroppingConfig(**self.dropping)

    def missing(self) -> list[str]:
        if self.lm is None:
            return ["lm"]
        if isinstance(self.lm, dict) and "vocab_size" not in self.lm:
            return ["lm.vocab_size"]
        return []

    @classmethod
    def examples(cls) -> list["VlmConfig"]:
        return [cls(vision=_tiny_vit(), lm=_tiny_llama(), vision_pos="sincos"),
                cls(vision=_tiny_vit(), lm=_tiny_llama(), vision_rope="packed",
                    dropping=DroppingConfig(method="mustdrop", stages=[1, 2, 3], lm_layers=[0]))]

    def example_input(self, batch_size: int = 2, seed: int = 0) -> dict[str, Tensor]:
        """Images at the tower's size, a 4-word question and a 1-word answer + <eos> (random ids)."""
        g = torch.Generator().manual_seed(seed)
        side = int(self.vision.kwargs.get("img_size", 224))
        vocab = int(self.lm["vocab_size"]) if isinstance(self.lm, dict) else 32
        eos = self.eos_id if self.eos_id is not None else 2
        answer = torch.randint(4, vocab, (batch_size, 2), generator=g)
        answer[:, 1] = eos
        return {"image": torch.randn(batch_size, 3, side, side, generator=g),
                "question": torch.randint(4, vocab, (batch_size, 4), generator=g),
                "question_mask": torch.ones(batch_size, 4, dtype=torch.bool),
                "answer": answer, "answer_mask": torch.ones(batch_size, 2, dtype=torch.bool)}

    def card(self) -> ModelCard:
        lm = self.lm.get("model_type") if isinstance(self.lm, dict) else self.lm
        return ModelCard(
            title="litbrain vision-language model with vision-token dropping",
            summary=(
                "A LLaVA-style model: ViT tower -> MLP projector -> causal LM, with vision-token dropping\n"
                "(MustDrop stages 1-3, ToMe, FastV) in the tower and the LM.\n\n"
                f"- Vision tower: {self.vision.encoder} {self.vision.kwargs or ''}\n"
                f"- LM: {lm}; dropping: {self.dropping.method} (stages {self.dropping.stages})\n"
                "- The tokenizer is saved beside the weights (load it with `litbrain.release.load_tokenizer`)."
            ),
            tags=["vision-language", "token-dropping", "mustdrop"],
            usage=("answers, _ = model.generate(batch, max_new_tokens=3)  # batch: image, question, question_mask\n"
                   "tokenizer = litbrain.release.load_tokenizer(path)      # the words of the answers"),
        )


class VisionLanguageModel(nn.Module):
    """ViT -> projector -> causal LM, with :class:`DroppingConfig` applied in both halves.

    Args:
        vit: a timm ``VisionTransformer`` or an open_clip ``VisionTransformer`` (with CLS token).
        lm: a Llama-family causal LM (see :mod:`litbrain.nn.lm_dropping`).
        bos_id / eos_id / pad_id: the LM's special token ids.
        dropping: the dropping setting (swappable later via the ``dropping`` attribute).
        projector_hidden: hidden width of the projector (default: the LM width).
        vision_pos: ``"sincos"`` adds :func:`sincos_position` of each vision token's patch centre
            to the projected tokens (merged tokens: their patches' mean position), so the LM can
            look a named region up by content; None adds nothing (the LM sees order only).
        vision_rope: rotary positions of the vision tokens in the LM. ``"grid"`` (default): each
            token's position is its patch centre's raster index (:func:`grid_positions`; merged
            tokens: their middle patch) and the question starts after the full grid, so merging or
            dropping never shifts a surviving token's position; FastV and MustDrop stage 2 keep
            positions the same way inside the LM. A densely trained LM then still finds a board
            region where it learned to look. ``"packed"``: consecutive positions (0, 1, 2, ... over
            the tokens present), so a merge shifts everything after it.
    """

    config_class = VlmConfig

    def __init__(self, vit: nn.Module, lm: nn.Module, bos_id: int, eos_id: int, pad_id: int,
                 dropping: DroppingConfig | None = None, projector_hidden: int | None = None,
                 vision_pos: str | None = None, vision_rope: str = "grid"):
        super().__init__()
        self.config: VlmConfig | None = None  # set by from_config (a model built from modules has none)
        from litbrain.nn.vision_reduction import VisionTokenReducer

        check_lm(lm)
        self.vit = vit
        self.lm = lm
        self.bos_id, self.eos_id, self.pad_id = int(bos_id), int(eos_id), int(pad_id)
        dense = VisionTokenReducer(vit, method="none")
        self.n_patches = dense.num_patches
        self.projector = MlpProjector(dense.embed_dim, lm.config.hidden_size, projector_hidden)
        if vision_pos not in (None, "sincos"):
            raise ConfigError(f"vision_pos={vision_pos!r}: unknown; fix: null or 'sincos'")
        if vision_pos and lm.config.hidden_size % 4:
            raise ConfigError(f"vision_pos=sincos needs an LM width divisible by 4, got {lm.config.hidden_size}; "
                             "fix: change the LM width or set vision_pos null")
        self.vision_pos = vision_pos
        if vision_rope not in ("grid", "packed"):
            raise ConfigError(f"vision_rope={vision_rope!r}: unknown; fix: 'grid' (patch-centre positions) or 'packed'")
        self.vision_rope = vision_rope
        self._reducers: dict[tuple, nn.Module] = {}
        self.dropping = dropping or DroppingConfig()

    @classmethod
    def from_config(cls, config: VlmConfig, vit_state: dict[str, Tensor] | None = None,
                    vit_source: str = "vision_init_from") -> "VisionLanguageModel":
        """Build the towers from the config; ``vit_state`` (a pretrained tower's weights) starts the ViT.

        ``model.config`` is the config in release form: the LM as its full config dict and the
        tower without pretrained weights, so a release rebuilds it offline before loading weights.
        """
        if config.missing():
            raise ConfigError(f"VisionLanguageModel needs net.{config.missing()[0]}; fix: set it, or train with "
                              f"litbrain.datamodules.VqaDataModule, whose tokenizer provides it")
        lm = causal_lm(config.lm, config.attn_implementation)
        vit = vision_tower(config.vision)
        if vit_state is not None:
            try:
                vit.load_state_dict(vit_state, strict=True)
            except RuntimeError as err:
                last = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()][-1]
                raise ConfigError(f"{vit_source}: its vision tower does not match net.vision ({last[:200]}); fix: use "
                                  f"the same vision sizes in both configs") from None
        ids = {k: getattr(config, k) if getattr(config, k) is not None else getattr(lm.config, f"{k[:-3]}_token_id", None)
               for k in ("bos_id", "eos_id", "pad_id")}
        if ids["pad_id"] is None:
            ids["pad_id"] = ids["eos_id"]
        missing = [k for k, v in ids.items() if v is None]
        if missing:
            raise ConfigError(f"net.{missing[0]} is unknown (not in the LM config nor the tokenizer); fix: set it")
        model = cls(vit, lm, dropping=config.dropping, projector_hidden=config.projector_hidden,
                    vision_pos=config.vision_pos, vision_rope=config.vision_rope, **ids)
        model.config = config.replace(lm=_lm_config_dict(lm), vision=config.vision.__class__(
            config.vision.encoder, False, dict(config.vision.kwargs), None), **ids)
        return model

    @property
    def dropping(self) -> DroppingConfig:
        return self._dropping

    @dropping.setter
    def dropping(self, cfg: DroppingConfig) -> None:
        cfg.reducer_kwargs(self.n_patches)  # validate now, not at the first batch
        pol = cfg.policy(self.n_patches)
        check_lm(self.lm, need_weights=pol.needs_weights())
        self._dropping = cfg
        if getattr(self, "config", None) is not None:
            self.config = self.config.replace(dropping=cfg)

    def _active(self) -> DroppingConfig:
        if self.training and not self._dropping.in_training:
            return DroppingConfig()
        return self._dropping

    def reducer(self, cfg: DroppingConfig | None = None) -> nn.Module:
        from litbrain.nn.vision_reduction import VisionTokenReducer

        kw = (cfg or self._active()).reducer_kwargs(self.n_patches)
        k = tuple(sorted(kw.items()))
        if k not in self._reducers:  # kept out of the module tree: it wraps self.vit, no new weights
            self._reducers[k] = VisionTokenReducer(self.vit, **kw)
        return self._reducers[k]

    # ------------------------------------------------------------------------- inputs
    def encode_images(self, images: Tensor, cfg: DroppingConfig | None = None):
        vt = self.reducer(cfg)(images)
        vis = self.projector(vt.tokens)
        if self.vision_pos == "sincos":
            vis = vis + sincos_position(vt.centre, vis.shape[-1]).to(vis.dtype) * vt.mask[..., None]
        return vt, vis

    def build_inputs(self, vis: Tensor, vis_mask: Tensor, vis_key: Tensor, question: Tensor, question_mask: Tensor,
                     answer: Tensor | None = None, answer_mask: Tensor | None = None, left_pad: bool = False,
                     vis_pos: Tensor | None = None, n_grid: int | None = None,
                     vis_size: Tensor | None = None) -> LmInputs:
        """Per-sample ``<bos> vision question (answer)`` sequences, padded into a batch.

        ``vis_pos`` (B, N) long (:func:`grid_positions`) with ``n_grid`` patches in the full grid:
        vision tokens are put in raster order of ``vis_pos`` and get rotary id ``1 + vis_pos``, the
        text after them ids from ``1 + n_grid`` on (``vision_rope="grid"``); ``None``: consecutive ids.
        ``vis_size`` (B, N): patches per vision token (``LmInputs.size``; default 1).
        """
        emb = self.lm.get_input_embeddings()
        B = vis.shape[0]
        dev = vis.device
        bos = emb(torch.full((1,), self.bos_id, device=dev, dtype=torch.long))
        q_emb = emb(question)
        a_emb = emb(answer) if answer is not None else None
        if vis_size is None:
            vis_size = torch.ones(vis_mask.shape, device=dev)
        rows, kinds, keys, tgts, poss, sizes = [], [], [], [], [], []
        for b in range(B):
            v, vk, vs = vis[b][vis_mask[b]], vis_key[b][vis_mask[b]], vis_size[b][vis_mask[b]].float()
            q = q_emb[b][question_mask[b]]
            if vis_pos is not None:
                vp, perm = torch.sort(vis_pos[b][vis_mask[b]], stable=True)
                v, vk, vs = v[perm], vk[perm], vs[perm]
                text_start = 1 + int(n_grid if n_grid is not None else self.n_patches)
                pos = [0] + (1 + vp).tolist()
            else:
                text_start = 1 + v.shape[0]
                pos = list(range(text_start))
            parts = [bos, v, q]
            kind = [KIND_TEXT] + [KIND_VISION] * v.shape[0] + [KIND_TEXT] * q.shape[0]
            key = [False] + vk.tolist() + [False] * q.shape[0]
            tgt = [-100] * len(kind)
            n_text = q.shape[0]
            if a_emb is not None:
                ids = answer[b][answer_mask[b]]  # type: ignore[index]
                parts.append(a_emb[b][answer_mask[b]])  # type: ignore[index]
                tgt[-1] = int(ids[0])
                tgt += ids[1:].tolist() + [-100]
                kind += [KIND_TEXT] * ids.shape[0]
                key += [False] * ids.shape[0]
                n_text += ids.shape[0]
            pos += list(range(text_start, text_start + n_text))
            sizes.append(torch.cat([vs.new_ones(1), vs, vs.new_ones(n_text)]))
            rows.append(torch.cat(parts, 0))
            kinds.append(kind)
            keys.append(key)
            tgts.append(tgt)
            poss.append(pos)
        L = max(r.shape[0] for r in rows)
        D = rows[0].shape[1]
        embeds = rows[0].new_zeros(B, L, D)
        am = torch.zeros(B, L, dtype=torch.long, device=dev)
        kind_t = torch.full((B, L), KIND_PAD, dtype=torch.long, device=dev)
        key_t = torch.zeros(B, L, dtype=torch.bool, device=dev)
        tgt_t = torch.full((B, L), -100, dtype=torch.long, device=dev)
        pos_t = torch.zeros(B, L, dtype=torch.long, device=dev)
        size_t = torch.ones(B, L, device=dev)
        for b, r in enumerate(rows):
            n = r.shape[0]
            sl = slice(L - n, L) if left_pad else slice(0, n)
            embeds[b, sl] = r
            am[b, sl] = 1
            kind_t[b, sl] = torch.tensor(kinds[b], device=dev)
            key_t[b, sl] = torch.tensor(keys[b], device=dev, dtype=torch.bool)
            tgt_t[b, sl] = torch.tensor(tgts[b], device=dev)
            pos_t[b, sl] = torch.tensor(poss[b], device=dev)
            size_t[b, sl] = sizes[b]
        return LmInputs(embeds, am, kind_t, key_t, tgt_t, pos_t, size_t)

    def lm_inputs(self, batch: dict[str, Tensor], cfg: DroppingConfig | None = None, with_answer: bool = False,
                  left_pad: bool = False):
        """Encode ``batch["image"]`` under ``cfg`` and build the LM inputs: ``(VisionTokens, LmInputs)``."""
        images = batch["image"]
        vt, vis = self.encode_images(images, cfg)
        vis_pos = n_grid = None
        if self.vision_rope == "grid":
            gh, gw = self.reducer(cfg).grid(images)
            vis_pos, n_grid = grid_positions(vt.centre, gw), gh * gw
        inp = self.build_inputs(vis, vt.mask, vt.key, batch["question"], batch["question_mask"],
                                batch["answer"] if with_answer else None, batch["answer_mask"] if with_answer else None,
                                left_pad=left_pad, vis_pos=vis_pos, n_grid=n_grid,
                                vis_size=vt.size if (cfg or self._active()).proportional_attention else None)
        return vt, inp

    # ------------------------------------------------------------------------- passes
    def forward(self, batch: dict[str, Tensor]) -> dict[str, Any]:
        """Teacher-forced pass: ``loss`` (mean CE over answer tokens), ``logits`` at answer positions, stats."""
        cfg = self._active()
        vt, inp = self.lm_inputs(batch, cfg, with_answer=True)
        out = prefill(self.lm, inp.embeds, inp.attention_mask, inp.kind, inp.key, position_ids=inp.position_ids,
                      policy=cfg.policy(self.n_patches), logits_mode="none", size=inp.size)
        hidden = scatter_to_full(out.hidden, out.order, out.valid, inp.embeds.shape[1])  # type: ignore[arg-type]
        tgt = inp.targets
        sel = tgt != -100
        logits = self.lm.lm_head(hidden[sel])
        loss = F.cross_entropy(logits.float(), tgt[sel])
        return {"loss": loss, "logits": logits, "targets": tgt[sel],
                "vision_tokens": vt.mask.sum(1).float().mean(), "vision_per_layer": out.vision_per_layer}

    @torch.no_grad()
    def generate(self, batch: dict[str, Tensor], max_new_tokens: int = 3, cfg: DroppingConfig | None = None):
        """Greedy answers (B, T) and the prefill output (token counts, compacted cache)."""
        cfg = cfg or self._dropping
        _, inp = self.lm_inputs(batch, cfg, left_pad=True)
        return generate(self.lm, inp.embeds, inp.attention_mask, inp.kind, inp.key, policy=cfg.policy(self.n_patches),
                        max_new_tokens=max_new_tokens, eos_token_id=self.eos_id, pad_token_id=self.pad_id,
                        position_ids=inp.position_ids, size=inp.size)

    def answer_correct(self, generated: Tensor, answer: Tensor, answer_mask: Tensor) -> Tensor:
        """(B,) bool: the generated words up to <eos> equal the answer words (and <eos> follows)."""
        out = []
        for g, a, m in zip(generated.tolist(), answer.tolist(), answer_mask.tolist()):
            want = [t for t, k in zip(a, m) if k]  # answer words + <eos>
            out.append(g[: len(want)] == want)
        return torch.tensor(out, dtype=torch.bool, device=generated.device)


# ------------------------------------------------------------------------- the tower's pretraining model
@dataclass
class VisionTowerConfig(ModelConfig):
    """A VLM's vision tower with the heads of its scene pretraining (:class:`SceneVisionTower`).

    Args:
        vision: the tower (:class:`~litbrain.nn.encoders.VisionTowerSpec`).
        grid: board cells per side; the patch grid must divide into ``grid x grid`` windows.
        n_colours / n_shapes: the world's object colours and shapes (+1 class each for "empty").
    """

    model_type = "vision_tower"

    vision: VisionTowerSpec = field(default_factory=VisionTowerSpec)
    grid: int = 3
    n_colours: int = 4
    n_shapes: int = 3

    def __post_init__(self) -> None:
        if isinstance(self.vision, dict):
            from litbrain.nn.registry import dataclass_from_dict

            self.vision = dataclass_from_dict(VisionTowerSpec, self.vision, "net.vision")

    @classmethod
    def examples(cls) -> list["VisionTowerConfig"]:
        return [cls(vision=_tiny_vit(), grid=3)]

    def example_input(self, batch_size: int = 2, seed: int = 0) -> Tensor:
        side = int(self.vision.kwargs.get("img_size", 224))
        return torch.randn(batch_size, 3, side, side, generator=torch.Generator().manual_seed(seed))

    def card(self) -> ModelCard:
        return ModelCard(
            title="litbrain vision tower (scene pretraining)",
            summary=(f"A ViT ({self.vision.encoder}) pretrained to read each of {self.grid} x {self.grid} board cells\n"
                     "(colour and shape) and the scene's objects; a VLM loads it by `vision_init_from`."),
            tags=["vision", "vit", "scene-pretraining"],
            usage="colour, shape, scene = model(images)  # images: (batch, 3, H, W) float tensor",
        )


class SceneVisionTower(nn.Module):
    """A ViT + per-cell colour / shape heads (pooled patch tokens) + a scene head on the CLS token."""

    config_class = VisionTowerConfig

    def __init__(self, config: VisionTowerConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        from litbrain.nn.vision_reduction import VisionTokenReducer

        config = config if config is not None else VisionTowerConfig(**kwargs)
        self.vit = vision_tower(config.vision)
        self.config = config.replace(vision=config.vision.__class__(config.vision.encoder, False,
                                                                    dict(config.vision.kwargs), None))
        dense = VisionTokenReducer(self.vit, method="none")
        side = int(round(dense.num_patches ** 0.5))
        if side * side != dense.num_patches or side % config.grid:
            raise ConfigError(f"net.grid={config.grid}: the ViT's {dense.num_patches} patches are not a square grid "
                              f"divisible into {config.grid} x {config.grid} cells; fix: match image_size / patch_size "
                              f"to the board")
        object.__setattr__(self, "_tokens", dense)  # wraps self.vit; kept out of the module tree (no new weights)
        self.side, self.grid = side, int(config.grid)
        self.colour_head = nn.Linear(dense.embed_dim, config.n_colours + 1)
        self.shape_head = nn.Linear(dense.embed_dim, config.n_shapes + 1)
        self.scene_head = nn.Linear(dense.embed_dim, config.n_colours * config.n_shapes)

    def cell_features(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, grid**2, D)`` patch tokens averaged over each cell's window (row-major), and the CLS token ``(B, D)``."""
        vt = self._tokens(images)  # tokens (B, N, D), spatial order
        B, _, D = vt.tokens.shape
        grid_tok = vt.tokens.transpose(1, 2).reshape(B, D, self.side, self.side)
        return F.adaptive_avg_pool2d(grid_tok, self.grid).flatten(2).transpose(1, 2), vt.cls

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Per-cell colour ``(B, cells, C+1)`` and shape ``(B, cells, S+1)`` logits, scene logits ``(B, C*S)``."""
        f, cls = self.cell_features(images)
        return self.colour_head(f), self.shape_head(f), self.scene_head(cls)
