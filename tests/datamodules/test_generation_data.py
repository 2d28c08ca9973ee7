"""The image-caption DataModule: held-out stimuli never reach training, captions agree with the truth."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from litbrain.datamodules.generation import ImageCaptionDataModule, read_image_captions, stated_attributes
from litbrain.errors import DataError


def test_shared_stimuli_are_the_test_set_and_never_in_training(tiny_gen_world):
    dm = ImageCaptionDataModule(tiny_gen_world, items="captions", batch_size=8)
    table = read_image_captions(tiny_gen_world)
    shared = {i for i, s in zip(table["ids"], table["shared"]) if s}
    train, val, test = (set(dm.split_rows(s)["ids"]) for s in ("train", "val", "test"))
    assert test == shared and len(shared) == 40
    assert not (train & test) and not (val & test) and not (train & val)
    seen = {s for b in dm.train_dataloader() for s in b["stimulus"]}
    assert seen == train  # every caption line of the training stimuli, none of the others
    held_out_captions = {c for i in test for c in table["captions"][i]}
    train_pairs = {(s, c) for b in dm.train_dataloader() for s, c in zip(b["stimulus"], b["caption"])}
    assert all(s not in test for s, _ in train_pairs)
    assert len(train_pairs) == sum(len(table["captions"][i]) for i in train) and held_out_captions
    batch = next(iter(dm.train_dataloader()))
    assert batch["image"].shape == (8, 3, 16, 16) and -1 <= batch["image"].min() < batch["image"].max() <= 1
    assert set(batch["attributes"]) == {"colour", "hpos", "vpos", "size", "stripes", "background"}


def test_a_folder_without_the_shared_flag_gets_a_seeded_split(tiny_gen_world, tmp_path):
    raw = tmp_path / "plain"
    shutil.copytree(tiny_gen_world / "images", raw / "images")
    lines = (tiny_gen_world / "stimuli.tsv").read_text().splitlines()
    (raw / "stimuli.tsv").write_text("\n".join("\t".join(ln.split("\t")[:2]) for ln in lines) + "\n")
    shutil.copy(tiny_gen_world / "captions.tsv", raw / "captions.tsv")
    a = ImageCaptionDataModule(raw, test_fraction=0.25, seed=1)
    b = ImageCaptionDataModule(raw, test_fraction=0.25, seed=1)
    c = ImageCaptionDataModule(raw, test_fraction=0.25, seed=2)
    assert a.split_rows("test")["ids"] == b.split_rows("test")["ids"] != c.split_rows("test")["ids"]
    assert len(a.split_rows("test")["ids"]) == 60 and a.split_rule.startswith("seeded")
    assert a.split_rows("test")["attributes"] is None  # a plain folder has no truth


def test_a_caption_whose_id_has_no_image_is_one_line_naming_the_file_and_the_id(tiny_gen_world, tmp_path):
    raw = tmp_path / "orphans"
    shutil.copytree(tiny_gen_world, raw)
    with open(raw / "captions.tsv", "a") as f:
        f.write("stim99999\ta red blob nobody drew\n")
    with pytest.raises(DataError) as err:
        ImageCaptionDataModule(raw).setup("fit")
    msg = str(err.value)
    assert "captions.tsv" in msg and "'stim99999'" in msg and "fix:" in msg and "\n" not in msg


def test_the_attributes_a_caption_states_are_the_true_ones(tiny_gen_world):
    rows = ImageCaptionDataModule(tiny_gen_world).split_rows("train")
    counts = {}
    for i, caps in enumerate(rows["captions"]):
        for cap in caps:
            for a, v in stated_attributes(cap).items():
                assert v == rows["attributes"][a][i], (cap, a)
                counts[a] = counts.get(a, 0) + 1
    # every attribute is stated by most captions (each template leaves out at most one or two)
    assert all(counts.get(a, 0) > 0.4 * sum(map(len, rows["captions"])) for a in rows["attributes"]), counts
    assert stated_attributes("a red thing") == {"colour": 0} and stated_attributes("nothing") == {}
    assert np.array_equal(rows["images"].shape[1:], (16, 16, 3))
