import pytest
import torch

from litbrain.nn import DuinEncoderConfig, DuinModel, PatchTokenizer, SubjectAdapter
from litbrain.release import load_release, save_release


def test_tokenizer_at_duins_sizes_turns_100ms_patches_into_160_wide_tokens():
    tok = PatchTokenizer()  # filters 128,128,16; kernels 19,3,3; strides 10,1,1
    assert isinstance(tok.proj, torch.nn.Identity)  # 16 filters x 10 steps = 160 = d_model, no projection
    out = tok(torch.randn(2, 3000, 16))
    assert out.shape == (2, 30, 160)


def test_patches_are_tokenised_independently():
    tok = PatchTokenizer(in_channels=4, patch_len=20, filters=[8, 4], kernels=[5, 3], strides=[5, 1], d_model=12).eval()
    x = torch.randn(1, 100, 4)
    y = x.clone()
    y[:, 40:60] += 5.0  # change patch 2 only
    a, b = tok(x), tok(y)
    changed = (a - b).abs().amax(-1)[0] > 1e-6
    assert changed.tolist() == [False, False, True, False, False]


def test_subject_layer_and_readout_share_one_adapter_api():
    ad = SubjectAdapter({"a": 5}, 16, readout=True)
    assert ad(torch.randn(2, 7, 16), "a").shape == (2, 7, 5)
    with pytest.raises(ValueError, match="kind='linear'"):
        SubjectAdapter({"a": 5}, 16, kind="sttm", readout=True)


@pytest.fixture
def brain():
    return {"sub-01": torch.randn(3, 4, 250), "sub-02": torch.randn(2, 6, 250)}


SMALL = dict(encoder=DuinEncoderConfig(n_times=250, patch_len=25, filters=[8, 8, 4], kernels=[5, 3, 3], strides=[5, 1, 1],
                                       d_model=20, n_blocks=1, n_heads=2),
             n_codes=32, code_dim=8, decoder_blocks=1)


def test_vqvae_reconstructs_every_subjects_own_channels(brain):
    m = DuinModel(stage="vqvae", subjects={"sub-01": 4, "sub-02": 6}, **SMALL)
    recon, idx, commit = m.reconstruct(brain)
    assert {s: r.shape for s, r in recon.items()} == {"sub-01": (3, 4, 250), "sub-02": (2, 6, 250)}
    assert idx.shape == (5, 10) and idx.max() < 32
    mse, _, _ = m.reconstruction_loss(brain)
    mse.backward()
    assert m.encoder.subject_layer.maps["sub-02"].weight.grad.abs().sum() > 0  # straight-through reaches the encoder


def test_masked_patches_only_see_the_mask_token(brain):
    m = DuinModel(stage="mae", subjects={"sub-01": 4, "sub-02": 6}, **SMALL).eval()
    mask = torch.zeros(5, 10, dtype=torch.bool)
    mask[:, 3] = True
    changed = {s: x.clone() for s, x in brain.items()}
    changed["sub-01"][:, :, 75:100] += 10.0  # patch 3 of sub-01's epochs
    assert torch.allclose(m.code_logits(brain, mask), m.code_logits(changed, mask))
    none = torch.zeros_like(mask)  # unmasked, the same change is seen
    assert not torch.allclose(m.code_logits(brain, none), m.code_logits(changed, none))


def test_classifier_outputs_one_logit_per_word_and_new_subjects_get_fresh_layers(brain):
    m = DuinModel(stage="classify", subjects={"sub-01": 4, "sub-02": 6}, n_classes=7, **SMALL)
    assert m(brain).shape == (5, 7)
    m.add_subject("sub-03", 9)
    assert m({"sub-03": torch.randn(2, 9, 250)}).shape == (2, 7)
    with pytest.raises(ValueError, match="n_classes"):
        DuinModel(stage="classify", subjects={"a": 3}, **SMALL)


def test_release_round_trip_is_bit_exact(tmp_path, brain):
    m = DuinModel(stage="classify", subjects={"sub-01": 4, "sub-02": 6}, n_classes=7, **SMALL).eval()
    save_release(m, tmp_path / "release")
    back = load_release(tmp_path / "release")
    assert torch.equal(m(brain), back(brain))
