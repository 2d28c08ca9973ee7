import json

import numpy as np
import pytest
import torch

from litbrain.cli import main
from litbrain.evaluation.fmri import evaluate_decoder
from litbrain.metrics import top1_retrieval


def test_evaluate_reports_decoder_ridge_oracle_and_chance_side_by_side(tiny_checkpoint, tiny_prepared, tiny_raw, tmp_path, capsys):
    out = tmp_path / "results"
    summary = evaluate_decoder(str(tiny_prepared), str(tiny_checkpoint), str(out), raw_dir=str(tiny_raw), retrieval_draws=5)
    methods = [r["method"] for r in summary["rows"]]
    assert methods == ["decoder", "ridge", "oracle", "chance"]
    by = {r["method"]: r for r in summary["rows"]}
    n_test = json.loads((tiny_prepared / "manifest.json").read_text())["subjects"]["sub-01"]["n_test"]
    assert by["chance"]["brain_to_image"] == pytest.approx(1 / min(300, n_test))
    # The generator's oracle knows the true mixing: it must beat chance by far.
    assert by["oracle"]["brain_to_image"] > 5 * by["chance"]["brain_to_image"]
    assert set(summary["decoder_over_oracle"]) == {"brain_to_image", "image_to_brain"}
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["rows"] == summary["rows"]
    png = (out / "retrieval.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    printed = capsys.readouterr().out
    for m in methods:
        assert f"\n{m} " in printed


def test_ridge_row_is_the_closed_form_fit_scored_the_same_way(tiny_checkpoint, tiny_prepared, tmp_path):
    """Re-derive sub-01's ridge score independently from the prepared files."""
    from litbrain.evaluation.baselines import fit_ridge

    summary = evaluate_decoder(str(tiny_prepared), str(tiny_checkpoint), str(tmp_path), subjects=["sub-01"], retrieval_draws=3)
    ridge = summary["per_subject"]["sub-01"]["ridge"]
    emb = torch.from_numpy(np.load(tiny_prepared / "image_embedding.npy"))
    load = lambda split: (torch.from_numpy(np.load(tiny_prepared / "sub-01" / f"{split}_brain.npy").astype(np.float32)),
                          np.load(tiny_prepared / "sub-01" / f"{split}_stimulus.npy"))
    (xt, st), (xs, ss) = load("train"), load("test")
    model = fit_ridge(xt, emb[st], [ridge["alpha"]])
    expect = top1_retrieval(model.predict(xs).float(), emb[ss], 300, 3)
    assert ridge["brain_to_image"] == pytest.approx(expect["brain_to_image"])
    assert ridge["image_to_brain"] == pytest.approx(expect["image_to_brain"])


def test_data_verbs_run_from_config_files(tmp_path, capsys):
    cfg = tmp_path / "synth.yaml"
    cfg.write_text(
        f"out_dir: {tmp_path / 'raw'}\nn_subjects: 2\nn_stimuli: 60\nn_shared: 10\ntrials_per_session: 40\n"
        "n_voxels: 50\nlatent_dim: 4\nimage_embedding_shape: [8]\ntext_embedding_dim: null\nimage_size: 8\n"
    )
    main(["synthesize", "--config", str(cfg)])
    main(["synthesize", "--config", str(cfg)])  # same parameters again: a no-op
    main(["prepare", "--raw_dir", str(tmp_path / "raw"), "--out_dir", str(tmp_path / "prep"), "--val_fraction", "0.2"])
    manifest = json.loads((tmp_path / "prep" / "manifest.json").read_text())
    assert list(manifest["subjects"]) == ["sub-01", "sub-02"]
    with pytest.raises(SystemExit) as exc:
        main(["prepare", "--raw_dir", str(tmp_path / "raw"), "--out_dir", str(tmp_path / "p2"), "--subjects", "[sub-07]"])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert "sub-07" in err and "fix:" in err and "Traceback" not in err
    assert not (tmp_path / "p2").exists()
