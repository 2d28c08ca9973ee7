"""The fMRI benchmark of issue 2: measured figures against the issue's bars, printed as one table.

Three checks, each measured side by side in one run so that a busy machine slows both sides:

(a) **Lightning overhead.** Per-step wall time of ``FmriDecodingTask`` under a Lightning
    ``Trainer`` vs a bare PyTorch loop that calls the same Lightning-free objective
    (:func:`litbrain.tasks.fmri_decoding.decoder_loss`) on a :class:`~litbrain.nn.BrainDecoder`
    with the same weights, the same AdamW parameter groups + OneCycleLR as
    ``FmriDecodingTask.configure_optimizers``, the same pre-materialised batches (read once from
    the real :class:`~litbrain.datamodules.FmriDataModule`), the same seeds and thread count.
    The time of a step is the steady-state mean over a window: the clock is read when step
    ``warmup_steps`` starts and when step ``warmup_steps + window_steps`` starts (a Callback's
    ``on_train_batch_start`` for Lightning, the top of the loop body for the bare loop).
    Repetitions are interleaved in ABBA order (bare, Lightning, ..., Lightning, bare, ...) with the
    DataModule pass of (b) between them, and the medians are compared. The same pair run with a
    width-32 decoder measures Lightning's fixed per-step overhead in ms, which gives a low-noise
    estimate of the ratio (``1 + overhead / bare step``) on a machine shared with other jobs. Bar: Lightning / bare <= 1.03.
(b) **Input pipeline headroom.** Samples/s of iterating ``FmriDataModule.train_dataloader()``
    (``num_workers`` as configured) vs samples/s that the Lightning training step of (a)
    consumes. Bar: >= 10x.
(c) **Memory does not grow with the data.** Peak RSS of a fresh child process (its RSS
    high-water mark, VmHWM = what ``ru_maxrss`` reports, reset after the torch/Lightning imports
    whose transient peak would otherwise hide everything) over ``prepare_fmri`` + one Lightning
    training epoch, on a raw set of ``memory_trials``
    trials and on one with ``memory_scale`` times as many. Raw sets are synthesised in
    separate processes beforehand (not measured) and cached under ``work_dir``. Bar: <= 1.2x.

Timing bars are for this benchmark only; the tests run it at tiny sizes and check the figures
are finite and positive, never the bars.
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import inspect
import json
import logging
import math
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from litbrain.benchmarks import BenchConfigError
from litbrain.utils.io import atomic_write_text

__all__ = ["bench_fmri", "BARS"]

#: The bars of issue 2: row key -> (comparison, value). Fixed here so a config cannot move them.
BARS: dict[str, tuple[str, float]] = {
    "step_ratio": ("<=", 1.03),
    "throughput_ratio": (">=", 10.0),
    "rss_ratio": ("<=", 1.2),
}

_RESULT_TAG = "LITBRAIN_BENCH_RESULT "
_MB = float(1 << 20)


# ============================================================================ entry point
def bench_fmri(
    work_dir: str = "runs/bench/fmri",
    output: str = "runs/bench/fmri/results.json",
    num_threads: int = 1,
    seed: int = 0,
    n_subjects: int = 3,
    n_voxels: int = 2000,
    n_stimuli: int = 2100,
    width: int = 1024,
    n_blocks: int = 4,
    batch_size: int = 96,
    num_workers: int = 0,
    warmup_steps: int = 3,
    window_steps: int = 15,
    repetitions: int = 7,
    memory_voxels: int = 20000,
    memory_trials: int = 1000,
    memory_scale: int = 10,
    memory_width: int = 256,
    memory_n_blocks: int = 2,
    memory_batch_size: int = 100,
    verbose: bool = True,
) -> dict[str, Any]:
    """Run the fMRI benchmark, print one table of figures vs the bars, write it as JSON.

    Args:
        work_dir: Folder for the synthetic raw sets (cached, keyed by their parameters) and the
            prepared data. Relative paths are relative to the current directory.
        output: JSON file the table (plus details and the configuration) is written to.
        num_threads: ``torch.set_num_threads`` for every measured process (and OMP/MKL threads
            of the child processes).
        seed: Seed of the synthetic data, the model initialisation and the training RNG.
        n_subjects: (a, b) Subjects of the synthetic speed set (each gets its own adapter).
        n_voxels: (a, b) ROI voxels of the first subject; later subjects get 15% more each.
        n_stimuli: (a, b) Stimuli of the speed set (5% are the shared test set, the rest is split
            between subjects, one presentation each).
        width: (a) Shared width of the decoder; choose it so a step takes >= ~50 ms.
        n_blocks: (a) Residual MLP blocks of the decoder backbone.
        batch_size: (a, b) Rows per training batch (equal share per subject).
        num_workers: (b, c) DataLoader workers of ``FmriDataModule``.
        warmup_steps: (a) Steps run before the timed window opens.
        window_steps: (a) Steps in the timed window (steady state).
        repetitions: (a, b) Interleaved repetitions (bare, Lightning, data); medians are reported.
        memory_voxels: (c) ROI voxels of the single subject of the memory sets.
        memory_trials: (c) Trials of the 1x memory set (one per stimulus, 10% shared test stimuli).
        memory_scale: (c) The large memory set has this many times the trials (and stimuli).
        memory_width: (c) Decoder width for the measured training epoch.
        memory_n_blocks: (c) Backbone blocks for the measured training epoch.
        memory_batch_size: (c) Rows per batch for the measured training epoch.
        verbose: Report progress on stderr (the table always goes to stdout).

    Returns:
        The JSON document written to ``output``: ``rows`` (key, figure, value, unit, bar, pass),
        ``details`` (per-repetition figures, RSS breakdown, timings), ``environment`` and ``config``.
    """
    config = {k: v for k, v in locals().items()}
    if min(warmup_steps, window_steps, repetitions, memory_scale, num_threads) < 1:
        raise BenchConfigError("warmup_steps, window_steps, repetitions, memory_scale and num_threads must be >= 1; "
                               "fix: correct configs/bench/fmri.yaml")
    if batch_size < n_subjects:
        raise BenchConfigError(f"batch_size={batch_size} < n_subjects={n_subjects}; fix: batch_size >= n_subjects")
    work = Path(work_dir)
    work.mkdir(parents=True, exist_ok=True)
    log = _Progress(verbose)
    t_start = time.perf_counter()
    env = _environment(num_threads)

    # ---- data for (a) and (b): a multi-subject speed set, synthesised in a child, prepared here
    n_shared = max(1, n_stimuli // 20)
    speed_kw = dict(n_subjects=n_subjects, n_stimuli=n_stimuli, n_shared=n_shared, repeats=3, train_repeats=1,
                    trials_per_session=250, n_voxels=n_voxels, latent_dim=16, image_embedding_shape=[128],
                    text_embedding_dim=64, image_size=8, seed=seed)
    log(f"speed set: {n_subjects} subjects, {n_stimuli} stimuli, {n_voxels}+ voxels")
    speed_raw, synth_s = _raw_set(work, "speed", speed_kw, num_threads)
    from litbrain.datamodules import prepare_fmri

    speed_prepared = prepare_fmri(speed_raw, work / "prepared" / f"speed-{_key(speed_kw)}")

    with _quiet_lightning():
        speed = _speed_checks(speed_prepared, num_threads=num_threads, seed=seed, width=width, n_blocks=n_blocks,
                              batch_size=batch_size, num_workers=num_workers, warmup=warmup_steps,
                              window=window_steps, repetitions=repetitions, log=log)

    # ---- (c): fresh child per size
    memory = _memory_checks(work, num_threads=num_threads, seed=seed, voxels=memory_voxels, trials=memory_trials,
                            scale=memory_scale, width=memory_width, n_blocks=memory_n_blocks,
                            batch_size=memory_batch_size, num_workers=num_workers, log=log)
    synth_s += memory.pop("synthesis_s")

    rows = _rows(speed, memory, config)
    env["loadavg_end"] = _loadavg()
    doc = {
        "benchmark": "litbrain fMRI (issue 2)",
        "rows": rows,
        "details": {"speed": speed, "memory": memory, "synthesis_s": round(synth_s, 2),
                    "wall_s": round(time.perf_counter() - t_start, 1)},
        "environment": env,
        "config": config,
    }
    out = atomic_write_text(output, json.dumps(doc, indent=1, default=_json_default))
    print(format_table(doc))
    log(f"wrote {out} ({doc['details']['wall_s']} s)")
    return doc


# ============================================================================ the table
def _rows(speed: dict, memory: dict, config: dict) -> list[dict[str, Any]]:
    reps = config["repetitions"]
    scale = config["memory_scale"]
    rows = [
        ("step_ms_bare", f"(a) bare PyTorch step, median of {reps}", speed["bare_ms"], "ms"),
        ("step_ms_lightning", f"(a) Lightning step, median of {reps}", speed["lightning_ms"], "ms"),
        # The verdict uses the median of the per-repetition ratios (each pair run back to back, ABBA),
        # so one noisy repetition cannot flip it; the ratio of the two medians is shown beside it.
        ("step_ratio", "(a) Lightning / bare, median of per-rep ratios", speed["paired_ratio_median"], "x"),
        ("step_ratio_of_medians", "(a) Lightning / bare, ratio of medians", speed["lightning_ms"] / speed["bare_ms"],
         "x"),
        ("step_gflops_bare", f"(a) bare step, {speed['step_gflop']:.2f} GFLOP fwd+bwd", speed["bare_achieved"]["gflops"],
         "GFLOP/s"),
        ("step_gflops_lightning", "(a) Lightning step", speed["lightning_achieved"]["gflops"], "GFLOP/s"),
        ("step_of_peak_lightning", f"(a) Lightning step / fp32 matmul peak ({speed['fp32_peak_gflops']:.0f} GFLOP/s)",
         speed["lightning_achieved"]["of_fp32_peak"], "of peak"),
        ("tiny_step_ratio", "(a) Lightning / bare, width-32 model", speed["tiny_step_ratio"], "x"),
        ("implied_step_ratio", f"(a) 1 + its overhead ({speed['tiny_overhead_ms']:.1f} ms) / bare step",
         1.0 + speed["tiny_overhead_ms"] / speed["bare_ms"], "x"),
        ("datamodule_samples_per_s", f"(b) FmriDataModule, num_workers={config['num_workers']}",
         speed["datamodule_samples_per_s"], "samples/s"),
        ("step_samples_per_s", "(b) training step consumption", speed["step_samples_per_s"], "samples/s"),
        ("throughput_ratio", "(b) DataModule / training step",
         speed["datamodule_samples_per_s"] / speed["step_samples_per_s"], "x"),
        ("train_data_1x_mb", "(c) train voxel rows at 1x, float16", memory["1x"]["train_brain_mb"], "MB"),
        ("train_data_big_mb", f"(c) train voxel rows at {scale}x, float16", memory["big"]["train_brain_mb"], "MB"),
        ("baseline_rss_mb", "(c) RSS after imports (start of the window)", memory["1x"]["baseline_rss_mb"], "MB"),
        ("peak_rss_1x_mb", "(c) peak RSS, prepare + 1 epoch, 1x", memory["1x"]["peak_rss_mb"], "MB"),
        ("peak_rss_big_mb", f"(c) peak RSS, prepare + 1 epoch, {scale}x", memory["big"]["peak_rss_mb"], "MB"),
        ("rss_ratio", f"(c) peak RSS {scale}x / 1x", memory["big"]["peak_rss_mb"] / memory["1x"]["peak_rss_mb"], "x"),
    ]
    out = []
    for key, figure, value, unit in rows:
        row: dict[str, Any] = {"key": key, "figure": figure, "value": float(value), "unit": unit}
        if key in BARS:
            op, bar = BARS[key]
            row["bar"] = f"{op} {bar:g}"
            row["pass"] = bool(value <= bar) if op == "<=" else bool(value >= bar)
        out.append(row)
    return out


def format_table(doc: dict[str, Any]) -> str:
    """The benchmark's table as text (what :func:`bench_fmri` prints)."""
    env = doc.get("environment", {})
    title = (f"{doc.get('benchmark', 'benchmark')} -- torch {env.get('torch')}, lightning {env.get('lightning')}, "
             f"{env.get('device', 'cpu')}, {env.get('threads')} threads, load avg {env.get('loadavg_start')} -> "
             f"{env.get('loadavg_end')}")
    header = ("figure", "measured", "unit", "bar", "verdict")
    body = []
    for r in doc["rows"]:
        v = r["value"]
        text = f"{v:.3f}" if r["unit"] in ("x", "of peak") else (f"{v:.1f}" if abs(v) < 1e4 else f"{v:.0f}")
        verdict = "" if "pass" not in r else ("PASS" if r["pass"] else "FAIL")
        body.append((r["figure"], text, r["unit"], r.get("bar", ""), verdict))
    widths = [max(len(str(x[i])) for x in [header, *body]) for i in range(len(header))]
    aligns = ("<", ">", "<", "<", "<")

    def line(cells):
        return "  ".join(f"{str(c):{a}{w}}" for c, a, w in zip(cells, aligns, widths)).rstrip()

    rule = "-" * len(line(header))
    return "\n".join([title, rule, line(header), rule, *(line(b) for b in body), rule])


# ============================================================================ (a) and (b)
def _speed_checks(prepared: Path, *, num_threads: int, seed: int, width: int, n_blocks: int, batch_size: int,
                  num_workers: int, warmup: int, window: int, repetitions: int, log) -> dict[str, Any]:
    import torch

    from litbrain.datamodules import FmriDataModule

    torch.set_num_threads(num_threads)
    n_steps = warmup + window + 1  # the window closes when step warmup+window starts
    dm = FmriDataModule(str(prepared), batch_size=batch_size, num_workers=num_workers, seed=seed)
    dm.setup("fit")
    batches = _materialise(dm, n_steps)
    rows_per_step = statistics.fmean(int(b["subject"].shape[0]) for b in batches)
    task_kw = {"net": {"subjects": dict(dm.subject_voxels), "image_embedding_shape": list(dm.image_embedding_shape),
                       "text_embedding_dim": dm.text_embedding_dim, "width": width, "n_blocks": n_blocks}}
    n_params = None
    bare_ms, light_ms, data_sps, loss_diff, bare_med, light_med = [], [], [], [], [], []
    # The same pair of runs with a tiny decoder (width 32, 1 block): the step is then mostly the
    # per-step work that does not scale with the model, so Lightning's overhead shows in ms.
    tiny_kw = {"net": {**task_kw["net"], "width": 32, "n_blocks": 1}}
    tiny_bare, tiny_light = [], []
    for rep in range(repetitions):
        # ABBA order (bare first on even repetitions, Lightning first on odd ones) cancels drift.
        for side in (("bare", "lightning") if rep % 2 == 0 else ("lightning", "bare")):
            torch.set_num_threads(num_threads)
            if side == "bare":
                times, losses_b, n_params = _bare_run(batches, task_kw, seed)
                bare_ms.append(_window_ms(times, warmup, window))
                bare_med.append(_median_step_ms(times, warmup, window))
            else:
                times, losses_l = _lightning_run(batches, task_kw, seed)
                light_ms.append(_window_ms(times, warmup, window))
                light_med.append(_median_step_ms(times, warmup, window))
            _collect()
        t_b, t_l = bare_ms[-1], light_ms[-1]
        loss_diff.append(max(abs(float(a) - float(b)) for a, b in zip(losses_b, losses_l)))
        torch.set_num_threads(num_threads)
        tiny_bare.append(_median_step_ms(_bare_run(batches, tiny_kw, seed)[0], warmup, window))
        tiny_light.append(_median_step_ms(_lightning_run(batches, tiny_kw, seed)[0], warmup, window))
        _collect()
        torch.set_num_threads(num_threads)
        data_sps.append(_datamodule_throughput(dm, n_steps))
        log(f"rep {rep + 1}/{repetitions}: bare {t_b:.1f} ms, Lightning {t_l:.1f} ms ({t_l / t_b:.3f}x; "
            f"median steps {bare_med[-1]:.1f} vs {light_med[-1]:.1f} ms; width-32 {tiny_bare[-1]:.1f} vs "
            f"{tiny_light[-1]:.1f} ms), DataModule {data_sps[-1]:.0f} samples/s")
    lightning_ms = statistics.median(light_ms)
    from litbrain.benchmarks.common import achieved, fp32_peak

    flops = _step_flops(batches[0], task_kw, seed)
    peak = fp32_peak(num_threads)
    return {
        "step_gflop": flops / 1e9,
        "fp32_peak_gflops": peak,
        "bare_achieved": achieved(flops, statistics.median(bare_ms) / 1000.0, peak),
        "lightning_achieved": achieved(flops, lightning_ms / 1000.0, peak),
        "bare_ms": statistics.median(bare_ms),
        "lightning_ms": lightning_ms,
        "bare_ms_per_rep": bare_ms,
        "lightning_ms_per_rep": light_ms,
        "paired_ratio_median": statistics.median(lb / bb for lb, bb in zip(light_ms, bare_ms)),
        "bare_median_step_ms_per_rep": bare_med,
        "lightning_median_step_ms_per_rep": light_med,
        "median_step_ratio": statistics.median(light_med) / statistics.median(bare_med),
        "tiny_bare_median_step_ms_per_rep": tiny_bare,
        "tiny_lightning_median_step_ms_per_rep": tiny_light,
        "tiny_overhead_ms": statistics.median(tiny_light) - statistics.median(tiny_bare),
        "tiny_step_ratio": statistics.median(tiny_light) / statistics.median(tiny_bare),
        "datamodule_samples_per_s": statistics.median(data_sps),
        "datamodule_samples_per_s_per_rep": data_sps,
        "step_samples_per_s": rows_per_step / (lightning_ms / 1000.0),
        "rows_per_step": rows_per_step,
        "loss_max_abs_diff_per_rep": loss_diff,
        "model_parameters": n_params,
        "subject_voxels": dict(dm.subject_voxels),
        "steps_per_run": n_steps,
        "window": [warmup, warmup + window],
    }


def _materialise(dm, n: int) -> list[dict[str, Any]]:
    """The first ``n`` training batches of ``dm`` (epochs 0, 1, ... as needed), held in RAM."""
    loader = dm.train_dataloader()
    out: list[dict[str, Any]] = []
    epoch = 0
    while len(out) < n:
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            out.append(batch)
            if len(out) == n:
                break
        epoch += 1
    return out


def _task_hparams(task_kw: dict[str, Any]) -> SimpleNamespace:
    """``FmriDecodingTask``'s hyper-parameters (signature defaults + ``task_kw``), without building it."""
    from litbrain.tasks import FmriDecodingTask

    sig = inspect.signature(FmriDecodingTask.__init__)
    hp = {k: p.default for k, p in sig.parameters.items() if k != "self" and p.default is not inspect.Parameter.empty}
    hp.update(task_kw)
    return SimpleNamespace(**hp)


def _window_ms(t: list[float], warmup: int, window: int) -> float:
    """Mean step time (ms) between the starts of steps ``warmup`` and ``warmup + window``."""
    return (t[warmup + window] - t[warmup]) / window * 1000.0


def _median_step_ms(t: list[float], warmup: int, window: int) -> float:
    """Median of the individual step times in the same window (robust to a busy machine's bursts)."""
    return statistics.median(b - a for a, b in zip(t[warmup:warmup + window], t[warmup + 1:warmup + window + 1])) * 1000


def _bare_run(batches, task_kw, seed) -> tuple[list[float], list, int]:
    """The reference: a plain PyTorch loop over ``decoder_loss``; returns (step start times, losses, #params)."""
    import torch

    from litbrain.nn import BrainDecoder, BrainDecoderConfig
    from litbrain.tasks.fmri_decoding import decoder_loss
    from litbrain.utils.optim import build_optimizer

    h = _task_hparams(task_kw)
    torch.manual_seed(seed)
    model = BrainDecoder(BrainDecoderConfig(**h.net))
    total = len(batches)
    opt, sched = build_optimizer(model, h.lr, h.weight_decay, h.warmup_fraction, total)  # as the task's recipe
    model.train()
    times, losses = [], []
    torch.manual_seed(seed + 1)
    for step, batch in enumerate(batches):
        times.append(time.perf_counter())
        loss, _ = decoder_loss(model, batch, step / total, h)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.detach())
    n_params = sum(p.numel() for p in model.parameters())
    return times, losses, n_params


def _step_flops(batch, task_kw, seed) -> int:
    """FLOPs of one training step's forward + backward (the optimiser's elementwise work is not counted)."""
    import torch

    from litbrain.benchmarks.common import count_flops
    from litbrain.nn import BrainDecoder, BrainDecoderConfig
    from litbrain.tasks.fmri_decoding import decoder_loss

    h = _task_hparams(task_kw)
    torch.manual_seed(seed)
    model = BrainDecoder(BrainDecoderConfig(**h.net)).train()
    return count_flops(lambda: decoder_loss(model, batch, 0.0, h)[0].backward())


def _lightning_run(batches, task_kw, seed) -> tuple[list[float], list]:
    """``FmriDecodingTask`` under a minimal Trainer on the same batches; returns (step start times, losses)."""
    import lightning as L
    import torch
    from torch.utils.data import DataLoader

    from litbrain.tasks import FmriDecodingTask

    class StepClock(L.Callback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.losses: list = []

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
            if batch_idx == 0:  # after the DataLoader iterator drew its base seed: same RNG as the bare loop
                torch.manual_seed(seed + 1)
            self.times.append(time.perf_counter())

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            self.losses.append(outputs["loss"].detach())

    task = FmriDecodingTask(**task_kw)
    torch.manual_seed(seed)
    task.configure_model()  # build the decoder now, from the same seed as the bare loop
    clock = StepClock()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=len(batches), max_epochs=1, logger=False,
                        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                        num_sanity_val_steps=0, limit_val_batches=0, callbacks=[clock])
    loader = DataLoader(batches, batch_size=None, shuffle=False, collate_fn=_identity)
    trainer.fit(task, train_dataloaders=loader)
    if len(clock.times) != len(batches):
        raise RuntimeError(f"Lightning ran {len(clock.times)} steps, expected {len(batches)}")
    return clock.times, clock.losses


def _datamodule_throughput(dm, min_batches: int) -> float:
    """Samples/s of iterating whole epochs of ``dm.train_dataloader()`` (at least ``min_batches``)."""
    loader = dm.train_dataloader()
    n_rows = n_batches = epoch = 0
    t0 = time.perf_counter()
    while n_batches < min_batches:
        loader.sampler.set_epoch(epoch)
        for batch in loader:
            n_rows += int(batch["subject"].shape[0])
            n_batches += 1
        epoch += 1
    return n_rows / (time.perf_counter() - t0)


def _identity(batch):
    return batch


def _collect() -> None:
    gc.collect()


# ============================================================================ (c)
def _memory_checks(work: Path, *, num_threads: int, seed: int, voxels: int, trials: int, scale: int, width: int,
                   n_blocks: int, batch_size: int, num_workers: int, log) -> dict[str, Any]:
    out: dict[str, Any] = {"synthesis_s": 0.0}
    for label, factor in (("1x", 1), ("big", scale)):
        n = trials * factor
        kw = dict(n_subjects=1, n_stimuli=n, n_shared=max(1, n // 10), repeats=1, train_repeats=1,
                  trials_per_session=250, n_voxels=[voxels], latent_dim=16, image_embedding_shape=[128],
                  text_embedding_dim=64, image_size=8, seed=seed)
        log(f"memory set {factor}x: {n} trials x {voxels} voxels")
        raw, synth_s = _raw_set(work, f"memory{factor}x", kw, num_threads)
        out["synthesis_s"] += synth_s
        prepared = work / "prepared" / f"memory-{factor}x"
        shutil.rmtree(prepared, ignore_errors=True)  # prepare must run (and be measured) from scratch
        res = _child("rss", {"raw": str(raw), "out": str(prepared), "threads": num_threads, "seed": seed,
                             "width": width, "n_blocks": n_blocks, "batch_size": batch_size,
                             "num_workers": num_workers}, num_threads)
        res["factor"] = factor
        res["trials"] = n
        out[label] = res
        log(f"memory set {factor}x: peak RSS {res['peak_rss_mb']:.0f} MB "
            f"(baseline {res['baseline_rss_mb']:.0f} MB, data {res['train_brain_mb']:.0f} MB)")
    return out


def _rss_child(p: dict[str, Any]) -> dict[str, Any]:
    """In a fresh process: prepare + one Lightning epoch; report this process's peak RSS."""
    import lightning as L
    import torch

    from litbrain.datamodules import FmriDataModule, prepare_fmri
    from litbrain.tasks import FmriDecodingTask

    torch.set_num_threads(int(p["threads"]))
    import_peak = _maxrss_mb()
    # Importing torch + Lightning peaks well above the steady RSS (transiently mapped libraries);
    # reset the high-water mark so the peak is that of prepare + epoch, not of the imports.
    # ru_maxrss cannot be reset (a thread's exit latches the peak into it), so the peak is read
    # from VmHWM -- the same kernel counter (the mm's RSS high-water mark), which can.
    peak_reset = _reset_peak_rss()
    baseline = _peak_rss_mb() if peak_reset else import_peak
    t0 = time.perf_counter()
    prepared = prepare_fmri(p["raw"], p["out"])
    prepare_s = time.perf_counter() - t0
    after_prepare = _peak_rss_mb() if peak_reset else _maxrss_mb()
    status_prepare = _proc_status()

    class RssSampler(L.Callback):
        def __init__(self) -> None:
            self.max = {"VmRSS": 0.0, "RssAnon": 0.0, "RssFile": 0.0}

        def on_train_batch_end(self, *args, **kwargs) -> None:
            for k, v in _proc_status().items():
                self.max[k] = max(self.max.get(k, 0.0), v)

    L.seed_everything(int(p["seed"]), verbose=False)
    dm = FmriDataModule(str(prepared), batch_size=int(p["batch_size"]), num_workers=int(p["num_workers"]),
                        seed=int(p["seed"]))
    task = FmriDecodingTask(net={"width": int(p["width"]), "n_blocks": int(p["n_blocks"])})
    sampler = RssSampler()
    trainer = L.Trainer(accelerator="cpu", devices=1, max_epochs=1, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[sampler])
    t0 = time.perf_counter()
    with _quiet_lightning():
        trainer.fit(task, datamodule=dm)
    epoch_s = time.perf_counter() - t0
    brain = sum((Path(prepared) / s / "train_brain.npy").stat().st_size for s in dm.subjects)
    return {
        "peak_rss_mb": _peak_rss_mb() if peak_reset else _maxrss_mb(),
        "ru_maxrss_mb": _maxrss_mb(),
        "baseline_rss_mb": baseline,
        "import_peak_rss_mb": import_peak,
        "peak_reset_after_imports": peak_reset,
        "peak_rss_after_prepare_mb": after_prepare,
        "rss_after_prepare_mb": status_prepare,
        "epoch_max_rss_mb": sampler.max,
        "train_brain_mb": brain / _MB,
        "train_rows": int(sum(dm.n_rows("train").values())),
        "steps": int(trainer.global_step),
        "prepare_s": round(prepare_s, 2),
        "epoch_s": round(epoch_s, 2),
    }


def _maxrss_mb() -> float:
    import resource

    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024.0 if sys.platform != "darwin" else kb / _MB  # Linux: KiB, macOS: bytes


def _peak_rss_mb() -> float:
    """VmHWM (MB): this process's RSS high-water mark since start or the last reset."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1]) / 1024.0
    return _maxrss_mb()


def _reset_peak_rss() -> bool:
    """Reset this process's RSS high-water mark (Linux >= 4.0: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _proc_status() -> dict[str, float]:
    """Current VmRSS / RssAnon / RssFile in MB (Linux; empty elsewhere)."""
    out: dict[str, float] = {}
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, rest = line.partition(":")
            if key in ("VmRSS", "RssAnon", "RssFile"):
                out[key] = float(rest.split()[0]) / 1024.0
    return out


# ============================================================================ raw sets and children
def _key(kw: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(kw, sort_keys=True).encode()).hexdigest()[:10]


def _raw_set(work: Path, name: str, kw: dict[str, Any], threads: int) -> tuple[Path, float]:
    """A synthetic raw set for ``kw`` under ``work/raw``, synthesised in a child unless cached."""
    path = work / "raw" / f"{name}-{_key(kw)}"
    if (path / "README.json").is_file():  # written last inside an atomic directory: complete
        return path, 0.0
    t0 = time.perf_counter()
    _child("synth", {"out_dir": str(path), "overwrite": True, **kw}, threads)
    return path, time.perf_counter() - t0


def _child(mode: str, payload: dict[str, Any], threads: int) -> dict[str, Any]:
    code = "from litbrain.benchmarks.fmri import _child_main; _child_main()"
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), HF_HUB_OFFLINE="1",
               TOKENIZERS_PARALLELISM="false", PYTHONWARNINGS="ignore")
    proc = subprocess.run([sys.executable, "-c", code, mode, json.dumps(payload)], capture_output=True, text=True,
                          env=env)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith(_RESULT_TAG)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"bench child {mode!r} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(lines[-1][len(_RESULT_TAG):])


def _child_main() -> None:
    """Entry point of the child processes: ``<mode> <json payload>`` -> one tagged JSON line."""
    mode, payload = sys.argv[1], json.loads(sys.argv[2])
    if mode == "synth":
        from litbrain.datamodules import synthesize_fmri

        synthesize_fmri(**payload)
        result: dict[str, Any] = {"ok": True}
    elif mode == "rss":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = _rss_child(payload)
    else:
        raise SystemExit(f"unknown bench child mode {mode!r}")
    print(_RESULT_TAG + json.dumps(result), flush=True)


# ============================================================================ helpers
class _Progress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.t0 = time.perf_counter()

    def __call__(self, msg: str) -> None:
        if self.enabled:
            print(f"[bench {time.perf_counter() - self.t0:6.1f}s] {msg}", file=sys.stderr, flush=True)


@contextlib.contextmanager
def _quiet_lightning():
    """Silence Lightning's info lines and warnings (GPU available, few workers, ...) in a block."""
    names = ("lightning.pytorch", "lightning.fabric", "lightning")
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, lv in zip(loggers, levels):
            lg.setLevel(lv)


def _loadavg() -> list[float] | None:
    with contextlib.suppress(OSError, AttributeError):
        return [round(x, 2) for x in os.getloadavg()]
    return None


def _environment(threads: int) -> dict[str, Any]:
    import lightning
    import torch

    return {"torch": torch.__version__, "lightning": lightning.__version__, "python": platform.python_version(),
            "device": "cpu", "threads": threads, "cpu_count": os.cpu_count(), "machine": platform.machine(),
            "loadavg_start": _loadavg()}


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, float) and not math.isfinite(o):
        return None
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


# ============================================================================ the training step, against the peak
def bench_fmri_step(
    voxels: list[int] = [15724, 14278],
    width: int = 1024,
    n_blocks: int = 4,
    target_dim: int = 768,
    rows_per_subject: int = 32,
    thread_counts: list[int] = [1, 2],
    rounds: int = 5,
    seed: int = 0,
    output: str | None = "runs/bench/fmri_step.json",
) -> dict[str, Any]:
    """The fMRI training step at MindEye2's sizes, as achieved FLOP/s and a fraction of this machine's peak.

    Measures, side by side in interleaved rounds: the step in fp32 and under bf16 autocast
    (Lightning's ``bf16-mixed`` on CPU), each with its forward / backward / optimiser breakdown, the
    optimiser in its default, foreach and fused forms, and 1 vs 2 threads. The matmul peak is
    measured in the same run (:func:`litbrain.benchmarks.common.matmul_peak`).

    Args:
        voxels: voxels per subject (MindEye2's subj01 / subj02 nsdgeneral: 15724 / 14278).
        width: shared width after the adapters.
        n_blocks: residual MLP blocks.
        target_dim: width of the pooled image target.
        rows_per_subject: rows of each subject per step.
        thread_counts: torch threads to compare.
        rounds: interleaved rounds per comparison (medians and median per-round ratios reported).
        seed: seed of the weights and the batch.
        output: JSON file for the figures (None: do not write).
    """
    import torch

    from litbrain.benchmarks.common import count_flops, interleaved, matmul_peak, native_bf16, threads
    from litbrain.nn import BrainDecoder
    from litbrain.tasks.fmri_decoding import FmriDecodingTask, decoder_loss
    from litbrain.utils.optim import build_optimizer

    if min(rounds, rows_per_subject, width) < 1 or not voxels:
        raise BenchConfigError("rounds, rows_per_subject and width must be >= 1 and voxels non-empty; fix: see "
                               "configs/bench/fmri_step.yaml")
    torch.manual_seed(seed)
    subjects = {f"subj{i + 1:02d}": int(n) for i, n in enumerate(voxels)}
    model = BrainDecoder(subjects=subjects, image_embedding_shape=[target_dim], width=width, n_blocks=n_blocks)
    h = FmriDecodingTask().hparams
    b = rows_per_subject
    batch = {"brain": {s: torch.randn(b, n) for s, n in subjects.items()},
             "image_embedding": torch.randn(b * len(subjects), target_dim),
             "subject": torch.zeros(b * len(subjects), dtype=torch.long)}
    n_params = sum(p.numel() for p in model.parameters())

    def loss(bf16: bool):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return decoder_loss(model, batch, 0.5, h)[0]  # the SoftCLIP phase

    def make_step(bf16: bool, kind: str = "fused"):
        opt, _ = build_optimizer(model, h.lr, h.weight_decay, h.warmup_fraction, 1000)
        if kind != "fused":
            groups = [{"params": g["params"], "weight_decay": g["weight_decay"]} for g in opt.param_groups]
            opt = torch.optim.AdamW(groups, lr=h.lr, foreach=kind == "foreach")
        parts: dict[str, list[float]] = {"forward": [], "backward": [], "optimiser": []}

        def step() -> None:
            opt.zero_grad(set_to_none=True)
            t0 = time.perf_counter()
            out = loss(bf16)
            t1 = time.perf_counter()
            out.backward()
            t2 = time.perf_counter()
            opt.step()
            t3 = time.perf_counter()
            for k, v in zip(parts, (t1 - t0, t2 - t1, t3 - t2)):
                parts[k].append(v)

        return step, parts

    # Without bf16 units torch emulates bf16 matmuls (many times slower than fp32): no bf16 row then.
    has_bf16 = native_bf16()
    flops = count_flops(lambda: loss(False).backward())
    model.zero_grad(set_to_none=True)
    peak = matmul_peak(thread_counts=tuple(thread_counts))
    result: dict[str, Any] = {"parameters": n_params, "gflop_per_step": flops / 1e9, "peak_gflops": peak, "rows": []}
    for n_threads in thread_counts:
        with threads(n_threads):
            steps = {name: make_step(bf16, kind) for name, bf16, kind in
                     (("fp32 fused", False, "fused"), ("bf16-mixed fused", True, "fused"),
                      ("fp32 foreach", False, "foreach"), ("fp32 default", False, "default"))
                     if has_bf16 or not bf16}
            timed = interleaved({k: v[0] for k, v in steps.items()}, rounds=rounds, warmup=2)
        fp32_peak = peak.get(f"float32/{n_threads}t") or max(peak.values())
        for name, (_, parts) in steps.items():
            sec = timed["median"][name]
            result["rows"].append({
                "threads": n_threads, "step": name, "ms": 1e3 * sec,
                **{f"{k}_ms": 1e3 * statistics.median(v[-rounds:]) for k, v in parts.items()},
                "gflops": flops / sec / 1e9, "of_fp32_peak": flops / sec / 1e9 / fp32_peak,
                "vs_fp32_fused": 1.0 / timed["ratio_median"][name] * timed["ratio_median"]["fp32 fused"],
            })
    result["thread_scaling"] = {
        r["step"]: next(q["ms"] for q in result["rows"] if q["step"] == r["step"] and q["threads"] == 1) / r["ms"]
        for r in result["rows"] if r["threads"] == max(thread_counts)} if len(thread_counts) > 1 else {}
    lines = [f"fMRI training step: {len(subjects)} subjects x {voxels} voxels, width {width}, {n_blocks} blocks, "
             f"{target_dim}-d target, {b} rows/subject; {n_params / 1e6:.1f} M parameters, {flops / 1e9:.2f} GFLOP/step "
             f"(matmuls; torch's flop counter)",
             "matmul peak (GFLOP/s): " + ", ".join(f"{k} {v:.0f}" for k, v in peak.items()),
             f"{'threads':>7} {'step':<18}{'ms':>8}{'fwd':>7}{'bwd':>7}{'opt':>7}{'GFLOP/s':>9}{'of fp32 peak':>13}{'speed-up':>10}"]
    for r in result["rows"]:
        lines.append(f"{r['threads']:>7} {r['step']:<18}{r['ms']:>8.0f}{r['forward_ms']:>7.0f}{r['backward_ms']:>7.0f}"
                     f"{r['optimiser_ms']:>7.0f}{r['gflops']:>9.1f}{r['of_fp32_peak']:>12.0%}{r['vs_fp32_fused']:>9.2f}x")
    if not has_bf16:
        lines.append("bf16-mixed: not measured, this CPU has no bf16 units (avx512_bf16 / amx_bf16); torch would emulate it")
    if result["thread_scaling"]:
        lines.append(f"{max(thread_counts)} threads vs 1: " + ", ".join(f"{k} {v:.2f}x" for k, v in result["thread_scaling"].items()))
    print("\n".join(lines), flush=True)
    if output:
        atomic_write_text(output, json.dumps(result, indent=1, default=_json_default))
    return result
