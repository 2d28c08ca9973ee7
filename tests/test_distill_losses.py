"""Distillation losses against TRL's GKD reference, and the teacher -> student position alignment."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from litbrain.losses.distill import IGNORE_INDEX, align_teacher_logits, distillation_loss, generalized_jsd

trl_gkd = pytest.importorskip("trl.experimental.gkd")


def _case(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(3, 5, 11, generator=g, dtype=torch.float64) * 2
    t = torch.randn(3, 5, 11, generator=g, dtype=torch.float64) * 2
    labels = torch.randint(0, 11, (3, 5), generator=g)
    labels[0, 3:] = IGNORE_INDEX  # padding and prompt positions are masked out
    labels[2, :2] = IGNORE_INDEX
    return s, t, labels


@pytest.mark.parametrize("beta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_generalized_jsd_equals_trl(beta, temperature):
    s, t, labels = _case()
    ours = generalized_jsd(s, t, labels != IGNORE_INDEX, beta=beta, temperature=temperature)
    ref = trl_gkd.GKDTrainer.generalized_jsd_loss(s, t, labels=labels, beta=beta, temperature=temperature)
    assert float(ours) == pytest.approx(float(ref), abs=1e-6)
    assert float(ours) > 0.01  # a real divergence, not 0 == 0


def test_masked_positions_do_not_count():
    s, t, labels = _case()
    mask = labels != IGNORE_INDEX
    junk = t.clone()
    junk[~mask] = 1e3 * torch.randn_like(junk[~mask])  # anything at padding must not change the loss
    for beta in (0.0, 0.5, 1.0):
        assert float(generalized_jsd(s, junk, mask, beta)) == pytest.approx(float(generalized_jsd(s, t, mask, beta)),
                                                                             abs=1e-9)


def test_forward_and_reverse_kl_directions_match_torch():
    s, t, labels = _case(1)
    mask = labels != IGNORE_INDEX
    ls, lt = s.log_softmax(-1), t.log_softmax(-1)
    fwd = F.kl_div(ls, lt, reduction="none", log_target=True).sum(-1)[mask].mean()  # KL(t || s)
    rev = F.kl_div(lt, ls, reduction="none", log_target=True).sum(-1)[mask].mean()  # KL(s || t)
    assert float(generalized_jsd(s, t, mask, 0.0)) == pytest.approx(float(fwd), abs=1e-9)
    assert float(generalized_jsd(s, t, mask, 1.0)) == pytest.approx(float(rev), abs=1e-9)
    assert abs(float(fwd) - float(rev)) > 1e-3  # the two directions really differ here


def test_alpha_mixes_kd_and_ce():
    s, t, labels = _case(2)
    out = distillation_loss(s, labels, t, alpha=0.9, beta=0.5, temperature=1.0)
    ce = F.cross_entropy(s.flatten(0, 1), labels.flatten(), ignore_index=IGNORE_INDEX)
    assert float(out["ce"]) == pytest.approx(float(ce), abs=1e-6)
    assert float(out["loss"]) == pytest.approx(0.9 * float(out["kd"]) + 0.1 * float(ce), abs=1e-6)
    assert float(distillation_loss(s, labels, t, alpha=0.0)["loss"]) == pytest.approx(float(ce), abs=1e-6)


def test_alignment_when_teacher_and_student_see_the_same_tokens():
    """A causal LM is both teacher and (decoder-only) student: the teacher reads [source | target] in one
    pass; the student reads each source with target[:t] appended. Aligned logits must coincide."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    lm = LlamaForCausalLM(LlamaConfig(vocab_size=17, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                      num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=32)).eval()
    sources = [[1, 5, 6, 7], [1, 8, 9]]
    target = torch.tensor([[3, 4, 2], [10, 11, 2]])
    rows = [src + target[i].tolist() for i, src in enumerate(sources)]
    width = max(map(len, rows))
    ids = torch.tensor([r + [0] * (width - len(r)) for r in rows])
    attn = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    with torch.no_grad():
        aligned = align_teacher_logits(lm(input_ids=ids, attention_mask=attn).logits,
                                       torch.tensor([len(s) for s in sources]), target.shape[1])
        for i, src in enumerate(sources):
            for step in range(target.shape[1]):
                prefix = torch.tensor([src + target[i, :step].tolist()])
                want = lm(input_ids=prefix).logits[0, -1]  # predicts target[i, step]
                torch.testing.assert_close(aligned[i, step], want, atol=1e-5, rtol=1e-5)
    # and an oracle "next token" teacher: its aligned argmax is exactly the target
    onehot = F.one_hot(torch.cat([ids[:, 1:], ids[:, :1]], 1), 17).float()
    got = align_teacher_logits(onehot, torch.tensor([len(s) for s in sources]), 3).argmax(-1)
    assert torch.equal(got, target)
