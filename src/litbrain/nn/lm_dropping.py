"""Vision-token dropping inside a Hugging Face causal LM: MustDrop stages 2-3 and FastV.

The decoder layers of a Llama-family LM (``LlamaForCausalLM``, ``Qwen2ForCausalLM``,
``MistralForCausalLM``: ``lm.model.embed_tokens -> lm.model.layers -> lm.model.norm ->
lm.lm_head``, rotary ``position_embeddings`` passed to every layer) are run here in a loop, so a
token can be *physically* removed between two layers: its hidden state, its rotary cos/sin, its
rows and columns of the attention mask, and (for decoding) its keys and values in every later
layer's cache. Kept tokens keep their original positions (RoPE ids) and causal order.

Per token the loop tracks a ``kind`` (``KIND_PAD`` / ``KIND_TEXT`` / ``KIND_VISION``) and a
``key`` flag (MustDrop's key set from stage 1, never dropped).

* **Stage 2 (prefill, MustDrop "dual-attention filtering").** After each layer ``l`` in
  ``policy.layers`` (0-based; the layer's own attention decides, later layers no longer see the
  dropped tokens) the text->vision attention ``a`` (eager weights averaged over heads; text
  queries = the text tokens after the last vision token) gives, for vision token ``j``, a
  global score ``g_j = sum_t a[t, j] / n_text`` (its share of the total text attention) and an
  individual score ``i_j = max_t a[t, j]``. ``j`` is dropped when ``g_j < global_thr`` AND
  ``i_j < individual_thr`` and it is not a key token. With ``budget`` set, at most ``budget``
  vision tokens survive each drop layer (ranked by ``max(g/global_thr, i/individual_thr)``;
  key tokens first).
* **Stage 3 (decoding).** The cache of every layer holds only the tokens that layer saw
  (pruned layers' caches are compact by construction); with ``stage3=True`` the *output-aware*
  policy then drops, from the caches of the pruned layers (after the first drop layer), every
  non-key vision token that received less than ``output_thr / n_cached`` of the attention of the
  query that produced the first output token (the last prompt position), i.e. less than
  ``output_thr`` times uniform attention. Decoding then runs on the compacted caches.
* **FastV.** ``method="fastv"``: after layer ``l`` keep the ``budget`` vision tokens with the
  highest attention received, averaged over heads and over every (valid) query.

Exactness: with ``method="none"`` (or thresholds that drop nothing) every layer gets exactly the
tensors ``LlamaModel.forward`` would give it (the mask is HF's own ``create_causal_mask``), so
logits equal the dense model's bit for bit.

Merged vision tokens (ToMe, MustDrop stage 1) can bring their ``size`` (patches they stand for):
every layer then adds ``log(size)`` to their attention logits, in prefill and in decoding
(ToMe's proportional attention, carried into the LM), so the softmax weighs a merged token as its
copies would have been weighed in the dense model.

Scores need attention weights, which only ``attn_implementation="eager"`` returns;
other implementations raise :class:`AttentionWeightsUnavailableError` when weights are needed.
Sliding-window attention is applied in prefill (HF's mask) but not during compact decoding.
Nothing here imports Lightning.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Literal, Sequence

import torch
from torch import Tensor, nn

from litbrain.errors import ConfigError

__all__ = [
    "KIND_PAD",
    "KIND_TEXT",
    "KIND_VISION",
    "SUPPORTED_MODEL_TYPES",
    "UnsupportedLMError",
    "AttentionWeightsUnavailableError",
    "DropPolicy",
    "CompactKVCache",
    "PrefillOutput",
    "check_lm",
    "prefill",
    "decode_step",
    "generate",
    "scatter_to_full",
]

KIND_PAD, KIND_TEXT, KIND_VISION = 0, 1, 2
#: ``config.model_type`` of the LMs whose layer loop is reproduced here.
SUPPORTED_MODEL_TYPES: tuple[str, ...] = ("llama", "qwen2", "mistral")
DropMethod = Literal["none", "fastv", "mustdrop"]


class UnsupportedLMError(ConfigError, TypeError):
    """The causal LM's architecture is not one whose decoder loop this module can run."""


class AttentionWeightsUnavailableError(ConfigError):
    """Dropping needs attention weights but the LM's attention implementation does not return them."""


@dataclass
class DropPolicy:
    """What to drop in the LM and when.

    Args:
        method: ``none`` (dense), ``fastv`` (budget after one layer) or ``mustdrop`` (stage 2).
        layers: 0-based layers after which tokens are dropped (their attention decides). Layers
            at or beyond ``n_layers - 1`` are ignored (dropping after the last layer saves nothing).
        global_thr / individual_thr: MustDrop's thresholds on the global (share of the text
            attention) and individual (max over text queries) scores; ``<= 0`` turns that test off.
        budget: at most this many vision tokens survive each drop layer (required for fastv).
        stage3: output-aware compaction of the pruned layers' KV caches before decoding.
        output_thr: stage-3 threshold, as a fraction of uniform attention over the cache.
    """

    method: DropMethod = "none"
    layers: Sequence[int] = (2, 6, 10, 14)
    global_thr: float = 0.001
    individual_thr: float = 0.001
    budget: int | None = None
    stage3: bool = False
    output_thr: float = 0.1

    def __post_init__(self) -> None:
        if self.method not in ("none", "fastv", "mustdrop"):
            raise ConfigError(f"method={self.method!r}: unknown; fix: use 'none', 'fastv' or 'mustdrop'")
        if self.method == "fastv" and self.budget is None:
            raise ConfigError("method='fastv' needs budget= (vision tokens kept after the drop layer)")
        if self.budget is not None and int(self.budget) <= 0:
            raise ConfigError(f"budget={self.budget}: must be > 0 (vision tokens kept); fix: e.g. budget=64, or None")
        if any(int(x) < 0 for x in self.layers):
            raise ConfigError(f"layers={list(self.layers)}: layer indices must be >= 0")
        if self.output_thr < 0:
            raise ConfigError(f"output_thr={self.output_thr}: must be >= 0")

    def drop_layers(self, n_layers: int) -> tuple[int, ...]:
        if self.method == "none":
            return ()
        return tuple(sorted({int(x) for x in self.layers if int(x) < n_layers - 1}))

    def needs_weights(self) -> bool:
        return self.method != "none" or self.stage3


# ----------------------------------------------------------------------------- checks
def _layer_types(config) -> list[str]:
    n = config.num_hidden_layers
    types = getattr(config, "layer_types", None)
    if types is not None:
        return list(types)[:n]
    return ["sliding_attention" if getattr(config, "sliding_window", None) else "full_attention"] * n


def check_lm(lm: nn.Module, need_weights: bool = False) -> None:
    """Raise a clear error when ``lm`` cannot be run (or dropped) by this module."""
    config = getattr(lm, "config", None)
    model_type = getattr(config, "model_type", None)
    inner = getattr(lm, "model", None)
    ok = (
        model_type in SUPPORTED_MODEL_TYPES
        and inner is not None
        and all(hasattr(inner, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb"))
        and hasattr(lm, "lm_head")
    )
    if not ok:
        raise UnsupportedLMError(
            f"{type(lm).__name__} (model_type={model_type!r}) is not supported for vision-token dropping: "
            f"supported are Llama-family causal LMs with model_type in {list(SUPPORTED_MODEL_TYPES)} "
            f"(LlamaForCausalLM, Qwen2ForCausalLM, MistralForCausalLM: lm.model.layers with rotary "
            f"position embeddings); fix: use one of those, or method='none' with the LM's own forward"
        )
    impl = getattr(config, "_attn_implementation", None) or "eager"
    if impl not in ("eager", "sdpa"):
        raise AttentionWeightsUnavailableError(
            f"{type(lm).__name__} uses attn_implementation={impl!r}, which this layer loop does not drive; "
            f"fix: load the LM with attn_implementation='eager' (needed for dropping) or 'sdpa' (dense only)"
        )
    if need_weights and impl != "eager":
        raise AttentionWeightsUnavailableError(
            f"{type(lm).__name__} uses attn_implementation={impl!r}, which cannot return attention weights, "
            f"but token dropping (FastV / MustDrop stages 2-3) ranks tokens by them; fix: load the LM with "
            f"attn_implementation='eager', e.g. AutoModelForCausalLM.from_pretrained(name, "
            f"attn_implementation='eager') or AutoModelForCausalLM.from_config(cfg, attn_implementation='eager')"
        )


# ----------------------------------------------------------------------------- state
@dataclass
class _Seq:
    """The tokens present at one point of the layer loop (padded, ``valid`` marks real ones)."""

    hidden: Tensor  # (B, L, D)
    cos: Tensor  # (B, L, d)
    sin: Tensor
    order: Tensor  # (B, L) long: index in the original sequence
    kind: Tensor  # (B, L) long
    key: Tensor  # (B, L) bool
    valid: Tensor  # (B, L) bool: a token (text, vision or original padding) and not filler
    pos: Tensor  # (B, L) long: rotary position id
    attn: Tensor  # (B, L) bool: True where the original attention_mask was 1 and not filler
    bias: Tensor | None = None  # (B, L) float: log(size) added to the token's attention logits (None = 0)

    def take(self, idx: Tensor, filler: Tensor) -> "_Seq":
        def g(x: Tensor) -> Tensor:
            if x.ndim == 3:
                return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))
            return torch.gather(x, 1, idx)

        return _Seq(
            hidden=g(self.hidden), cos=g(self.cos), sin=g(self.sin), order=g(self.order),
            kind=g(self.kind).masked_fill(filler, KIND_PAD), key=g(self.key) & ~filler,
            valid=g(self.valid) & ~filler, pos=g(self.pos), attn=g(self.attn) & ~filler,
            bias=None if self.bias is None else g(self.bias),
        )


def _mask_fill_value(mask: Tensor) -> object:
    return False if mask.dtype == torch.bool else torch.finfo(mask.dtype).min


def _with_bias(mask: Tensor, bias: Tensor, dtype: torch.dtype) -> Tensor:
    """``mask`` (B|1, 1, Q, K) as an additive float mask plus ``bias`` (B, K) on every key column."""
    if mask.dtype == torch.bool:
        mask = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
    return mask + bias[:, None, None, :].to(mask.dtype)  # bias >= 0: masked entries stay at ~finfo.min


def _gather_mask(base: Tensor, seq: _Seq) -> Tensor:
    """Rows/cols ``seq.order`` of a full (B|1, 1, Lf, Lf) mask; filler keys masked out."""
    B, L = seq.order.shape
    m = base[:, 0].expand(B, -1, -1)
    Lf = m.shape[-1]
    m = torch.gather(m, 1, seq.order[:, :, None].expand(-1, -1, Lf))
    m = torch.gather(m, 2, seq.order[:, None, :].expand(-1, L, -1))
    m = m.masked_fill(~seq.valid[:, None, :], _mask_fill_value(m))
    return m[:, None]


class CompactKVCache:
    """A per-layer KV cache whose layers may hold different (compacted) token sets.

    Quacks like the HF ``Cache`` methods the Llama-family attention calls (``update``). For each
    layer it also keeps, per cached slot, the token's original ``order``, ``kind``, ``key`` flag
    and whether the slot may be attended (``valid``: a real, non-padding token).
    """

    def __init__(self, n_layers: int):
        self.keys: list[Tensor | None] = [None] * n_layers
        self.values: list[Tensor | None] = [None] * n_layers
        self.order: list[Tensor | None] = [None] * n_layers
        self.kind: list[Tensor | None] = [None] * n_layers
        self.key: list[Tensor | None] = [None] * n_layers
        self.valid: list[Tensor | None] = [None] * n_layers
        self.bias: list[Tensor | None] = [None] * n_layers  # log(size) per slot (None: no merged tokens)
        self.is_compileable = False

    def update(self, key_states: Tensor, value_states: Tensor, layer_idx: int, *args, **kwargs) -> tuple[Tensor, Tensor]:
        if self.keys[layer_idx] is None:
            self.keys[layer_idx], self.values[layer_idx] = key_states, value_states
        else:
            self.keys[layer_idx] = torch.cat([self.keys[layer_idx], key_states], dim=-2)
            self.values[layer_idx] = torch.cat([self.values[layer_idx], value_states], dim=-2)
        return self.keys[layer_idx], self.values[layer_idx]

    def get_seq_length(self, layer_idx: int = 0) -> int:
        k = self.keys[layer_idx]
        return 0 if k is None else int(k.shape[-2])

    def _append_meta(self, i: int, order: Tensor, kind: Tensor, key: Tensor, valid: Tensor,
                     bias: Tensor | None = None) -> None:
        if self.order[i] is None:
            self.order[i], self.kind[i], self.key[i], self.valid[i], self.bias[i] = order, kind, key, valid, bias
        else:
            self.order[i] = torch.cat([self.order[i], order], 1)
            self.kind[i] = torch.cat([self.kind[i], kind], 1)
            self.key[i] = torch.cat([self.key[i], key], 1)
            self.valid[i] = torch.cat([self.valid[i], valid], 1)
            if self.bias[i] is not None:  # new (text) slots stand for one token each: log 1 = 0
                self.bias[i] = torch.cat([self.bias[i], torch.zeros(order.shape, dtype=self.bias[i].dtype,
                                                                    device=order.device) if bias is None else bias], 1)

    def compact(self, i: int, keep: Tensor) -> None:
        """Keep only the slots ``keep`` (B, K) of layer ``i`` (per sample; re-padded)."""
        if bool(keep.all()):
            return
        counts = keep.sum(1)
        L2 = int(counts.max())
        idx = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :L2]
        filler = torch.arange(L2, device=keep.device)[None] >= counts[:, None]
        k, v = self.keys[i], self.values[i]
        assert k is not None and v is not None
        gi = idx[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[-1])
        self.keys[i], self.values[i] = torch.gather(k, 2, gi), torch.gather(v, 2, gi)
        self.order[i] = torch.gather(self.order[i], 1, idx)
        self.kind[i] = torch.gather(self.kind[i], 1, idx).masked_fill(filler, KIND_PAD)
        self.key[i] = torch.gather(self.key[i], 1, idx) & ~filler
        self.valid[i] = torch.gather(self.valid[i], 1, idx) & ~filler
        if self.bias[i] is not None:
            self.bias[i] = torch.gather(self.bias[i], 1, idx)

    def vision_counts(self) -> list[Tensor]:
        """Per layer, per sample: cached vision tokens."""
        return [((k == KIND_VISION) & v).sum(1) for k, v in zip(self.kind, self.valid)]  # type: ignore[arg-type]


@dataclass
class PrefillOutput:
    """Result of :func:`prefill`.

    ``logits``: (B, L', V) for the tokens present after the last layer (``order`` maps them
    back to the input; see :func:`scatter_to_full`), or (B, V) with ``logits_mode="last"``.
    ``keep``: per drop layer, a (B, L) bool over the INPUT tokens, True = still present after
    that layer (feed it back as ``forced_keep`` to replay the same decisions).
    ``vision_per_layer``: (n_layers, B) vision tokens each layer processed.
    """

    logits: Tensor
    order: Tensor
    valid: Tensor
    keep: dict[int, Tensor] = field(default_factory=dict)
    vision_per_layer: Tensor | None = None
    cache: CompactKVCache | None = None
    next_position: Tensor | None = None
    hidden: Tensor | None = None


def scatter_to_full(x: Tensor, order: Tensor, valid: Tensor, length: int) -> Tensor:
    """Put per-token rows ``x`` (B, L', ...) back at their input positions (B, length, ...); zeros elsewhere."""
    out = x.new_zeros((x.shape[0], length, *x.shape[2:]))
    idx = torch.where(valid, order, torch.full_like(order, length))  # filler -> dump row
    out = torch.cat([out, out[:, :1]], 1)
    out = out.scatter(1, idx.view(*idx.shape, *([1] * (x.ndim - 2))).expand_as(x), x)
    return out[:, :length]


@contextlib.contextmanager
def _capture(modules: dict[int, nn.Module], store: dict[int, Tensor | None]) -> Iterator[None]:
    handles = []
    for i, m in modules.items():
        def hook(_mod, _inp, out, i=i):
            store[i] = out[1] if isinstance(out, tuple) and len(out) > 1 else None
        handles.append(m.register_forward_hook(hook))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def _weights(store: dict[int, Tensor | None], i: int, lm: nn.Module) -> Tensor:
    w = store.get(i)
    if w is None:
        raise AttentionWeightsUnavailableError(
            f"layer {i} of {type(lm).__name__} returned no attention weights (attn_implementation="
            f"{getattr(lm.config, '_attn_implementation', None)!r}); fix: load the LM with attn_implementation='eager'"
        )
    return w.detach().float().mean(1)  # (B, Q, K), averaged over heads


# ----------------------------------------------------------------------------- decisions
def _text_queries(seq: _Seq) -> Tensor:
    vis = (seq.kind == KIND_VISION) & seq.valid
    last_vis = torch.where(vis, seq.order, torch.full_like(seq.order, -1)).max(1).values
    return (seq.kind == KIND_TEXT) & seq.valid & seq.attn & (seq.order > last_vis[:, None])


def _budget_keep(score: Tensor, vis: Tensor, key: Tensor, budget: int) -> Tensor:
    """Among vision tokens keep the top ``budget`` by score (keys first: never dropped)."""
    s = score.masked_fill(key, float("inf")).masked_fill(~vis, float("-inf"))
    n_keep = torch.clamp(torch.maximum((key & vis).sum(1), torch.full_like(vis.sum(1), budget)), max=vis.shape[1])
    rank = torch.argsort(torch.argsort(s, dim=1, descending=True, stable=True), dim=1, stable=True)
    return vis & (rank < n_keep[:, None])


def _decide(policy: DropPolicy, a: Tensor, seq: _Seq) -> Tensor:
    """(B, L) bool: tokens kept after this layer (``a``: head-averaged weights, (B, L, L))."""
    vis = (seq.kind == KIND_VISION) & seq.valid
    if policy.method == "fastv":
        q = (seq.valid & seq.attn).float()
        score = (a * q[:, :, None]).sum(1) / q.sum(1).clamp(min=1)[:, None]
        keep_vis = _budget_keep(score, vis, seq.key & vis, int(policy.budget))  # type: ignore[arg-type]
        return ~vis | keep_vis
    tq = _text_queries(seq)
    n_text = tq.sum(1)
    at = a * tq[:, :, None].float()
    g = at.sum(1) / n_text.clamp(min=1)[:, None]
    ind = at.max(1).values
    gt, it = float(policy.global_thr), float(policy.individual_thr)
    low = torch.ones_like(vis)
    if gt > 0:
        low &= g < gt
    if it > 0:
        low &= ind < it
    if gt <= 0 and it <= 0:
        low = torch.zeros_like(vis)
    keep_vis = vis & ~(low & ~seq.key)
    if policy.budget is not None:
        score = torch.maximum(g / max(gt, 1e-12), ind / max(it, 1e-12))
        keep_vis &= _budget_keep(score.masked_fill(~keep_vis, float("-inf")), vis, seq.key & vis, int(policy.budget))
        keep_vis |= seq.key & vis
    keep_vis |= vis & (n_text == 0)[:, None]  # no question text: nothing to rank by, keep all
    return ~vis | keep_vis


def _compact(seq: _Seq, keep: Tensor) -> _Seq:
    counts = keep.sum(1)
    L2 = int(counts.max())
    idx = torch.sort((~keep).to(torch.int8), dim=1, stable=True).indices[:, :L2]
    filler = torch.arange(L2, device=keep.device)[None] >= counts[:, None]
    return seq.take(idx, filler)


# ----------------------------------------------------------------------------- prefill
def _base_masks(lm: nn.Module, embeds: Tensor, attention_mask: Tensor, position_ids: Tensor) -> dict[str, Tensor | None]:
    from transformers.masking_utils import (
        create_causal_mask,
        create_sliding_window_causal_mask,
    )

    kw = dict(config=lm.config, inputs_embeds=embeds, attention_mask=attention_mask, cache=None, position_ids=position_ids)
    out: dict[str, Tensor | None] = {}
    for t in set(_layer_types(lm.config)):
        fn = create_sliding_window_causal_mask if t == "sliding_attention" else create_causal_mask
        out[t] = fn(**kw)
    return out


def _materialize(lm: nn.Module, base: Tensor | None, embeds: Tensor, attention_mask: Tensor, position_ids: Tensor,
                 t: str) -> Tensor:
    if base is not None and isinstance(base, Tensor):
        return base
    # sdpa skipped the mask (plain causal): build the eager-style one to be able to gather from it
    from transformers.masking_utils import (
        create_causal_mask,
        create_sliding_window_causal_mask,
    )

    fn = create_sliding_window_causal_mask if t == "sliding_attention" else create_causal_mask
    return fn(config=lm.config, inputs_embeds=embeds, attention_mask=attention_mask, cache=None,
              position_ids=position_ids, allow_is_causal_skip=False)


def prefill(
    lm: nn.Module,
    inputs_embeds: Tensor,
    attention_mask: Tensor,
    kind: Tensor,
    key: Tensor | None = None,
    position_ids: Tensor | None = None,
    policy: DropPolicy | None = None,
    use_cache: bool = False,
    forced_keep: dict[int, Tensor] | None = None,
    mask_fn: Callable[[int, Tensor, Tensor, Tensor], Tensor] | None = None,
    logits_mode: Literal["all", "last", "none"] = "all",
    size: Tensor | None = None,
) -> PrefillOutput:
    """Run ``lm`` on ``inputs_embeds`` (B, L, D), dropping vision tokens per ``policy``.

    Args:
        attention_mask: (B, L) 1 = real token, 0 = padding (left or right).
        kind: (B, L) ``KIND_TEXT`` / ``KIND_VISION`` / ``KIND_PAD`` per token.
        key: (B, L) bool MustDrop key tokens (never dropped); ``None`` = none.
        position_ids: (B, L) rotary ids; default ``cumsum(attention_mask) - 1`` (padding-aware).
        use_cache: fill and return a :class:`CompactKVCache` for :func:`decode_step`.
        forced_keep: ``{layer: (B, L) bool}`` replay these decisions instead of computing them.
        mask_fn: ``mask_fn(layer, mask, order, valid) -> mask`` edits a layer's attention mask
            (B, 1, L', L') before it runs (tests use it to build references).
        logits_mode: ``all`` (B, L', V), ``last`` (B, V) at the last real token, ``none``.
        size: (B, L) how many original tokens each token stands for (a merged vision token: its
            patches; text: 1). Its attention logits get ``+ log(size)`` in every layer, in prefill
            and decoding: ToMe's proportional attention, so a merged token weighs in the softmax as
            its ``size`` copies would and a densely trained LM keeps its attention mass. ``None``
            (or all ones) = plain attention, bit for bit.
    """
    policy = policy or DropPolicy()
    check_lm(lm, need_weights=policy.needs_weights() and not (forced_keep is not None and not policy.stage3))
    model = lm.model
    n_layers = lm.config.num_hidden_layers
    layer_types = _layer_types(lm.config)
    B, L, _ = inputs_embeds.shape
    dev = inputs_embeds.device
    attention_mask = attention_mask.to(dev).long()
    if position_ids is None:
        position_ids = (attention_mask.cumsum(1) - 1).clamp(min=0)
    key = torch.zeros(B, L, dtype=torch.bool, device=dev) if key is None else key.to(dev).bool()
    drop_layers = policy.drop_layers(n_layers) if forced_keep is None else tuple(sorted(forced_keep))
    base = _base_masks(lm, inputs_embeds, attention_mask, position_ids)
    cos, sin = model.rotary_emb(inputs_embeds, position_ids)
    order = torch.arange(L, device=dev)[None].expand(B, L)
    bias = None
    if size is not None and bool((size.to(dev)[attention_mask.bool()] != 1).any()):
        bias = size.to(dev).float().clamp(min=1).log()  # padding: 0 (its column is masked anyway)
    seq = _Seq(hidden=inputs_embeds, cos=cos, sin=sin, order=order, kind=kind.to(dev).long(), key=key,
               valid=torch.ones(B, L, dtype=torch.bool, device=dev), pos=position_ids, attn=attention_mask.bool(),
               bias=bias)
    masks: dict[str, Tensor | None] = dict(base)
    full_masks: dict[str, Tensor] = {}
    cache = CompactKVCache(n_layers) if use_cache else None
    stage3_layers = set(range(drop_layers[0] + 1, n_layers)) if (policy.stage3 and drop_layers and use_cache) else set()
    weights_at = {i for i in drop_layers if forced_keep is None} | stage3_layers
    store: dict[int, Tensor | None] = {}
    keep_out: dict[int, Tensor] = {}
    vision_per_layer = []
    last_rows: dict[int, Tensor] = {}
    for i, layer in enumerate(model.layers[:n_layers]):
        t = layer_types[i]
        mask = masks[t]
        if (mask_fn is not None or seq.bias is not None) and not isinstance(mask, Tensor):
            mask = full_masks.setdefault(t, _materialize(lm, base[t], inputs_embeds, attention_mask, position_ids, t))
            mask = _gather_mask(mask, seq)
        if seq.bias is not None:
            mask = _with_bias(mask, seq.bias, inputs_embeds.dtype)
        if mask_fn is not None:
            mask = mask_fn(i, mask, seq.order, seq.valid)
        vision_per_layer.append(((seq.kind == KIND_VISION) & seq.valid).sum(1))
        with _capture({i: layer.self_attn} if i in weights_at else {}, store):
            hidden = layer(seq.hidden, attention_mask=mask, position_embeddings=(seq.cos, seq.sin),
                           position_ids=seq.pos, cache=cache, use_cache=cache is not None)
        if cache is not None:
            cache._append_meta(i, seq.order, seq.kind, seq.key, seq.valid & seq.attn, seq.bias)
        seq = replace(seq, hidden=hidden)
        if i in stage3_layers:  # attention of the query that produces the first output token
            a = _weights(store, i, lm)
            last = torch.where(seq.valid & seq.attn, torch.arange(seq.order.shape[1], device=dev)[None], -1).argmax(1)
            last_rows[i] = a[torch.arange(B, device=dev), last]  # (B, K_i)
        if i in drop_layers:
            if forced_keep is not None:
                keep = torch.gather(forced_keep[i].to(dev), 1, seq.order) | ~seq.valid
            else:
                keep = _decide(policy, _weights(store, i, lm), seq)
            keep = keep & seq.valid
            # over the input tokens: True = present after layer i (filler slots scatter False)
            keep_out[i] = torch.zeros(B, L, dtype=torch.bool, device=dev).scatter(1, seq.order, keep & seq.valid)
            if not bool(keep[seq.valid].all()):
                seq = _compact(seq, keep)
                for tt in masks:
                    if tt not in full_masks:
                        full_masks[tt] = _materialize(lm, base[tt], inputs_embeds, attention_mask, position_ids, tt)
                    masks[tt] = _gather_mask(full_masks[tt], seq)
        store.clear()
    if cache is not None and stage3_layers:
        for i in sorted(stage3_layers):
            row = last_rows[i]
            valid = cache.valid[i]
            n_cached = valid.sum(1).clamp(min=1)[:, None].float()
            vis = (cache.kind[i] == KIND_VISION) & valid
            low = vis & ~cache.key[i] & (row < policy.output_thr / n_cached)
            cache.compact(i, ~low)
    hidden = model.norm(seq.hidden)
    valid_real = seq.valid & seq.attn
    next_position = torch.where(valid_real, seq.pos, torch.full_like(seq.pos, -1)).max(1).values + 1
    if logits_mode == "all":
        logits = lm.lm_head(hidden)
    elif logits_mode == "last":
        last = torch.where(valid_real, torch.arange(seq.order.shape[1], device=dev)[None], -1).argmax(1)
        logits = lm.lm_head(hidden[torch.arange(B, device=dev), last])
    else:
        logits = hidden.new_zeros(0)
    return PrefillOutput(logits=logits, order=seq.order, valid=seq.valid, keep=keep_out,
                         vision_per_layer=torch.stack(vision_per_layer), cache=cache, next_position=next_position,
                         hidden=hidden)


# ----------------------------------------------------------------------------- decoding
def decode_step(lm: nn.Module, cache: CompactKVCache, token_ids: Tensor, position: Tensor, order: int | Tensor) -> Tensor:
    """One greedy-decoding step on a (compacted) cache: logits (B, V) of the token after ``token_ids`` (B,).

    ``position``: (B,) rotary id of the new token; ``order``: its index in the full sequence.
    """
    model = lm.model
    n_layers = lm.config.num_hidden_layers
    B = token_ids.shape[0]
    dev = token_ids.device
    h = model.embed_tokens(token_ids[:, None])
    pos = position.to(dev)[:, None]
    cos, sin = model.rotary_emb(h, pos)
    impl = getattr(lm.config, "_attn_implementation", None) or "eager"
    one = torch.ones(B, 1, dtype=torch.bool, device=dev)
    ordr = torch.as_tensor(order, device=dev).expand(B)[:, None].long()
    for i, layer in enumerate(model.layers[:n_layers]):
        allowed = torch.cat([cache.valid[i], one], 1)[:, None, None, :]  # type: ignore[list-item]
        bias = cache.bias[i]
        if impl == "eager" or bias is not None:
            mask = torch.zeros(allowed.shape, dtype=h.dtype, device=dev).masked_fill(~allowed, torch.finfo(h.dtype).min)
            if bias is not None:  # proportional attention on the cached merged tokens (see prefill)
                mask = _with_bias(mask, torch.cat([bias, bias.new_zeros(B, 1)], 1), h.dtype)
        else:
            mask = allowed
        h = layer(h, attention_mask=mask, position_embeddings=(cos, sin), position_ids=pos, cache=cache, use_cache=True)
        cache._append_meta(i, ordr, torch.full_like(ordr, KIND_TEXT), torch.zeros_like(one), one)
    return lm.lm_head(model.norm(h))[:, 0]


@torch.no_grad()
def generate(
    lm: nn.Module,
    inputs_embeds: Tensor,
    attention_mask: Tensor,
    kind: Tensor,
    key: Tensor | None = None,
    policy: DropPolicy | None = None,
    max_new_tokens: int = 4,
    eos_token_id: int | None = None,
    pad_token_id: int = 0,
    position_ids: Tensor | None = None,
    size: Tensor | None = None,
) -> tuple[Tensor, PrefillOutput]:
    """Greedy decoding with dropping in prefill (stage 2) and a compact cache (stage 3).

    Prompts should be LEFT-padded; ``position_ids`` as in :func:`prefill` (decoding continues
    from the largest one). Returns generated ids (B, T) (``pad_token_id`` after EOS)
    and the prefill output (its ``cache`` is the cache after decoding). ``size``: as in :func:`prefill`.
    """
    out = prefill(lm, inputs_embeds, attention_mask, kind, key, position_ids=position_ids, policy=policy, use_cache=True,
                  logits_mode="last", size=size)
    nxt = out.logits.argmax(-1)
    tokens = [nxt]
    done = nxt == eos_token_id if eos_token_id is not None else torch.zeros_like(nxt, dtype=torch.bool)
    pos = out.next_position
    L = inputs_embeds.shape[1]
    for t in range(1, max_new_tokens):
        if bool(done.all()):
            break
        logits = decode_step(lm, out.cache, nxt, pos, L + t - 1)  # type: ignore[arg-type]
        nxt = logits.argmax(-1).masked_fill(done, pad_token_id)
        tokens.append(nxt)
        if eos_token_id is not None:
            done = done | (nxt == eos_token_id)
        pos = pos + 1
    return torch.stack(tokens, 1), out
