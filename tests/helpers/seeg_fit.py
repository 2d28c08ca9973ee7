"""Helpers for the sEEG task tests: the demo stage configs shrunk to test size."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SEEG_CONFIGS = REPO / "configs" / "seeg"
TINY_MODEL = {"net.encoder.d_model": "32", "net.encoder.n_blocks": "1", "net.encoder.n_heads": "2",
              "net.encoder.filters": "[16,16,8]", "net.n_codes": "64", "net.code_dim": "16", "net.decoder_blocks": "1"}


def seeg_fit_args(config: str, data_dir: Path, run_dir: Path, *extra: str, epochs: int = 2,
                  tiny: bool = True) -> list[str]:
    """`litbrain fit` on configs/seeg/<config>.yaml, at test size and written under ``run_dir``."""
    sizes = [] if not tiny else [a for k, v in TINY_MODEL.items() for a in (f"--model.init_args.{k}", v)]
    return [
        "fit",
        "--config", str(SEEG_CONFIGS / f"{config}.yaml"),
        "--data.init_args.data_dir", str(data_dir),
        "--data.init_args.batch_size", "24",
        "--trainer.max_epochs", str(epochs),
        "--trainer.default_root_dir", str(run_dir),
        *sizes,
        *extra,
    ]
