"""Du-IN's three stages through the CLI on the tiny synthetic BIDS-iEEG set: chaining, refusals, evaluation, release."""

import json

import lightning.pytorch  # noqa: F401  (imported outside capsys: it binds logging handlers to sys.stderr)
import numpy as np
import pytest
import torch

from litbrain.cli import main
from litbrain.evaluation.seeg import evaluate_seeg, format_seeg_table, load_duin
from litbrain.nn import DuinModel
from litbrain.release import export_release, load_release
from litbrain.tasks import SeegDecodingTask
from litbrain.utils.checkpoint import read_checkpoint as load_checkpoint
from tests.helpers.seeg_fit import seeg_fit_args


@pytest.fixture(scope="module")
def chain(tiny_seeg_prepared, tmp_path_factory):
    """vqvae -> mae (tokenizer_from) -> classify (init_from), plus a classifier without pretraining."""
    root = tmp_path_factory.mktemp("seeg_chain")
    main(seeg_fit_args("vqvae", tiny_seeg_prepared, root / "vqvae"))
    vq = root / "vqvae" / "checkpoints" / "last.ckpt"
    main(seeg_fit_args("mae", tiny_seeg_prepared, root / "mae", "--model.init_args.tokenizer_from", str(vq),
                       "--model.init_args.init_from", str(vq), tiny=False))
    mae = root / "mae" / "checkpoints" / "last.ckpt"
    main(seeg_fit_args("classify", tiny_seeg_prepared, root / "classify", "--model.init_args.init_from", str(mae),
                       tiny=False))
    main(seeg_fit_args("scratch", tiny_seeg_prepared, root / "scratch"))
    return {"root": root, "vqvae": vq, "mae": mae, "classify": root / "classify" / "checkpoints" / "best.ckpt",
            "scratch": root / "scratch" / "checkpoints" / "best.ckpt"}


def test_each_stage_records_its_stage_and_later_stages_reuse_the_encoder_sizes(chain, tiny_seeg_prepared):
    manifest = json.loads((tiny_seeg_prepared / "manifest.json").read_text())
    channels = {s: v["n_channels"] for s, v in manifest["subjects"].items()}
    nets = {k: load_checkpoint(chain[k])["litbrain"]["net"] for k in ("vqvae", "mae", "classify")}
    assert [nets[k]["stage"] for k in nets] == ["vqvae", "mae", "classify"]
    assert all(n["model_type"] == "duin" for n in nets.values())
    for k in ("mae", "classify"):  # the stage configs do not repeat the sizes: they come from the chain
        assert nets[k]["encoder"] == nets["vqvae"]["encoder"] and nets[k]["encoder"]["d_model"] == 32
        assert nets[k]["subjects"] == channels
    assert nets["classify"]["n_classes"] == len(manifest["labels"])


def test_stage_two_targets_come_from_the_frozen_stage_one_tokenizer(chain):
    vq = load_checkpoint(chain["vqvae"])["state_dict"]
    mae = load_checkpoint(chain["mae"])["state_dict"]
    tok = {k[len("tokenizer."):]: v for k, v in mae.items() if k.startswith("tokenizer.")}
    assert tok and all(torch.equal(tok[k], vq["model." + k]) for k in tok)  # untouched by stage-2 training


def test_stage_three_starts_from_the_stage_two_encoder(chain):
    task = SeegDecodingTask(net={"stage": "classify", "n_classes": 6}, init_from=str(chain["mae"]))
    task.setup("fit")
    task.configure_model()
    mae = load_checkpoint(chain["mae"])["state_dict"]
    enc = {k: v for k, v in task.model.state_dict().items() if k.startswith("encoder.")}
    assert enc and all(torch.equal(v, mae["model." + k]) for k, v in enc.items())
    scratch = SeegDecodingTask(net=load_checkpoint(chain["scratch"])["hyper_parameters"]["net"])
    scratch.configure_model()
    assert not torch.equal(scratch.model.encoder.pos, task.model.encoder.pos)


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in err[0], err
    return err[0]


@pytest.mark.parametrize("config,key,wrong,needed", [
    ("mae", "tokenizer_from", "classify", "vqvae"),
    ("mae", "tokenizer_from", "mae", "vqvae"),
    ("classify", "init_from", "vqvae", "mae"),
])
def test_a_checkpoint_of_the_wrong_stage_is_one_clear_error(chain, tiny_seeg_prepared, tmp_path, capsys,
                                                             config, key, wrong, needed):
    # stage 2 names two checkpoints: the other key gets a valid one
    other = {"tokenizer_from": "init_from", "init_from": "tokenizer_from"}[key] if config == "mae" else None
    fix_other = [f"--model.init_args.{other}", str(chain["vqvae"])] if other else []
    with pytest.raises(SystemExit) as exc:
        main(seeg_fit_args(config, tiny_seeg_prepared, tmp_path, f"--model.init_args.{key}", str(chain[wrong]),
                           *fix_other, tiny=False))
    assert exc.value.code == 2
    line = _one_error_line(capsys)
    assert f"model.{key}={chain[wrong]}" in line and f"stage-'{wrong}'" in line and f"needs a stage-'{needed}'" in line
    assert not (tmp_path / "checkpoints").exists()


def test_stage_two_without_a_tokenizer_is_one_clear_error(tiny_seeg_prepared, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(seeg_fit_args("mae", tiny_seeg_prepared, tmp_path, "--model.init_args.tokenizer_from", "null"))
    assert "model.tokenizer_from is empty" in _one_error_line(capsys)


def test_evaluate_writes_the_per_subject_table_confusion_figure_and_codebook_usage(chain, tiny_seeg_prepared, tmp_path):
    m = evaluate_seeg(chain["classify"], tiny_seeg_prepared, tmp_path, no_pretraining=chain["scratch"],
                      tokenizer=chain["vqvae"], decimate=5)
    assert [r["method"] for r in m["rows"]] == ["du-in", "no pretraining", "logistic regression", "oracle", "chance"]
    assert m["subjects"] == ["sub-01", "sub-02", "sub-03"]
    # the model's top-1 recomputed by hand from its logits
    model = load_duin(chain["classify"], "classify")
    x = torch.from_numpy(np.load(tiny_seeg_prepared / "sub-02" / "test_brain.npy").astype(np.float32))
    y = np.load(tiny_seeg_prepared / "sub-02" / "test_label.npy")
    with torch.no_grad():
        acc = float((model({"sub-02": x}).argmax(1).numpy() == y).mean())
    assert m["per_subject"]["sub-02"]["du-in"]["top1"] == pytest.approx(acc)
    assert m["per_subject"]["sub-02"]["du-in"]["top5"] >= acc
    assert m["rows"][-1]["top1"] == pytest.approx(1 / 6)
    assert 0 < m["codebook"]["usage"] <= 1 and m["codebook"]["n_codes"] == 64
    assert (tmp_path / "confusion.png").stat().st_size > 1000
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert [r["method"] for r in saved["rows"]] == [r["method"] for r in m["rows"]]
    assert saved["rows"][0]["top1"] == m["rows"][0]["top1"]
    table = format_seeg_table(m)
    assert "logistic regression" in table and "codebook usage" in table


def test_evaluate_refuses_a_checkpoint_that_is_not_a_classifier(chain, tiny_seeg_prepared, tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["evaluate-seeg", "--checkpoint", str(chain["mae"]), "--data_dir", str(tiny_seeg_prepared),
              "--out_dir", str(tmp_path)])
    assert "needs a stage-'classify'" in _one_error_line(capsys)


def test_a_classifier_exports_and_reloads_bit_exactly(chain, tmp_path):
    out = export_release(chain["classify"], tmp_path / "release")
    model = load_release(out)
    assert isinstance(model, DuinModel) and model.stage == "classify"
    ref = load_duin(chain["classify"], "classify")
    x = {"sub-01": torch.randn(4, ref.subjects["sub-01"], 250)}
    assert torch.equal(model(x), ref(x))
    assert "Du-IN sEEG model" in (out / "README.md").read_text()


def test_evaluate_with_few_labels_fits_the_logistic_baseline_on_the_networks_labelled_epochs(
        chain, tiny_seeg_prepared, tmp_path, monkeypatch):
    """At label_fraction < 1 the logistic regression sees exactly the epochs that kept their label
    in the DataModule (same seed), not the whole training split."""
    from litbrain.datamodules import SeegDataModule

    import litbrain.evaluation.seeg as ev

    seen = []
    real = ev.fit_logistic

    def spy(x, y, *args, **kwargs):
        seen.append(np.asarray(y).copy())
        return real(x, y, *args, **kwargs)

    monkeypatch.setattr(ev, "fit_logistic", spy)
    m = evaluate_seeg(chain["classify"], tiny_seeg_prepared, tmp_path, decimate=5, seed=1, label_fraction=0.25)
    dm = SeegDataModule(str(tiny_seeg_prepared), batch_size=12, label_fraction=0.25, seed=1)
    expected = [sp.label[sp.label >= 0] for sp in dm._get_splits("train")]
    assert len(seen) == 3
    for got, want in zip(seen, expected):
        np.testing.assert_array_equal(got, want)
    assert m["label_fraction"] == 0.25 and "same 25% of labelled training epochs" in format_seeg_table(m)
