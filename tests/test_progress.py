"""A fit is never silent and carries none of the known noise lines (checked in a real process)."""

from __future__ import annotations

import re
import subprocess

from tests.helpers.fit import fit_args
from tests.helpers.fitproc import LITBRAIN, REPO, fit_env

NOISE = ("litlogger", "The `srun` command is available", "LeafSpec", "Setting accelerator to CPU", "Seed set to")


def test_fit_prints_a_line_per_epoch_with_an_eta_and_no_known_noise(tiny_prepared, tmp_path):
    args = fit_args(tiny_prepared, tmp_path, "--trainer.max_epochs", "3", "--trainer.check_val_every_n_epoch", "3",
                    "--model.init_args.net.width", "32", "--model.init_args.net.n_blocks", "1")
    proc = subprocess.run([LITBRAIN, *args], cwd=REPO, env=fit_env(), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout + proc.stderr
    lines = [ln for ln in out.splitlines() if ln.startswith("[litbrain] epoch")]
    assert [re.match(r"\[litbrain\] epoch (\d)/3", ln).group(1) for ln in lines] == ["1", "2", "3"], out[-2000:]
    assert all("ETA" in ln and "elapsed" in ln and "train/loss" in ln for ln in lines), lines
    assert "val/brain_to_image" in lines[-1]  # the monitored figure, once validation ran
    for noise in NOISE:
        assert noise not in out, noise
