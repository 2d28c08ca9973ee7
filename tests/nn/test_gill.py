"""GILL's model: only the [IMG] rows of the frozen LM change, prompt_embeds fit the UNet, greedy inference
forces [IMG1..7] after [IMG0], releases hold the trained parts only and round-trip bit for bit."""

from __future__ import annotations

import pytest
import torch

from litbrain.benchmarks.gill import random_batch
from litbrain.errors import ConfigError
from litbrain.nn.gill import GillModel, check_cross_attention_width, tiny_llama
from litbrain.tasks.gill import GillTask, gill_losses
from tests.helpers.gill import tiny_net, tiny_pipeline


def _model(out_dim: int = 24, **kw) -> GillModel:
    return GillModel(tiny_net(tiny_llama(vocab_size=40, hidden_size=16, intermediate_size=32), out_dim=out_dim,
                              tokens=6, **kw))


def _train(model: GillModel, steps: int = 3) -> None:
    task = GillTask(net=model.config)
    task.model = model
    opt = task.configure_optimizers()["optimizer"]  # the task's own AdamW groups (decay on, except the masked rows)
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        loss = gill_losses(model, random_batch(model, 4, 5, 6, g))["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad()
        task.on_train_batch_end(None, None, 0)


def test_only_the_img_rows_change_and_get_the_frozen_rows_mean_norm():
    torch.manual_seed(0)
    model = _model().train()
    before = {k: v.clone() for k, v in model.lm.state_dict().items()}
    heads = {k: v.clone() for k, v in model.mapper.state_dict().items()}
    _train(model)
    v = model.base_vocab
    mats = {id(w) for w in model.embedding_matrices()}
    names = {n for n, p in model.lm.named_parameters() if id(p) in mats}
    assert len(names) == 2  # untied Llama: input and output embeddings
    for name, now in model.lm.state_dict().items():
        if name in names:
            assert torch.equal(now[:v], before[name][:v]), f"{name}: a frozen row moved"
            assert not torch.equal(now[v:], before[name][v:]), f"{name}: the [IMG] rows did not train"
            frozen = now[:v].norm(dim=1).mean()
            assert torch.allclose(now[v:].norm(dim=1), frozen.expand(8), rtol=1e-5)
        else:
            assert torch.equal(now, before[name]), f"{name} changed"
    assert any(not torch.equal(heads[k], model.mapper.state_dict()[k]) for k in heads)  # the mapper did train


def test_decay_on_the_embedding_matrices_would_move_frozen_rows():
    """The reason the masked matrices sit in the no-decay group: AdamW's decay ignores the gradient mask."""
    torch.manual_seed(0)
    model = _model().train()
    w = model.embedding_matrices()[0]
    before = w.detach().clone()
    opt = torch.optim.AdamW([w], lr=1e-2, weight_decay=0.1)
    gill_losses(model, random_batch(model, 2, 4, 4, torch.Generator().manual_seed(0)))["loss"].backward()
    assert torch.count_nonzero(w.grad[:model.base_vocab]) == 0  # the gradient mask holds
    opt.step()
    assert not torch.equal(w.detach()[:model.base_vocab], before[:model.base_vocab])


def test_prompt_embeds_meet_the_unets_cross_attention_width_and_generate():
    torch.manual_seed(0)
    model = _model(out_dim=24).eval()
    pipe = tiny_pipeline(cross_attention_dim=24)
    x = model.config.example_input(2)
    with torch.no_grad():
        emb = model(x)["prompt_embeds"]
    assert emb.shape == (2, 6, pipe.unet.config.cross_attention_dim)
    from litbrain.nn.generation import generate_from_embeddings

    imgs = generate_from_embeddings(pipe, emb, torch.zeros_like(emb[:1]), seed=0, steps=2, guidance_scale=3.0)
    assert imgs.shape == (2, 3, 16, 16) and float(imgs.min()) >= 0 and float(imgs.max()) <= 1


def test_a_mapper_narrower_than_the_unet_is_one_line_naming_both_widths():
    model = _model(out_dim=24).eval()
    pipe = tiny_pipeline(cross_attention_dim=32)
    from litbrain.evaluation.gill import GillInference
    from tests.helpers.gill import tiny_world  # noqa: F401  (helpers import cleanly)

    tok = _img_tokenizer(model)
    with pytest.raises(ConfigError) as err:
        GillInference(model, tok, torch.randn(3, 12), pipe)
    msg = str(err.value)
    assert "out_dim=24" in msg and "cross_attention_dim=32" in msg and "fix:" in msg and "\n" not in msg
    with pytest.raises(ConfigError, match="out_dim=768 but .* cross_attention_dim=1024"):
        check_cross_attention_width(768, 1024)


def _img_tokenizer(model: GillModel):
    from litbrain.datamodules.distill.synthetic import train_tokenizer
    from litbrain.datamodules.gill import gill_tokenizer

    tok = train_tokenizer([" ".join(f"w{i}" for i in range(model.base_vocab - 4))])
    return gill_tokenizer(tok, model.base_vocab, model.config.n_img_tokens)


def test_generation_from_an_lm_without_img_tokens_is_one_clear_line():
    from litbrain.datamodules.distill.synthetic import train_tokenizer
    from litbrain.evaluation.gill import GillInference, check_img_tokens

    with pytest.raises(ConfigError, match=r"has no \[IMG\] tokens .*fix:"):
        check_img_tokens(train_tokenizer(["a b c"]), 8, "lm")
    model = _model()
    with pytest.raises(ConfigError, match=r"no \[IMG\] tokens"):
        GillInference(model, train_tokenizer(["a b c"]), torch.randn(3, 12))


def _steer(model: GillModel, token: int) -> None:
    """Make the LM's next-token argmax ``token`` everywhere (a zero head with one bias)."""
    head = torch.nn.Linear(model.width, model.base_vocab + 8, bias=True)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    head.bias.data[token] = 5.0
    model.lm.lm_head = head


def test_greedy_inference_forces_img1_to_7_after_img0_and_reads_their_states():
    torch.manual_seed(0)
    model = _model().eval()
    _steer(model, model.base_vocab)  # the LM says [IMG0] ... and then keeps saying [IMG0]: the rest must be forced
    ids = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    ans = model.answer(ids, mask, max_new_tokens=4, eos_id=2)
    assert ans["has_img"].all()
    assert ans["tokens"].tolist() == [model.img_token_ids] * 2
    full = torch.tensor([[1, 5, 6, 7, *model.img_token_ids], [1, 8, 9, *model.img_token_ids, 0]])
    fmask = torch.ones_like(full, dtype=torch.bool)
    fmask[1, -1] = False
    ref = model.img_forward(full, fmask)
    assert torch.allclose(ans["img_states"], ref["img_states"], atol=1e-5)
    model.lm.lm_head.bias.data[model.base_vocab] = 4.0  # <eos> (2) leads by 1 ...
    model.lm.lm_head.bias.data[2] = 5.0
    assert not model.answer(ids, mask, 2, eos_id=2)["has_img"].any()
    assert model.answer(ids, mask, 2, eos_id=2, img_logit_scale=1.5)["has_img"].all()  # ... GILL's ret_scale_factor
    _steer(model, 2)  # <eos> at once: no image, decision -1
    from litbrain.evaluation.gill import GillInference

    out = GillInference(model, _img_tokenizer(model), torch.randn(3, 12))(["w1 w2", "w3"])
    assert not out["has_img"].any() and out["decision"].tolist() == [-1, -1]


def test_release_holds_only_the_trained_parts_and_round_trips(tmp_path):
    from litbrain.release import load_release, save_release
    from tests.helpers.gill import tiny_lm_folder, tiny_world

    world = tiny_world(tmp_path / "world")
    lm = tiny_lm_folder(world, tmp_path / "lm")
    torch.manual_seed(0)
    model = GillModel(tiny_net(str(lm), out_dim=24, tokens=6, pipeline="some/pipeline"))
    _train(model, 2)
    model.eval()
    x = model.config.example_input(2)
    x["ids"] = torch.cat([torch.randint(3, model.base_vocab, (2, 4)), torch.tensor(model.img_token_ids).expand(2, -1)], 1)
    x["mask"] = torch.ones_like(x["ids"], dtype=torch.bool)
    with torch.no_grad():
        before = model(x)
    folder = save_release(model, tmp_path / "release")
    from safetensors.torch import load_file

    keys = set(load_file(folder / "model.safetensors"))
    assert not any(k.startswith("lm.") for k in keys) and {"img_input_rows", "img_output_rows"} <= keys
    import json

    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["lm"] == str(lm) and cfg["pipeline"] == "some/pipeline" and cfg["model_type"] == "gill"
    loaded = load_release(folder)
    with torch.no_grad():
        after = loaded(x)
    assert all(torch.equal(before[k], after[k]) for k in before)
    v = model.base_vocab
    for a, b in zip(model.embedding_matrices(), loaded.embedding_matrices()):
        assert torch.equal(a, b) and not torch.equal(b[v:], GillModel(model.config).embedding_matrices()[0][v:])


def test_the_decision_stage_fits_only_the_head_on_frozen_img0_states():
    from litbrain.tasks.gill import refit_decision_head

    torch.manual_seed(0)
    model = _model().eval()
    g = torch.Generator().manual_seed(1)
    batches = []
    for _ in range(4):
        b = random_batch(model, 16, 3, 3, g)
        b["decision"] = (b["ids"][:, 1] % 2 == 0).long()  # a property of the prompt the [IMG0] state sees
        batches.append(b)
    others = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("decision.")}
    with torch.no_grad():
        before = torch.cat([(model.decide(model.img_forward(b["ids"])["img_states"]).argmax(-1) == b["decision"])
                            for b in batches]).float().mean()
    refit_decision_head(model, batches, 200)
    with torch.no_grad():
        after = torch.cat([(model.decide(model.img_forward(b["ids"])["img_states"]).argmax(-1) == b["decision"])
                           for b in batches]).float().mean()
    assert after > 0.9 and after > before
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in others.items())


def test_the_generation_comparison_samples_the_whole_heldout_list_not_its_bank_head():
    from litbrain.evaluation.gill import generation_sample

    sel = generation_sample(500, 64, seed=0)
    assert len(set(sel.tolist())) == 64 and list(sel) == sorted(sel) and 0 <= sel.min() and sel.max() < 500
    assert (sel >= 100).sum() > 32  # the held-out list starts with the 100 bank prompts; a head slice holds only them
    assert (generation_sample(500, 64, seed=0) == sel).all() and not (generation_sample(500, 64, seed=1) == sel).all()
    assert (generation_sample(40, 64) == list(range(40))).all()
