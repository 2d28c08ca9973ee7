"""The LLaVA-style VLM task with vision-token dropping (tiny timm ViT + tiny Llama, CPU)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from litbrain.datamodules.vqa.datamodule import VqaDataModule

from litbrain.nn.encoders import causal_lm as build_causal_lm
from litbrain.nn.encoders import vision_tower as build_vision_encoder
from litbrain.nn.lm_dropping import AttentionWeightsUnavailableError, UnsupportedLMError
from litbrain.nn.vlm import DroppingConfig, VisionLanguageModel

torch.set_num_threads(1)
REPO = Path(__file__).resolve().parents[2]
VISION = {"encoder": "timm:vit_tiny_patch16_224",
          "kwargs": {"img_size": 36, "patch_size": 4, "embed_dim": 32, "depth": 3, "num_heads": 2}}
LM = {"model_type": "llama", "hidden_size": 32, "num_hidden_layers": 4, "num_attention_heads": 4,
      "num_key_value_heads": 2, "intermediate_size": 64}


@pytest.fixture(scope="module")
def dm():
    d = VqaDataModule(n_train=32, n_val=16, n_test=16, batch_size=8)
    d.setup("fit")
    return d


@pytest.fixture(scope="module")
def batch(dm):
    return next(iter(dm.train_dataloader()))


def _model(dm, dropping=None, attn="eager", lm=None):
    torch.manual_seed(0)
    tok = dm.tokenizer
    vit = build_vision_encoder(VISION)
    lm = build_causal_lm(lm or {**LM, "vocab_size": dm.vocab_size}, attn)
    return VisionLanguageModel(vit, lm, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, dropping=dropping)


SETTINGS = {
    "tome": DroppingConfig("tome", keep=0.25),
    "fastv": DroppingConfig("fastv", keep=0.25, lm_layers=[1]),
    "mustdrop_1": DroppingConfig("mustdrop", stages=[1], keep=0.25),
    "mustdrop_123": DroppingConfig("mustdrop", stages=[1, 2, 3], keep=0.25, stage1_keep=0.5, lm_layers=[1, 2]),
}


@pytest.mark.parametrize("name", list(SETTINGS))
def test_training_step_with_dropping_reaches_projector_and_vit(dm, batch, name):
    m = _model(dm, SETTINGS[name]).train()
    out = m(batch)
    assert torch.isfinite(out["loss"])
    assert float(out["vision_tokens"]) <= 81
    out["loss"].backward()
    for p in (m.projector[0].weight, m.vit.patch_embed.proj.weight, m.vit.blocks[-1].mlp.fc2.weight):
        assert p.grad is not None and p.grad.abs().sum() > 0
    vpl = out["vision_per_layer"].float().mean(1)
    assert vpl[-1] <= 0.25 * 81 + 1  # 25% kept in the last LM layer (20 tokens; ToMe may keep 20)


def test_disabled_dropping_equals_dense(dm, batch):
    m = _model(dm).eval()
    dense = m(batch)
    gen_dense, _ = m.generate(batch)
    # stage 2 + 3 with thresholds that keep everything: same code path as dense, same numbers
    m.dropping = DroppingConfig("mustdrop", stages=[2], lm_layers=[1, 2], global_thr=0.0, individual_thr=0.0)
    same = m(batch)
    assert torch.equal(same["logits"], dense["logits"])
    assert torch.equal(m.generate(batch)[0], gen_dense)


def test_generate_and_accuracy(dm, batch):
    m = _model(dm, SETTINGS["mustdrop_123"]).eval()
    gen, pre = m.generate(batch, max_new_tokens=3)
    assert gen.shape[0] == 8 and gen.shape[1] <= 3
    ok = m.answer_correct(batch["answer"], batch["answer"], batch["answer_mask"])
    assert ok.all()
    assert pre.vision_per_layer[-1].max() <= 21


def test_sdpa_lm_with_dropping_clear_error(dm):
    with pytest.raises(AttentionWeightsUnavailableError, match="attn_implementation='eager'"):
        _model(dm, SETTINGS["fastv"], attn="sdpa")
    _model(dm, SETTINGS["tome"], attn="sdpa")  # ViT-side dropping only: sdpa is fine


def test_unsupported_lm_clear_error(dm):
    gpt2 = {"model_type": "gpt2", "n_embd": 32, "n_layer": 2, "n_head": 2, "vocab_size": dm.vocab_size}
    with pytest.raises(UnsupportedLMError, match="not supported"):
        _model(dm, lm=gpt2)


@pytest.mark.parametrize("kw, msg", [
    ({"method": "tome"}, "needs dropping.keep"),
    ({"method": "mustdrop", "keep": 0.0}, "must be > 0"),
    ({"method": "mustdrop", "keep": 500}, "1..81"),
    ({"method": "mustdrop", "stages": [4]}, "subset"),
])
def test_bad_dropping_config(dm, kw, msg):
    with pytest.raises(ValueError, match=msg):
        _model(dm, DroppingConfig(**kw))


def test_litbrain_fit_demo_config(tmp_path):
    from litbrain.cli import main

    run = tmp_path / "run"
    main([
        "fit", "--config", str(REPO / "configs" / "vlm" / "synthetic_demo.yaml"),
        "--data.init_args.n_train", "32", "--data.init_args.n_val", "16", "--data.init_args.n_test", "16",
        "--data.init_args.batch_size", "8",
        "--model.init_args.net.vision", json.dumps(VISION),
        "--trainer.max_steps", "3", "--trainer.val_check_interval", "3", "--trainer.limit_val_batches", "1",
        "--trainer.default_root_dir", str(run),
    ])
    assert (run / "checkpoints" / "last.ckpt").is_file()
    metrics = (run / "logs" / "version_0" / "metrics.csv").read_text()
    assert "val/acc" in metrics and "val/vision_tokens" in metrics
    from litbrain.tasks.vlm import VisionLanguageTask

    task = VisionLanguageTask.load_from_checkpoint(run / "checkpoints" / "last.ckpt", weights_only=False)
    assert task.model is not None and task.hparams.net["lm"]["vocab_size"] > 0
    # the VLM exports like every model, its tokenizer beside the weights
    from litbrain.release import export_release, load_release, load_tokenizer

    release = export_release(run / "checkpoints" / "last.ckpt", tmp_path / "release")
    model, tok = load_release(release), load_tokenizer(release)
    assert isinstance(model, VisionLanguageModel) and len(tok) == task.hparams.net["lm"]["vocab_size"]
    from litbrain.datamodules.vqa.synthetic import world_tokenizer

    words = "what colour is the shape at top left ?"
    assert tok.encode(words, add_special_tokens=False) == world_tokenizer().encode(words, add_special_tokens=False)
    batch = next(iter(VqaDataModule(n_train=8, n_val=8, n_test=8, batch_size=4).val_dataloader()))
    task.model.eval()
    with torch.no_grad():
        assert torch.equal(model.generate(batch)[0], task.model.generate(batch)[0])


def test_sincos_position_init_and_bad_value():
    from litbrain.nn.encoders import sincos_2d

    vit = build_vision_encoder({**VISION, "pos_embed_init": "sincos"})
    pe = vit.pos_embed[0, vit.num_prefix_tokens:]
    assert torch.equal(pe, sincos_2d(9, 32)) and vit.pos_embed.requires_grad
    assert len({tuple(r.tolist()) for r in pe}) == 81  # every patch position distinct
    with pytest.raises(ValueError, match="pos_embed_init"):
        build_vision_encoder({**VISION, "pos_embed_init": "rope"})


def test_vision_pos_adds_the_sincos_of_each_tokens_centre(dm, batch):
    """vision_pos=sincos: the projected tokens gain sincos_position(centre); for dense tokens that is
    exactly sincos_2d of the patch grid, and merged tokens get their patches' mean position."""
    from litbrain.nn.encoders import sincos_2d, sincos_position

    plain = _model(dm).eval()
    torch.manual_seed(0)
    tok = dm.tokenizer
    lm = build_causal_lm({**LM, "vocab_size": dm.vocab_size}, "eager")
    pos = VisionLanguageModel(build_vision_encoder(VISION), lm, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id,
                              vision_pos="sincos").eval()
    pos.load_state_dict(plain.state_dict())
    with torch.no_grad():
        _, a = plain.encode_images(batch["image"])
        _, b = pos.encode_images(batch["image"])
        torch.testing.assert_close(b - a, sincos_2d(9, 32).expand_as(a))
        cfg = DroppingConfig("mustdrop", stages=[1], keep=0.25)
        vt, a = plain.encode_images(batch["image"], cfg)
        _, b = pos.encode_images(batch["image"], cfg)
        torch.testing.assert_close(b - a, sincos_position(vt.centre, 32) * vt.mask[..., None])
    assert not torch.equal(pos(batch)["loss"], plain(batch)["loss"])
    with pytest.raises(ValueError, match="vision_pos='rope'"):
        VisionLanguageModel(build_vision_encoder(VISION), lm, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, vision_pos="rope")


def _rope_model(dm, vision_rope):
    torch.manual_seed(0)
    tok = dm.tokenizer
    lm = build_causal_lm({**LM, "vocab_size": dm.vocab_size}, "eager")
    return VisionLanguageModel(build_vision_encoder(VISION), lm, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id,
                               vision_rope=vision_rope).eval()


def test_grid_rope_keeps_each_tokens_patch_position_through_merges(dm, batch):
    """vision_rope=grid: a vision token's rotary id is 1 + its patch centre's raster index (a merged
    3x3 window: its middle patch), the question starts at 1 + 81 whatever was merged, and dense
    inputs are the same as with consecutive ids (so dense outputs do not change)."""
    grid, packed = _rope_model(dm, "grid"), _rope_model(dm, "packed")
    packed.load_state_dict(grid.state_dict())
    with torch.no_grad():
        _, g = grid.lm_inputs(batch, with_answer=True)
        _, p = packed.lm_inputs(batch, with_answer=True)
        for f in ("embeds", "attention_mask", "kind", "key", "targets"):
            assert torch.equal(getattr(g, f), getattr(p, f)), f
        real = g.attention_mask.bool()
        assert torch.equal(g.position_ids[real], p.position_ids[real])  # padding ids do not matter
        assert torch.equal(grid(batch)["logits"], packed(batch)["logits"])

        cfg = DroppingConfig("mustdrop", stages=[1], keep=0.25)  # 81 -> <= 20: windows merge
        vt, g = grid.lm_inputs(batch, cfg, left_pad=True)
        _, p = packed.lm_inputs(batch, cfg, left_pad=True)
    n_q = batch["question_mask"].sum(1)
    for b in range(batch["image"].shape[0]):
        vis = g.kind[b] == 2
        ids = g.position_ids[b][vis]
        r, c = vt.centre[b][vt.mask[b]].unbind(-1)
        assert sorted(ids.tolist()) == sorted((1 + 9 * r.round().long() + c.round().long()).tolist())
        assert torch.all(ids[1:] > ids[:-1])  # raster order, one token per patch centre
        merged = vt.size[b][vt.mask[b]] == 9
        assert merged.any()
        rc = vt.centre[b][vt.mask[b]][merged]
        assert torch.equal(rc, rc.round()) and torch.all(rc % 3 == 1)  # a window's middle patch
        text = g.position_ids[b][(g.kind[b] == 1) & g.attention_mask[b].bool()]
        assert text[0] == 0 and text[1:].tolist() == list(range(82, 82 + int(n_q[b])))
        # packed: consecutive ids, so the question moves up by the merged tokens
        ptext = p.position_ids[b][(p.kind[b] == 1) & p.attention_mask[b].bool()]
        assert ptext[1] == 1 + int(vis.sum()) < 82
    with pytest.raises(ValueError, match="vision_rope='rows'"):
        _rope_model(dm, "rows")


@pytest.mark.parametrize("name", ["tome", "mustdrop_1"])
def test_lm_inputs_carry_each_merged_tokens_size_to_the_lm(dm, batch, name):
    """The sizes the LM's proportional attention uses add up to the full patch grid, per sample."""
    m = _model(dm, SETTINGS[name]).eval()
    with torch.no_grad():
        vt, inp = m.lm_inputs(batch, left_pad=True)
        vis = inp.kind == 2  # KIND_VISION
        assert torch.equal((inp.size * vis).sum(1), torch.full((batch["image"].shape[0],), 81.0))
        assert bool((inp.size[vis] > 1).any()) and torch.equal(inp.size[~vis], torch.ones(int((~vis).sum())))
        merged = m.generate(batch, max_new_tokens=1)[1].logits
        m.dropping = DroppingConfig(**{**SETTINGS[name].__dict__, "proportional_attention": False})
        _, plain_inp = m.lm_inputs(batch, left_pad=True)
        assert torch.equal(plain_inp.size, torch.ones_like(plain_inp.size))
        assert not torch.allclose(m.generate(batch, max_new_tokens=1)[1].logits, merged)  # the sizes reach the LM
