"""Models of the distillation family (Return of the Encoder, Elfeki et al. 2025).

* :class:`CausalLm` (``model_type "causal_lm"``): any Hugging Face causal LM rebuilt from its
  transformers config dict -- the tiny teacher trained here, and the decoder-only student.
* :class:`Seq2SeqStudent` (``model_type "seq2seq_lm"``): a T5Gemma encoder-decoder
  (``T5GemmaForConditionalGeneration``: RoPE, RMSNorm, GQA, tied embeddings) with about 2/3 of
  its layers in the (bidirectional) encoder, as RotE's 20 / 10 split.

:func:`adapt_from_decoder_only` starts a student from a Gemma2-family teacher as Encoder-Decoder
Gemma does: encoder and decoder layers copy (evenly spaced) teacher layers, the encoder simply
attends bidirectionally, and each decoder cross-attention starts as a copy of that layer's
self-attention where the shapes match. :func:`decoder_only_twin` gives the decoder-only comparison
model with (nearly) the same parameter count.

Both wrap the transformers model as ``.hf``; a release also writes it with ``save_pretrained``
(``AutoModelForSeq2SeqLM`` / ``AutoModelForCausalLM`` load it back).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from litbrain.errors import ConfigError
from litbrain.nn.registry import ModelCard, ModelConfig

__all__ = ["CausalLm", "CausalLmConfig", "Seq2SeqStudent", "Seq2SeqStudentConfig", "adapt_from_decoder_only",
           "check_causal_teacher", "check_same_vocabulary", "decoder_only_twin", "count_parameters", "tiny_gemma2"]

_BOOKKEEPING = ("architectures", "transformers_version", "_name_or_path", "torch_dtype", "dtype")


def tiny_gemma2(vocab_size: int = 48, hidden_size: int = 32, layers: int = 2, intermediate_size: int = 64,
                heads: int = 2, kv_heads: int = 1, head_dim: int = 16, max_positions: int = 256) -> dict[str, Any]:
    """A tiny Gemma2 config dict (no logit soft-capping: these tiny models need none)."""
    return {"model_type": "gemma2", "vocab_size": vocab_size, "hidden_size": hidden_size,
            "intermediate_size": intermediate_size, "num_hidden_layers": layers, "num_attention_heads": heads,
            "num_key_value_heads": kv_heads, "head_dim": head_dim, "query_pre_attn_scalar": head_dim,
            "max_position_embeddings": max_positions, "sliding_window": max_positions,
            "final_logit_softcapping": None, "attn_logit_softcapping": None,
            "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2}


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


def check_same_vocabulary(teacher_vocab: int, student_vocab: int, source: str = "model.init_args") -> None:
    if int(teacher_vocab) != int(student_vocab):
        raise ConfigError(f"{source}: the teacher's vocabulary has {teacher_vocab} tokens but the student's has "
                          f"{student_vocab}; fix: build the student with the teacher's tokenizer "
                          f"(net.vocab_size={teacher_vocab})")


def check_causal_teacher(model: Any, source: str = "model.init_args.teacher") -> None:
    """The teacher must be a decoder-only causal LM (its logits at [source | target] are aligned)."""
    cfg = getattr(model, "config", None)
    name = type(model).__name__
    if getattr(cfg, "is_encoder_decoder", False) or not name.endswith("ForCausalLM"):
        raise ConfigError(f"{source}: {name} is not a decoder-only causal LM; fix: a teacher that "
                          f"AutoModelForCausalLM loads (Llama, Gemma, Phi, Qwen ...), or a litbrain causal_lm release")


class _TiedWeights(nn.Module):
    """Loads a state dict that stores tied tensors once (safetensors' ``save_model`` drops the aliases)."""

    def load_state_dict(self, state_dict: Any, strict: bool = True, assign: bool = False) -> Any:
        state = dict(state_dict)
        groups: dict[int, list[str]] = {}
        for name, p in self.named_parameters(remove_duplicate=False):
            groups.setdefault(id(p), []).append(name)
        for names in groups.values():
            have = [n for n in names if n in state]
            for n in names:
                if have and n not in state:
                    state[n] = state[have[0]]
        return super().load_state_dict(state, strict=strict, assign=assign)


# ----------------------------------------------------------------------------- decoder-only
@dataclass
class CausalLmConfig(ModelConfig):
    """A Hugging Face causal LM as a transformers config dict (with ``model_type``; vocab from the data)."""

    model_type = "causal_lm"

    lm: dict[str, Any] = field(default_factory=tiny_gemma2)
    attn_implementation: str = "eager"

    def missing(self) -> list[str]:
        return [] if self.lm.get("vocab_size") else ["lm.vocab_size"]

    @classmethod
    def examples(cls) -> list["CausalLmConfig"]:
        return [cls(lm=tiny_gemma2(vocab_size=24, hidden_size=16, layers=2, intermediate_size=32, head_dim=8))]

    def example_input(self, batch_size: int = 2, seed: int = 0) -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(seed)
        return {"input_ids": torch.randint(3, int(self.lm["vocab_size"]), (batch_size, 6), generator=g)}

    def card(self) -> ModelCard:
        return ModelCard(title=f"litbrain causal LM ({self.lm.get('model_type')})",
                         summary=("A decoder-only language model (distillation teacher or decoder-only student).\n"
                                  "`litbrain export --hf true` writes it in Hugging Face's own format."),
                         tags=["causal-lm", "distillation"],
                         usage="model = AutoModelForCausalLM.from_pretrained(folder)  # a folder from export --hf true")


class CausalLm(_TiedWeights):
    config_class = CausalLmConfig

    def __init__(self, config: CausalLmConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        from litbrain.nn.encoders import causal_lm

        self.config = CausalLmConfig.complete(config, kwargs, "CausalLm")
        self.hf = causal_lm(self.config.lm, attn_implementation=self.config.attn_implementation)

    @classmethod
    def wrap(cls, hf_model: nn.Module, attn_implementation: str = "eager") -> "CausalLm":
        """A CausalLm around an existing transformers model (weights kept)."""
        check_causal_teacher(hf_model, "CausalLm.wrap")
        d = {k: v for k, v in hf_model.config.to_dict().items() if k not in _BOOKKEEPING}
        out = cls.__new__(cls)
        _TiedWeights.__init__(out)
        out.config = CausalLmConfig(lm=d, attn_implementation=attn_implementation)
        out.hf = hf_model
        return out

    @property
    def vocab_size(self) -> int:
        return int(self.hf.config.vocab_size)

    def forward(self, input_ids: Tensor | dict[str, Tensor], attention_mask: Tensor | None = None, **kwargs: Any) -> Tensor:
        if isinstance(input_ids, dict):
            return self.forward(**input_ids)
        return self.hf(input_ids=input_ids, attention_mask=attention_mask, **kwargs).logits

    def hf_files(self) -> nn.Module:
        return self.hf


# ----------------------------------------------------------------------------- encoder-decoder
@dataclass
class Seq2SeqStudentConfig(ModelConfig):
    """A T5Gemma encoder-decoder student; ``vocab_size`` 0 = the datamodule's tokenizer's."""

    model_type = "seq2seq_lm"

    vocab_size: int = 0
    hidden_size: int = 32
    intermediate_size: int = 64
    encoder_layers: int = 2
    decoder_layers: int = 1
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    head_dim: int = 16
    max_positions: int = 256
    pad_token_id: int = 0
    bos_token_id: int = 1
    eos_token_id: int = 2
    attn_implementation: str = "eager"

    def __post_init__(self) -> None:
        if self.encoder_layers < 1 or self.decoder_layers < 1:
            raise ConfigError(f"net.encoder_layers={self.encoder_layers}, net.decoder_layers={self.decoder_layers}: "
                              f"both need >= 1 layer; fix: e.g. 2/3 of the layers in the encoder (RotE: 20 / 10)")

    def missing(self) -> list[str]:
        return [] if self.vocab_size else ["vocab_size"]

    @classmethod
    def examples(cls) -> list["Seq2SeqStudentConfig"]:
        return [cls(vocab_size=24, hidden_size=16, intermediate_size=32, head_dim=8, max_positions=64)]

    @classmethod
    def split_layers(cls, total: int, encoder_fraction: float = 2 / 3) -> tuple[int, int]:
        enc = min(max(int(round(total * encoder_fraction)), 1), total - 1)
        return enc, total - enc

    @classmethod
    def like_teacher(cls, teacher_lm: dict[str, Any], encoder_layers: int | None = None,
                     decoder_layers: int | None = None) -> "Seq2SeqStudentConfig":
        """A student whose layer shapes are the teacher's (what :func:`adapt_from_decoder_only` needs)."""
        n = int(teacher_lm["num_hidden_layers"])
        enc, dec = cls.split_layers(n)
        return cls(vocab_size=int(teacher_lm["vocab_size"]), hidden_size=int(teacher_lm["hidden_size"]),
                   intermediate_size=int(teacher_lm["intermediate_size"]),
                   encoder_layers=encoder_layers or enc, decoder_layers=decoder_layers or dec,
                   num_attention_heads=int(teacher_lm["num_attention_heads"]),
                   num_key_value_heads=int(teacher_lm.get("num_key_value_heads", teacher_lm["num_attention_heads"])),
                   head_dim=int(teacher_lm.get("head_dim") or teacher_lm["hidden_size"] // teacher_lm["num_attention_heads"]),
                   max_positions=int(teacher_lm.get("max_position_embeddings", 256)),
                   pad_token_id=int(teacher_lm.get("pad_token_id") or 0), bos_token_id=int(teacher_lm.get("bos_token_id", 1)),
                   eos_token_id=int(teacher_lm.get("eos_token_id", 2)))

    def module_config(self, layers: int) -> dict[str, Any]:
        d = tiny_gemma2(self.vocab_size, self.hidden_size, layers, self.intermediate_size, self.num_attention_heads,
                        self.num_key_value_heads, self.head_dim, self.max_positions)
        d.pop("model_type")
        d.update(pad_token_id=self.pad_token_id, bos_token_id=self.bos_token_id, eos_token_id=self.eos_token_id)
        return d

    def hf_config(self) -> Any:
        from transformers import T5GemmaConfig

        cfg = T5GemmaConfig(encoder=self.module_config(self.encoder_layers), decoder=self.module_config(self.decoder_layers),
                            vocab_size=self.vocab_size, tie_word_embeddings=True)
        cfg.pad_token_id, cfg.bos_token_id, cfg.eos_token_id = self.pad_token_id, self.bos_token_id, self.eos_token_id
        cfg.decoder_start_token_id = self.bos_token_id
        return cfg

    def example_input(self, batch_size: int = 2, seed: int = 0) -> dict[str, Tensor]:
        g = torch.Generator().manual_seed(seed)
        return {"input_ids": torch.randint(3, self.vocab_size, (batch_size, 7), generator=g),
                "decoder_input_ids": torch.randint(3, self.vocab_size, (batch_size, 3), generator=g)}

    def card(self) -> ModelCard:
        return ModelCard(
            title="litbrain encoder-decoder student (T5Gemma, Return of the Encoder)",
            summary=(f"A T5Gemma encoder-decoder ({self.encoder_layers} encoder / {self.decoder_layers} decoder layers, "
                     f"width {self.hidden_size}): the student of distillation from a decoder-only teacher.\n"
                     "`litbrain export --hf true` writes it in Hugging Face's own format, with its tokenizer."),
            tags=["encoder-decoder", "distillation", "t5gemma"],
            usage=("model = AutoModelForSeq2SeqLM.from_pretrained(folder)  # a folder from export --hf true\n"
                   "tokenizer = AutoTokenizer.from_pretrained(folder)"))


class Seq2SeqStudent(_TiedWeights):
    config_class = Seq2SeqStudentConfig

    def __init__(self, config: Seq2SeqStudentConfig | None = None, **kwargs: Any) -> None:
        super().__init__()
        from transformers import T5GemmaForConditionalGeneration

        self.config = Seq2SeqStudentConfig.complete(config, kwargs, "Seq2SeqStudent")
        hf_cfg = self.config.hf_config()
        hf_cfg._attn_implementation = self.config.attn_implementation
        self.hf = T5GemmaForConditionalGeneration(hf_cfg)

    @property
    def vocab_size(self) -> int:
        return int(self.config.vocab_size)

    def check_source_length(self, n: int, source: str = "data") -> None:
        if int(n) > self.config.max_positions:
            raise ConfigError(f"{source}: a source of {n} tokens is longer than the student's {self.config.max_positions} "
                              f"positions; fix: raise net.max_positions to >= {n} or shorten the inputs (fewer facts)")

    def forward(self, input_ids: Tensor | dict[str, Tensor], decoder_input_ids: Tensor | None = None,
                attention_mask: Tensor | None = None, decoder_attention_mask: Tensor | None = None) -> Tensor:
        if isinstance(input_ids, dict):
            return self.forward(**input_ids)
        self.check_source_length(input_ids.shape[1], "Seq2SeqStudent input_ids")
        return self.hf(input_ids=input_ids, attention_mask=attention_mask, decoder_input_ids=decoder_input_ids,
                       decoder_attention_mask=decoder_attention_mask).logits

    def hf_files(self) -> nn.Module:
        return self.hf


def decoder_only_twin(student: Seq2SeqStudentConfig) -> CausalLmConfig:
    """A Gemma2 decoder-only LM of the student's width with encoder + decoder layers, its MLP width set
    so that the parameter counts agree as closely as an integer width allows."""
    layers = student.encoder_layers + student.decoder_layers

    def count(inter: int) -> int:
        with torch.device("meta"):
            return count_parameters(CausalLm(CausalLmConfig(lm=_twin_lm(student, layers, inter))))

    with torch.device("meta"):
        want = count_parameters(Seq2SeqStudent(student))
    c1, c2 = count(1), count(2)
    inter = max(1, round(1 + (want - c1) / (c2 - c1)))
    return CausalLmConfig(lm=_twin_lm(student, layers, inter), attn_implementation=student.attn_implementation)


def _twin_lm(student: Seq2SeqStudentConfig, layers: int, inter: int) -> dict[str, Any]:
    d = tiny_gemma2(student.vocab_size, student.hidden_size, layers, inter, student.num_attention_heads,
                    student.num_key_value_heads, student.head_dim, student.max_positions)
    d.update(pad_token_id=student.pad_token_id, bos_token_id=student.bos_token_id, eos_token_id=student.eos_token_id)
    return d


# ----------------------------------------------------------------------------- adapted init
_LAYER_NAMES = {"input_layernorm": "pre_self_attn_layernorm", "post_attention_layernorm": "post_self_attn_layernorm",
                "pre_feedforward_layernorm": "pre_feedforward_layernorm",
                "post_feedforward_layernorm": "post_feedforward_layernorm"}


def _spaced(n_from: int, n_to: int) -> list[int]:
    """``n_to`` evenly spaced indices of ``n_from`` layers, starting at layer 0."""
    if n_to == 1:
        return [0]
    return [round(i * (n_from - 1) / (n_to - 1)) for i in range(n_to)]


def _teacher_layer_to_student(name: str) -> str:
    head, _, rest = name.partition(".")
    return f"{_LAYER_NAMES.get(head, head)}.{rest}" if rest else _LAYER_NAMES.get(name, name)


@torch.no_grad()
def adapt_from_decoder_only(student: Seq2SeqStudent, teacher: nn.Module) -> list[str]:
    """Copy a Gemma2-family decoder-only teacher's weights into ``student`` (Encoder-Decoder Gemma's
    adaptation); returns the student keys that were filled. Embeddings and the final norms are shared."""
    hf_teacher = getattr(teacher, "hf", teacher)
    check_causal_teacher(hf_teacher, "adapt_from_decoder_only")
    check_same_vocabulary(hf_teacher.config.vocab_size, student.vocab_size, "adapt_from_decoder_only")
    t = hf_teacher.state_dict()
    s = student.hf.state_dict()
    n_t = int(hf_teacher.config.num_hidden_layers)
    plan: dict[str, Tensor] = {}
    for part, n_s in (("encoder", student.config.encoder_layers), ("decoder", student.config.decoder_layers)):
        plan[f"model.{part}.embed_tokens.weight"] = t["model.embed_tokens.weight"]
        plan[f"model.{part}.norm.weight"] = t["model.norm.weight"]
        for i, j in enumerate(_spaced(n_t, n_s)):
            prefix = f"model.layers.{j}."
            for key, value in t.items():
                if not key.startswith(prefix):
                    continue
                local = _teacher_layer_to_student(key[len(prefix):])
                plan[f"model.{part}.layers.{i}.{local}"] = value
                if part == "decoder" and local.startswith("self_attn."):  # cross-attention from self-attention
                    plan[f"model.decoder.layers.{i}.cross_attn.{local[len('self_attn.'):]}"] = value
                if part == "decoder" and local.startswith("pre_self_attn_layernorm"):
                    plan[f"model.decoder.layers.{i}.pre_cross_attn_layernorm.weight"] = value
                if part == "decoder" and local.startswith("post_self_attn_layernorm"):
                    plan[f"model.decoder.layers.{i}.post_cross_attn_layernorm.weight"] = value
    filled = [k for k, v in plan.items() if k in s and s[k].shape == v.shape]
    if not filled:
        raise ConfigError("adapt_from_decoder_only: no teacher weight fits the student; fix: build the student with "
                          "Seq2SeqStudentConfig.like_teacher(teacher config)")
    student.hf.load_state_dict({k: plan[k] for k in filled}, strict=False)
    return filled
