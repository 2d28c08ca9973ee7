"""Smoke test of the NSD reader benchmark at tiny sizes: every figure produced, finite, printed and
written as JSON -- never the bars (memory on a shared CI machine is measured by `make bench-nsd`)."""

import inspect
import json
import math
from pathlib import Path

import pytest
import yaml

from litbrain.benchmarks.nsd import BARS, bench_nsd
from litbrain.benchmarks.fmri import format_table

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "bench" / "nsd.yaml"


@pytest.mark.slow  # ~20-40 s on 2 busy cores: 8 fresh child processes
def test_bench_nsd_tiny_table(tmp_path, capsys):
    out = tmp_path / "results.json"
    doc = bench_nsd(work_dir=str(tmp_path / "work"), output=str(out), sessions_small=1, sessions_big=2,
                    trials_per_session=30, grid=[10, 12, 9], image_size=16, n_shared=4, verbose=False)
    printed = capsys.readouterr().out
    on_disk = json.loads(out.read_text())
    assert on_disk["rows"] == doc["rows"] and printed.strip() == format_table(on_disk).strip()
    keys = {r["key"] for r in on_disk["rows"]}
    assert set(BARS) <= keys and len(keys) == 16
    for row in on_disk["rows"]:
        assert math.isfinite(row["value"]) and row["value"] > 0, row
        if row["key"] in BARS:
            assert isinstance(row["pass"], bool)
    images = {r["key"]: r["value"] for r in on_disk["rows"]}
    assert images["images_small"] == 10 and images["images_big"] == 20  # sessions x 30 / 3 images per subject


def test_bench_config_is_complete_and_commented():
    keys = yaml.safe_load(CONFIG.read_text())
    assert set(keys) <= set(inspect.signature(bench_nsd).parameters)
    lines = [ln for ln in CONFIG.read_text().splitlines() if ln and not ln.startswith("#")]
    assert all("#" in ln for ln in lines), [ln for ln in lines if "#" not in ln]
