"""WaveEncoder: causal over TRs, shapes, the contrastive loss is the average of two InfoNCEs with own scales."""

from __future__ import annotations

import torch

from litbrain import losses
from litbrain.nn.wave import WaveConfig, WaveEncoder
from litbrain.tasks.wave import wave_loss


def test_attention_is_causal_over_trs_and_the_heads_have_the_target_widths():
    config = WaveConfig.examples()[0]
    torch.manual_seed(0)
    model = WaveEncoder(config).eval()
    x = config.example_input(3)
    h = model(x)
    assert h.shape == (3, config.max_len, config.d_model)
    y = x.clone()
    y[:, 5:] += 10.0  # change the future only
    torch.testing.assert_close(model(y)[:, :5], h[:, :5])
    assert not torch.allclose(model(y)[:, 5:], h[:, 5:])
    out = model.project(model.embed(x))
    assert out["image"].shape == (3, 6) and out["text"].shape == (3, 5)


def test_the_losses_are_what_they_say():
    config = WaveConfig.examples()[0]
    torch.manual_seed(0)
    model = WaveEncoder(config).eval()
    with torch.no_grad():
        model.logit_scale_text.fill_(1.0)
    g = torch.Generator().manual_seed(1)
    batch = {"bold": config.example_input(4), "image_embedding": torch.randn(4, 6, generator=g),
             "text_embedding": torch.randn(4, 5, generator=g)}
    out = model.project(model.embed(batch["bold"]))
    want = (losses.info_nce(out["image"], batch["image_embedding"], 1 / torch.tensor(config.logit_scale_init).exp())
            + losses.info_nce(out["text"], batch["text_embedding"], 1 / torch.e)) / 2
    torch.testing.assert_close(wave_loss(model, batch, "contrastive"), want, rtol=1e-4, atol=1e-5)
    x = batch["bold"]
    nxt = torch.mean((model.reconstruct(model(x[:, :-1])) - x[:, 1:]) ** 2)
    torch.testing.assert_close(wave_loss(model, batch, "next_tr"), nxt)
    m = torch.rand(x.shape, generator=torch.Generator().manual_seed(3)) < 0.2
    masked = torch.mean((model.reconstruct(model(x.masked_fill(m, 0)))[m] - x[m]) ** 2)
    torch.testing.assert_close(wave_loss(model, batch, "masked_parcel", 0.2, torch.Generator().manual_seed(3)), masked)


def test_parcel_dropout_zeroes_whole_parcels_of_a_window_and_rescales_the_kept_ones():
    config = WaveConfig.examples()[0]
    torch.manual_seed(0)
    model = WaveEncoder(config).eval()
    seen = []
    embed = model.embed
    model.embed = lambda x, subject=None: (seen.append(x), embed(x, subject))[1]
    g = torch.Generator().manual_seed(1)
    x = config.example_input(64)
    batch = {"bold": x, "image_embedding": torch.randn(64, 6, generator=g), "text_embedding": torch.randn(64, 5, generator=g)}
    wave_loss(model, batch, "contrastive", generator=torch.Generator().manual_seed(2), parcel_dropout=0.25)
    (xd,) = seen
    dropped = (xd == 0).all(1)  # (B, P): a parcel is zeroed at every TR of its window, or kept
    kept = ~dropped[:, None, :].expand_as(x)
    torch.testing.assert_close(xd[kept], x[kept] / 0.75)
    assert abs(dropped.float().mean().item() - 0.25) < 0.05
    assert dropped.any(0).all() and not dropped.all(0).any()  # which parcels differs between windows
    seen.clear()
    wave_loss(model, batch, "contrastive")  # off by default: the batch goes in as it is
    torch.testing.assert_close(seen[0], x)
