"""A procedural image-question-answer world with known ground truth (issue 5, part 3).

Every scene is a ``grid x grid`` board of cells (default 3 x 3) drawn on a lightly textured grey
background; some cells hold one shape (square / circle / triangle) in one colour (red / green /
blue / yellow). Questions name a cell, a colour or a shape, so each answer depends on one or a few
image regions; answers are ONE word from a small vocabulary::

    colour  "what colour is the shape at top left ?"      -> red | green | blue | yellow
    shape   "what shape is at bottom right ?"             -> square | circle | triangle
    exists  "is there a red circle ?"                     -> yes | no   (balanced)
    count   "how many circles ?"                          -> zero | one | two | three | four

Scene ``i`` of a split is a pure function of ``(seed, split, i)`` (numpy ``SeedSequence``), so the
world is deterministic without a cache and any item can be regenerated on the fly. With the
defaults (36 x 36 pixels, 3 x 3 cells of 12 px) a ViT with 4-px patches sees a 9 x 9 patch grid in
which each cell is exactly one 3 x 3 window (MustDrop's stage-1 window).

:class:`WordTokenizer` is the world's own word-level tokenizer (no downloads): specials
``<pad> <bos> <eos> <unk>`` then every word the generator can emit, in a fixed order.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from PIL import Image, ImageDraw

from litbrain.errors import DataError

__all__ = [
    "COLOURS",
    "SHAPES",
    "QUESTION_TYPES",
    "Scene",
    "VqaItem",
    "world_tokenizer",
    "world_vocabulary",
    "decode_answer",
    "make_scene",
    "make_item",
    "render_scene",
    "answer_question",
    "position_names",
    "vqa_chance_accuracy",
]

#: Colour name -> RGB (0..255).
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 70, 220),
    "yellow": (230, 210, 40),
}
SHAPES: tuple[str, ...] = ("square", "circle", "triangle")
QUESTION_TYPES: tuple[str, ...] = ("colour", "shape", "exists", "count")
COUNT_WORDS: tuple[str, ...] = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
_SPLITS = {"train": 0, "val": 1, "test": 2}


def position_names(grid: int) -> list[str]:
    """Names of the cells in row-major order: ``top left``, ``top``, ... for a 3 x 3 grid.

    Other grid sizes use ``row r column c`` (1-based).
    """
    if grid == 3:
        rows, cols = ("top", "middle", "bottom"), ("left", "centre", "right")
        names = []
        for r in rows:
            for c in cols:
                names.append("centre" if (r, c) == ("middle", "centre") else f"{r} {c}")
        return names
    return [f"row {COUNT_WORDS[r + 1]} column {COUNT_WORDS[c + 1]}" for r in range(grid) for c in range(grid)]


@dataclass(frozen=True)
class Scene:
    """One board: ``cells[k]`` is ``None`` or ``(shape, colour)`` for cell ``k`` (row-major)."""

    grid: int
    cells: tuple[tuple[str, str] | None, ...]
    texture_seed: int


@dataclass(frozen=True)
class VqaItem:
    """A scene plus one question about it and its (known) answer word."""

    scene: Scene
    qtype: str
    question: str
    answer: str
    #: cells whose content determines the answer (the "relevant regions")
    cells: tuple[int, ...] = field(default_factory=tuple)


def _rng(seed: int, split: str, index: int) -> np.random.Generator:
    if split not in _SPLITS:
        raise DataError(f"split={split!r}: unknown; fix: use one of {list(_SPLITS)}")
    return np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, _SPLITS[split], int(index)]))


def make_scene(rng: np.random.Generator, grid: int = 3, min_objects: int = 2, max_objects: int = 4) -> Scene:
    n_cells = grid * grid
    n = int(rng.integers(min_objects, max_objects + 1))
    occupied = rng.choice(n_cells, size=n, replace=False)
    cells: list[tuple[str, str] | None] = [None] * n_cells
    colours = list(COLOURS)
    for k in occupied:
        cells[int(k)] = (SHAPES[int(rng.integers(len(SHAPES)))], colours[int(rng.integers(len(colours)))])
    return Scene(grid=grid, cells=tuple(cells), texture_seed=int(rng.integers(2**31 - 1)))


def answer_question(scene: Scene, qtype: str, target: object) -> tuple[str, tuple[int, ...]]:
    """The true answer word of a question, and the cells it depends on."""
    if qtype == "colour":
        k = int(target)  # type: ignore[arg-type]
        cell = scene.cells[k]
        assert cell is not None
        return cell[1], (k,)
    if qtype == "shape":
        k = int(target)  # type: ignore[arg-type]
        cell = scene.cells[k]
        assert cell is not None
        return cell[0], (k,)
    if qtype == "exists":
        shape, colour = target  # type: ignore[misc]
        hits = tuple(k for k, c in enumerate(scene.cells) if c == (shape, colour))
        return ("yes" if hits else "no"), hits
    if qtype == "count":
        hits = tuple(k for k, c in enumerate(scene.cells) if c is not None and c[0] == target)
        return COUNT_WORDS[len(hits)], hits
    raise DataError(f"question type {qtype!r}: unknown; fix: use one of {list(QUESTION_TYPES)}")


def make_item(
    seed: int,
    split: str,
    index: int,
    grid: int = 3,
    question_types: Sequence[str] = ("colour", "shape", "exists"),
    min_objects: int = 2,
    max_objects: int = 4,
) -> VqaItem:
    """Item ``index`` of ``split``: deterministic in ``(seed, split, index)`` and the world's settings."""
    rng = _rng(seed, split, index)
    scene = make_scene(rng, grid, min_objects, max_objects)
    qtype = question_types[int(rng.integers(len(question_types)))]
    names = position_names(grid)
    occupied = [k for k, c in enumerate(scene.cells) if c is not None]
    if qtype in ("colour", "shape"):
        k = occupied[int(rng.integers(len(occupied)))]
        q = f"what colour is the shape at {names[k]} ?" if qtype == "colour" else f"what shape is at {names[k]} ?"
        target: object = k
    elif qtype == "exists":
        if rng.random() < 0.5:  # balanced yes / no: ask about an object that is there
            target = scene.cells[occupied[int(rng.integers(len(occupied)))]]
        else:
            present = {c for c in scene.cells if c is not None}
            absent = [(s, c) for s in SHAPES for c in COLOURS if (s, c) not in present]
            target = absent[int(rng.integers(len(absent)))]
        q = f"is there a {target[1]} {target[0]} ?"  # type: ignore[index]
    elif qtype == "count":
        target = SHAPES[int(rng.integers(len(SHAPES)))]
        q = f"how many {target}s ?"
    else:
        raise DataError(f"question type {qtype!r}: unknown; fix: use any of {list(QUESTION_TYPES)}")
    answer, cells = answer_question(scene, qtype, target)
    return VqaItem(scene=scene, qtype=qtype, question=q, answer=answer, cells=cells)


def cell_box(k: int, grid: int, image_size: int) -> tuple[int, int, int, int]:
    """Pixel box ``(x0, y0, x1, y1)`` (exclusive end) of cell ``k``."""
    cs = image_size // grid
    r, c = divmod(k, grid)
    return c * cs, r * cs, (c + 1) * cs, (r + 1) * cs


def render_scene(scene: Scene, image_size: int = 36, texture: float = 0.04, supersample: int = 4) -> np.ndarray:
    """RGB uint8 image ``(image_size, image_size, 3)``: textured grey background + shapes.

    Shapes are drawn at ``supersample`` times the resolution and downsampled (anti-aliasing);
    each fills the central ~70% of its cell, so the cell centre pixel has the shape's colour
    (a triangle's centroid region included).
    """
    if image_size % scene.grid:
        raise DataError(f"image_size={image_size} is not divisible by grid={scene.grid}; fix: e.g. image_size={scene.grid * 12}")
    s = image_size * supersample
    img = Image.new("RGB", (s, s), (128, 128, 128))
    draw = ImageDraw.Draw(img)
    cs = s // scene.grid
    for k, cell in enumerate(scene.cells):
        if cell is None:
            continue
        shape, colour = cell
        r, c = divmod(k, scene.grid)
        m = 0.15 * cs
        x0, y0, x1, y1 = c * cs + m, r * cs + m, (c + 1) * cs - m, (r + 1) * cs - m
        rgb = COLOURS[colour]
        if shape == "square":
            draw.rectangle([x0, y0, x1, y1], fill=rgb)
        elif shape == "circle":
            draw.ellipse([x0, y0, x1, y1], fill=rgb)
        else:
            draw.polygon([((x0 + x1) / 2, y0), (x1, y1), (x0, y1)], fill=rgb)
    img = img.resize((image_size, image_size), Image.Resampling.BOX)
    arr = np.asarray(img, dtype=np.float32)
    if texture > 0:
        noise = np.random.default_rng(scene.texture_seed).normal(0.0, texture * 255.0, size=(image_size, image_size, 1))
        background = np.all(np.abs(arr - 128.0) < 1.0, axis=-1, keepdims=True)
        arr = np.where(background, arr + noise, arr)
    return np.clip(np.rint(arr), 0, 255).astype(np.uint8)


SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}


def world_vocabulary(grid: int = 3) -> list[str]:
    """Every word of the world, specials first (ids 0-3: <pad> <bos> <eos> <unk>), in a fixed order."""
    words: list[str] = list(SPECIAL_TOKENS.values())
    for text in ("what colour is the shape at", "what shape is at", "is there a", "how many", "?", "yes no"):
        words += text.split()
    for name in position_names(grid):
        words += name.split()
    words += list(COLOURS) + list(SHAPES) + [f"{s}s" for s in SHAPES] + list(COUNT_WORDS)
    return list(dict.fromkeys(words))


def world_tokenizer(grid: int = 3) -> "Any":
    """The world's word-level Hugging Face tokenizer (``PreTrainedTokenizerFast``; whitespace words).

    Built from a ``tokenizers`` WordLevel model over :func:`world_vocabulary`, so it saves and
    loads with ``save_pretrained`` / ``AutoTokenizer.from_pretrained`` beside the model; no download.
    Encode with ``add_special_tokens=False`` (the model adds <bos> and <eos> itself).
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(world_vocabulary(grid))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=SPECIAL_TOKENS["unk_token"]))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, clean_up_tokenization_spaces=False, **SPECIAL_TOKENS)


def decode_answer(tokenizer: "Any", ids: Sequence[int]) -> str:
    """The words of ``ids`` up to the first <eos>, without special tokens."""
    ids = [int(i) for i in ids]
    if tokenizer.eos_token_id in ids:
        ids = ids[: ids.index(tokenizer.eos_token_id)]
    return tokenizer.decode(ids, skip_special_tokens=True)


def vqa_chance_accuracy(
    seed: int = 0,
    split: str = "val",
    n: int = 512,
    grid: int = 3,
    question_types: Sequence[str] = ("colour", "shape", "exists"),
    min_objects: int = 2,
    max_objects: int = 4,
) -> dict[str, float]:
    """Chance levels of a split: majority-answer accuracy overall and per question type.

    "majority" = always answering the most frequent answer of the split; "majority_per_type"
    = answering the most frequent answer of each question type (a blind model that reads the
    question but not the image can reach this).
    """
    items = [make_item(seed, split, i, grid, question_types, min_objects, max_objects) for i in range(n)]
    answers = Counter(it.answer for it in items)
    out = {"majority": answers.most_common(1)[0][1] / n}
    per_type_hits = 0
    for qt in question_types:
        sub = [it.answer for it in items if it.qtype == qt]
        if sub:
            top = Counter(sub).most_common(1)[0][1]
            per_type_hits += top
            out[f"majority/{qt}"] = top / len(sub)
    out["majority_per_type"] = per_type_hits / n
    return out
