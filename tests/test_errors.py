"""One error base: every exception class litbrain defines derives from LitbrainError, and the CLI
prints any of them as one line (exit 2), for a bad value on each verb family."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import lightning.pytorch  # noqa: F401  (imported outside capsys: it binds logging handlers to sys.stderr)
import litbrain.datamodules
import pytest

import litbrain
from litbrain.cli import main
from litbrain.errors import LitbrainError
from tests.helpers.fit import DEMO_CONFIG, REPO

try:  # bound to the real stdout before any capsys (see tests/test_trainer_configs.py)
    import deepspeed  # noqa: F401
except ImportError:
    pass


def _all_modules() -> list[str]:
    names = [m.name for m in pkgutil.walk_packages(litbrain.__path__, "litbrain.")]
    names += [m.name for m in pkgutil.walk_packages(litbrain.datamodules.__path__, "litbrain.datamodules.")]
    return sorted(set(names))


def test_every_exception_class_of_the_package_derives_from_litbrain_error():
    defined = []
    for name in _all_modules():
        module = importlib.import_module(name)
        for _, obj in inspect.getmembers(module, inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == name:
                defined.append(obj)
    assert len(defined) >= 10, defined  # errors.py's kinds + the families' own
    outside = [f"{c.__module__}.{c.__qualname__}" for c in defined if not issubclass(c, LitbrainError)]
    assert outside == []


BAD = {
    "fmri prepare": ["fmri", "prepare", "--raw_dir", "/nonexistent/raw", "--out_dir", "{tmp}/prepared"],
    "fmri prepare-nsd": ["fmri", "prepare-nsd", "--nsd_dir", "/nonexistent/NSD", "--out_dir", "{tmp}/prepared"],
    "fmri synthesize-nsd": ["fmri", "synthesize-nsd", "--out_dir", "{tmp}/nsd", "--n_subjects", "9"],
    "seeg prepare": ["seeg", "prepare", "--bids_root", "/nonexistent/bids", "--out_dir", "{tmp}/prepared"],
    "fmri evaluate": ["fmri", "evaluate", "--data_dir", "/nonexistent/prepared", "--checkpoint", "{tmp}/x.ckpt"],
    "seeg evaluate": ["seeg", "evaluate", "--checkpoint", "{tmp}/none.ckpt", "--data_dir", "/nonexistent",
                      "--out_dir", "{tmp}/res"],
    "vlm bench": ["vlm", "bench", "--config", str(REPO / "configs/bench/vlm_dropping.yaml"),
                  "--mustdrop", '{"merge_treshold": 0.9}', "--out_json", "null"],
    "vlm bench-vit": ["vlm", "bench-vit", "--quick", "true", "--window", "1"],
    "fit (fmri)": ["fit", "--config", DEMO_CONFIG, "--data.init_args.data_dir", "/nonexistent/prepared"],
    "export": ["export", "--checkpoint", "{tmp}/missing.ckpt", "--out", "{tmp}/release"],
    "consolidate": ["consolidate", "--checkpoint", "{tmp}", "--out", "{tmp}/full.ckpt"],
    "estimate-memory": ["estimate-memory"],
    "push": ["push", "--release", "{tmp}", "--repo_id", "bad id!"],
    "embed-images": ["embed-images", "--raw_dir", "{tmp}", "--encoder", "clip:ViT-L-14"],
}


@pytest.mark.parametrize("name", list(BAD))
def test_a_bad_value_on_each_verb_is_one_line(name, tmp_path, capsys):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in BAD[name]]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    err = [ln for ln in capsys.readouterr().err.strip().splitlines() if not ln.startswith("[20")]  # DeepSpeed's log
    assert exc.value.code == 2
    assert len(err) == 1 and "Traceback" not in err[0], err
    assert err[0].startswith("litbrain ") and "error:" in err[0], err[0]
    assert not (tmp_path / "release").exists() and not (tmp_path / "prepared").exists()
