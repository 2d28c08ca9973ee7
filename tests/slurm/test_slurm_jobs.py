"""The sbatch templates on the real single-node SLURM cluster (scripts/slurm_cluster_start.sh).

Jobs run the CPU template unchanged, with the project's venv (LITBRAIN) and a tiny fit.
"""

import subprocess

import pytest

from tests.helpers.fitproc import (
    LITBRAIN,
    REPO,
    assert_same_weights,
    fit_env,
    global_step,
    start_fit,
    tiny_fit_args,
    wait_for,
    wait_ok,
)
from tests.slurm.conftest import job_info, sbatch, wait_job

pytestmark = pytest.mark.slurm
CPU_TEMPLATE = REPO / "slurm" / "cpu.sbatch"


def _job_env(**extra):
    return fit_env(LITBRAIN=LITBRAIN, **extra)


def test_two_task_cpu_ddp_job_completes_and_leaves_a_checkpoint(slurm_cluster, tiny_prepared, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    args = tiny_fit_args(tiny_prepared, run, epochs=1, every_n_train_steps=5)[1:]  # no "fit"
    job = sbatch(CPU_TEMPLATE, args, run / "job.out", "--ntasks-per-node=2", env=_job_env())
    info = wait_job(job, timeout=240)
    log = (run / "job.out").read_text()
    assert info["JobState"] == "COMPLETED", f"{info.get('JobState')} {info.get('ExitCode')}\n{log[-3000:]}"
    assert "1 node(s) x 2 process(es)" in log and "MEMBER: 2/2" in log  # srun started 2 ranks (gloo)
    last = run / "checkpoints" / "last.ckpt"
    assert last.is_file() and global_step(last) == 5  # 10 global batches / 2 ranks, 1 epoch


def test_template_refuses_devices_other_than_ntasks_per_node_at_run_time(slurm_cluster, tmp_path):
    job = sbatch(CPU_TEMPLATE, ["--config", "unused.yaml"], tmp_path / "job.out", "--ntasks-per-node=1",
                 env=_job_env(DEVICES="2"))
    info = wait_job(job, timeout=60)
    assert info["JobState"] == "FAILED" and info["ExitCode"] == "2:0"
    err = (tmp_path / "job.out").read_text().strip().splitlines()
    assert err == ["litbrain sbatch: error: devices=2 but --ntasks-per-node=1; under SLURM Lightning runs one "
                   "process (task) per device, so they must be equal; fix: submit with --ntasks-per-node=2, "
                   "or leave DEVICES unset"]


def test_preempted_job_requeues_resumes_and_ends_with_the_uninterrupted_weights(slurm_cluster, tiny_prepared, tmp_path):
    run, ref_dir = tmp_path / "run", tmp_path / "ref"
    run.mkdir()
    # Pace: 1 s per step, so the 20-step job is surely still training when SIGUSR1 comes, even on a
    # loaded machine (at 0.4 s it once finished first in CI); no numeric effect.
    pace = ["--trainer.callbacks+=tests.helpers.fitproc.Pace", "--trainer.callbacks.init_args.seconds", "1.0"]
    args = tiny_fit_args(tiny_prepared, run, epochs=2, every_n_train_steps=4)[1:] + pace
    job = sbatch(CPU_TEMPLATE, args, run / "job.out", "--ntasks-per-node=1", env=_job_env())
    # The uninterrupted reference: the same fit outside SLURM (same thread count; the CLI adds BatchSeed to both).
    ref = start_fit(tiny_fit_args(tiny_prepared, ref_dir, epochs=2, every_n_train_steps=4), ref_dir / "log")
    try:
        wait_for(lambda: (run / "checkpoints" / "last.ckpt").exists() or job_info(job).get("JobState") != "RUNNING"
                 and job_info(job).get("JobState") != "PENDING", 180, "the job's first checkpoint")
        # What SLURM does --signal=SIGUSR1@90 before the time limit: SIGUSR1 to the job's tasks.
        subprocess.run(["scancel", "--signal=USR1", job], check=True, timeout=15)
        info = wait_job(job, timeout=240)
    finally:
        if job_info(job).get("JobState") in ("RUNNING", "PENDING", "REQUEUED"):
            subprocess.run(["scancel", job], timeout=15)
    log = (run / "job.out").read_text()
    assert info["JobState"] == "COMPLETED", f"{info.get('JobState')} {info.get('ExitCode')}\n{log[-3000:]}"
    assert int(info["Restarts"]) >= 1, log[-3000:]
    hpc = run / "hpc_ckpt_1.ckpt"  # Lightning's SLURMEnvironment checkpoint, written at the step boundary
    assert hpc.is_file() and 4 <= global_step(hpc) < 20
    assert "restart 1 on" in log and f"Restoring states from the checkpoint path at {hpc}" in log
    wait_ok(ref, ref_dir / "log")
    last, ref_last = run / "checkpoints" / "last.ckpt", ref_dir / "checkpoints" / "last.ckpt"
    assert global_step(last) == global_step(ref_last) == 20
    assert_same_weights(last, ref_last, exact=True)
