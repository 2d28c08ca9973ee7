"""The encoder-decoder student (T5Gemma), its adapted init from a decoder-only teacher, its decoder-only twin."""

from __future__ import annotations

import pytest
import torch

from litbrain.errors import ConfigError
from litbrain.nn.distill import (CausalLm, CausalLmConfig, Seq2SeqStudent, Seq2SeqStudentConfig,
                                 adapt_from_decoder_only, count_parameters, decoder_only_twin, tiny_gemma2)


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return CausalLm(CausalLmConfig(lm=tiny_gemma2(vocab_size=30, hidden_size=16, layers=3, intermediate_size=32,
                                                  head_dim=8))).eval()


def test_split_puts_two_thirds_in_the_encoder():
    assert Seq2SeqStudentConfig.split_layers(30) == (20, 10)  # RotE
    assert Seq2SeqStudentConfig.split_layers(3) == (2, 1)


def test_adapted_student_holds_the_teachers_layers(teacher):
    cfg = Seq2SeqStudentConfig.like_teacher(teacher.config.lm)
    assert (cfg.encoder_layers, cfg.decoder_layers) == (2, 1)
    torch.manual_seed(1)
    student = Seq2SeqStudent(cfg)
    t = teacher.hf.state_dict()
    s0 = student.hf.state_dict()
    assert not torch.equal(s0["model.encoder.layers.0.self_attn.q_proj.weight"], t["model.layers.0.self_attn.q_proj.weight"])
    filled = adapt_from_decoder_only(student, teacher)
    s = student.hf.state_dict()
    for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj", "mlp.gate_proj",
                 "mlp.up_proj", "mlp.down_proj"):
        assert torch.equal(s[f"model.encoder.layers.0.{name}.weight"], t[f"model.layers.0.{name}.weight"]), name
    assert torch.equal(s["model.encoder.layers.0.pre_self_attn_layernorm.weight"], t["model.layers.0.input_layernorm.weight"])
    # the last encoder layer is the teacher's last, the decoder's cross-attention starts as its self-attention
    assert torch.equal(s["model.encoder.layers.1.mlp.up_proj.weight"], t["model.layers.2.mlp.up_proj.weight"])
    assert torch.equal(s["model.decoder.layers.0.cross_attn.q_proj.weight"], t["model.layers.0.self_attn.q_proj.weight"])
    assert torch.equal(s["model.encoder.embed_tokens.weight"], t["model.embed_tokens.weight"])
    assert len(filled) >= 30
    x = torch.randint(3, 30, (2, 9))
    assert student(x, x[:, :3]).shape == (2, 3, 30)


def test_adaptation_refuses_another_vocabulary(teacher):
    cfg = Seq2SeqStudentConfig.like_teacher(teacher.config.lm).replace(vocab_size=31)
    with pytest.raises(ConfigError, match="30 tokens but the student's has 31"):
        adapt_from_decoder_only(Seq2SeqStudent(cfg), teacher)


def test_decoder_only_twin_has_the_same_parameter_count():
    cfg = Seq2SeqStudentConfig(vocab_size=40, hidden_size=32, intermediate_size=64, encoder_layers=4, decoder_layers=2)
    twin = CausalLm(decoder_only_twin(cfg))
    n_s, n_t = count_parameters(Seq2SeqStudent(cfg)), count_parameters(twin)
    assert twin.config.lm["num_hidden_layers"] == 6
    assert abs(n_s - n_t) / n_s < 0.01, (n_s, n_t)


def test_encoder_is_bidirectional():
    torch.manual_seed(0)
    student = Seq2SeqStudent(Seq2SeqStudentConfig(vocab_size=20, hidden_size=16, intermediate_size=32, head_dim=8)).eval()
    x = torch.randint(3, 20, (1, 6))
    y = x.clone()
    y[0, -1] = (x[0, -1] + 1 - 3) % 17 + 3  # change only the last source token
    with torch.no_grad():
        hx = student.hf.get_encoder()(input_ids=x).last_hidden_state
        hy = student.hf.get_encoder()(input_ids=y).last_hidden_state
    assert not torch.allclose(hx[0, 0], hy[0, 0])  # the first position sees the last one
