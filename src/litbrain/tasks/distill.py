"""Distillation from a decoder-only LM into an encoder-decoder student (Return of the Encoder; GKD).

Three LightningModules over :class:`~litbrain.datamodules.distill.datamodule.FactsDataModule` batches:

* :class:`CausalLmTask`: trains a causal LM with cross-entropy on the target tokens of
  ``[source | target]`` (the tiny teacher here; any prompt -> completion data with ``lm_*`` keys).
* :class:`DistillationTask`: a T5Gemma encoder-decoder student learns ``alpha * KD + (1 - alpha) * CE``
  from a frozen teacher kept in eval mode (never saved in the student's checkpoints; open_clip's
  distill task). KD is forward KL / reverse KL / generalised JSD (``beta``) at the target positions,
  the teacher's logits aligned to the decoder's (:func:`~litbrain.losses.distill.align_teacher_logits`).
  ``targets``: ``dataset`` (the data's answers) or ``teacher`` (sequence-level KD: the teacher's greedy
  answers); ``on_policy_lambda``: with that probability per batch the targets are the student's own
  samples (GKD, temperature ``sample_temperature``). CE always uses the dataset's answers.
* :class:`DecoderOnlyDistillationTask`: the same with a decoder-only student (the comparison rows).

Validation / test decode greedily and log exact match (``val/em``), token accuracy and, with a
teacher, agreement with the teacher's greedy answers.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor, nn
from torchmetrics import MeanMetric

from litbrain.errors import ConfigError
from litbrain.losses.distill import IGNORE_INDEX, align_teacher_logits, check_kd_weights, distillation_loss
from litbrain.nn.distill import (CausalLm, CausalLmConfig, Seq2SeqStudent, Seq2SeqStudentConfig,
                                 adapt_from_decoder_only, check_causal_teacher, check_same_vocabulary)
from litbrain.tasks.base import CarriesFiles, LitbrainTask, SplitEvaluation, read_source
from litbrain.tasks.vlm import tokenizer_files

__all__ = ["CausalLmTask", "DecoderOnlyDistillationTask", "DistillationTask", "answer_mask", "greedy_or_sample",
           "join_source_target", "load_teacher", "target_logits"]


# ----------------------------------------------------------------------------- token bookkeeping
def join_source_target(source: Tensor, source_mask: Tensor, target: Tensor, target_mask: Tensor,
                       pad_id: int) -> tuple[Tensor, Tensor]:
    """``[source_b | target_b]`` per row (each source of its own length), right-padded: (ids, mask)."""
    b, s = source.shape
    t = target.shape[1]
    ids = torch.full((b, s + t), pad_id, dtype=source.dtype, device=source.device)
    mask = torch.zeros((b, s + t), dtype=torch.bool, device=source.device)
    lengths = source_mask.sum(1)
    pos = lengths[:, None] + torch.arange(t, device=source.device)
    ids[:, :s] = source.masked_fill(~source_mask, pad_id)
    mask[:, :s] = source_mask
    ids.scatter_(1, pos, target.masked_fill(~target_mask, pad_id))
    mask.scatter_(1, pos, target_mask)
    return ids, mask


def answer_mask(tokens: Tensor, eos_id: int) -> Tensor:
    """True up to and including the first <eos> of each row."""
    is_eos = (tokens == eos_id).long()
    return (is_eos.cumsum(1) - is_eos) == 0


@torch.no_grad()
def greedy_or_sample(model: nn.Module, source: Tensor, source_mask: Tensor, steps: int, bos_id: int, pad_id: int,
                     temperature: float = 0.0, generator: torch.Generator | None = None) -> Tensor:
    """``steps`` answer tokens per row, greedy (``temperature`` 0) or sampled; (B, steps).

    Decoder-only models read ``[source | answer so far]`` right-padded (each row's next token sits at its
    own position), so no left padding or position-id bookkeeping is needed; encoder-decoders encode once.
    """
    hf = model.hf
    b = source.shape[0]

    def pick(logits: Tensor) -> Tensor:
        if temperature <= 0:
            return logits.argmax(-1)
        probs = torch.softmax(logits.float() / temperature, -1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)

    if getattr(hf.config, "is_encoder_decoder", False):
        enc = hf.get_encoder()(input_ids=source, attention_mask=source_mask)
        dec = torch.full((b, 1), bos_id, dtype=source.dtype, device=source.device)
        for _ in range(steps):
            logits = hf(encoder_outputs=enc, attention_mask=source_mask, decoder_input_ids=dec).logits[:, -1]
            dec = torch.cat([dec, pick(logits)[:, None]], 1)
        return dec[:, 1:]
    out = torch.full((b, steps), pad_id, dtype=source.dtype, device=source.device)
    lengths = source_mask.sum(1)
    rows = torch.arange(b, device=source.device)
    for t in range(steps):
        ids, mask = join_source_target(source, source_mask, out[:, :t], torch.ones_like(out[:, :t], dtype=torch.bool),
                                       pad_id)
        logits = hf(input_ids=ids, attention_mask=mask).logits
        out[:, t] = pick(logits[rows, lengths - 1 + t])
    return out


def target_logits(model: nn.Module, source: Tensor, source_mask: Tensor, target: Tensor, target_mask: Tensor,
                  bos_id: int, pad_id: int) -> Tensor:
    """Any model's logits at the target positions, (B, T, V): an encoder-decoder's decoder reads
    ``[bos] + target[:-1]``; a decoder-only model reads ``[source | target]``, aligned to the same positions."""
    if getattr(model.hf.config, "is_encoder_decoder", False):
        dec = torch.cat([torch.full_like(target[:, :1], bos_id), target[:, :-1]], 1)
        return model(source, dec, source_mask)
    ids, mask = join_source_target(source, source_mask, target, target_mask, pad_id)
    return align_teacher_logits(model(ids, mask), source_mask.sum(1), target.shape[1])


def load_teacher(spec: str, key: str = "model.init_args.teacher") -> CausalLm:
    """A frozen causal-LM teacher in eval mode: a litbrain ``causal_lm`` checkpoint / release, or ``hf:<id or folder>``."""
    p = Path(spec)
    if spec.startswith("hf:") or (p.is_dir() and (p / "config.json").is_file() and not (p / "manifest.json").is_file()):
        from litbrain.nn.encoders import causal_lm

        folder = Path(spec[3:] if spec.startswith("hf:") else spec)
        if (folder / "config.json").is_file():
            import json

            cfg = json.loads((folder / "config.json").read_text())
            if cfg.get("is_encoder_decoder"):
                raise ConfigError(f"{key}={spec}: a {cfg.get('model_type')} encoder-decoder is not a decoder-only causal "
                                  f"LM; fix: a teacher that AutoModelForCausalLM loads (Llama, Gemma, Phi, Qwen ...)")
        model = CausalLm.wrap(causal_lm(spec))
    else:
        from litbrain.release.export import model_from_source

        model = model_from_source(read_source(spec, key))
        check_causal_teacher(getattr(model, "hf", model), key)
    model.requires_grad_(False)
    return model.eval()


# ----------------------------------------------------------------------------- shared
class _LmTaskBase(CarriesFiles, SplitEvaluation, LitbrainTask):
    """Model building from the datamodule's tokenizer, init_from, greedy evaluation."""

    def _init_common(self) -> None:
        self.model: Any = None
        self._tokenizer_files: dict[str, str] = {}
        self._tok_ids = {"pad": 0, "bos": 1, "eos": 2}
        self.metrics = nn.ModuleDict({f"{s}_{m}": MeanMetric() for s in ("val", "test")
                                      for m in ("em", "token_acc", "teacher_agreement")})

    def checkpoint_monitor(self) -> tuple[str, str] | None:
        return ("val/em", "max")

    def _tokenizer(self) -> Any:
        return getattr(self.datamodule, "tokenizer", None)

    def _fill_from_tokenizer(self, tok: Any) -> None:
        raise NotImplementedError

    def _build(self) -> nn.Module:
        raise NotImplementedError

    def setup(self, stage: str) -> None:
        tok = self._tokenizer()
        if tok is not None:
            self._tok_ids = {"pad": tok.pad_token_id, "bos": tok.bos_token_id, "eos": tok.eos_token_id}
            self._fill_from_tokenizer(tok)
            self._tokenizer_files = self._tokenizer_files or tokenizer_files(tok)
        self.check_data()

    def check_data(self) -> None:
        """Errors that the data can show before training (override)."""

    def configure_model(self) -> None:
        if self.model is not None:
            return
        self.model = self._build()
        if self.hparams.get("init_from"):
            src = self.read_init(self.hparams.init_from)
            self.model.load_state_dict(src.state)
            self._tokenizer_files = self._tokenizer_files or dict(src.files)
        self.net = self.model.config

    def optimized_module(self) -> nn.Module:
        return self.model

    def answers(self, batch: dict[str, Tensor], model: nn.Module | None = None) -> Tensor:
        model = model if model is not None else self.model
        return greedy_or_sample(model, batch["source"], batch["source_mask"], batch["target"].shape[1],
                                self._tok_ids["bos"], self._tok_ids["pad"])

    def teacher_answers(self, batch: dict[str, Tensor]) -> Tensor | None:
        return None

    def _eval_step(self, batch: dict[str, Tensor], prefix: str) -> None:
        pred = self.answers(batch)
        want, mask = batch["target"], batch["target_mask"]
        hit = (pred == want) | ~mask
        self.metrics[f"{prefix}_em"].update(hit.all(1).float())
        self.metrics[f"{prefix}_token_acc"].update((pred == want)[mask].float())
        teacher = self.teacher_answers(batch)
        if teacher is not None:
            self.metrics[f"{prefix}_teacher_agreement"].update(
                ((pred == teacher) | ~answer_mask(teacher, self._tok_ids["eos"])).all(1).float())

    def _log_eval(self, prefix: str) -> None:
        for name in ("em", "token_acc", "teacher_agreement"):
            m = self.metrics[f"{prefix}_{name}"]
            if m.update_count:
                self.log(f"{prefix}/{name}", m.compute(), prog_bar=name == "em")
            m.reset()



def _lm_with_tokenizer(lm: dict[str, Any], tok: Any) -> dict[str, Any]:
    return {**lm, "vocab_size": lm.get("vocab_size") or len(tok), "pad_token_id": tok.pad_token_id,
            "bos_token_id": tok.bos_token_id, "eos_token_id": tok.eos_token_id}


# ----------------------------------------------------------------------------- causal LM
class CausalLmTask(_LmTaskBase):
    """A causal LM trained with cross-entropy on the target tokens of ``[source | target]`` (batch keys
    ``lm_input``, ``lm_mask``, ``lm_labels``; HF shifts the labels).

    Args:
        net: :class:`~litbrain.nn.distill.CausalLmConfig` (``lm``: a transformers config dict; the vocabulary
            and special ids come from the datamodule's tokenizer).
        init_from: a causal_lm checkpoint or release to start from.
        lr / weight_decay / warmup_fraction: AdamW + one-cycle schedule.
    """

    config_class = CausalLmConfig

    def __init__(self, net: CausalLmConfig | None = None, init_from: str | None = None, lr: float = 3e-3,
                 weight_decay: float = 0.01, warmup_fraction: float = 0.05) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.init_net(net)
        self._init_common()

    def _fill_from_tokenizer(self, tok: Any) -> None:
        self.net = self.net.replace(lm=_lm_with_tokenizer(self.net.lm, tok))

    def _build(self) -> nn.Module:
        return CausalLm(self.net)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        out = self.model.hf(input_ids=batch["lm_input"], attention_mask=batch["lm_mask"], labels=batch["lm_labels"])
        self.log("train/loss", out.loss, prog_bar=True)
        return out.loss


# ----------------------------------------------------------------------------- distillation
class DistillationTask(_LmTaskBase):
    """A student (T5Gemma encoder-decoder) distilled from a frozen decoder-only teacher.

    Args:
        net: :class:`~litbrain.nn.distill.Seq2SeqStudentConfig` (``vocab_size`` 0: the tokenizer's).
        teacher: a causal_lm checkpoint / release, or ``hf:<id or folder>`` (any AutoModelForCausalLM);
            None: no KD (``alpha`` must then be 0: the CE-only student).
        adapt_from_teacher: start the student from the teacher's layers (Encoder-Decoder Gemma's adaptation;
            the student's shapes must be the teacher's, see ``Seq2SeqStudentConfig.like_teacher``).
        alpha: weight of KD in ``alpha * KD + (1 - alpha) * CE`` (RotE: 0.9).
        beta: 0 forward KL(teacher || student), 1 reverse KL, in between the generalised JSD.
        temperature: softmax temperature of both distributions in KD.
        targets: ``dataset`` (the data's answers) or ``teacher`` (sequence-level KD on the teacher's greedy answers).
        on_policy_lambda: probability per batch that the KD targets are the student's own samples (GKD).
        sample_temperature: temperature of those samples (GKD: 0.9).
        init_from: a checkpoint or release of the same student to start from.
        lr / weight_decay / warmup_fraction: AdamW + one-cycle schedule.
    """

    config_class: Any = Seq2SeqStudentConfig

    def __init__(self, net: Seq2SeqStudentConfig | None = None, teacher: str | None = None, adapt_from_teacher: bool = False,
                 alpha: float = 0.9, beta: float = 0.0, temperature: float = 1.0,
                 targets: Literal["dataset", "teacher"] = "dataset", on_policy_lambda: float = 0.0,
                 sample_temperature: float = 0.9, init_from: str | None = None, lr: float = 3e-3,
                 weight_decay: float = 0.01, warmup_fraction: float = 0.05, seed: int = 0) -> None:
        super().__init__()
        self.save_hyperparameters()
        check_kd_weights(alpha, beta, temperature, "model.init_args")
        if not 0.0 <= on_policy_lambda <= 1.0:
            raise ConfigError(f"model.init_args.on_policy_lambda={on_policy_lambda}: a probability in [0, 1]; fix: e.g. 0.5")
        if targets not in ("dataset", "teacher"):
            raise ConfigError(f"model.init_args.targets={targets!r}: fix: 'dataset' or 'teacher'")
        if teacher is None and (alpha > 0 or targets == "teacher" or adapt_from_teacher):
            raise ConfigError(f"model.init_args.teacher: none given, but alpha={alpha} / targets={targets!r} / "
                              f"adapt_from_teacher={adapt_from_teacher} need one; fix: set teacher, or alpha 0 for CE only")
        self.init_net(net)
        self._init_common()
        self._rng = random.Random(seed)
        self._sampler = torch.Generator().manual_seed(seed)
        self.last_target_source = "dataset"  # which targets the last training batch used (tests, logs)

    @property
    def is_seq2seq(self) -> bool:
        return self.config_class is Seq2SeqStudentConfig

    # the teacher is a plain attribute: not a submodule, so never saved, trained or switched to train mode
    @property
    def teacher(self) -> CausalLm | None:
        return self.__dict__.get("_teacher")

    def set_teacher(self, teacher: CausalLm | None) -> None:
        self.__dict__["_teacher"] = teacher

    def _fill_from_tokenizer(self, tok: Any) -> None:
        net = self.net
        if self.is_seq2seq:
            self.net = net.replace(vocab_size=net.vocab_size or len(tok), pad_token_id=tok.pad_token_id,
                                   bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)
        else:
            self.net = net.replace(lm=_lm_with_tokenizer(net.lm, tok))

    def check_data(self) -> None:
        dm = self.datamodule
        if self.is_seq2seq and dm is not None and hasattr(dm, "dataset"):
            longest = max(len(dm.dataset("train")[i]["source"]) for i in range(min(len(dm.dataset("train")), 64)))
            if longest > self.net.max_positions:
                raise ConfigError(f"data: a source of {longest} tokens is longer than the student's "
                                  f"{self.net.max_positions} positions (model.init_args.net.max_positions); fix: raise "
                                  f"it to >= {longest} or use fewer facts (data.init_args.n_facts)")

    def _build(self) -> nn.Module:
        h = self.hparams
        if h.teacher and self.teacher is None:
            self.set_teacher(load_teacher(h.teacher))
        model = Seq2SeqStudent(self.net) if self.is_seq2seq else CausalLm(self.net)
        if self.teacher is not None:
            check_same_vocabulary(self.teacher.vocab_size, model.vocab_size, "model.init_args.teacher")
        if h.get("adapt_from_teacher", False):
            if not self.is_seq2seq:
                raise ConfigError("model.init_args.adapt_from_teacher: only an encoder-decoder student is adapted; "
                                  "fix: drop it for a decoder-only student")
            adapt_from_decoder_only(model, self.teacher)
        return model

    def on_fit_start(self) -> None:
        if self.teacher is not None:
            self.teacher.to(self.device).eval()

    def on_validation_start(self) -> None:
        self.on_fit_start()

    def on_test_start(self) -> None:
        self.on_fit_start()

    # ------------------------------------------------------------------ targets
    def choose_targets(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, str]:
        """(target, target_mask, where they came from) for KD on this batch."""
        h = self.hparams
        steps = batch["target"].shape[1]
        ids = self._tok_ids
        if h.on_policy_lambda > 0 and self._rng.random() < h.on_policy_lambda:
            was = self.model.training
            self.model.eval()
            sampler = self._sampler if batch["source"].device.type == "cpu" else None
            tgt = greedy_or_sample(self.model, batch["source"], batch["source_mask"], steps, ids["bos"], ids["pad"],
                                   h.sample_temperature, sampler)
            self.model.train(was)
            return tgt, answer_mask(tgt, ids["eos"]), "student"
        if h.targets == "teacher":
            tgt = greedy_or_sample(self.teacher, batch["source"], batch["source_mask"], steps, ids["bos"], ids["pad"])
            return tgt, answer_mask(tgt, ids["eos"]), "teacher"
        return batch["target"], batch["target_mask"], "dataset"

    def student_logits(self, batch: dict[str, Tensor], target: Tensor, target_mask: Tensor) -> Tensor:
        """The student's logits at the target positions: (B, T, V)."""
        return target_logits(self.model, batch["source"], batch["source_mask"], target, target_mask,
                             self._tok_ids["bos"], self._tok_ids["pad"])

    @torch.no_grad()
    def teacher_logits(self, batch: dict[str, Tensor], target: Tensor, target_mask: Tensor) -> Tensor:
        return target_logits(self.teacher, batch["source"], batch["source_mask"], target, target_mask,
                             self._tok_ids["bos"], self._tok_ids["pad"])

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        h = self.hparams
        target, mask, where = self.choose_targets(batch)
        self.last_target_source = where
        labels = target.masked_fill(~mask, IGNORE_INDEX)
        logits = self.student_logits(batch, target, mask)
        t_logits = self.teacher_logits(batch, target, mask) if (self.teacher is not None and h.alpha > 0) else None
        if where == "dataset":
            out = distillation_loss(logits, labels, t_logits, h.alpha, h.beta, h.temperature)
        else:  # KD on the chosen targets, CE on the data's answers
            kd = distillation_loss(logits, labels, t_logits, 1.0, h.beta, h.temperature)["kd"]
            ce = distillation_loss(self.student_logits(batch, batch["target"], batch["target_mask"]), batch["labels"],
                                   None, 0.0)["ce"] if h.alpha < 1 else torch.zeros((), device=kd.device)
            out = {"loss": h.alpha * kd + (1 - h.alpha) * ce, "kd": kd, "ce": ce}
        self.log_dict({"train/loss": out["loss"], "train/kd": out["kd"], "train/ce": out["ce"]}, prog_bar=False)
        return out["loss"]

    def teacher_answers(self, batch: dict[str, Tensor]) -> Tensor | None:
        return None if self.teacher is None else self.answers(batch, self.teacher)


class DecoderOnlyDistillationTask(DistillationTask):
    """:class:`DistillationTask` with a decoder-only student (:class:`~litbrain.nn.distill.CausalLmConfig`)."""

    config_class = CausalLmConfig

    def __init__(self, net: CausalLmConfig | None = None, teacher: str | None = None, alpha: float = 0.9,
                 beta: float = 0.0, temperature: float = 1.0, targets: Literal["dataset", "teacher"] = "dataset",
                 on_policy_lambda: float = 0.0, sample_temperature: float = 0.9, init_from: str | None = None,
                 lr: float = 3e-3, weight_decay: float = 0.01, warmup_fraction: float = 0.05, seed: int = 0) -> None:
        super().__init__(net, teacher, False, alpha, beta, temperature, targets, on_policy_lambda, sample_temperature,
                         init_from, lr, weight_decay, warmup_fraction, seed)
