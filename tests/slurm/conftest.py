"""The real single-node SLURM cluster of scripts/slurm_cluster_start.sh (started by .ci/run)."""

import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

DEFAULT_CONF = Path(os.environ.get("LITBRAIN_SLURM_DIR", "/tmp/litbrain-slurm")) / "slurm.conf"


def _reachable() -> str | None:
    """None if sinfo answers with a usable node, else why not."""
    if shutil.which("sinfo") is None:
        return "no `sinfo` on PATH"
    try:
        r = subprocess.run(["sinfo", "-h", "-N", "-o", "%t"], capture_output=True, text=True, timeout=15)
    except subprocess.TimeoutExpired:
        return "`sinfo` timed out"
    states = r.stdout.split()
    if r.returncode != 0 or not any(s.rstrip("*~#") in ("idle", "mix", "alloc", "comp") for s in states):
        return f"`sinfo` found no usable node ({(r.stderr or r.stdout).strip()[:200]})"
    return None


@pytest.fixture(scope="session")
def slurm_cluster():
    """Skips unless a SLURM controller answers (`scripts/slurm_cluster_start.sh` starts one)."""
    if "SLURM_CONF" not in os.environ and DEFAULT_CONF.is_file():
        os.environ["SLURM_CONF"] = str(DEFAULT_CONF)
    why = _reachable()
    if why:
        pytest.skip(f"no SLURM cluster reachable: {why}; start one with scripts/slurm_cluster_start.sh "
                    f"(.ci/run does) and export SLURM_CONF={DEFAULT_CONF}")
    return os.environ.get("SLURM_CONF")


def job_info(job_id: str) -> dict[str, str]:
    r = subprocess.run(["scontrol", "show", "job", "-o", job_id], capture_output=True, text=True, timeout=15)
    info = {}
    for tok in r.stdout.split():
        if "=" in tok:
            k, v = tok.split("=", 1)
            info.setdefault(k, v)
    return info


def wait_job(job_id: str, timeout: float, done=("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                                                  "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE", "PREEMPTED")) -> dict:
    end = time.monotonic() + timeout
    info: dict[str, str] = {}
    while time.monotonic() < end:
        info = job_info(job_id)
        if info.get("JobState") in done:
            return info
        time.sleep(0.5)
    subprocess.run(["scancel", job_id], timeout=15)
    raise AssertionError(f"job {job_id} not finished after {timeout}s: {info.get('JobState')} {info.get('Reason')}")


def sbatch(template: Path, args: list[str], out: Path, *flags: str, env: dict[str, str] | None = None) -> str:
    r = subprocess.run(["sbatch", "--parsable", f"--output={out}", f"--chdir={out.parent}", *flags, str(template),
                        *args], capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip().split(";")[0]
