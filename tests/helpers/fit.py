"""Helpers for task tests: the demo recipe shrunk to test size."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEMO_CONFIG = str(REPO / "configs" / "fmri" / "demo.yaml")


def fit_args(data_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    """`litbrain fit` on the demo recipe, shrunk to test size and redirected to ``run_dir``."""
    return [
        "fit",
        "--config", DEMO_CONFIG,
        "--data.init_args.data_dir", str(data_dir),
        "--data.init_args.batch_size", "30",
        "--model.init_args.net.width", "64",
        "--model.init_args.net.n_blocks", "2",
        "--trainer.max_epochs", "2",
        "--trainer.check_val_every_n_epoch", "1",
        "--trainer.default_root_dir", str(run_dir),
        *extra,
    ]
