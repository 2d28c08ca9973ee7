"""The GILL world: the fMRI stimulus world's images, captions and image features, with known answers.

A raw world folder (``litbrain gill synthesize``: the fMRI world's layout) holds ``stimuli.tsv``,
``captions.tsv``, ``images/``, ``embeddings/image.npz`` (the frozen "image encoder" feature per
stimulus; CLIP ViT-L/14 pooled features in real use) and ``truth.npz`` (each stimulus' attributes,
:func:`~litbrain.datamodules.fmri.synthetic.stimulus_attributes`). :class:`GillWorld` splits it:

* the **retrieval bank**: 100 stimuli of distinct compositions (one attribute value each of colour,
  hpos, vpos, size, stripes, background) drawn from the catalogue ``bank_rule`` (default: large
  shapes on a dark background), the commonest compositions first;
* **held-out** stimuli: the bank plus ``n_heldout`` others, never seen in GILL's training;
* **training** stimuli: the rest.

Prompts are full descriptions made from a stimulus' attributes in one of :data:`TEMPLATES`. Each
held-out stimulus has one held-out prompt (template ``index % 3``); GILL trains on the training
stimuli in every template except the texts that are held-out prompts (two stimuli of one
composition share their descriptions), so no held-out prompt is ever seen in training -- nor in
the LM's world text. The decision label comes from the generator: 0 (retrieve) when the prompt's
composition is one the bank holds, 1 (generate) otherwise.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from litbrain.errors import DataError

__all__ = ["TEMPLATES", "TRAIN_TEMPLATES", "GillWorld", "describe", "dialogues"]

TEMPLATES = (  # a description is a sentence: it ends with " ." (what follows a full stop is open)
    "a {size} {colour} blob at the {vpos} {hpos} with {stripes} stripes on a {background} background .",
    "{stripes} stripes on a {background} background behind a {size} {colour} circle at the {vpos} {hpos} .",
    "a {colour} disc that is {size} placed {vpos} {hpos} on a {background} backdrop with {stripes} stripes .",
)
TRAIN_TEMPLATES = TEMPLATES  # training prompts use every phrasing (minus the held-out texts)
RETRIEVE, GENERATE = 0, 1


def describe(words: dict[str, str], template: str) -> str:
    return template.format(**words)


def dialogues(words: dict[str, str], caption: str) -> list[tuple[str, str]]:
    """Short question / answer dialogues about one captioned image: (question, answer) pairs."""
    return [(f"{caption} . question : what colour is the shape ? answer :", words["colour"]),
            (f"{caption} . question : how big is the shape ? answer :", words["size"]),
            (f"{caption} . question : which stripes are there ? answer :", words["stripes"]),
            (f"{caption} . question : is the background dark or light ? answer :", words["background"])]


def _read_tsv(path: Path, columns: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.is_file():
        raise DataError(f"{path}: not found; fix: write the world with `litbrain gill synthesize` "
                        f"(or point data.init_args.world at such a folder)")
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    if rows and any(c not in rows[0] for c in columns):
        raise DataError(f"{path}: needs the columns {list(columns)}, has {list(rows[0])}; fix: the fMRI world layout")
    return rows


@dataclass
class GillWorld:
    """Splits, prompts and labels of one world folder (see the module docstring)."""

    root: Path
    ids: np.ndarray
    attrs: dict[str, np.ndarray]
    captions: dict[str, list[str]]
    features: np.ndarray
    bank: np.ndarray
    heldout: np.ndarray
    train: np.ndarray
    bank_compositions: set[tuple[int, ...]] = field(default_factory=set)

    @classmethod
    def load(cls, root: str | os.PathLike, bank_size: int = 100, n_heldout: int = 400,
             bank_rule: dict[str, str] | None = None, seed: int = 0) -> "GillWorld":
        from ..fmri.synthetic import ATTRIBUTES, stimulus_attributes

        root = Path(root)
        if not (root / "truth.npz").is_file():
            raise DataError(f"{root}: no truth.npz (a world written by `litbrain gill synthesize`); fix: point "
                            f"data.init_args.world at such a folder")
        rule = dict(bank_rule if bank_rule is not None else {"size": "large", "background": "dark"})
        for k, val in rule.items():
            if k not in ATTRIBUTES or val not in ATTRIBUTES[k]:
                raise DataError(f"data.init_args.bank_rule: {k}={val!r} is not an attribute value; fix: one of "
                                f"{ {a: list(v) for a, v in ATTRIBUTES.items()} }")
        a = stimulus_attributes(root)
        ids = a["stimulus_id"]
        attrs = {k: a[k] for k in ATTRIBUTES}
        caps: dict[str, list[str]] = {}
        for row in _read_tsv(root / "captions.tsv", ("stimulus_id", "caption")):
            caps.setdefault(row["stimulus_id"], []).append(row["caption"])
        missing = [i for i in ids if i not in caps]
        if missing:
            raise DataError(f"{root / 'captions.tsv'}: no caption for {len(missing)} stimuli (e.g. {missing[0]}); fix: "
                            f"one or more caption rows per stimulus of stimuli.tsv")
        emb = root / "embeddings" / "image.npz"
        if not emb.is_file():
            raise DataError(f"{emb}: not found; fix: `litbrain embed-images` writes it (or the world's generator)")
        with np.load(emb) as f:
            pos = {str(s): i for i, s in enumerate(f["ids"].astype(str))}
            lacking = [i for i in ids if i not in pos]
            if lacking:
                raise DataError(f"{emb}: no image feature for {len(lacking)} stimuli (e.g. {lacking[0]}); fix: "
                                f"re-run embed-images on this world")
            feats = np.asarray(f["embeddings"], np.float32)[[pos[i] for i in ids]].reshape(len(ids), -1)
        comp = np.stack([attrs[k] for k in ATTRIBUTES], 1)
        keys = list(ATTRIBUTES)
        ok = np.ones(len(ids), bool)
        for k, val in rule.items():
            ok &= attrs[k] == ATTRIBUTES[k].index(val)
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(ids))
        tuples = [tuple(int(x) for x in comp[i]) for i in range(len(ids))]
        counts: dict[tuple[int, ...], int] = {}
        for i in np.flatnonzero(ok):
            counts[tuples[i]] = counts.get(tuples[i], 0) + 1
        commonest = sorted(counts, key=lambda c: (-counts[c], c))[:bank_size]
        if len(commonest) < bank_size:
            raise DataError(f"{root}: the bank rule {rule} allows only {len(commonest)} compositions for a bank of "
                            f"{bank_size}; fix: a looser data.init_args.bank_rule, a smaller bank_size, or more stimuli")
        first: dict[tuple[int, ...], int] = {}
        for i in order:
            if tuples[i] in set(commonest) and tuples[i] not in first:
                first[tuples[i]] = int(i)
        bank = np.array([first[c] for c in commonest])
        rest = np.array([i for i in order if i not in set(bank.tolist())])
        if n_heldout >= len(rest):
            raise DataError(f"data.init_args.n_heldout={n_heldout}: the world has only {len(rest)} stimuli outside the "
                            f"bank; fix: fewer held-out stimuli or a larger world")
        del keys
        return cls(root=root, ids=ids, attrs=attrs, captions=caps, features=feats, bank=bank,
                   heldout=np.concatenate([bank, rest[:n_heldout]]), train=rest[n_heldout:],
                   bank_compositions=set(commonest))

    # ------------------------------------------------------------------ per stimulus
    def words(self, i: int) -> dict[str, str]:
        from ..fmri.synthetic import ATTRIBUTES

        return {k: ATTRIBUTES[k][int(self.attrs[k][i])] for k in ATTRIBUTES}

    def composition(self, i: int) -> tuple[int, ...]:
        return tuple(int(self.attrs[k][i]) for k in self.attrs)

    def decision(self, i: int) -> int:
        """RETRIEVE (0) if the bank holds stimulus i's composition, else GENERATE (1)."""
        return RETRIEVE if self.composition(i) in self.bank_compositions else GENERATE

    def heldout_texts(self) -> set[str]:
        return {p for _, p in self.prompts("heldout")}

    def prompts(self, split: str) -> list[tuple[int, str]]:
        """(stimulus index, prompt) pairs: training stimuli x TEMPLATES minus the held-out texts, or each
        held-out stimulus in its template (``index % 3``)."""
        if split == "train":
            held = self.heldout_texts()
            pairs = [(int(i), describe(self.words(i), t)) for i in self.train for t in TEMPLATES]
            return [(i, p) for i, p in pairs if p not in held]
        return [(int(i), describe(self.words(i), TEMPLATES[int(i) % len(TEMPLATES)])) for i in self.heldout]

    def image_path(self, i: int) -> Path:
        return self.root / "images" / f"{self.ids[i]}.png"
