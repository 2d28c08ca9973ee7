"""Per-GPU memory of a model's training states under DeepSpeed ZeRO-2/3, for any registered model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from litbrain.errors import ConfigError, ReleaseError
from litbrain.nn.registry import ModelConfig, build_model, config_from_dict
from litbrain.utils.checkpoint import (
    is_zero_checkpoint,
    read_checkpoint,
    read_zero_client_state,
    require_deepspeed,
)

__all__ = ["count_parameters", "estimate_memory", "read_model_config", "zero_memory_rows"]


def read_model_config(path: str | Path) -> ModelConfig:
    """The model config of a release folder, a ``.ckpt`` or a ZeRO folder (weights are not needed)."""
    p = Path(path)
    if p.is_dir() and is_zero_checkpoint(p):
        net = (read_zero_client_state(p).get("litbrain") or {}).get("net")
    elif p.is_dir():
        cfg_file = p / "config.json"
        if not cfg_file.is_file():
            raise ReleaseError(f"{p}: neither a release folder (no config.json) nor a ZeRO checkpoint folder; "
                               f"fix: pass a release folder, a .ckpt or a ZeRO checkpoint folder")
        return config_from_dict(json.loads(cfg_file.read_text()), str(cfg_file))
    else:
        net = (read_checkpoint(p).get("litbrain") or {}).get("net")
    return config_from_dict(net if isinstance(net, dict) else {}, f"{p} (litbrain.net)")


def count_parameters(model: torch.nn.Module) -> tuple[int, int]:
    """(total parameters, tied ones counted once; largest single layer's parameters).

    The same quantities as DeepSpeed's ``model_to_params``, but by identity rather than
    ``data_ptr`` so it also works on a model built on the ``meta`` device.
    """
    total = sum(p.numel() for p in model.parameters())  # parameters() yields a tied tensor once
    largest = max((sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules()), default=0)
    return int(total), int(largest)


def zero_memory_rows(
    total_params: int, largest_layer_params: int, num_gpus_per_node: int = 1, num_nodes: int = 1,
    additional_buffer_factor: float = 1.5,
) -> list[dict[str, Any]]:
    """DeepSpeed's ZeRO-2 and ZeRO-3 model-state memory estimates, one row per offload option (bytes)."""
    require_deepspeed()
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import (
        estimate_zero2_model_states_mem_needs,
    )

    rows = []
    for offload in (False, True):
        cpu, gpu = estimate_zero2_model_states_mem_needs(
            total_params, num_gpus_per_node, num_nodes, cpu_offload=offload, additional_buffer_factor=additional_buffer_factor
        )
        rows.append({"stage": 2, "offload_optimizer": offload, "offload_param": False, "per_gpu_bytes": gpu, "per_node_cpu_bytes": cpu})
    for offload, offload_params in ((False, False), (True, False), (True, True)):
        cpu, gpu, _ = estimate_zero3_model_states_mem_needs(
            total_params, largest_layer_params, num_gpus_per_node, num_nodes, cpu_offload=offload,
            cpu_offload_params=offload_params, zero_init=True, additional_buffer_factor=additional_buffer_factor,
        )
        rows.append({"stage": 3, "offload_optimizer": offload, "offload_param": offload_params, "per_gpu_bytes": gpu, "per_node_cpu_bytes": cpu})
    return rows


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.2f} MiB"


def estimate_memory(
    checkpoint: str | None = None,
    net: dict[str, Any] | None = None,
    num_gpus_per_node: int = 1,
    num_nodes: int = 1,
    additional_buffer_factor: float = 1.5,
) -> str:
    """Per-GPU memory for the model states (params, grads, Adam) under ZeRO-2 and ZeRO-3.

    Uses DeepSpeed's estimators (``estimate_zero2/3_model_states_mem_needs``, what the
    ``*_all_live``/``*_all_cold`` helpers print); activations and buffers come on top. The
    model is built on the ``meta`` device, so even a full-size model costs no memory here. Any
    registered model type works (fMRI decoder, Du-IN stages, VLM, ...).

    Args:
        checkpoint: a Lightning ``.ckpt``, a ZeRO checkpoint folder or a release folder whose model to size;
            the keys of ``net`` override its config.
        net: a model config: ``model_type`` plus that model's fields (e.g. ``model_type: fmri_decoder``,
            ``subjects``, ``image_embedding_shape``, ``width``); see configs/fmri/estimate_memory.yaml.
        num_gpus_per_node: GPUs per node (= ``--ntasks-per-node`` under SLURM).
        num_nodes: nodes.
        additional_buffer_factor: DeepSpeed's safety factor on CPU memory.
    """
    cfg: dict[str, Any] = read_model_config(checkpoint).to_dict() if checkpoint else {}
    cfg.update(net or {})
    if not cfg.get("model_type"):
        raise ConfigError("estimate-memory needs --checkpoint, or --net with a model_type and that model's fields; "
                          "fix: see configs/fmri/estimate_memory.yaml")
    if num_gpus_per_node < 1 or num_nodes < 1:
        raise ConfigError(f"num_gpus_per_node={num_gpus_per_node}, num_nodes={num_nodes}; fix: use positive counts")
    config = config_from_dict(cfg, "net")
    with torch.device("meta"):
        model = build_model(config, "net")
    total, largest = count_parameters(model)
    rows = zero_memory_rows(total, largest, num_gpus_per_node, num_nodes, additional_buffer_factor)
    gpus = num_gpus_per_node * num_nodes
    lines = [
        f"model: {config.model_type}, {total:,} parameters ({total / 1e6:.1f}M), largest layer {largest:,}; "
        f"cluster: {num_nodes} node(s) x {num_gpus_per_node} GPU(s) = {gpus} GPU(s)",
        "model states only (fp32 Adam + 16-bit params/grads; DeepSpeed's estimators); activations come on top",
        f"{'stage':<6} {'offload_optimizer':<18} {'offload_param':<14} {'per-GPU':>12} {'per-node CPU':>14}",
    ]
    for r in rows:
        lines.append(
            f"{'ZeRO-' + str(r['stage']):<6} {str(r['offload_optimizer']).lower():<18} {str(r['offload_param']).lower():<14} "
            f"{_gib(r['per_gpu_bytes']):>12} {_gib(r['per_node_cpu_bytes']):>14}"
        )
    return "\n".join(lines)
