"""Du-IN as its authors built it (configs/seeg/authors/) on the high-gamma world, at a CPU-test size.

The world (issue 14): 3 subjects, 20 words of 4 gestures, 1.5 s epochs at 400 Hz; the words live in
high-gamma envelopes with a random carrier phase per trial and +-50 ms onset jitter, with a weak
low-frequency code (snr 0.03), so logistic regression on the voltage reads little. The bars of
issue 14 that the authors' preset does not reach here are marked ``xfail(strict=True)`` with the
figure measured when they were written: they turn into failures the day they pass, so the note
must then be updated.
"""

import json
import subprocess
import sys

import pytest

from litbrain.datamodules import prepare_seeg, synthesize_seeg
from litbrain.evaluation.seeg import codebook_usage, evaluate_seeg, load_duin
from tests.helpers.seeg_fit import SEEG_CONFIGS

# Six CPU fits in one module fixture: ~10 min on a quiet 2-core machine, more than the suite's 900 s timeout
# on a loaded one.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

HG_WORLD = dict(n_subjects=3, n_channels=[10, 11, 12], region_channels=[6, 7, 8], n_words=20, trials_per_word=20,
                runs=2, sfreq=400.0, epoch_s=1.5, snr=0.03, envelope_snr=0.3, onset_jitter_s=0.05, jitter_steps=5,
                oracle_trials=20, seed=1)
SUBJECTS = ["sub-01", "sub-02", "sub-03"]
# configs/seeg/authors/* at test size: 100 ms patches of 40 samples, 2 blocks, 256 codes of 32.
SIZES = ["--model.init_args.net.encoder.patch_len", "40", "--model.init_args.net.encoder.strides", "[4,1,1]",
         "--model.init_args.net.encoder.n_blocks", "2", "--model.init_args.lr", "1e-3"]
CODES = ["--model.init_args.net.n_codes", "256"]
STAGE1 = [*CODES, "--model.init_args.net.code_dim", "32", "--model.init_args.net.decoder_blocks", "1",
          "--model.init_args.net.deconv_strides", "[1,1,4,1,10]", "--model.init_args.net.deconv_kernels", "[3,3,4,9,19]"]
FEW = ["--data.init_args.label_fraction", "0.2"]


def _fit(config, prepared, run, *extra, epochs):
    # Each fit in its own process: one run was seen to fail inside torch's fused AdamW ("does not support
    # differentiable=True") after several in-process fits, never in a fresh process.
    argv = ["fit", "--config", str(SEEG_CONFIGS / "authors" / f"{config}.yaml"), "--data.init_args.data_dir", str(prepared),
          "--data.init_args.batch_size", "60", "--trainer.max_epochs", str(epochs), "--trainer.default_root_dir", str(run),
          *SIZES, *extra]
    subprocess.run([sys.executable, "-c", "import sys; from litbrain.cli import main; main(sys.argv[1:])", *argv],
                   check=True)
    return run / "checkpoints"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("seeg_hg")
    bids = synthesize_seeg(root / "bids", **HG_WORLD)
    prepared = prepare_seeg(bids, root / "prepared", l_freq=1.0, h_freq=180.0, tmin=0.0, tmax=1.5)
    return root, bids, prepared


@pytest.fixture(scope="module")
def runs(world):
    """Stages 1-2 on every training trial, stage 3 at 100% and 20% labels, the same network from scratch."""
    root, _, prepared = world
    vq = _fit("vqvae", prepared, root / "vqvae", *STAGE1, epochs=15) / "last.ckpt"
    mae = _fit("mae", prepared, root / "mae", *CODES, "--model.init_args.tokenizer_from", str(vq), epochs=6) / "last.ckpt"
    out = {"vqvae": vq}
    for name, config, extra in (("cls", "classify", ["--model.init_args.init_from", str(mae)]), ("scratch", "scratch", []),
                                ("cls_20", "classify", ["--model.init_args.init_from", str(mae), *FEW]),
                                ("scratch_20", "scratch", FEW)):
        out[name] = _fit(config, prepared, root / name, *extra, epochs=30) / "best.ckpt"
    return out


_TABLES: dict[str, dict[str, float]] = {}


def _table(world, runs, labels: str) -> dict[str, float]:
    """Mean test top-1 per method (Du-IN, no pretraining, logistic regression on the raw voltage, oracle, chance)."""
    if labels not in _TABLES:
        root, _, prepared = world
        few = labels == "20"
        m = evaluate_seeg(runs["cls_20" if few else "cls"], prepared, root / f"results_{labels}",
                          no_pretraining=runs["scratch_20" if few else "scratch"], decimate=1,
                          label_fraction=0.2 if few else 1.0)
        _TABLES[labels] = {r["method"]: r["top1"] for r in m["rows"]}
    print(f"\n{labels}% labels, test top-1: {json.dumps(_TABLES[labels])}")
    return _TABLES[labels]


def test_the_authors_network_reads_the_envelope_words_that_logistic_regression_cannot(world, runs):
    """At 100% labels the authors' stage-3 network (here without pretraining) is far above logistic
    regression on the voltage: the world is not linear, and the network is not broken."""
    top1 = _table(world, runs, "100")
    assert top1["no pretraining"] > top1["logistic regression"] + 0.2


@pytest.mark.xfail(strict=True, reason="issue 14, NOT MET: Du-IN (three stages) 7.5% vs logistic regression 12.5% at "
                                       "100% labels, 6.7% vs 6.7% at 20% (chance 5%)")
def test_du_in_beats_logistic_regression_at_20_and_100_percent_labels(world, runs):
    for labels in ("100", "20"):
        top1 = _table(world, runs, labels)
        assert top1["du-in"] > top1["logistic regression"] + 0.05


@pytest.mark.xfail(strict=True, reason="issue 14, NOT MET: the authors' EMA rule (no restarts) collapses to 1 of 256 "
                                       "codes on this world (usage 0.4%, perplexity 1.0)")
def test_codebook_stays_alive_after_stage_one_with_the_authors_rule(world, runs):
    usage = codebook_usage(load_duin(runs["vqvae"], "vqvae"), world[2], SUBJECTS)
    print(f"\ncodebook usage after stage 1: {usage}")
    assert usage["usage"] > 0.5


@pytest.mark.xfail(strict=True, reason="issue 14, NOT MET: stage 3 after stages 1-2 reaches 7.5% top-1 (45.0% "
                                       "without pretraining) against an oracle of 100%")
def test_stage_three_reaches_90_percent_of_the_oracle(world, runs):
    root, bids, prepared = world
    top1 = _table(world, runs, "100")
    oracle = json.loads((bids / "truth.json").read_text())["oracle_accuracy"]
    assert top1["du-in"] >= 0.9 * oracle


@pytest.mark.xfail(strict=True, reason="issue 14, NOT MET: with a collapsed codebook stage 2 has one target; at 20% "
                                       "labels pretrained 6.7%, no pretraining 5.8%, both at chance (5%)")
def test_pretraining_beats_no_pretraining_at_20_percent_labels(world, runs):
    top1 = _table(world, runs, "20")
    chance = top1["chance"]
    assert top1["no pretraining"] > 2 * chance  # a comparison between two runs at chance shows nothing
    assert top1["du-in"] > top1["no pretraining"] + 0.05


def test_the_worlds_oracle_is_high_and_its_phase_integral_converged(world):
    truth = json.loads((world[1] / "truth.json").read_text())
    assert truth["oracle_accuracy"] >= 0.95 and all(v["oracle_quadrature_changed"] == 0 for v in truth["subjects"].values())
