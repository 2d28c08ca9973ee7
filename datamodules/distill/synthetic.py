"""A fact-lookup world: a long list of facts plus a question, answered in two words (issue 17, part 3).

Each item lists ``n_facts`` facts ``"the <thing> of <name> is <colour> <shape> ."`` about distinct
(thing, name) pairs, then asks ``"what is the <thing> of <name> ?"`` about one of them; the answer is
``"<colour> <shape>"``. Inputs are long (about 8 tokens per fact; ``n_facts`` is the length knob of the
latency benchmark) and outputs short, where encoder-decoders should shine. The oracle reads the answer
off the facts (exact match 1.0); the classic baseline answers the most frequent training answer.

Item ``i`` of a split is a pure function of ``(seed, split, i)``. :func:`train_tokenizer` trains a
word-level Hugging Face tokenizer (``PreTrainedTokenizerFast``) on the training corpus.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any, Iterable

import numpy as np

from litbrain.errors import DataError

__all__ = ["FactItem", "NAMES", "THINGS", "COLOURS", "SHAPES", "make_item", "max_facts", "oracle_answer",
           "train_tokenizer", "majority_answer", "SPECIAL_TOKENS"]

NAMES = tuple(f"{a}{b}" for a in ("ba", "ko", "mi", "tu", "ze", "lo", "ra", "ni") for b in ("dan", "vel", "rim", "sko",
                                                                                              "ta", "mor", "lin", "quo"))
THINGS = ("key", "box", "hat", "cup")
COLOURS = ("red", "green", "blue", "yellow", "black", "white", "pink", "grey")
SHAPES = ("square", "circle", "triangle", "star", "ring", "cross")
SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}
_SPLITS = {"train": 0, "val": 1, "test": 2}


@dataclass(frozen=True)
class FactItem:
    facts: tuple[tuple[str, str, str, str], ...]  # (thing, name, colour, shape)
    asked: int  # index of the fact the question is about
    source: str
    answer: str


def max_facts(n_things: int = len(THINGS)) -> int:
    return len(NAMES) * n_things


def make_item(seed: int, split: str, index: int, n_facts: int, n_things: int = len(THINGS)) -> FactItem:
    """Item ``index`` of ``split``; ``n_things`` of :data:`THINGS` are used (1: the name alone is the key,
    the easiest lookup; 4: a (thing, name) pair is)."""
    if split not in _SPLITS:
        raise DataError(f"split={split!r}: unknown; fix: one of {list(_SPLITS)}")
    if not 1 <= n_things <= len(THINGS):
        raise DataError(f"n_things={n_things}: must lie in [1, {len(THINGS)}]; fix: e.g. 1")
    if not 1 <= n_facts <= max_facts(n_things):
        raise DataError(f"n_facts={n_facts}: must lie in [1, {max_facts(n_things)}] (distinct thing-name pairs); fix: "
                        f"e.g. 8")
    rng = np.random.default_rng(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, _SPLITS[split], int(index)]))
    pairs = rng.choice(max_facts(n_things), size=n_facts, replace=False)
    facts = tuple((THINGS[p % n_things], NAMES[p // n_things], COLOURS[int(rng.integers(len(COLOURS)))],
                   SHAPES[int(rng.integers(len(SHAPES)))]) for p in pairs)
    asked = int(rng.integers(n_facts))
    text = " ".join(f"the {t} of {n} is {c} {s} ." for t, n, c, s in facts)
    thing, name = facts[asked][:2]
    return FactItem(facts, asked, f"{text} what is the {thing} of {name} ?", oracle_answer(facts, thing, name))


def oracle_answer(facts: Iterable[tuple[str, str, str, str]], thing: str, name: str) -> str:
    """The true answer, read off the facts."""
    for t, n, c, s in facts:
        if (t, n) == (thing, name):
            return f"{c} {s}"
    raise DataError(f"no fact about the {thing} of {name}")


def majority_answer(items: Iterable[FactItem]) -> str:
    """The classic baseline: the most frequent answer of the training items."""
    return Counter(it.answer for it in items).most_common(1)[0][0]


def train_tokenizer(texts: Iterable[str]) -> Any:
    """A word-level ``PreTrainedTokenizerFast`` trained on ``texts`` (specials first: ids 0-3)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.WordLevel(unk_token=SPECIAL_TOKENS["unk_token"]))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    core.train_from_iterator(texts, trainers.WordLevelTrainer(special_tokens=list(SPECIAL_TOKENS.values())))
    return PreTrainedTokenizerFast(tokenizer_object=core, clean_up_tokenization_spaces=False, **SPECIAL_TOKENS)
