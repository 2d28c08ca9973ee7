"""A language model released in Hugging Face's own format (``save_pretrained``), with its tokenizer and card.

The folder loads with ``AutoModelForSeq2SeqLM.from_pretrained`` (encoder-decoder students) or
``AutoModelForCausalLM.from_pretrained`` (teachers, decoder-only students) and ``AutoTokenizer``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from litbrain.errors import ReleaseError
from litbrain.release.cards import model_card
from litbrain.utils.io import atomic_dir

__all__ = ["save_hf_native"]


def save_hf_native(model: Any, out_dir: str | os.PathLike, files: dict[str, str] | None = None,
                   metrics: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write ``model.hf`` with ``save_pretrained`` plus the tokenizer files and a model card, atomically."""
    out_dir = Path(out_dir)
    hf = getattr(model, "hf", None)
    if hf is None or not hasattr(hf, "save_pretrained"):
        raise ReleaseError(f"{type(model).__name__} holds no Hugging Face model (.hf); fix: export it with "
                           f"`litbrain export` (litbrain's own release format)")
    if out_dir.exists() and not overwrite:
        raise ReleaseError(f"{out_dir}: already exists; fix: choose another --out or pass --overwrite true")
    with atomic_dir(out_dir, overwrite=True) as tmp:
        hf.save_pretrained(tmp)
        for name, text in (files or {}).items():
            if Path(name).name != name:
                raise ReleaseError(f"tokenizer file name {name!r} is not a plain file name")
            (tmp / name).write_text(text)
        model_card(model.config, metrics, None, "apache-2.0").save(tmp / "README.md")
    return out_dir

