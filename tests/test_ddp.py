"""DDP equivalence: 2 CPU processes (gloo) train to the same weights as 1 process on the same global batch.

What "the same global batch" means here, and why it is not "1 process with batch 2B":
the task's contrastive losses (BiMixCo, SoftCLIP, InfoNCE) are computed per device over the
device's own batch, as MindEye2 does under DDP: the loss of 2B rows is not the mean of the
losses of two halves of B rows. DDP averages the two ranks' gradients, which is exactly
gradient accumulation over the same two micro-batches in one process (Lightning divides the
loss by ``accumulate_grad_batches``). So the single-process run takes batch B with
``accumulate_grad_batches=2``; :class:`MultiSubjectBatchSampler` deals the global batch list
round-robin (rank r takes batches r, r+2, ...), so optimizer step i consumes global batches 2i
and 2i+1 in both runs; and :class:`litbrain.callbacks.BatchSeed` seeds each batch's random draws
(dropout, BiMixCo) by its global index, so both runs draw the same. The schedules agree
(10 optimizer steps either way). What remains is float summation order (all-reduce vs
accumulation), hence allclose rather than equal.
"""

import pytest

from tests.helpers.fitproc import (
    REPO,
    assert_same_weights,
    global_step,
    start_fit,
    tiny_fit_args,
    wait_ok,
)

CPU_DDP = str(REPO / "configs" / "trainer" / "cpu_ddp.yaml")


@pytest.mark.ddp
@pytest.mark.slow
def test_two_gloo_processes_match_one_process_accumulating_the_same_batches(tiny_prepared, tmp_path):
    # warmup 0.25: OneCycleLR divides by zero when warmup_fraction * total_steps == 1 (0.1 * 10)
    common = ["--trainer.limit_val_batches", "0", "--model.init_args.warmup_fraction", "0.25"]
    ddp_dir, one_dir = tmp_path / "ddp", tmp_path / "one"
    ddp = start_fit(tiny_fit_args(tiny_prepared, ddp_dir, "--config", CPU_DDP, *common, every_n_train_steps=5),
                    ddp_dir / "log")
    one = start_fit(tiny_fit_args(tiny_prepared, one_dir, "--trainer.accumulate_grad_batches", "2", *common,
                                  every_n_train_steps=5), one_dir / "log")
    wait_ok(ddp, ddp_dir / "log", timeout=300)
    wait_ok(one, one_dir / "log", timeout=300)
    assert "MEMBER: 2/2" in (ddp_dir / "log").read_text()  # really 2 processes
    a, b = ddp_dir / "checkpoints" / "last.ckpt", one_dir / "checkpoints" / "last.ckpt"
    assert global_step(a) == global_step(b) == 10
    worst = assert_same_weights(a, b, exact=False, rtol=1e-4, atol=1e-6)
    print(f"max |w_ddp - w_accumulate| = {worst:.3g}")
