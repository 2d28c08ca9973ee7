"""Knowledge-distillation losses (Return of the Encoder; GKD): tensors in, tensors out.

``loss = alpha * KD + (1 - alpha) * CE`` where KD is a divergence between the teacher's and the
student's next-token distributions at the target positions only (padding is never averaged in):

* ``beta = 0``: forward KL(teacher || student) (classic KD, mode covering);
* ``beta = 1``: reverse KL(student || teacher) (mode seeking, MiniLLM);
* ``0 < beta < 1``: the generalised Jensen-Shannon divergence of GKD (Agarwal et al. 2024) with the
  mixture ``m = beta * teacher + (1 - beta) * student``: ``beta * KL(t || m) + (1 - beta) * KL(s || m)``.

Both distributions are softened by the same ``temperature``; the sum over the vocabulary is averaged
over the masked positions, as TRL's ``GKDTrainer.generalized_jsd_loss`` (reduction ``batchmean``) does,
so the two are equal (tests/losses/test_distill.py).

:func:`align_teacher_logits` maps a decoder-only teacher that saw ``[source | target]`` onto an
encoder-decoder student whose decoder saw ``[bos] + target[:-1]``: teacher position
``len(source) - 1 + t`` predicts the same token (``target[t]``) as decoder position ``t``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from litbrain.errors import ConfigError

__all__ = ["align_teacher_logits", "check_kd_weights", "distillation_loss", "generalized_jsd", "IGNORE_INDEX"]

#: label value of positions that carry no target (Hugging Face's convention).
IGNORE_INDEX = -100


def check_kd_weights(alpha: float, beta: float, temperature: float = 1.0, source: str = "model.init_args") -> None:
    """One clear line for a KD weight outside its range."""
    if not 0.0 <= float(alpha) <= 1.0:
        raise ConfigError(f"{source}.alpha={alpha}: the KD weight must lie in [0, 1] (loss = alpha * KD + "
                          f"(1 - alpha) * CE); fix: e.g. 0.9 as Return of the Encoder, 0 for CE only")
    if not 0.0 <= float(beta) <= 1.0:
        raise ConfigError(f"{source}.beta={beta}: the generalised JSD's beta must lie in [0, 1] (0 = forward KL, "
                          f"1 = reverse KL); fix: e.g. 0.5")
    if not float(temperature) > 0:
        raise ConfigError(f"{source}.temperature={temperature}: must be > 0; fix: e.g. 1.0")


def generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, mask: torch.Tensor | None = None,
                    beta: float = 0.5, temperature: float = 1.0) -> torch.Tensor:
    """Mean over masked positions of the generalised JSD (sum over the vocabulary); see the module doc.

    ``student_logits`` / ``teacher_logits``: (..., V); ``mask``: (...) bool, True at target positions.
    """
    check_kd_weights(0.0, beta, temperature, "generalized_jsd")
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(f"generalized_jsd: student logits {tuple(student_logits.shape)} and teacher logits "
                          f"{tuple(teacher_logits.shape)} differ; fix: align the teacher (align_teacher_logits) and "
                          f"use one vocabulary")
    dtype = torch.promote_types(student_logits.dtype, torch.float32)  # bf16 logits: softmax in fp32
    log_s = F.log_softmax(student_logits.to(dtype) / temperature, dim=-1)
    log_t = F.log_softmax(teacher_logits.to(dtype) / temperature, dim=-1)
    if beta == 0:
        per = (log_t.exp() * (log_t - log_s)).sum(-1)  # KL(teacher || student)
    elif beta == 1:
        per = (log_s.exp() * (log_s - log_t)).sum(-1)  # KL(student || teacher)
    else:
        log_m = torch.logsumexp(torch.stack([log_s + math.log1p(-beta), log_t + math.log(beta)]), dim=0)
        kl_t = (log_t.exp() * (log_t - log_m)).sum(-1)
        kl_s = (log_s.exp() * (log_s - log_m)).sum(-1)
        per = beta * kl_t + (1 - beta) * kl_s
    if mask is None:
        return per.mean()
    mask = mask.to(per.dtype)
    return (per * mask).sum() / mask.sum().clamp_min(1)


def distillation_loss(student_logits: torch.Tensor, labels: torch.Tensor, teacher_logits: torch.Tensor | None = None,
                      alpha: float = 0.9, beta: float = 0.0, temperature: float = 1.0) -> dict[str, torch.Tensor]:
    """``alpha * KD + (1 - alpha) * CE`` at the positions where ``labels != IGNORE_INDEX``.

    Returns ``{"loss", "kd", "ce"}``; without a teacher (or with ``alpha = 0``) KD is 0 and the loss is CE.
    """
    check_kd_weights(alpha, beta, temperature, "distillation_loss")
    mask = labels != IGNORE_INDEX
    ce = F.cross_entropy(student_logits.flatten(0, -2).to(torch.promote_types(student_logits.dtype, torch.float32)), labels.flatten(), ignore_index=IGNORE_INDEX)
    if teacher_logits is None or alpha == 0:
        kd = torch.zeros((), device=student_logits.device)
    else:
        kd = generalized_jsd(student_logits, teacher_logits.detach(), mask, beta, temperature)
    return {"loss": alpha * kd + (1 - alpha) * ce, "kd": kd, "ce": ce}


def align_teacher_logits(teacher_logits: torch.Tensor, source_lengths: torch.Tensor, target_length: int) -> torch.Tensor:
    """The teacher's logits at the student decoder's positions: (B, target_length, V).

    The teacher saw ``[source_b | target_b]`` (each row's source of its own length, then the target,
    right-padded); row ``b``'s teacher position ``source_lengths[b] - 1 + t`` predicts ``target[b, t]``,
    the token the student's decoder position ``t`` predicts.
    """
    b, n, _ = teacher_logits.shape
    pos = source_lengths.to(teacher_logits.device).long()[:, None] - 1 + torch.arange(target_length,
                                                                                      device=teacher_logits.device)
    if int(pos.max()) >= n or int(pos.min()) < 0:
        raise ConfigError(f"align_teacher_logits: positions up to {int(pos.max())} asked of a teacher sequence of {n}; "
                          f"fix: give the teacher [source | target] with every row's source length")
    return teacher_logits.gather(1, pos[..., None].expand(b, target_length, teacher_logits.shape[-1]))
