"""The sEEG benchmark of issue 3: input pipeline vs training step, and Du-IN encoder throughput.

Measured side by side in one run, on a synthetic BIDS-iEEG set at Du-IN's rate (1 kHz, 3 s
epochs, 10 bipolar channels per subject), with the network at Du-IN's sizes (subject layer 16,
conv tokenizer 128/128/16 over 100 ms patches, d_model 160, 8 blocks, 8 heads):

* **reading**: epochs/s of iterating ``SeegDataModule.train_dataloader()`` over the prepared
  (memory-mapped, float16) shards -- what every training epoch pays;
* **preprocessing**: epochs/s of ``prepare_seeg`` itself (read BrainVision through mne-bids,
  bipolar, notch + band-pass, epoching, z-scoring, shards) -- paid once per dataset;
* **training step**: epochs/s of a stage-3 step (forward, cross entropy, backward, AdamW) on
  batches from the same loader;
* **encoder**: epochs/s of the encoder forward alone (inference mode).

``preset="authors"`` (default) measures Du-IN as its authors' code builds it (:meth:`DuinConfig.authors`);
``preset="litbrain"`` litbrain's own variant. The header states the preset's parameter counts per
stage (vqvae / mae / classify) and the stage-3 step time.

Reading and the training step alternate over ``repetitions`` and the medians are compared.
Bar: reading / training step >= 10 (the loader never starves the model).
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from litbrain.utils.io import atomic_write_text

__all__ = ["bench_seeg", "BARS"]

BARS: dict[str, tuple[str, float]] = {"reading_over_step": (">=", 10.0)}


def _log(verbose: bool, msg: str) -> None:
    if verbose:
        print(msg, file=sys.stderr, flush=True)


def bench_seeg(
    work_dir: str = "runs/bench/seeg",
    output: str | None = "runs/bench/seeg/results.json",
    num_threads: int = 1,
    n_subjects: int = 3,
    n_words: int = 61,
    trials_per_word: int = 4,
    sfreq: float = 1000.0,
    batch_size: int = 63,
    steps: int = 6,
    repetitions: int = 3,
    d_model: int = 160,
    n_blocks: int = 8,
    n_heads: int = 8,
    seed: int = 0,
    verbose: bool = True,
    preset: str = "authors",
) -> dict[str, Any]:
    """Measure reading, preprocessing, training-step and encoder throughput; print the table.

    Args:
        work_dir: where the synthetic BIDS set (cached) and the prepared shards go.
        output: JSON file for the results (None: do not write).
        num_threads: torch threads of the measured loops.
        n_subjects / n_words / trials_per_word / sfreq: the synthetic set (Du-IN: 1 kHz, 61 words).
        batch_size: epochs per training batch (equal share per subject).
        steps: timed training steps per repetition (after one warm-up step).
        repetitions: interleaved reading / step repetitions; medians are reported.
        d_model / n_blocks / n_heads: the Transformer (Du-IN: 160, 8, 8).
        seed: data and model seed.
        verbose: progress on stderr.
        preset: ``"authors"`` (Du-IN's code: post-norm QK-norm blocks, BatchNorm tokenizer, MLP head) or
            ``"litbrain"``.
    """
    import torch

    from litbrain.datamodules import (
        DataError,
        SeegDataModule,
        prepare_seeg,
        synthesize_seeg,
    )
    from litbrain.nn.duin import DuinConfig, DuinEncoderConfig, DuinModel

    if preset not in ("authors", "litbrain"):
        raise DataError(f"bench_seeg preset={preset!r}; fix: 'authors' or 'litbrain'")

    torch.set_num_threads(num_threads)
    torch.manual_seed(seed)
    work = Path(work_dir)
    _log(verbose, f"synthesising (cached) in {work / 'bids'} ...")
    spec = dict(n_subjects=n_subjects, n_channels=[12 + 3 * i for i in range(n_subjects)], n_words=n_words,
                trials_per_word=trials_per_word, runs=2, sfreq=sfreq, oracle_trials=2, seed=seed)
    try:
        bids = synthesize_seeg(work / "bids", **spec)
    except DataError:  # the cache holds another parameter set (other arguments or generator version): redo it
        bids = synthesize_seeg(work / "bids", **spec, overwrite=True)
    prepared = work / "prepared"
    shutil.rmtree(prepared, ignore_errors=True)
    _log(verbose, "preparing (timed) ...")
    t0 = time.perf_counter()
    prepare_seeg(bids, prepared, tmin=0.0, tmax=3.0, h_freq=min(200.0, 0.4 * sfreq), seed=seed)
    prep_s = time.perf_counter() - t0
    dm = SeegDataModule(str(prepared), batch_size=batch_size, seed=seed)
    n_epochs_total = sum(dm.n_rows("train").values()) + sum(dm.n_rows("val").values()) + sum(dm.n_rows("test").values())

    patch_len = int(round(0.1 * dm.sfreq))
    sizes = dict(n_times=dm.n_times, patch_len=patch_len, d_model=d_model, n_blocks=n_blocks, n_heads=n_heads)

    def build(stage: str) -> DuinModel:
        if preset == "litbrain":
            return DuinModel(stage=stage, subjects=dm.subject_channels, n_classes=dm.n_labels,
                             encoder=DuinEncoderConfig(**sizes))
        extra = {} if patch_len == 100 else {"deconv_strides": [1, 1, patch_len, 1, 1]}  # Du-IN's: 1,1,10,1,10
        return DuinModel(DuinConfig.authors(stage=stage, subjects=dm.subject_channels, n_classes=dm.n_labels,
                                            encoder=sizes, **extra))

    counts = {stage: sum(p.numel() for p in build(stage).parameters() if p.requires_grad) for stage in ("vqvae", "mae")}
    model = build("classify")
    counts["classify"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batches = list(dm.train_dataloader())[: steps + 1]

    def reading() -> float:
        t, n = time.perf_counter(), 0
        for b in dm.train_dataloader():
            n += int(b["subject"].shape[0])
        return n / (time.perf_counter() - t)

    def training() -> float:
        model.train()
        for i, b in enumerate(batches):
            if i == 1:
                t, n = time.perf_counter(), 0
            loss = torch.nn.functional.cross_entropy(model(b["brain"]), b["label"])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i >= 1:
                n += int(b["subject"].shape[0])
        return n / (time.perf_counter() - t)

    @torch.inference_mode()
    def encoder() -> float:
        model.eval()
        model.encoder(batches[0]["brain"])
        t, n = time.perf_counter(), 0
        for b in batches[1:]:
            model.encoder(b["brain"])
            n += int(b["subject"].shape[0])
        return n / (time.perf_counter() - t)

    # FLOPs of one sample through the step (fwd + bwd) and the encoder, for GFLOP/s against the peak
    from litbrain.benchmarks.common import achieved, count_flops, fp32_peak, peak_line

    b0 = batches[0]
    n0 = int(b0["subject"].shape[0])
    step_flops = count_flops(lambda: torch.nn.functional.cross_entropy(model(b0["brain"]), b0["label"]).backward()) / n0
    opt.zero_grad(set_to_none=True)
    with torch.inference_mode():
        enc_flops = count_flops(lambda: model.encoder(b0["brain"])) / n0
    peak = fp32_peak(num_threads)

    read, step, enc = [], [], []
    for r in range(repetitions):
        read.append(reading())
        step.append(training())
        enc.append(encoder())
        _log(verbose, f"rep {r + 1}/{repetitions}: reading {read[-1]:.0f}/s, step {step[-1]:.1f}/s, encoder {enc[-1]:.1f}/s")
    med = {k: statistics.median(v) for k, v in (("reading", read), ("step", step), ("encoder", enc))}
    rows = [
        {"figure": "reading (DataModule over prepared shards)", "epochs_per_s": med["reading"]},
        {"figure": "preprocessing (prepare_seeg from BIDS, once)", "epochs_per_s": n_epochs_total / prep_s},
        {"figure": "training step (stage 3, fwd+bwd+AdamW)", "epochs_per_s": med["step"],
         **achieved(step_flops * med["step"], 1.0, peak)},
        {"figure": "encoder forward (inference)", "epochs_per_s": med["encoder"], **achieved(enc_flops * med["encoder"], 1.0, peak)},
    ]
    ratios = {"reading_over_step": med["reading"] / med["step"], "preprocessing_over_step": rows[1]["epochs_per_s"] / med["step"]}
    n_params = sum(p.numel() for p in model.encoder.parameters())
    header = (f"sEEG benchmark, CPU, {num_threads} thread(s): {n_subjects} subjects x {n_words} words x {trials_per_word} "
              f"trials at {dm.sfreq:.0f} Hz, epochs {dm.n_times} samples; Du-IN encoder {n_params / 1e6:.2f} M params "
              f"(patch {model.encoder.patch_len}, d_model {d_model}, {n_blocks} blocks, {n_heads} heads), batch {batch_size}; "
              f"median of {repetitions} interleaved reps\n"
              f"preset {preset!r}: parameters vqvae / mae / classify = {counts['vqvae']:,} / {counts['mae']:,} / "
              f"{counts['classify']:,}; stage-3 step {1000 * batch_size / med['step']:.0f} ms per batch of {batch_size}")
    lines = [header, f"{'figure':<48}{'epochs/s':>12}{'GFLOP/s':>10}{'of fp32 peak':>14}", "-" * 84]
    lines += [f"{r['figure']:<48}{r['epochs_per_s']:>12.1f}" + (f"{r['gflops']:>10.1f}{r['of_fp32_peak']:>13.0%}"
                                                               if "gflops" in r else "") for r in rows]
    lines.append(peak_line(peak, num_threads))
    lines.append(f"reading / training step = {ratios['reading_over_step']:.1f}x (bar >= {BARS['reading_over_step'][1]:g}x: "
                 f"{'PASS' if ratios['reading_over_step'] >= BARS['reading_over_step'][1] else 'FAIL'})")
    lines.append(f"preprocessing / training step = {ratios['preprocessing_over_step']:.1f}x (one-time cost, no bar)")
    print("\n".join(lines))
    result = {"rows": rows, "ratios": ratios, "header": header, "preset": preset, "parameters": counts,
              "step_ms": 1000 * batch_size / med["step"],
              "fp32_peak_gflops": peak, "gflop_per_epoch": {"step": step_flops / 1e9, "encoder": enc_flops / 1e9}, "reps": {"reading": read, "step": step, "encoder": enc}}
    if output:
        atomic_write_text(output, json.dumps(result, indent=2))
    return result
