"""WAVE through the CLI: pretraining (both objectives), contrastive fine-tuning from it, evaluation and ablation map."""

from __future__ import annotations

import json

import pytest
import torch

from litbrain.cli import main
from litbrain.evaluation.wave import evaluate_wave
from tests.helpers.wave import wave_fit_args


@pytest.fixture(scope="module")
def pretrained(tiny_wave_prepared, tmp_path_factory):
    run = tmp_path_factory.mktemp("wave_pre")
    main(wave_fit_args("pretrain_demo.yaml", tiny_wave_prepared, run, "--data.init_args.window", "20",
                       "--trainer.max_epochs", "2", "--model.init_args.objective", "next_tr"))  # WAVE's objective
    return run / "checkpoints" / "last.ckpt"


def test_masked_parcel_pretraining_learns(tiny_wave_prepared, tmp_path):
    from litbrain.datamodules.wave.datamodule import WaveDataModule
    from litbrain.nn.registry import build_model
    from litbrain.release import model_from_source, read_model_source
    from litbrain.tasks.wave import wave_loss

    main(wave_fit_args("pretrain_demo.yaml", tiny_wave_prepared, tmp_path, "--data.init_args.window", "20",
                       "--trainer.max_epochs", "4", "--model.init_args.objective", "masked_parcel",
                       "--model.init_args.lr", "3e-3"))
    src = read_model_source(tmp_path / "checkpoints" / "last.ckpt")
    trained = model_from_source(src)
    torch.manual_seed(0)
    fresh = build_model(src.config).eval()
    dm = WaveDataModule(str(tiny_wave_prepared), mode="pretrain", window=20)
    batch = next(iter(torch.utils.data.DataLoader(dm.dataset("train"), batch_size=64)))
    with torch.no_grad():
        after, before = (wave_loss(m, batch, "masked_parcel", 0.2, torch.Generator().manual_seed(0)).item()
                         for m in (trained, fresh))
    assert after < 0.9 * before, (after, before)


def test_contrastive_fine_tuning_from_pretraining_decodes_and_its_ablation_ranks_networks_as_the_truth(
        pretrained, tiny_wave_prepared, tiny_wave_raw, tmp_path, capsys):
    run = tmp_path / "con"
    main(wave_fit_args("contrastive_demo.yaml", tiny_wave_prepared, run, "--model.init_args.init_from",
                       str(pretrained), "--trainer.max_epochs", "30", "--model.init_args.lr", "3e-3"))
    ckpt = run / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
    pre = torch.load(pretrained, map_location="cpu", weights_only=True)["state_dict"]
    assert not torch.equal(state["model.parcel_embed.weight"], pre["model.parcel_embed.weight"])  # fine-tuned
    import yaml

    from litbrain.evaluation.wave import load_wave
    from tests.helpers.fit import REPO

    want = yaml.safe_load((REPO / "configs" / "wave" / "contrastive_demo.yaml").read_text())["model"]["init_args"]
    pre_cfg = yaml.safe_load((REPO / "configs" / "wave" / "pretrain_demo.yaml").read_text())["model"]["init_args"]
    assert want["net"]["dropout"] != pre_cfg["net"]["dropout"]
    assert load_wave(ckpt).config.dropout == want["net"]["dropout"]  # the fine-tune's dropout, not the pretraining's
    capsys.readouterr()
    out = evaluate_wave(str(tiny_wave_prepared), str(ckpt), str(tmp_path / "res"), raw_dir=str(tiny_wave_raw),
                        subjects=["sub-01", "sub-02"])
    printed = capsys.readouterr().out  # the verb prints its table, rows from the returned figures
    assert f"{out['model']['brain_to_image']:.1%}" in printed.splitlines()[3] and "ridge" in printed
    assert "Visual" in printed and f"Spearman {out['ablation_vs_truth']['spearman']:.2f}" in printed
    assert (tmp_path / "res" / "ablation.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "res" / "metrics.json").read_text())
    assert saved["model"]["top1"] == pytest.approx(out["model"]["top1"])
    assert out["model"]["top1"] > 10 * out["chance"], out["model"]
    assert out["oracle"]["top1"] > out["model"]["top1"] * 0.9
    # the bar: Spearman >= 0.9 over the informative networks, the top one right, every other below them
    agree = out["ablation_vs_truth"]
    drops = {k: round(v["drop"], 3) for k, v in out["ablation"].items()}
    assert agree["spearman"] >= 0.9 and agree["top_right"] and agree["uninformative_below"], (agree, drops)
