"""A tiny brain-to-image world: the tiny synthetic fMRI set, a random tiny diffusers pipeline, its targets."""

from pathlib import Path

import pytest

from tests.conftest import TINY_SYNTH


@pytest.fixture(scope="session")
def recon_world(tmp_path_factory) -> dict[str, Path]:
    """raw + prepared tiny fMRI data (16-px images) with ``recon/`` targets from a tiny pipeline (latents 4 x 8 x 8,
    conditioning 16 x 16 (16 tokens: the captions' length): the mean over a stimulus's four phrasings, a function of its attributes alone)."""
    from litbrain.datamodules import embed_captions, embed_images, prepare_fmri, synthesize_fmri
    from litbrain.datamodules.recon.datamodule import prepare_recon
    from tests.helpers.recon import tiny_pipeline

    root = tmp_path_factory.mktemp("recon")
    raw = synthesize_fmri(root / "raw", **{**TINY_SYNTH, "n_subjects": 2, "n_stimuli": 630, "n_voxels": [180, 240],
                                         "noise": 1.0, "captions_per_stimulus": 4})
    prepared = prepare_fmri(raw, root / "prepared")
    pipe = tiny_pipeline(root / "pipeline", image_size=16, text_width=16)
    embed_images(raw, encoder=str(pipe), out="embeddings/latents.npz")
    embed_captions(raw, encoder=str(pipe), out="embeddings/conditioning.npz", reduce="mean", max_length=16)
    prepare_recon(prepared, raw)
    return {"raw": raw, "prepared": prepared, "pipeline": pipe, "root": root}
