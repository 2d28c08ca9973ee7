"""Exact resume: a fit killed with SIGKILL at a random step and resumed with `--ckpt_path last`
ends with exactly the weights of an uninterrupted run (deterministic mode, BatchSeed)."""

import os
import random
import signal

import numpy as np
import pytest
from litbrain.datamodules import FmriDataModule

from tests.helpers.fitproc import (
    assert_same_weights,
    global_step,
    start_fit,
    tiny_fit_args,
    wait_for,
    wait_ok,
)

EPOCHS, STEPS_PER_EPOCH, EVERY = 2, 10, 4  # checkpoints at steps 4, 8 (mid-epoch), 12, 16, 20


def test_train_loader_resumes_mid_epoch_at_the_next_batch(tiny_prepared):
    def batches(dm, state=None, take=None, epoch=1):
        loader = dm.train_dataloader()
        if state is not None:
            loader.load_state_dict(state)
        loader.sampler.set_epoch(epoch)
        out = []
        for b in loader:
            out.append(b["stimulus"].numpy().copy())
            if take is not None and len(out) == take:
                return out, loader.state_dict()
        return out, loader.state_dict()

    dm = FmriDataModule(str(tiny_prepared), batch_size=27)
    dm.setup("fit")
    full, end_state = batches(dm)
    assert end_state == {"epoch": 1, "batches": len(full)} and len(full) == STEPS_PER_EPOCH
    head, state = batches(dm, take=4)
    assert state == {"epoch": 1, "batches": 4}
    tail, after = batches(dm, state=state)
    assert after["batches"] == len(full)
    for x, y in zip(head + tail, full, strict=True):
        np.testing.assert_array_equal(x, y)
    again, _ = batches(dm, state=state, epoch=2)  # a state of another epoch is ignored
    assert len(again) == len(full)


@pytest.mark.slow
def test_fit_killed_at_a_random_step_resumes_to_the_same_weights(tiny_prepared, tmp_path):
    total = EPOCHS * STEPS_PER_EPOCH
    kill_at = random.Random().randint(EVERY + 1, total - 2)  # after a checkpoint, before the end
    print(f"SIGKILL at optimizer step {kill_at} of {total}")
    ref_dir, run_dir, flag = tmp_path / "ref", tmp_path / "run", tmp_path / "paused"
    ref = start_fit(tiny_fit_args(tiny_prepared, ref_dir, epochs=EPOCHS, every_n_train_steps=EVERY), ref_dir / "log")
    args = tiny_fit_args(tiny_prepared, run_dir, epochs=EPOCHS, every_n_train_steps=EVERY)
    pause = ["--trainer.callbacks+=tests.helpers.fitproc.PauseAtStep", "--trainer.callbacks.init_args.step", str(kill_at),
             "--trainer.callbacks.init_args.flag", str(flag)]
    victim = start_fit(args + pause, run_dir / "log1")
    try:
        wait_for(lambda: flag.exists() or victim.poll() is not None, 240, f"the fit to reach step {kill_at}")
        assert victim.poll() is None, (run_dir / "log1").read_text()[-3000:]
        os.kill(victim.pid, signal.SIGKILL)  # kill -9: no handler, no cleanup
        assert victim.wait(30) == -signal.SIGKILL
    finally:
        if victim.poll() is None:
            victim.kill()
    last = run_dir / "checkpoints" / "last.ckpt"
    saved = global_step(last)
    assert 0 < saved <= kill_at and saved % EVERY == 0, saved
    resumed = start_fit(args + ["--ckpt_path", "last"], run_dir / "log2")
    wait_ok(resumed, run_dir / "log2")
    wait_ok(ref, ref_dir / "log")
    assert f"Restoring states from the checkpoint path at {last}" in (run_dir / "log2").read_text()
    assert global_step(last) == global_step(ref_dir / "checkpoints" / "last.ckpt") == total
    assert_same_weights(last, ref_dir / "checkpoints" / "last.ckpt", exact=True)
