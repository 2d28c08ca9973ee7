"""Shared test code of the encoding family: a tiny world and the fit recipe shrunk to test size."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ENCODING_CONFIG = str(REPO / "configs" / "encoding" / "demo.yaml")

# 3 subjects (sub-03 is the new subject), 40 shared test stimuli x 3 repeats, 250 own stimuli each.
TINY_ENCODING = dict(n_subjects=3, n_stimuli=790, n_shared=40, repeats=3, trials_per_session=120,
                     n_voxels=[160, 140, 150], latent_dim=6, image_embedding_dim=24, description_dim=12,
                     noise=1.0, image_size=16, seed=0)


def encoding_fit_args(data_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    """`litbrain fit` on the encoding demo recipe, shrunk to test size."""
    return ["fit", "--config", ENCODING_CONFIG, "--data.init_args.data_dir", str(data_dir),
            "--data.init_args.batch_size", "32", "--model.init_args.net.width", "64",
            "--trainer.max_epochs", "20", "--trainer.check_val_every_n_epoch", "20", "--model.init_args.lr", "3e-3",
            "--trainer.default_root_dir", str(run_dir), *extra]
