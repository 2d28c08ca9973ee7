"""Du-IN learns the synthetic words: stage-3 accuracy vs the generator's Bayes oracle, a live codebook,
and pretraining that pays off when labels are scarce.

Small synthetic BIDS-iEEG sets (3 subjects, different montages, 20 words spelled from a shared
gesture inventory), prepared like the demo; the three stages chained through the CLI at a CPU-test
size.
"""

import json

import numpy as np
import pytest
import torch
from litbrain.datamodules import prepare_seeg, synthesize_seeg

from litbrain.cli import main
from litbrain.evaluation.seeg import codebook_usage, load_duin
from tests.helpers.seeg_fit import seeg_fit_args

pytestmark = pytest.mark.slow

SMALL_SEEG = dict(n_subjects=3, n_channels=[10, 11, 12], region_channels=[6, 7, 8], n_words=20, trials_per_word=20,
                  runs=2, sfreq=250.0, epoch_s=1.5, snr=0.6, oracle_trials=20, seed=1)
SMALL_ENCODER = ["--model.init_args.net.encoder.d_model", "48", "--model.init_args.net.encoder.n_blocks", "2",
                 "--model.init_args.net.encoder.n_heads", "4", "--model.init_args.net.encoder.filters", "[32,32,16]",
                 "--model.init_args.net.encoder.kernels", "[9,3,3]", "--model.init_args.net.encoder.strides", "[5,1,1]"]
SMALL_MODEL = [*SMALL_ENCODER, "--model.init_args.net.n_codes", "256", "--model.init_args.net.code_dim", "32",
               "--model.init_args.net.decoder_blocks", "1"]


def _small_set(root, **overrides):
    bids = synthesize_seeg(root / "bids", **{**SMALL_SEEG, **overrides})
    prepared = prepare_seeg(bids, root / "prepared", l_freq=3.0, h_freq=30.0, tmin=0.0, tmax=1.5)
    return root, bids, prepared


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    return _small_set(tmp_path_factory.mktemp("seeg_learning"))


def _fit(config, prepared, run, *extra, epochs):
    main(seeg_fit_args(config, prepared, run, "--data.init_args.batch_size", "60", *extra, epochs=epochs, tiny=False))


def _test_top1(ckpt, prepared) -> dict[str, float]:
    model = load_duin(ckpt, "classify")
    out = {}
    for s in model.subjects:
        x = torch.from_numpy(np.load(prepared / s / "test_brain.npy").astype(np.float32))
        y = np.load(prepared / s / "test_label.npy")
        with torch.no_grad():
            out[s] = float((model({s: x}).argmax(1).numpy() == y).mean())
    return out


def _pretrain(root, prepared):
    """Stages 1 and 2 on every training trial (no labels used); returns the two last.ckpt paths."""
    _fit("vqvae", prepared, root / "vqvae", *SMALL_MODEL, epochs=6)
    vq = root / "vqvae" / "checkpoints" / "last.ckpt"
    _fit("mae", prepared, root / "mae", "--model.init_args.tokenizer_from", str(vq), "--model.init_args.init_from",
         str(vq), epochs=6)
    return vq, root / "mae" / "checkpoints" / "last.ckpt"


@pytest.fixture(scope="module")
def pretrained(small):
    root, _, prepared = small
    return _pretrain(root, prepared)


def test_codebook_stays_alive_after_stage_one(small, pretrained):
    root, _, prepared = small
    usage = codebook_usage(load_duin(pretrained[0], "vqvae"), prepared, ["sub-01", "sub-02", "sub-03"])
    print(f"\ncodebook usage after stage 1: {usage}")
    assert usage["usage"] > 0.5


def test_stage_three_reaches_90_percent_of_the_oracle(small, pretrained):
    root, bids, prepared = small
    _fit("classify", prepared, root / "cls", "--model.init_args.init_from", str(pretrained[1]), epochs=20)
    top1 = _test_top1(root / "cls" / "checkpoints" / "best.ckpt", prepared)
    truth = json.loads((bids / "truth.json").read_text())
    oracle = {s: truth["subjects"][s]["oracle_accuracy"] for s in top1}
    ratio = np.mean(list(top1.values())) / np.mean(list(oracle.values()))
    print(f"\nDu-IN top-1 {top1}, oracle {oracle}, ratio {ratio:.3f}")
    assert ratio >= 0.9


def test_pretraining_beats_no_pretraining_with_20_percent_of_labels(tmp_path):
    """Du-IN's claim at test size: with labels for a fifth of the trials, the encoder pretrained by
    stages 1-2 on all trials classifies better than the same network trained from scratch on the
    labelled fifth (same epochs, same data, same seed). A harder set (snr 0.3) than the oracle test,
    so that neither model is at the ceiling."""
    root, bids, prepared = _small_set(tmp_path, snr=0.3)
    _, mae = _pretrain(root, prepared)
    few = ("--data.init_args.label_fraction", "0.2")
    _fit("classify", prepared, root / "cls", "--model.init_args.init_from", str(mae), *few, epochs=30)
    _fit("scratch", prepared, root / "scratch", *SMALL_ENCODER, *few, epochs=30)
    pretrained = np.mean(list(_test_top1(root / "cls" / "checkpoints" / "best.ckpt", prepared).values()))
    scratch = np.mean(list(_test_top1(root / "scratch" / "checkpoints" / "best.ckpt", prepared).values()))
    chance = 1 / SMALL_SEEG["n_words"]
    print(f"\n20% labels: pretrained top-1 {pretrained:.3f}, no pretraining {scratch:.3f}, chance {chance:.3f}")
    assert scratch > 3 * chance  # the scratch baseline learns: the comparison is not against a broken run
    assert pretrained > scratch
