"""New-subject transfer (configs/fmri/new_subject.yaml) beats training from scratch at 10% data."""

import json

import pytest
import torch
from litbrain.datamodules import prepare_fmri, synthesize_fmri

from litbrain.cli import main
from litbrain.evaluation.fmri import evaluate_decoder
from litbrain.utils.checkpoint import read_checkpoint as load_checkpoint
from tests.helpers.fit import REPO, fit_args

NEW_SUBJECT_CONFIG = str(REPO / "configs" / "fmri" / "new_subject.yaml")


@pytest.fixture(scope="module")
def transfer_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    raw = synthesize_fmri(
        root / "raw", n_subjects=3, n_stimuli=60 + 3 * 600, n_shared=60, trials_per_session=200,
        n_voxels=[200, 240, 280], latent_dim=8, image_embedding_shape=(32,), text_embedding_dim=None,
        image_size=8, noise=2.0, seed=1,
    )
    return prepare_fmri(raw, root / "prepared")


def _new_subject_args(data, run_dir, *extra):
    return [
        "fit", "--config", NEW_SUBJECT_CONFIG,
        "--data.init_args.data_dir", str(data),
        "--data.init_args.subjects", "[sub-03]",
        "--trainer.default_root_dir", str(run_dir),
        "--data.init_args.batch_size", "20",
        "--trainer.max_epochs", "80",
        "--trainer.check_val_every_n_epoch", "100",
        *extra,
    ]


def _top1(data, ckpt, out):
    summary = evaluate_decoder(str(data), str(ckpt), str(out), subjects=["sub-03"], retrieval_draws=10)
    row = next(r for r in summary["rows"] if r["method"] == "decoder")
    return (row["brain_to_image"] + row["image_to_brain"]) / 2


@pytest.mark.slow
def test_adapter_only_transfer_beats_scratch_with_ten_percent_of_the_new_subjects_trials(transfer_data, tmp_path):
    base_dir = tmp_path / "base"
    main(fit_args(transfer_data, base_dir, "--data.init_args.subjects", "[sub-01, sub-02]",
                  "--data.init_args.batch_size", "64", "--model.init_args.net.width", "128",
                  "--model.init_args.net.adapter", "linear",
                  "--trainer.max_epochs", "25", "--trainer.check_val_every_n_epoch", "100"))
    base = base_dir / "checkpoints" / "last.ckpt"

    main(_new_subject_args(transfer_data, tmp_path / "transfer", "--model.init_args.init_from", str(base)))
    transfer_ckpt = tmp_path / "transfer" / "checkpoints" / "last.ckpt"
    main(_new_subject_args(transfer_data, tmp_path / "scratch", "--model.init_args.init_from", "null",
                           "--model.init_args.freeze", "none", "--model.init_args.net.width", "128",
                           "--model.init_args.net.n_blocks", "2", "--model.init_args.net.adapter", "linear"))
    scratch_ckpt = tmp_path / "scratch" / "checkpoints" / "last.ckpt"

    # Adapter-only really froze the shared part: backbone weights equal the base model's.
    b, t = load_checkpoint(base)["state_dict"], load_checkpoint(transfer_ckpt)["state_dict"]
    shared = [k for k in b if not k.startswith("model.adapter.")]
    assert shared and all(torch.equal(b[k], t[k]) for k in shared)
    assert not any(k.startswith("model.adapter.maps.sub-03") for k in b)
    assert load_checkpoint(transfer_ckpt)["litbrain"]["net"]["subjects"].keys() == {"sub-01", "sub-02", "sub-03"}
    n_train = json.loads((transfer_data / "manifest.json").read_text())["subjects"]["sub-03"]["n_train"]
    assert n_train >= 500  # 10% of it is what both runs saw

    transfer = _top1(transfer_data, transfer_ckpt, tmp_path / "eval_transfer")
    scratch = _top1(transfer_data, scratch_ckpt, tmp_path / "eval_scratch")
    print(f"sub-03 test top-1 (mean of both directions): transfer {transfer:.3f} vs scratch {scratch:.3f}")
    assert transfer > scratch + 0.05
