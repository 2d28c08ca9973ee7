"""GILL's task through Lightning on a tiny world: the frozen LM stays bit-identical except its [IMG] rows,
the mapper moves towards the text encoder's targets, the decision head learns the bank's catalogue,
and the exported release gives back the same outputs."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from litbrain.datamodules.gill import GillDataModule
from litbrain.tasks.gill import GillTask
from tests.helpers.gill import SPLIT, tiny_lm_folder, tiny_net, tiny_world


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("gill_task")
    world = tiny_world(d / "world")
    lm = tiny_lm_folder(world, d / "lm")
    dm = GillDataModule(world=str(world), tokenizer=str(lm), max_length=16, batch_size=16, **SPLIT)
    return d, world, lm, dm


def _fit(task, dm, steps, root=None):
    trainer = L.Trainer(max_steps=steps, accelerator="cpu", enable_progress_bar=False, logger=False,
                        enable_checkpointing=False, limit_val_batches=2, num_sanity_val_steps=0,
                        enable_model_summary=False, default_root_dir=root)
    trainer.fit(task, dm)
    return trainer


def test_fit_changes_only_the_img_rows_and_learns(setup):
    d, world, lm, dm = setup
    frozen = load_file(lm / "model.safetensors")
    torch.manual_seed(0)
    task = GillTask(net=tiny_net(str(lm), tokens=16), lr=3e-3)
    dm.setup("fit")
    batch = next(iter(dm.val_dataloader()))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                        inference_mode=False)
    untrained = trainer.validate(task, dm, verbose=False)[0]
    _fit(task, dm, 40)
    v = task.model.base_vocab
    now = task.model.lm.state_dict()
    for name, w in frozen.items():
        got = now[name]
        if got.shape[0] == v + 8:
            assert torch.equal(got[:v], w), name
            assert not torch.equal(got[v:], torch.zeros_like(got[v:]))
        else:
            assert torch.equal(got, w), f"{name}: a frozen LM weight changed"
    trained = trainer.validate(task, dm, verbose=False)[0]
    assert trained["val/distance"] < 0.8 * untrained["val/distance"], (untrained, trained)
    assert trained["val/cosine"] > untrained["val/cosine"]
    assert batch["target"].shape[1:] == (16, 384)


def test_export_round_trips_and_mapper_width_mismatch_is_caught_before_training(setup, tmp_path):
    from litbrain.errors import ConfigError
    from litbrain.release import export_release, load_release

    d, world, lm, dm = setup
    with pytest.raises(ConfigError, match="out_dim=24.*fix"):
        _fit(GillTask(net=tiny_net(str(lm), out_dim=24, tokens=16)), dm, 1)
    torch.manual_seed(0)
    task = GillTask(net=tiny_net(str(lm), tokens=16))
    trainer = L.Trainer(max_steps=2, accelerator="cpu", enable_progress_bar=False, logger=False,
                        num_sanity_val_steps=0, limit_val_batches=1, enable_model_summary=False,
                        default_root_dir=tmp_path)
    trainer.fit(task, dm)
    ckpt = tmp_path / "gill.ckpt"
    trainer.save_checkpoint(ckpt)
    folder = export_release(ckpt, tmp_path / "release")
    loaded = load_release(folder)
    batch = next(iter(dm.val_dataloader()))
    task.model.eval()
    with torch.no_grad():
        a, b = task.model(batch), loaded(batch)
    assert all(torch.equal(a[k], b[k]) for k in a)
    from litbrain.evaluation.gill import load_gill

    model, tok = load_gill(folder)
    assert tok.convert_tokens_to_ids("[IMG0]") == model.base_vocab
