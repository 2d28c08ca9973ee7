"""Render the sbatch templates of ``slurm/`` for one cluster shape, refusing inconsistent ones.

The templates run unchanged (``sbatch slurm/cpu.sbatch --config ...``; sbatch flags override
their ``#SBATCH`` lines, and the scripts themselves refuse devices != ntasks-per-node at run
time). Rendering writes a copy with the ``#SBATCH`` values filled in, e.g. to keep next to a run::

    python -m litbrain.slurm slurm/gpu_single_node.sbatch --devices 8 --partition gpu --account proj -o job.sbatch

Under SLURM Lightning runs one process per device: ``--ntasks-per-node`` must equal the trainer's
``devices`` (and ``--gpus-per-node`` for GPU templates). Anything else is one
:class:`SlurmTemplateError`.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from litbrain.errors import ConfigError

__all__ = ["SlurmTemplateError", "read_directives", "render_sbatch"]

_DIRECTIVE = re.compile(r"^#SBATCH\s+--([A-Za-z0-9-]+)(?:[= ](.*))?$")


class SlurmTemplateError(ConfigError):
    """A template rendered with an inconsistent cluster shape (or not a template)."""


def read_directives(text: str) -> dict[str, str | None]:
    """``{option: value}`` of the ``#SBATCH --option[=value]`` lines of a script."""
    out: dict[str, str | None] = {}
    for line in text.splitlines():
        m = _DIRECTIVE.match(line.strip())
        if m:
            out[m.group(1)] = m.group(2).strip() if m.group(2) is not None else None
    return out


def _count(value: str | int | None) -> int | None:
    """'4' -> 4, 'a100:4' -> 4 (typed GPU counts), None -> None."""
    if value is None:
        return None
    s = str(value).rsplit(":", 1)[-1]
    if not s.isdigit() or int(s) < 1:
        raise SlurmTemplateError(f"{value!r} is not a positive count; fix: e.g. 4 (or type:4 for GPUs)")
    return int(s)


def render_sbatch(
    template: str | Path,
    out: str | Path | None = None,
    *,
    devices: int | None = None,
    ntasks_per_node: int | None = None,
    gpus_per_node: int | str | None = None,
    nodes: int | None = None,
    partition: str | None = None,
    account: str | None = None,
    time: str | None = None,
    job_name: str | None = None,
    **options: str,
) -> str:
    """The template's text with these ``#SBATCH`` values (others kept); written to ``out`` if given.

    ``devices`` (the trainer's devices per node) defaults to ``--ntasks-per-node`` and sets it
    (and ``--gpus-per-node`` in a GPU template) when those are not given. Extra ``options`` are
    further ``#SBATCH`` flags (``mem="64G"``; underscores become dashes).
    """
    path = Path(template)
    if not path.is_file():
        raise SlurmTemplateError(f"{path}: sbatch template not found; fix: use one of slurm/*.sbatch")
    text = path.read_text()
    current = read_directives(text)
    if "ntasks-per-node" not in current:
        raise SlurmTemplateError(f"{path}: no '#SBATCH --ntasks-per-node' line; fix: use one of slurm/*.sbatch")
    gpu_template = "gpus-per-node" in current
    ntasks = _count(ntasks_per_node) or (_count(devices) if devices is not None else _count(current["ntasks-per-node"]))
    n_devices = _count(devices) if devices is not None else ntasks
    if n_devices != ntasks:
        raise SlurmTemplateError(
            f"{path}: devices={n_devices} but --ntasks-per-node={ntasks}; under SLURM Lightning runs one "
            f"process (task) per device, so they must be equal; fix: use --ntasks-per-node={n_devices} "
            f"(or give only devices)"
        )
    new: dict[str, str | None] = {"ntasks-per-node": str(ntasks)}
    if gpu_template or gpus_per_node is not None:
        gpus = _count(gpus_per_node) if gpus_per_node is not None else (ntasks if devices is not None or ntasks_per_node is not None else _count(current.get("gpus-per-node")))
        if gpus != ntasks:
            raise SlurmTemplateError(
                f"{path}: --gpus-per-node={gpus} but --ntasks-per-node={ntasks} (devices={n_devices}); one "
                f"process per GPU; fix: use --gpus-per-node={ntasks}, or devices={gpus}"
            )
        new["gpus-per-node"] = str(gpus_per_node) if gpus_per_node is not None else str(gpus)
    for key, value in {"nodes": nodes, "partition": partition, "account": account, "time": time,
                       "job-name": job_name, **{k.replace("_", "-"): v for k, v in options.items()}}.items():
        if value is not None:
            new[key] = str(value)
    if _count(new.get("nodes", current.get("nodes"))) is None:
        raise SlurmTemplateError(f"{path}: nodes must be a positive count")

    lines, done = text.splitlines(keepends=True), set()
    last_directive = max(i for i, ln in enumerate(lines) if _DIRECTIVE.match(ln.strip()))
    for i, line in enumerate(lines):
        m = _DIRECTIVE.match(line.strip())
        if m and m.group(1) in new:
            lines[i] = f"#SBATCH --{m.group(1)}={new[m.group(1)]}\n"
            done.add(m.group(1))
    extra = [f"#SBATCH --{k}={v}\n" for k, v in new.items() if k not in done]
    lines[last_directive + 1:last_directive + 1] = extra
    rendered = "".join(lines)
    if out is not None:
        Path(out).write_text(rendered)
        Path(out).chmod(0o755)
    return rendered


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m litbrain.slurm", description=__doc__.split("\n\n")[0])
    p.add_argument("template")
    p.add_argument("-o", "--out", help="write the rendered script here (default: stdout)")
    for flag in ("devices", "ntasks-per-node", "nodes"):
        p.add_argument(f"--{flag}", type=int)
    for flag in ("gpus-per-node", "partition", "account", "time", "job-name"):
        p.add_argument(f"--{flag}")
    a = p.parse_args(argv)
    try:
        text = render_sbatch(a.template, a.out, devices=a.devices, ntasks_per_node=a.ntasks_per_node,
                             gpus_per_node=a.gpus_per_node, nodes=a.nodes, partition=a.partition,
                             account=a.account, time=a.time, job_name=a.job_name)
    except SlurmTemplateError as err:
        print(f"litbrain.slurm: error: {err}", file=sys.stderr)
        raise SystemExit(2)
    if a.out is None:
        sys.stdout.write(text)


if __name__ == "__main__":
    main()
