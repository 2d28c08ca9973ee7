"""The synthetic VQA world: deterministic, and every answer is visible in the rendered image."""

from __future__ import annotations

import numpy as np
import pytest
from litbrain.datamodules import DataError
from litbrain.datamodules.vqa.datamodule import VqaDataModule
from litbrain.datamodules.vqa.synthetic import (
    COLOURS,
    COUNT_WORDS,
    QUESTION_TYPES,
    cell_box,
    decode_answer,
    make_item,
    position_names,
    render_scene,
    vqa_chance_accuracy,
    world_tokenizer,
)

SIZE, GRID = 36, 3


def _read_cell(img: np.ndarray, k: int):
    """(shape, colour) read back from the pixels of cell ``k``, or None when the cell is empty."""
    x0, y0, x1, y1 = cell_box(k, GRID, SIZE)
    cs = x1 - x0
    centre = img[y0 + cs // 2, x0 + cs // 2].astype(float)
    dist = {c: np.abs(centre - np.array(rgb)).sum() for c, rgb in COLOURS.items()}
    colour = min(dist, key=dist.get)
    if dist[colour] > 60:  # grey background (+ texture noise)
        return None

    def coloured(x, y):
        return np.abs(img[y, x].astype(float) - np.array(COLOURS[colour])).sum() < 120

    if coloured(x0 + 2, y0 + 2):  # top-left corner filled: square
        return "square", colour
    if coloured(x0 + 2, y1 - 3):  # bottom-left corner filled: triangle (its base spans the cell)
        return "triangle", colour
    return "circle", colour


def test_deterministic_by_seed_and_index():
    a, b = make_item(3, "train", 17), make_item(3, "train", 17)
    assert a == b and np.array_equal(render_scene(a.scene), render_scene(b.scene))
    assert make_item(3, "train", 18) != a and make_item(4, "train", 17) != a
    assert make_item(3, "val", 17).scene != a.scene  # splits draw different scenes


def test_answers_match_the_rendered_image():
    checked = {q: 0 for q in QUESTION_TYPES}
    for i in range(120):
        it = make_item(0, "train", i, question_types=QUESTION_TYPES)
        img = render_scene(it.scene, SIZE)
        assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8
        read = [_read_cell(img, k) for k in range(GRID * GRID)]
        assert read == list(it.scene.cells), i  # every cell readable from pixels
        words = it.question.split()
        if it.qtype in ("colour", "shape"):
            name = " ".join(words[words.index("at") + 1 : -1])
            cell = read[position_names(GRID).index(name)]
            assert it.answer == (cell[1] if it.qtype == "colour" else cell[0])
        elif it.qtype == "exists":
            colour, shape = words[3], words[4]
            assert it.answer == ("yes" if (shape, colour) in read else "no")
        else:
            shape = words[2][:-1]
            assert it.answer == COUNT_WORDS[sum(c is not None and c[0] == shape for c in read)]
        checked[it.qtype] += 1
    assert all(n > 10 for n in checked.values())


def test_tokenizer_round_trip_covers_the_world(tmp_path):
    """The world's tokenizer is a Hugging Face one: every question and answer round-trips, and it
    saves and loads with save_pretrained / AutoTokenizer (as it travels inside a release)."""
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    tok = world_tokenizer()
    assert isinstance(tok, PreTrainedTokenizerFast)
    assert [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    for i in range(50):
        it = make_item(1, "val", i, question_types=QUESTION_TYPES)
        ids = tok.encode(it.question, add_special_tokens=False)
        assert tok.unk_token_id not in ids and tok.decode(ids) == it.question
        assert again.encode(it.question, add_special_tokens=False) == ids
        answer = tok.encode(it.answer, add_special_tokens=False)
        assert decode_answer(tok, answer + [tok.eos_token_id, 7]) == it.answer


def test_datamodule_batches_and_chance():
    dm = VqaDataModule(n_train=40, n_val=20, n_test=20, batch_size=8, seed=0)
    dm.setup("fit")
    b = next(iter(dm.train_dataloader()))
    assert b["image"].shape == (8, 3, 36, 36) and -1.0 <= float(b["image"].min()) and float(b["image"].max()) <= 1.0
    assert b["question"].shape[0] == 8 and b["question_mask"].dtype.is_floating_point is False
    assert (b["answer"][b["answer_mask"]] >= 0).all()
    # answer = one word + <eos>
    assert (b["answer_mask"].sum(1) == 2).all() and (b["answer"][:, 1] == dm.tokenizer.eos_token_id).all()
    assert (b["answer_label"] == b["answer"][:, 0]).all()
    ch = dm.chance
    assert 0 < ch["majority"] <= ch["majority_per_type"] < 1
    assert ch == vqa_chance_accuracy(0, "val", 20)
    b2 = next(iter(VqaDataModule(n_train=40, n_val=20, n_test=20, batch_size=8, cache=False).val_dataloader()))
    assert all(np.array_equal(v, b2[k]) for k, v in next(iter(dm.val_dataloader())).items())


@pytest.mark.parametrize("kw, msg", [
    ({"question_types": ["colour", "size"]}, "unknown"),
    ({"image_size": 40}, "not divisible"),
    ({"max_objects": 10}, "min_objects"),
    ({"batch_size": 0}, "batch_size"),
])
def test_bad_settings(kw, msg):
    with pytest.raises(DataError, match=msg):
        VqaDataModule(**kw)


def test_batches_carry_the_scenes_per_cell_labels():
    from litbrain.datamodules.vqa.datamodule import VqaDataModule
    from litbrain.datamodules.vqa.synthetic import COLOURS, SHAPES, make_item

    dm = VqaDataModule(n_train=16, n_val=8, n_test=8, batch_size=8, seed=3)
    dm.setup("fit")
    b = next(iter(dm.val_dataloader()))
    assert b["cell_colour"].shape == b["cell_shape"].shape == (8, 9)
    for i in range(8):
        scene = make_item(3, "val", i, 3, tuple(dm.question_types), 2, 4).scene
        want_c = [0 if c is None else 1 + list(COLOURS).index(c[1]) for c in scene.cells]
        want_s = [0 if c is None else 1 + SHAPES.index(c[0]) for c in scene.cells]
        assert b["cell_colour"][i].tolist() == want_c and b["cell_shape"][i].tolist() == want_s
        assert ((b["cell_colour"][i] > 0) == (b["cell_shape"][i] > 0)).all()
        assert 2 <= int((b["cell_colour"][i] > 0).sum()) <= 4
