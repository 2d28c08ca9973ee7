"""LightningDataModule of the fact-lookup world (:mod:`.synthetic`) for teachers and students.

Batches are plain dicts (right-padded with the tokenizer's pad id)::

    {"source":          LongTensor[B, S],   # <bos> facts question  (the encoder's input)
     "source_mask":     BoolTensor[B, S],
     "source_length":   LongTensor[B],
     "target":          LongTensor[B, T],   # answer words + <eos>
     "target_mask":     BoolTensor[B, T],
     "decoder_input":   LongTensor[B, T],   # <bos> + target[:-1]   (the student decoder's input)
     "labels":          LongTensor[B, T],   # target, -100 at padding
     "lm_input":        LongTensor[B, N],   # [source_b | target_b] per row (a decoder-only model's input)
     "lm_mask":         BoolTensor[B, N],
     "lm_labels":       LongTensor[B, N]}   # lm_input at the target positions, -100 elsewhere (HF shifts)

``dm.tokenizer`` is trained on the training split's text; ``dm.vocab_size`` its size.
"""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
import torch
from torch.utils.data import DataLoader, Dataset

from ..base import SplitLoaders, pad_sequences
from litbrain.errors import DataError

from .synthetic import make_item, train_tokenizer

__all__ = ["FactsDataModule", "FactsDataset", "collate_facts"]

IGNORE_INDEX = -100  # Hugging Face's "no target here" label


class FactsDataset(Dataset):
    def __init__(self, n: int, split: str, seed: int, n_facts: int, tokenizer: Any, n_things: int = 4):
        self.items = [make_item(seed, split, i, n_facts, n_things) for i in range(int(n))]
        self.tok = tokenizer
        self.encoded = [(tokenizer.encode(it.source, add_special_tokens=False),
                         tokenizer.encode(it.answer, add_special_tokens=False)) for it in self.items]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        src, ans = self.encoded[i]
        return {"source": [self.tok.bos_token_id, *src], "target": [*ans, self.tok.eos_token_id]}



def collate_facts(items: list[dict], pad_id: int, bos_id: int) -> dict[str, torch.Tensor]:
    """The batch dict of the module docstring from items ``{"source": ids, "target": ids}``."""
    src, src_mask = pad_sequences([it["source"] for it in items], pad_id)
    tgt, tgt_mask = pad_sequences([it["target"] for it in items], pad_id)
    dec = torch.cat([torch.full_like(tgt[:, :1], bos_id), tgt[:, :-1]], 1)
    lm, lm_mask = pad_sequences([it["source"] + it["target"] for it in items], pad_id)
    lm_labels = torch.full_like(lm, IGNORE_INDEX)
    for b, it in enumerate(items):
        s = len(it["source"])
        lm_labels[b, s: s + len(it["target"])] = torch.tensor(it["target"])
    return {"source": src, "source_mask": src_mask, "source_length": src_mask.sum(1), "target": tgt,
            "target_mask": tgt_mask, "decoder_input": dec, "labels": tgt.masked_fill(~tgt_mask, IGNORE_INDEX),
            "lm_input": lm, "lm_mask": lm_mask, "lm_labels": lm_labels}


class _Collate:
    def __init__(self, pad_id: int, bos_id: int):
        self.pad_id, self.bos_id = pad_id, bos_id

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        return collate_facts(items, self.pad_id, self.bos_id)


class FactsDataModule(SplitLoaders, pl.LightningDataModule):
    """Facts + question -> two-word answer, with known answers.

    Args:
        n_train / n_val / n_test: items per split.
        n_facts: facts per input (about 8 tokens each): the input-length knob.
        n_things: things per name (1-4); 1 makes the name alone the lookup key (the easiest task).
        tokenizer_items: training items the tokenizer is trained on (the vocabulary is closed, so a few
            hundred cover it); kept apart from ``n_train`` so a small-data student shares the teacher's tokenizer.
        batch_size / num_workers / seed: as usual (seed: the world's and the shuffling's).
    """

    def __init__(self, n_train: int = 20000, n_val: int = 256, n_test: int = 512, n_facts: int = 8,
                 n_things: int = 4, tokenizer_items: int = 2000, batch_size: int = 32, num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        for name, n in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test), ("batch_size", batch_size),
                        ("tokenizer_items", tokenizer_items)):
            if n <= 0:
                raise DataError(f"data.{name}={n}: must be > 0")
        corpus = (make_item(seed, "train", i, n_facts, n_things) for i in range(tokenizer_items))
        self.tokenizer = train_tokenizer(f"{it.source} {it.answer}" for it in corpus)
        self.vocab_size = len(self.tokenizer)
        self._sizes = {"train": n_train, "val": n_val, "test": n_test}
        self._ds: dict[str, FactsDataset] = {}

    def dataset(self, split: str) -> FactsDataset:
        if split not in self._ds:
            h = self.hparams
            self._ds[split] = FactsDataset(self._sizes[split], split, h.seed, h.n_facts, self.tokenizer, h.n_things)
        return self._ds[split]

    def setup(self, stage: str | None = None) -> None:
        for split in {"fit": ("train", "val"), "validate": ("val",)}.get(stage or "", ("test",)):
            self.dataset(split)

    def loader(self, split: str, shuffle: bool = False, batch_size: int | None = None) -> DataLoader:
        g = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(self.dataset(split), batch_size=batch_size or self.hparams.batch_size, shuffle=shuffle,
                          generator=g if shuffle else None, num_workers=self.hparams.num_workers,
                          collate_fn=_Collate(self.tokenizer.pad_token_id, self.tokenizer.bos_token_id),
                          drop_last=shuffle)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return self.loader(split, shuffle)
