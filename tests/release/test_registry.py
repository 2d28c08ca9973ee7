"""Every registered model type round-trips through a release bit for bit (timm-style, over the registry).

For each ``model_type`` in :data:`litbrain.nn.registry.MODEL_TYPES` and each tiny config its
``examples()`` give: build, write a release, check it, load it with ``load_release`` (dispatch on
config.json's model_type), and compare the outputs. Adding a model to the registry adds it here.
"""

from __future__ import annotations

import json

import pytest
import torch

from litbrain.errors import ConfigError, ReleaseError
from litbrain.nn.registry import (
    MODEL_TYPES,
    build_model,
    config_class,
    config_from_dict,
    model_class,
)
from litbrain.release import (
    check_release,
    load_release,
    read_model_config,
    save_release,
)

CASES = [(t, i, c) for t in MODEL_TYPES for i, c in enumerate(config_class(t).examples())]


def _same(a, b) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return torch.equal(a, b)
    return a == b


def test_every_registered_class_names_its_config_and_model_type():
    for model_type in MODEL_TYPES:
        cls = model_class(model_type)
        assert cls.config_class.model_type == model_type, model_type
        assert config_class(model_type).examples(), f"{model_type}: examples() gives no tiny config"


@pytest.mark.parametrize("model_type, index, config", CASES, ids=[f"{t}-{i}" for t, i, _ in CASES])
def test_release_round_trip_is_bit_exact(model_type, index, config, tmp_path):
    torch.manual_seed(index)
    model = build_model(config).eval()
    x = config.example_input(batch_size=2, seed=index)
    with torch.no_grad():
        before = model(x)
    folder = save_release(model, tmp_path / "release", metrics={"rows": [{"method": "m", "score": 0.5}]})
    assert check_release(folder) == config_from_dict(json.loads((folder / "config.json").read_text()))
    assert json.loads((folder / "config.json").read_text())["model_type"] == model_type
    assert read_model_config(folder).model_type == model_type
    loaded = load_release(folder)
    assert type(loaded) is type(model) and not loaded.training
    state, back = model.state_dict(), loaded.state_dict()
    assert state.keys() == back.keys() and all(torch.equal(state[k], back[k]) for k in state)
    with torch.no_grad():
        assert _same(before, loaded(x))
    card = (folder / "README.md").read_text()
    assert config.card().title in card and "license: apache-2.0" in card


def test_an_unknown_model_type_or_key_is_one_clear_error(tmp_path):
    with pytest.raises(ReleaseError, match="unknown model_type 'gan'.*fix: one of"):
        config_from_dict({"model_type": "gan"})
    with pytest.raises(ReleaseError, match="no 'model_type'"):
        config_from_dict({"width": 3})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['widht'\] for BrainDecoderConfig; fix: use only"):
        config_from_dict({"model_type": "fmri_decoder", "widht": 3})
