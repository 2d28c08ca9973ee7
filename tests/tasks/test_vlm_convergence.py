"""Training with MustDrop on converges like dense training on the synthetic VQA world (issue 5, slow)."""

from __future__ import annotations

import pytest
import torch
from litbrain.datamodules.vqa.datamodule import VqaDataModule

from litbrain.benchmarks.vlm_dropping import _evaluate, _setting, _train

VISION = {"encoder": "timm:vit_tiny_patch16_224", "pos_embed_init": "sincos",
          "kwargs": {"img_size": 36, "patch_size": 4, "embed_dim": 32, "depth": 2, "num_heads": 2}}
LM = {"model_type": "llama", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
      "num_key_value_heads": 2, "intermediate_size": 128, "rope_theta": 1.0e6}
STEPS = 150


@pytest.mark.slow
def test_training_with_mustdrop_converges_like_dense():
    torch.set_num_threads(1)
    # colour questions only: the tiny model learns to read the image within a test's budget
    dm = VqaDataModule(n_train=STEPS * 32, n_val=256, question_types=["colour"], batch_size=32, seed=0)
    dm.setup("fit")
    val = list(dm.val_dataloader())
    chance = dm.chance["majority_per_type"]
    md = _setting("mustdrop_123", 0.25, 0.5, [0], {})
    base = {"vision": VISION, "lm": LM}
    dense, _ = _train({"net": {**base, "dropping": {"method": "none"}}, "lr": 2e-3}, dm, STEPS, 0)
    dropped, _ = _train({"net": {**base, "dropping": md.__dict__}, "lr": 2e-3}, dm, STEPS, 0)
    acc_dense = _evaluate(dense.model, val, _setting("dense", 0.25, 0.5, [0], {}))["acc"]
    res = _evaluate(dropped.model, val, md)
    print(f"chance {chance:.3f} dense {acc_dense:.3f} trained+evaluated with MustDrop 1+2+3 {res['acc']:.3f} "
          f"({res['tokens_per_layer']:.1f} vision tokens per LM layer)")
    assert res["tokens_per_layer"] <= 0.5 * 81  # dropping really was on
    assert acc_dense >= chance + 0.10  # the dense model learned to read the image
    assert res["acc"] >= acc_dense - 0.03  # the bar: within 3 points of dense training
