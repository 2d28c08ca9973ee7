import json

import pytest
import torch
from lightning.pytorch.utilities import AttributeDict
from litbrain.datamodules import FmriDataModule, prepare_fmri, synthesize_fmri

from litbrain.cli import main
from litbrain.nn import BrainDecoder
from litbrain.release import export_release, load_model, load_release
from litbrain.tasks import FmriDecodingTask
from litbrain.tasks.fmri_decoding import decoder_loss
from litbrain.utils.checkpoint import read_checkpoint as load_checkpoint
from tests.helpers.fit import fit_args


def test_fit_through_the_cli_leaves_a_safe_checkpoint_with_the_datas_subjects(tiny_checkpoint, tiny_prepared):
    ckpt = load_checkpoint(tiny_checkpoint)  # weights_only=True
    manifest = json.loads((tiny_prepared / "manifest.json").read_text())
    expected = {s: v["n_voxels"] for s, v in manifest["subjects"].items()}
    net = ckpt["litbrain"]["net"]
    assert net["model_type"] == "fmri_decoder" and net["subjects"] == expected
    assert net["image_embedding_shape"] == manifest["image_embedding_shape"]
    assert ckpt["global_step"] > 0
    adapters = {k.split(".")[3] for k in ckpt["state_dict"] if k.startswith("model.adapter.maps.")}
    assert adapters == set(expected)


def _hparams(**kw):
    defaults = FmriDecodingTask().hparams
    return AttributeDict({**defaults, **kw})


def _batch(dm):
    return next(iter(dm.train_dataloader()))


def test_loss_runs_bimixco_first_then_annealed_softclip(tiny_prepared):
    dm = FmriDataModule(str(tiny_prepared), batch_size=30)
    dm.setup("fit")
    batch = _batch(dm)
    model = BrainDecoder(subjects=dm.subject_voxels, image_embedding_shape=list(dm.image_embedding_shape),
                         text_embedding_dim=dm.text_embedding_dim, width=32, n_blocks=1)
    h = _hparams(mixco_fraction=0.33)
    _, early = decoder_loss(model, batch, 0.1, h)
    _, late = decoder_loss(model, batch, 1.0, h)
    _, mid = decoder_loss(model, batch, 0.33 + 0.67 / 2, h)
    assert early["train/mixco"] == 1.0 and "train/softclip_temperature" not in early
    assert late["train/mixco"] == 0.0
    assert late["train/softclip_temperature"] == pytest.approx(h.softclip_temperature_end)
    assert mid["train/softclip_temperature"] == pytest.approx((h.softclip_temperature_start + h.softclip_temperature_end) / 2)
    assert "train/text_loss" in early and "train/text_loss" in late


def test_checkpoint_export_from_pretrained_round_trip_is_exact(tiny_checkpoint, tiny_prepared, tmp_path):
    release = export_release(tiny_checkpoint, tmp_path / "release", metrics={"rows": [{"method": "decoder", "brain_to_image": 0.5}]})
    assert sorted(p.name for p in release.iterdir()) == ["README.md", "config.json", "manifest.json", "metrics.json",
                                                         "model.safetensors"]
    card = (release / "README.md").read_text()
    assert "library_name: litbrain" in card and "| decoder | 0.500 |" in card and "Intended use" in card
    from_ckpt = load_model(tiny_checkpoint)
    from_release = load_release(release)
    task = FmriDecodingTask.load_from_checkpoint(tiny_checkpoint, weights_only=True, map_location="cpu")
    task.configure_model()
    task.load_state_dict(load_checkpoint(tiny_checkpoint)["state_dict"])
    task.eval()
    dm = FmriDataModule(str(tiny_prepared))
    dm.setup("test")
    for loader in dm.test_dataloader():
        batch = next(iter(loader))
        with torch.no_grad():
            a, b, c = from_ckpt(batch["brain"]), from_release(batch["brain"]), task(batch["brain"])
        for key in a:
            assert torch.equal(a[key], b[key]) and torch.equal(a[key], c[key]), key


def test_export_is_atomic_and_refuses_to_clobber(tiny_checkpoint, tmp_path):
    out = tmp_path / "rel"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    with pytest.raises(ValueError, match="already exists"):
        export_release(tiny_checkpoint, out)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    broken = tmp_path / "broken.ckpt"
    broken.write_bytes(tiny_checkpoint.read_bytes()[:1000])
    with pytest.raises(ValueError, match="broken.ckpt"):
        export_release(broken, tmp_path / "rel2")
    assert not (tmp_path / "rel2").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".rel2")]


@pytest.fixture(scope="module")
def other_voxels_prepared(tmp_path_factory):
    """Same subject ids as tiny_prepared but different ROI sizes."""
    from tests.conftest import TINY_SYNTH

    root = tmp_path_factory.mktemp("other")
    raw = synthesize_fmri(root / "raw", **{**TINY_SYNTH, "n_voxels": [150, 200, 260]})
    return prepare_fmri(raw, root / "prepared")


def test_checkpoint_whose_adapter_voxel_count_differs_from_the_data_fails_clearly(
    tiny_checkpoint, tiny_prepared, other_voxels_prepared, tmp_path, capsys
):
    trained = json.loads((tiny_prepared / "manifest.json").read_text())
    other = json.loads((other_voxels_prepared / "manifest.json").read_text())
    n_ckpt, n_data = trained["subjects"]["sub-01"]["n_voxels"], other["subjects"]["sub-01"]["n_voxels"]
    with pytest.raises(SystemExit) as exc:
        main(fit_args(other_voxels_prepared, tmp_path, "--model.init_args.init_from", str(tiny_checkpoint)))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(tiny_checkpoint) in err and "'sub-01'" in err and f"expects {n_ckpt} voxels" in err
    assert f"data has {n_data}" in err and "fix:" in err
    assert not (tmp_path / "checkpoints").exists()
    with pytest.raises(SystemExit):
        main(["validate", "--config", fit_args(other_voxels_prepared, tmp_path)[2], "--data.init_args.data_dir",
              str(other_voxels_prepared), "--trainer.logger", "false", "--trainer.callbacks", "[]",
              "--ckpt_path", str(tiny_checkpoint)])
    assert f"expects {n_ckpt} voxels" in capsys.readouterr().err


def test_unknown_config_key_is_one_clear_error(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  class_path: litbrain.tasks.FmriDecodingTask\n  init_args:\n    widht: 8\n")
    with pytest.raises(SystemExit) as exc:
        main(["fit", "--config", str(bad)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "'widht'" in err and str(bad) in err and "fix:" in err


def test_help_lists_every_verb(capsys):
    main(["--help"])
    out = capsys.readouterr().out
    for verb in ("fit", "validate", "test", "predict", "export", "fmri", "seeg", "vlm"):
        assert f"  {verb} " in out
    main(["fmri", "--help"])
    out = capsys.readouterr().out
    for verb in ("synthesize", "prepare", "evaluate", "bench"):
        assert f"  {verb} " in out


@pytest.mark.parametrize("steps", [1, 3, 10])
def test_short_runs_get_a_valid_learning_rate_schedule(tiny_prepared, tmp_path, steps):
    # 0.1 x 10 steps = a 1-step warm-up used to divide by zero inside OneCycleLR.
    main(fit_args(tiny_prepared, tmp_path, "--trainer.max_steps", str(steps), "--trainer.max_epochs", "-1",
                  "--trainer.limit_val_batches", "0"))
    assert load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == steps
