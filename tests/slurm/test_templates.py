"""The sbatch templates of slurm/: well-formed, and rendering refuses devices != ntasks-per-node."""

import subprocess

import pytest

from litbrain.slurm import SlurmTemplateError, read_directives, render_sbatch
from tests.helpers.fitproc import REPO

SLURM = REPO / "slurm"
TEMPLATES = ["cpu.sbatch", "gpu_single_node.sbatch", "gpu_multi_node.sbatch"]


@pytest.mark.parametrize("name", TEMPLATES)
def test_template_requeues_on_sigusr1_and_launches_with_srun(name):
    text = (SLURM / name).read_text()
    d = read_directives(text)
    assert d["signal"] == "SIGUSR1@90" and "requeue" in d and d["open-mode"] == "append"
    assert "srun " in text and " fit " in text and "ntasks-per-node" in d
    if name.startswith("gpu"):
        assert d["gpus-per-node"] == d["ntasks-per-node"]
    assert subprocess.run(["bash", "-n", str(SLURM / name)]).returncode == 0


def test_render_fills_in_the_cluster_shape(tmp_path):
    out = tmp_path / "job.sbatch"
    text = render_sbatch(SLURM / "gpu_multi_node.sbatch", out, devices=8, nodes=4, partition="gpu", account="proj",
                         time="12:00:00")
    d = read_directives(out.read_text())
    assert text == out.read_text()
    assert (d["ntasks-per-node"], d["gpus-per-node"], d["nodes"]) == ("8", "8", "4")
    assert (d["partition"], d["account"], d["time"], d["signal"]) == ("gpu", "proj", "12:00:00", "SIGUSR1@90")
    assert read_directives(render_sbatch(SLURM / "cpu.sbatch", ntasks_per_node=4))["ntasks-per-node"] == "4"


@pytest.mark.parametrize("name,kw", [
    ("cpu.sbatch", dict(devices=2, ntasks_per_node=1)),
    ("gpu_single_node.sbatch", dict(devices=4, ntasks_per_node=8)),
])
def test_render_refuses_devices_other_than_ntasks_per_node(name, kw, tmp_path):
    with pytest.raises(SlurmTemplateError) as exc:
        render_sbatch(SLURM / name, tmp_path / "x.sbatch", **kw)
    msg = str(exc.value)
    assert len(msg.splitlines()) == 1
    assert f"devices={kw['devices']} but --ntasks-per-node={kw['ntasks_per_node']}" in msg and "fix:" in msg
    assert not (tmp_path / "x.sbatch").exists()


def test_render_refuses_gpus_other_than_tasks_and_the_cli_says_so_in_one_line():
    with pytest.raises(SlurmTemplateError, match="--gpus-per-node=8 but --ntasks-per-node=4"):
        render_sbatch(SLURM / "gpu_single_node.sbatch", devices=4, gpus_per_node="a100:8")
    r = subprocess.run([str(REPO / ".venv" / "bin" / "python"), "-m", "litbrain.slurm", str(SLURM / "cpu.sbatch"),
                        "--devices", "2", "--ntasks-per-node", "1"], capture_output=True, text=True)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip().count("\n") == 0 and "devices=2 but --ntasks-per-node=1" in r.stderr
