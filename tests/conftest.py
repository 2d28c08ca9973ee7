"""Shared pytest fixtures. ``tiny_raw`` / ``tiny_prepared`` are reused by model tests."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# Small enough for tests (< 2 s to synthesize + prepare), big enough for every split and the oracle.
TINY_SYNTH = dict(
    n_subjects=3,
    n_stimuli=330,  # 30 shared + 100 own stimuli per subject
    n_shared=30,
    repeats=3,
    trials_per_session=50,  # 190 trials per subject -> 4 sessions
    n_voxels=[180, 240, 300],
    latent_dim=8,
    image_embedding_shape=(16,),
    text_embedding_dim=8,
    image_size=16,
    noise=3.0,
    seed=0,
)


@pytest.fixture(scope="session")
def tiny_raw(tmp_path_factory) -> Path:
    """A tiny synthetic raw fMRI dataset (3 subjects, 180-300 voxels, 190 trials each)."""
    from litbrain.datamodules import synthesize_fmri

    return synthesize_fmri(tmp_path_factory.mktemp("tiny") / "raw", **TINY_SYNTH)


@pytest.fixture(scope="session")
def tiny_prepared(tiny_raw) -> Path:
    """``tiny_raw`` prepared (val_fraction 0.1): 90 train / 10 val / 30 test rows per subject."""
    from litbrain.datamodules import prepare_fmri

    return prepare_fmri(tiny_raw, tiny_raw.parent / "prepared")


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_prepared, tmp_path_factory) -> Path:
    """A tiny decoder fitted for 2 epochs on ``tiny_prepared`` through the real CLI and demo recipe."""
    from litbrain.cli import main
    from tests.helpers.fit import fit_args

    run_dir = tmp_path_factory.mktemp("tiny_run")
    main(fit_args(tiny_prepared, run_dir))
    return run_dir / "checkpoints" / "last.ckpt"


# sEEG: 3 subjects (8/9/10 contacts, 4/5/6 region contacts), 6 words x 10 trials, 1 s epochs at 250 Hz.
TINY_SEEG = dict(
    n_subjects=3,
    n_channels=[8, 9, 10],
    region_channels=[4, 5, 6],
    n_words=6,
    trials_per_word=10,
    runs=2,
    sfreq=250.0,
    epoch_s=1.0,
    latent_dim=3,
    n_basis=6,
    snr=0.5,
    oracle_trials=30,
    seed=0,
)
TINY_SEEG_PREPARE = dict(l_freq=1.0, h_freq=100.0, tmin=0.0, tmax=1.0)


@pytest.fixture(scope="session")
def tiny_seeg_bids(tmp_path_factory) -> Path:
    """A tiny synthetic BIDS-iEEG dataset written through mne-bids (BrainVision)."""
    pytest.importorskip("mne_bids")
    from litbrain.datamodules import synthesize_seeg

    return synthesize_seeg(tmp_path_factory.mktemp("tiny_seeg") / "bids", **TINY_SEEG)


@pytest.fixture(scope="session")
def tiny_seeg_prepared(tiny_seeg_bids) -> Path:
    """``tiny_seeg_bids`` prepared (bipolar, vSMC+STG): 4/5/6 channels x 250 samples, 48/6/6 epochs."""
    from litbrain.datamodules import prepare_seeg

    return prepare_seeg(tiny_seeg_bids, tiny_seeg_bids.parent / "prepared", **TINY_SEEG_PREPARE)


# Encoding models (image -> voxels): a tiny world (tests/helpers/encoding.py), prepared, and a model fitted on it.
@pytest.fixture(scope="session")
def tiny_encoding_raw(tmp_path_factory) -> Path:
    from litbrain.datamodules import synthesize_encoding
    from tests.helpers.encoding import TINY_ENCODING

    return synthesize_encoding(tmp_path_factory.mktemp("enc") / "raw", **TINY_ENCODING)


@pytest.fixture(scope="session")
def tiny_encoding_prepared(tiny_encoding_raw) -> Path:
    from litbrain.datamodules import prepare_encoding

    return prepare_encoding(tiny_encoding_raw, tiny_encoding_raw.parent / "prepared")


@pytest.fixture(scope="session")
def tiny_encoding_checkpoint(tiny_encoding_prepared, tmp_path_factory) -> Path:
    """The encoding model (the demo recipe: lambda 0.3) fitted on sub-01 and sub-02 through the real CLI and demo recipe."""
    from litbrain.cli import main
    from tests.helpers.encoding import encoding_fit_args

    run = tmp_path_factory.mktemp("enc_run")
    main(encoding_fit_args(tiny_encoding_prepared, run, "--data.init_args.subjects", "[sub-01, sub-02]"))
    return run / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="session")
def tiny_wave_raw(tmp_path_factory) -> Path:
    """A tiny synthetic whole-brain (WAVE) world: 2 subjects, 3 task runs + 1 rest run each, 8 mm grid."""
    from litbrain.datamodules.wave.synthetic import synthesize_wave
    from tests.helpers.wave import TINY_WAVE

    return synthesize_wave(tmp_path_factory.mktemp("wave") / "raw", **TINY_WAVE)


@pytest.fixture(scope="session")
def tiny_wave_prepared(tiny_wave_raw) -> Path:
    from litbrain.datamodules.wave.prepare import prepare_wave

    return prepare_wave(tiny_wave_raw, tiny_wave_raw.parent / "prepared", radius=8.0)


# ----------------------------------------------------------------------------- generation family
@pytest.fixture(scope="session")
def tiny_gen_world(tmp_path_factory) -> Path:
    """A tiny 16-px stimulus world (240 stimuli, 40 shared = test) with images, captions and truth."""
    from litbrain.datamodules import synthesize_fmri
    from tests.helpers.generation import TINY_WORLD

    return synthesize_fmri(tmp_path_factory.mktemp("gen") / "raw", **TINY_WORLD)


@pytest.fixture(scope="session")
def tiny_gen_runs(tiny_gen_world, tmp_path_factory) -> dict[str, Path]:
    """The demo chain at test size through the real CLI: VAE (4 epochs), then UNet (2 epochs), saved folders."""
    from litbrain.cli import main
    from tests.helpers.generation import fit_args

    d = tmp_path_factory.mktemp("gen_runs")
    main(fit_args("vae", tiny_gen_world, d / "vae", "--trainer.max_epochs", "4", "--data.init_args.batch_size", "16",
                  "--model.init_args.lr", "5e-3"))
    main(fit_args("unet", tiny_gen_world, d / "unet", "--trainer.max_epochs", "2", "--model.init_args.vae",
                  str(d / "vae" / "out"), "--data.init_args.batch_size", "32", "--model.init_args.lr", "3e-3"))
    return {"vae": d / "vae" / "out", "pipeline": d / "unet" / "out", "vae_run": d / "vae" / "run",
            "unet_run": d / "unet" / "run"}
