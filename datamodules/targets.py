"""Decoding targets computed by frozen encoders: image embeddings and caption embeddings.

``embed_images`` turns ``<raw>/stimuli.tsv`` + the stimulus images into
``<raw>/embeddings/image.npz``; ``embed_captions`` turns ``<raw>/captions.tsv`` into
``<raw>/embeddings/text.npz``. Both files hold the arrays ``prepare_fmri`` reads::

    ids          (N,) str       stimulus ids, in stimuli.tsv order (every stimulus, once)
    embeddings   (N, D) or (N, T, D) float32
    meta         () str         JSON: encoder, pretrained, parameters, shape, fingerprint

Encoders are named ``<backend>:<model>``:

* images -- ``open_clip:<model>`` (``open_clip.create_model_and_transforms``; ``output="tokens"``
  returns the visual transformer's token outputs, i.e. the patch tokens after ``ln_post`` and
  without the projection, as open_clip gives them with ``output_tokens=True``: ViT-bigG-14 at
  224 px -> 256 x 1664, MindEye2's target) and ``timm:<model>`` (``timm.create_model(...,
  num_classes=0)``; pooled = ``forward_head(forward_features(x), pre_logits=True)``, tokens =
  ``forward_features(x)``, CNN feature maps flattened to (H*W, C)).
* text -- ``open_clip:<model>`` (its text tower and tokenizer; the bundled BPE vocabulary
  works offline) and ``hf:<model id or local folder>`` (transformers ``AutoTokenizer`` /
  ``AutoModel``, mean pooling over the attention mask, then L2 normalisation: the
  sentence-transformers recipe).
* a diffusers pipeline (``diffusers:<id>`` or a folder with ``model_index.json``) -- images: its
  VAE's latents times the scaling factor, ``(N, C, h, w)`` (MindEye2's low-level target);
  captions: its text encoder's conditioning as the pipeline computes it from a prompt,
  ``(N, 77, D)`` (``nn.encoders.PromptEncoder``; the brain-to-image high-level target).

Preprocessing is the library's own (open_clip's eval ``preprocess``; timm's
``resolve_data_config`` + ``create_transform``). Models run frozen: ``eval()``, no gradients,
``torch.inference_mode``. ``model_config`` points at a local JSON file so tiny models can be
built without a download (open_clip: a model config registered with
``open_clip.add_model_config``, the file stem being the model name; timm: keyword arguments
of ``timm.create_model``, e.g. ``img_size``, ``patch_size``, ``embed_dim``, ``depth``,
``num_heads``). Pretrained weights need a network once, or a filled Hugging Face cache
(``HF_HUB_OFFLINE=1`` then works), or a local checkpoint file passed as ``pretrained``.

Outputs are written atomically (temporary files next to the destination, then a rename) and
idempotently (same inputs and parameters = no work). On bad input a :class:`DataError` names
the file or field and the fix, and nothing is left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import zipfile
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np

from litbrain.errors import DataError
from litbrain.nn.encoders import (
    IMAGE_BACKENDS,
    TEXT_BACKENDS,
    FrozenImageEncoder,
    FrozenTextEncoder,
    PromptEncoder,
    VaeEncoder,
    parse_spec,
)
from litbrain.utils.io import atomic_file, remove_stale_temporaries, temporary_sibling

from .io import (
    NpyRowWriter,
    _fmt_list,
    content_fingerprint,
    output_is_current,
    read_tsv,
)

__all__ = ["embed_images", "embed_captions"]

_META_VERSION = 1


# ----------------------------------------------------------------------------- atomic npz
def _read_meta(path: Path) -> dict | None:
    try:
        with np.load(path, allow_pickle=False) as f:
            return json.loads(str(f["meta"][()]))
    except Exception:
        return None


@contextlib.contextmanager
def _atomic_npz(out: Path) -> Iterator[Path]:
    """Yield a temporary folder; its ``*.npy`` files become the members of ``out`` (stored, not
    compressed, streamed from disk) and the npz is renamed into place only on success."""
    out.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    work = temporary_sibling(out, "parts")
    work.mkdir()
    try:
        yield work
        with atomic_file(out) as tmp_npz, zipfile.ZipFile(tmp_npz, "w", zipfile.ZIP_STORED, allowZip64=True) as zf:
            for p in sorted(work.glob("*.npy")):
                zf.write(p, arcname=p.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _resolve_out(raw: Path, out: str | os.PathLike) -> Path:
    p = Path(out)
    return p if p.is_absolute() else raw / p


def _read_stimuli(raw: Path) -> Any:
    if not raw.is_dir():
        raise DataError(f"{raw}: raw data folder not found; fix: pass the folder holding stimuli.tsv")
    df = read_tsv(raw / "stimuli.tsv", {"stimulus_id": str, "image": str}, what="stimulus table")
    if len(df) == 0:
        raise DataError(f"{raw / 'stimuli.tsv'}: no stimuli; fix: list one row per stimulus")
    dup = df["stimulus_id"].duplicated()
    if dup.any():
        raise DataError(f"{raw / 'stimuli.tsv'}: duplicate stimulus_id(s) {_fmt_list(df.loc[dup, 'stimulus_id'])}; "
                        f"fix: one row per stimulus")
    return df


def _fingerprint(files: Sequence[Path], params: dict, model_config: str | None) -> str:
    """Content hash of the inputs (images, tables, the model config file) and the parameters."""
    named = [(p.name if p.parent == files[0].parent else str(p), p) for p in files]
    if model_config and Path(model_config).is_file():
        named.append(("model_config", Path(model_config)))
    return content_fingerprint(named, {"v": _META_VERSION, **params})


def _up_to_date(out: Path, fp: str, overwrite: bool) -> bool:
    return output_is_current(out, fp, overwrite, _read_meta, made="computed", foreign="was not written by litbrain",
                             field="out")


def _save_small(work: Path, ids: Sequence[str], meta: dict) -> None:
    np.save(work / "ids.npy", np.asarray(list(ids), dtype=str))
    np.save(work / "meta.npy", np.asarray(json.dumps(meta, sort_keys=True)))


def _check_finite(block: np.ndarray, encoder: str, ids: Sequence[str]) -> None:
    bad = ~np.isfinite(block.reshape(block.shape[0], -1)).all(1)
    if bad.any():
        raise DataError(f"encoder={encoder!r}: NaN/inf embedding for stimulus id(s) "
                        f"{_fmt_list([ids[i] for i in np.flatnonzero(bad)])}; fix: check the weights, run in float32, "
                        f"or inspect those inputs")


# ----------------------------------------------------------------------------- embed_images
def _open_image(path: Path, rel: str, load: bool):
    from PIL import Image

    try:
        im = Image.open(path)
        if not load:
            im.close()
            return None
        return im.convert("RGB")
    except Exception as exc:
        raise DataError(f"{rel}: cannot be read as an image ({type(exc).__name__}: {exc}); fix: the file is truncated "
                        f"or not an image -- re-export it (PNG/JPEG) or correct its path in stimuli.tsv") from exc


def _is_pipeline(spec: str) -> bool:
    """A diffusers pipeline spec: ``diffusers:<id or folder>`` or a folder holding ``model_index.json``."""
    text = str(spec)
    return text.startswith("diffusers:") or (Path(text) / "model_index.json").is_file()


def embed_images(
    raw_dir: str | os.PathLike,
    encoder: str = "open_clip:ViT-bigG-14",
    pretrained: str | None = "laion2b_s39b_b160k",
    output: Literal["tokens", "pooled"] = "tokens",
    out: str = "embeddings/image.npz",
    batch_size: int = 32,
    device: str = "cpu",
    model_config: str | None = None,
    overwrite: bool = False,
    image_size: int | None = None,
) -> Path:
    """Embed every stimulus image with a frozen image encoder; write ``ids`` + ``embeddings`` to an npz.

    Args:
        raw_dir: Raw dataset folder holding ``stimuli.tsv`` (columns stimulus_id, image: a path
            relative to ``raw_dir`` or absolute) and the images.
        encoder: ``open_clip:<model>`` (e.g. ``open_clip:ViT-bigG-14``, MindEye2's target;
            ``open_clip:ViT-L-14`` for MindEye1), ``timm:<model>`` (e.g. ``timm:vit_base_patch16_224``),
            or a diffusers pipeline (``diffusers:<id>`` / a pipeline folder): its VAE's scaled latents
            ``(N, C, h, w)`` (``output`` and ``pretrained`` are then ignored).
        pretrained: Weights: an open_clip pretrained tag (``laion2b_s39b_b160k``) or a local
            checkpoint file; for timm any true value loads the model's default pretrained weights
            (a local file path is used as their file). ``None`` = random initialisation (tests).
            Downloading needs a network; offline, weights must already be in the Hugging Face cache.
        output: ``tokens`` = the encoder's token outputs, ``(N, T, D)`` (open_clip ViT-bigG-14:
            256 x 1664 patch tokens); ``pooled`` = one vector per image, ``(N, D)``.
        out: Output npz, relative to ``raw_dir`` or absolute (``prepare``'s ``image_embeddings``).
        batch_size: Images per forward pass.
        device: Torch device, e.g. ``cpu`` or ``cuda``.
        model_config: Local JSON building the model without a download: for open_clip a model
            config (embed_dim, vision_cfg, text_cfg) named ``<model>.json``; for timm keyword
            arguments of ``timm.create_model`` (img_size, patch_size, embed_dim, depth, num_heads, ...).
        overwrite: Replace an existing ``out`` computed from other inputs or parameters (same
            inputs and parameters = returns at once).
        image_size: pipeline VAE only: the side images are resized to (default: the VAE's sample_size).

    Returns:
        The path of the npz (arrays ``ids`` (N,), ``embeddings`` float32, ``meta`` JSON).

    Raises:
        DataError: on bad input (missing or unreadable image, unknown encoder or model, ...);
            ``out`` is then left as it was.
    """
    raw = Path(raw_dir)
    vae = _is_pipeline(encoder)
    if output not in ("tokens", "pooled"):
        raise DataError(f"output={output!r}: unknown; fix: pass 'tokens' or 'pooled'")
    if int(batch_size) < 1:
        raise DataError(f"batch_size={batch_size}: must be >= 1; fix: pass e.g. 32")
    if not vae:
        parse_spec(encoder, IMAGE_BACKENDS, "image")
    df = _read_stimuli(raw)
    ids = df["stimulus_id"].tolist()
    rels = df["image"].tolist()
    paths = [Path(r) if Path(r).is_absolute() else raw / r for r in rels]
    missing = [i for i, p in enumerate(paths) if not p.is_file()]
    if missing:
        raise DataError(f"{raw / 'stimuli.tsv'}: column 'image': {len(missing)} image file(s) not found "
                        f"({_fmt_list([rels[i] for i in missing])}; "
                        f"file line(s) {_fmt_list([i + 2 for i in missing])}); "
                        f"fix: add the images or correct their paths (relative to {raw})")
    dest = _resolve_out(raw, out)
    params = {"kind": "image", "encoder": encoder, "pretrained": pretrained, "output": output}
    if vae:
        params = {"kind": "image", "encoder": encoder, "output": "vae_latents", "image_size": image_size}
    fp = _fingerprint([raw / "stimuli.tsv", *paths], params, model_config)
    if _up_to_date(dest, fp, overwrite):
        return dest
    for p, r in zip(paths, rels):  # cheap header check before loading any model
        _open_image(p, r, load=False)

    if vae:
        enc: Any = VaeEncoder(encoder, image_size=image_size, device=device)
    else:
        enc = FrozenImageEncoder(encoder, pretrained=pretrained, output=output, device=device, model_config=model_config)
    bs = int(batch_size)

    def blocks() -> Iterator[np.ndarray]:
        for a in range(0, len(ids), bs):
            b = min(a + bs, len(ids))
            block = enc([_open_image(paths[i], rels[i], load=True) for i in range(a, b)]).astype(np.float32)
            _check_finite(block, encoder, ids[a:b])
            yield block

    with _atomic_npz(dest) as work:
        it = blocks()
        first = next(it)
        shape = (len(ids),) + first.shape[1:]
        with NpyRowWriter(work / "embeddings.npy", shape, np.float32) as w:
            w.append(first)
            for block in it:
                w.append(block)
        _save_small(work, ids, {**params, "model_config": model_config, "shape": list(shape),
                                "fingerprint": fp, "version": _META_VERSION})
    return dest


# ----------------------------------------------------------------------------- embed_captions
def embed_captions(
    raw_dir: str | os.PathLike,
    encoder: str = "open_clip:ViT-bigG-14",
    pretrained: str | None = "laion2b_s39b_b160k",
    out: str = "embeddings/text.npz",
    reduce: Literal["mean", "random"] = "mean",
    seed: int = 0,
    normalize: bool = True,
    batch_size: int = 64,
    device: str = "cpu",
    model_config: str | None = None,
    max_length: int | None = None,
    overwrite: bool = False,
) -> Path:
    """Embed the captions of every stimulus with a frozen text encoder; write one row per stimulus.

    Args:
        raw_dir: Raw dataset folder holding ``stimuli.tsv`` (the stimuli and their order) and
            ``captions.tsv`` (columns stimulus_id, caption; one or more rows per stimulus; rows
            of stimuli not in stimuli.tsv are ignored).
        encoder: ``open_clip:<model>`` (its text tower and tokenizer, e.g.
            ``open_clip:ViT-bigG-14``), ``hf:<model id or local folder>`` (transformers
            AutoModel, mean pooling over the attention mask, L2-normalised), or a diffusers
            pipeline (``diffusers:<id>`` / a pipeline folder): its text encoder's conditioning
            ``(N, max_length or 77, D)`` as the pipeline computes it (never normalised; ``mean``
            averages the token states of a stimulus's captions, ``random`` keeps one caption's).
        pretrained: open_clip weights: a pretrained tag or a local checkpoint file; ``None`` =
            random initialisation (tests). Ignored by ``hf:`` (the folder or id is the model).
            Downloading needs a network; offline, weights must already be in the Hugging Face cache.
        out: Output npz, relative to ``raw_dir`` or absolute (``prepare``'s ``text_embeddings``).
        reduce: ``mean`` = average of the stimulus's caption embeddings; ``random`` = the
            embedding of one caption per stimulus drawn with ``seed``.
        seed: Seed of ``reduce="random"``.
        normalize: L2-normalise each caption embedding before averaging (always on for ``hf:``).
        batch_size: Captions per forward pass.
        device: Torch device, e.g. ``cpu`` or ``cuda``.
        model_config: open_clip only: local JSON model config named ``<model>.json`` (builds the
            model without a download).
        max_length: ``hf:`` only: truncate captions to this many tokens (default: ``max_seq_length``
            of the folder's sentence_bert_config.json, else the tokenizer's limit).
        overwrite: Replace an existing ``out`` computed from other inputs or parameters (same
            inputs and parameters = returns at once).

    Returns:
        The path of the npz (arrays ``ids`` (N,), ``embeddings`` (N, D) float32, ``meta`` JSON).

    Raises:
        DataError: on bad input (a stimulus without caption, unknown encoder, ...); ``out`` is
            then left as it was.
    """
    raw = Path(raw_dir)
    if reduce not in ("mean", "random"):
        raise DataError(f"reduce={reduce!r}: unknown; fix: pass 'mean' or 'random'")
    if int(batch_size) < 1:
        raise DataError(f"batch_size={batch_size}: must be >= 1; fix: pass e.g. 64")
    prompt = _is_pipeline(encoder)
    if not prompt:
        parse_spec(encoder, TEXT_BACKENDS, "text")
    ids = _read_stimuli(raw)["stimulus_id"].tolist()
    cap_path = raw / "captions.tsv"
    caps = read_tsv(cap_path, {"stimulus_id": str, "caption": str}, what="captions")
    by_id: dict[str, list[str]] = {s: [] for s in ids}
    for s, c in zip(caps["stimulus_id"].tolist(), caps["caption"].tolist()):
        if s in by_id:
            by_id[s].append(c)
    missing = [s for s in ids if not by_id[s]]
    if missing:
        raise DataError(f"{cap_path}: no caption for {len(missing)} stimulus id(s) of stimuli.tsv "
                        f"({_fmt_list(missing)}); fix: add at least one row (stimulus_id, caption) per stimulus")
    dest = _resolve_out(raw, out)
    params = {"kind": "text", "encoder": encoder, "pretrained": pretrained, "reduce": reduce, "seed": int(seed),
              "normalize": bool(normalize), "max_length": max_length}
    if prompt:
        params = {"kind": "text", "encoder": encoder, "output": "conditioning", "reduce": reduce, "seed": int(seed),
                  "max_length": max_length}
    fp = _fingerprint([raw / "stimuli.tsv", cap_path], params, model_config)
    if _up_to_date(dest, fp, overwrite):
        return dest

    if reduce == "random":
        rng = np.random.default_rng(int(seed))
        texts = [by_id[s][int(rng.integers(len(by_id[s])))] for s in ids]
        owner = np.arange(len(ids))
    else:
        texts = [c for s in ids for c in by_id[s]]
        owner = np.repeat(np.arange(len(ids)), [len(by_id[s]) for s in ids])

    if prompt:
        # A pipeline's conditioning depends on the caption alone (padded to max_length, no batch effects):
        # encode each distinct caption once (templated worlds repeat captions many times).
        pe = PromptEncoder(encoder, max_length=max_length if max_length is not None else 77, device=device)
        unique, inverse = np.unique(np.asarray(texts, dtype=object).astype(str), return_inverse=True)
        states = np.concatenate([pe(list(unique[a:a + int(batch_size)])).numpy()
                                 for a in range(0, len(unique), int(batch_size))])
        texts = list(range(len(texts)))  # rows; enc looks up each row's caption states
        enc: Any = lambda rows: states[inverse[np.asarray(rows)]]  # noqa: E731
    else:
        enc = FrozenTextEncoder(encoder, pretrained=pretrained, device=device, model_config=model_config,
                                normalize=normalize, max_length=max_length)
    bs = int(batch_size)
    sums = None
    for a in range(0, len(texts), bs):
        y = enc(texts[a:a + bs]).astype(np.float64)
        if sums is None:
            sums = np.zeros((len(ids),) + y.shape[1:], dtype=np.float64)
        np.add.at(sums, owner[a:a + bs], y)
    counts = np.bincount(owner, minlength=len(ids)).reshape((-1,) + (1,) * (sums.ndim - 1))
    emb = (sums / counts).astype(np.float32)
    _check_finite(emb, encoder, ids)
    with _atomic_npz(dest) as work:
        np.save(work / "embeddings.npy", emb)
        _save_small(work, ids, {**params, "model_config": model_config, "shape": list(emb.shape),
                                "fingerprint": fp, "version": _META_VERSION})
    return dest
