"""Du-IN as its authors built it (liulab-repository/Du-IN): parity at Du-IN's sizes.

10 channels, 3 s at 1 kHz (3000 samples), 61 words. The reference numbers below were read off the
authors' code (models/duin/*, params/duin_params.py, dataset seeg_he2023xuanwu) by instantiating
duin_vqvae / duin_mae / duin_cls with one subject of 10 channels and counting trainable parameters:
5,801,386 / 3,890,304 / 4,239,709. Their stage 3 also builds a VQ block (pre_proj 36,064 + LayerNorm
128 + post_proj 10,400 = 46,592) and a weight-0 contrastive block (2 x Linear(160, 32) = 10,304) that
nothing reads, so the classifier to match is 4,239,709 - 46,592 - 10,304 = 4,182,813.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from litbrain.nn.duin import DuinConfig, DuinModel, PostNormBlock, sincos_positions
from litbrain.nn.vector_quantizer import VectorQuantizer, kmeans_cosine

SUBJECTS = {"sub-01": 10}
N_TIMES = 3000

# Per component, from the authors' modules (weights + biases):
SUBJECT_LAYER = 10 * 16 + 16                                      # SubjectLayer W (10 x 16) + B (16)
TOKENIZER = (16 * 128 * 19 + 128) + 2 * 128 + (128 * 128 * 3 + 128) + 2 * 128 + (128 * 16 * 3 + 16) + 2 * 16  # convs + BNs
BLOCK = (3 * (160 * 512 + 512) + 2 * 2 * 64 + (512 * 160 + 160) + 2 * 160   # q,k,v 512 wide, QK-norm, proj, LN
         + (160 * 320 + 320) + (320 * 160 + 160) + 2 * 160)                 # ReLU FFN d_ff 320, LN
VQ = (160 * 160 + 160) + (160 * 64 + 64) + 2 * 64 + (64 * 160 + 160)        # tanh-MLP in, LayerNorm + linear out
DECONV = ((160 * 128 * 3 + 128) + (128 * 128 * 3 + 128) + (128 * 128 * 10 + 128) + (128 * 128 * 9 + 128)
          + (128 * 16 * 19 + 16) + (16 * 16 + 16))                # TimeRGSHead: 5 transposed convs + Linear(16, 16)
READOUT = 16 * 10 + 10                                            # de-subject layer
MAE_HEAD = 160 * 2048 + 2048 + 160                                # code head + mask embedding
CLS_HEAD = (4800 * 128 + 128) + (128 * 61 + 61)                   # Flatten -> 4800->128 -> ReLU -> 128->61


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


def model(stage: str) -> DuinModel:
    torch.manual_seed(0)
    return DuinModel(DuinConfig.authors(stage=stage, subjects=SUBJECTS, n_classes=61, encoder=dict(n_times=N_TIMES)))


def test_component_sums_are_the_authors_totals():
    enc = SUBJECT_LAYER + TOKENIZER + 8 * BLOCK
    assert enc + VQ + 4 * BLOCK + DECONV + READOUT == 5_801_386
    assert enc + MAE_HEAD == 3_890_304
    assert enc + CLS_HEAD == 4_239_709 - 46_592 - 10_304 == 4_182_813


def test_parameter_counts_per_component_equal_the_authors():
    vq = model("vqvae")
    e = vq.encoder
    assert n_params(e.subject_layer) == SUBJECT_LAYER
    assert n_params(e.tokenizer) == TOKENIZER
    assert [n_params(b) for b in e.blocks.blocks] == [BLOCK] * 8
    assert n_params(vq.to_code) + n_params(vq.vq) + n_params(vq.from_code) == VQ
    assert [n_params(b) for b in vq.decoder.blocks] == [BLOCK] * 4
    assert n_params(vq.to_signal) == DECONV and n_params(vq.readout) == READOUT
    assert n_params(vq) == 5_801_386
    mae = model("mae")
    assert n_params(mae.code_head) + mae.encoder.mask_token.numel() == MAE_HEAD
    assert n_params(mae) == 3_890_304
    cls = model("classify")
    assert n_params(cls.head) == CLS_HEAD and cls.encoder.mask_token is None
    assert n_params(cls) == 4_182_813
    linears = [m for m in cls.head if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(4800, 128), (128, 61)]
    assert any(isinstance(m, torch.nn.ReLU) for m in cls.head)


def test_an_epoch_is_30_tokens_of_160_and_positions_are_fixed_sincos():
    m = model("classify").eval()
    x = {"sub-01": torch.randn(2, 10, N_TIMES)}
    assert m.encoder(x).shape == (2, 30, 160)
    assert m(x).shape == (2, 61)
    pos = m.encoder.pos[0]
    assert not isinstance(pos, torch.nn.Parameter) and "encoder.pos" not in m.state_dict()
    assert torch.allclose(pos[3, 0::2], torch.sin(3 * 10000 ** (-torch.arange(0, 160, 2) / 160)), atol=1e-5)
    assert torch.allclose(pos[3, 1::2], torch.cos(3 * 10000 ** (-torch.arange(0, 160, 2) / 160)), atol=1e-5)
    vq = model("vqvae")
    assert torch.equal(vq.dec_pos, vq.encoder.pos)  # one table before encoder and decoder


def reference_block(x, w):
    """Post-norm block with LayerNorm on q and k, written out: 8 heads of 64, ReLU FFN, no dropout."""
    def ln(t, g, b):
        mu = t.mean(-1, keepdim=True)
        var = ((t - mu) ** 2).mean(-1, keepdim=True)
        return (t - mu) / torch.sqrt(var + 1e-5) * g + b

    b, p, _ = x.shape
    q = (x @ w["q.weight"].T + w["q.bias"]).reshape(b, p, 8, 64).transpose(1, 2)
    k = (x @ w["k.weight"].T + w["k.bias"]).reshape(b, p, 8, 64).transpose(1, 2)
    v = (x @ w["v.weight"].T + w["v.bias"]).reshape(b, p, 8, 64).transpose(1, 2)
    q, k = ln(q, w["norm_q.weight"], w["norm_q.bias"]), ln(k, w["norm_k.weight"], w["norm_k.bias"])
    s = q @ k.transpose(-1, -2) / 8.0  # sqrt(d_head = 64)
    a = torch.exp(s - s.amax(-1, keepdim=True))
    a = a / a.sum(-1, keepdim=True)
    h = (a @ v).transpose(1, 2).reshape(b, p, 512) @ w["proj.weight"].T + w["proj.bias"]
    x = ln(x + h, w["norm_attn.weight"], w["norm_attn.bias"])
    f = torch.clamp(x @ w["ff1.weight"].T + w["ff1.bias"], min=0) @ w["ff2.weight"].T + w["ff2.bias"]
    return ln(x + f, w["norm_ff.weight"], w["norm_ff.bias"])


def test_a_block_equals_the_written_out_post_norm_qk_norm_block():
    enc = model("classify").encoder
    block = enc.blocks.blocks[0]
    assert isinstance(block, PostNormBlock)
    g = torch.Generator().manual_seed(1)
    w = {}
    with torch.no_grad():
        for name, p in block.named_parameters():  # fixed weights, norms' gains and biases not at their init
            p.copy_(torch.randn(p.shape, generator=g) * (0.05 if p.ndim == 2 else 0.5) + (1.0 if name.endswith("norm_q.weight") else 0.0))
            w[name.replace("attn.", "", 1) if name.startswith("attn.") else name] = p.detach().clone()
    x = torch.randn(3, 30, 160, generator=g)
    assert torch.allclose(block.eval()(x), reference_block(x, w), atol=1e-5)


def test_init_is_trunc_normal_002_scaled_by_depth():
    blocks = model("classify").encoder.blocks.blocks
    for l in (0, 3, 7):
        expected = 0.02 / math.sqrt(2 * (l + 1))
        for lin in (blocks[l].attn.q, blocks[l].ff2):
            assert abs(float(lin.weight.detach().std()) / expected - 1) < 0.05
            assert float(lin.bias.abs().max()) == 0.0


def test_tokenizer_is_conv_batchnorm_with_no_nonlinearity():
    tok = model("classify").encoder.tokenizer.eval()
    mods = list(tok.convs)
    assert [type(m).__name__ for m in mods] == ["Conv1d", "BatchNorm1d"] * 3
    x, y, zero = torch.randn(2, 300, 16), torch.randn(2, 300, 16), torch.zeros(2, 300, 16)
    with torch.no_grad():
        for m in mods:  # running statistics away from identity, so the check covers them
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    z = tok(zero)
    assert torch.allclose(tok(x + y) - z, (tok(x) - z) + (tok(y) - z), atol=1e-4)  # affine: no nonlinearity


def test_complementary_masks_score_every_patch_without_showing_it():
    m = model("mae").eval()
    x = {"sub-01": torch.randn(2, 10, N_TIMES)}
    mask = torch.zeros(2, 30, dtype=torch.bool)
    mask[:, ::2] = True
    logits, scored = m.masked_code_logits(x, mask)
    assert logits.shape == (2, 30, 2048) and bool(scored.all())
    for j in (4, 5):  # one masked and one unmasked patch: its own content never reaches its logits
        y = {"sub-01": x["sub-01"].clone()}
        y["sub-01"][..., j * 100:(j + 1) * 100] += 5.0
        other, _ = m.masked_code_logits(y, mask)
        assert torch.allclose(logits[:, j], other[:, j], atol=1e-5)
        assert not torch.allclose(logits, other, atol=1e-3)


def test_authors_vq_moves_used_codes_to_the_normalised_batch_mean_and_keeps_unused_ones():
    torch.manual_seed(0)
    vq = VectorQuantizer(16, 8, decay=0.9, commitment=1.0, rule="authors", kmeans_init=False).train()
    before = vq.codebook.clone()
    z = torch.randn(40, 8) + 3.0 * before[0]  # pulls most vectors to a few codes
    q, idx, loss = vq(z)
    zn = F.normalize(z, dim=-1)
    counts = torch.bincount(idx, minlength=16)
    assert (counts == 0).any() and (counts > 0).any()
    for c in range(16):
        if counts[c] == 0:
            assert torch.equal(vq.codebook[c], before[c])
        else:
            mean = F.normalize(zn[idx == c].mean(0), dim=0)
            assert torch.allclose(vq.codebook[c], F.normalize(0.9 * before[c] + 0.1 * mean, dim=0), atol=1e-6)
    assert torch.allclose(loss, F.mse_loss(zn, before[idx]), atol=1e-6)  # commitment 1.0


def test_cosine_kmeans_starts_from_samples_and_returns_unit_codes():
    x = F.normalize(torch.randn(50, 4), dim=-1)
    centres = kmeans_cosine(x, 8, iters=1)
    assert centres.shape == (8, 4) and torch.allclose(centres.norm(dim=1), torch.ones(8), atol=1e-5)
    seeds = kmeans_cosine(x, 3, iters=0)
    assert all(any(torch.allclose(s, r) for r in x) for s in seeds)  # random samples, not k-means++


def test_sincos_needs_an_even_width():
    with pytest.raises(ValueError, match="even d_model"):
        sincos_positions(4, 7)


def test_authors_vq_with_init_after_seeds_the_codes_on_later_outputs_so_they_stay_alive():
    """With the authors' rule a code that gets no vectors never moves: codes seeded on the first
    batch die when the encoder's outputs move on and draw together (here: 8 spread clusters A for 3
    steps, then 8 clusters B around one direction). ``init_after=3`` bypasses the quantiser for those
    steps and seeds the codes on B, so they stay in use."""
    g = torch.Generator().manual_seed(0)
    a = F.normalize(torch.randn(8, 8, generator=g), dim=-1)  # spread outputs of the random encoder
    b = F.normalize(torch.randn(8, generator=g) + 0.15 * torch.randn(8, 8, generator=g), dim=-1)  # pulled together later
    batch = lambda c: c.repeat_interleave(16, 0) + 0.02 * torch.randn(128, 8, generator=g)  # noqa: E731
    used = {}
    for init_after in (0, 3):
        torch.manual_seed(1)
        vq = VectorQuantizer(8, 8, decay=0.99, commitment=1.0, rule="authors", init_after=init_after).train()
        start = vq.codebook.clone()
        for step in range(3):
            z = batch(a)
            q, _, loss = vq(z)
            if init_after:  # bypassed: unit vectors straight on, no loss, no codebook change, no init yet
                assert torch.allclose(q, F.normalize(z, dim=-1)) and float(loss) == 0.0
                assert torch.equal(vq.codebook, start) and not bool(vq.initialised)
        for _ in range(5):
            vq(batch(b))
        vq.reset_usage()
        vq.eval()(batch(b))
        used[init_after] = vq.usage()
    print(f"codes used on B: init on the first batch {used[0]:.3f}, init_after=3 {used[3]:.3f}")
    assert used[3] >= 0.75
    assert used[0] < 0.5  # the authors' init on the first batch: most codes stay where set A was


def test_vq_init_after_is_a_config_key_and_old_state_dicts_still_load():
    cfg = DuinConfig.examples()[0].replace(vq="authors", vq_init_after=5)
    model = DuinModel(cfg)
    assert model.vq.init_after == 5
    state = {k: v for k, v in model.state_dict().items() if not k.endswith("steps_before_init")}
    DuinModel(cfg).load_state_dict(state)  # a checkpoint from before the key: loads, counted as done
    with pytest.raises(ValueError, match="init_after"):
        VectorQuantizer(4, 2, init_after=-1)
