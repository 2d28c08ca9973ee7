"""The built wheel carries datamodules/ as litbrain.datamodules (not only the editable install)."""

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_wheel_contains_and_imports_litbrain_datamodules(tmp_path):
    subprocess.run(
        [sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(tmp_path / "dist"), str(REPO)],
        check=True, capture_output=True, text=True,
    )
    (wheel,) = (tmp_path / "dist").glob("litbrain-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    # every package folder of the repository is in the wheel: a new sub-package cannot drop out
    packages = [p.parent.relative_to(REPO / "src") for p in (REPO / "src" / "litbrain").rglob("__init__.py")]
    packages += [Path("litbrain") / p.parent.relative_to(REPO) for p in (REPO / "datamodules").rglob("__init__.py")]
    assert len(packages) > 10
    for pkg in packages:
        assert f"{pkg.as_posix()}/__init__.py" in names, pkg
    assert "litbrain/datamodules/fmri/prepare.py" in names and "litbrain/py.typed" in names
    assert not any(n.startswith(("datamodules/", "tests/", "src/")) for n in names)
    assert any(n.endswith("entry_points.txt") for n in names)
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    # The wheel's copy must win over the editable install: put it first on sys.path.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "import litbrain.datamodules as d, litbrain.cli;"
        "assert d.__file__.startswith(sys.argv[1]), d.__file__;"
        "assert callable(d.prepare_fmri) and d.FmriDataModule; print(d.__file__)"
    )
    out = subprocess.run([sys.executable, "-c", code, str(site)], check=True, capture_output=True, text=True)
    assert str(site) in out.stdout
