"""Fixtures for task tests: a tiny decoder fitted once through the real CLI and configs."""

from pathlib import Path

import pytest

from litbrain.cli import main
from tests.tasks._fit import fit_args


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_prepared, tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("tiny_run")
    main(fit_args(tiny_prepared, run_dir))
    return run_dir / "checkpoints" / "last.ckpt"
