"""GILL's world data: the bank, the splits, held-out prompts never seen in training, labels from the generator,
the LM's world text, and one-line errors for bad worlds."""

from __future__ import annotations

import numpy as np
import pytest

from litbrain.datamodules.gill import GillWorld, WorldTextDataModule
from litbrain.datamodules.gill.world import GENERATE, RETRIEVE
from litbrain.errors import DataError
from tests.helpers.gill import SPLIT, tiny_world


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return tiny_world(tmp_path_factory.mktemp("gill_world") / "world")


def test_bank_splits_and_labels_come_from_the_generator(world):
    w = GillWorld.load(world, **SPLIT)
    assert len(w.bank) == SPLIT["bank_size"]
    comps = [w.composition(i) for i in w.bank]
    assert len(set(comps)) == len(comps)  # distinct compositions: R@1 is well defined
    assert all(w.words(i)["background"] == "dark" for i in w.bank)  # the catalogue rule
    assert set(w.bank) <= set(w.heldout) and not set(w.heldout) & set(w.train)
    assert len(w.train) + len(w.heldout) == len(w.ids)
    assert all(w.decision(i) == RETRIEVE for i in w.bank)
    light = [i for i in w.train if w.words(i)["background"] == "light"]
    assert light and all(w.decision(i) == GENERATE for i in light)
    train_prompts = {p for _, p in w.prompts("train")}
    held = [p for _, p in w.prompts("heldout")]
    assert len(held) == len(w.heldout) and not set(held) & train_prompts  # never seen in training
    for i, p in w.prompts("heldout")[:5]:  # every attribute word is in the prompt
        assert all(word in p.split() for word in w.words(i).values())


def test_world_text_holds_only_training_stimuli_captions(world):
    dm = WorldTextDataModule(str(world), **SPLIT, batch_size=4)
    w = dm.world
    tok = dm.tokenizer
    train_text = {tok.decode(it["target"], skip_special_tokens=True) for it in dm.dataset("train")}
    held_caps = {c for i in w.heldout for c in w.captions[str(w.ids[i])]}
    train_caps = {c for i in w.train for c in w.captions[str(w.ids[i])]}
    assert train_caps <= train_text and not (held_caps - train_caps) & train_text
    assert not w.heldout_texts() & train_text  # GILL's held-out prompts are not in the LM's text either
    ends = [it["target"][-1] == tok.eos_token_id for it in dm.dataset("train")]
    assert 0 < sum(ends) < len(ends)  # answers end their turn; captions run on (no <eos>)
    batch = next(iter(dm.train_dataloader()))
    assert {"lm_input", "lm_mask", "lm_labels", "source", "target"} <= set(batch)
    assert tok.unk_token_id not in [t for it in dm.dataset("val") for t in it["source"]]


def test_bad_worlds_are_one_line_errors(world, tmp_path):
    import shutil

    with pytest.raises(DataError, match="allows only .* compositions .*fix:"):
        GillWorld.load(world, bank_size=500)
    with pytest.raises(DataError, match=r"bank_rule: size='huge' .*fix:"):
        GillWorld.load(world, bank_rule={"size": "huge"})
    bad = tmp_path / "world"
    shutil.copytree(world, bad)
    lines = (bad / "captions.tsv").read_text().splitlines(keepends=True)
    (bad / "captions.tsv").write_text("".join(lines[:-6]))
    with pytest.raises(DataError, match=r"captions.tsv: no caption for \d+ stimuli .*fix:"):
        GillWorld.load(bad, **SPLIT)
    np.savez(bad / "embeddings" / "image.npz", ids=np.array(["x"]), embeddings=np.zeros((1, 3)))
    (bad / "captions.tsv").write_text("".join(lines))
    with pytest.raises(DataError, match="no image feature for .*fix:"):
        GillWorld.load(bad, **SPLIT)
