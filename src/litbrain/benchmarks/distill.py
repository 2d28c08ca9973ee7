"""Latency of the encoder-decoder student vs the decoder-only student of equal size vs the teacher (issue 17).

Hugging Face ``generate`` (greedy, KV cache on) on random source tokens, for every input length and
batch size, the models interleaved ABBA (:func:`litbrain.benchmarks.common.interleaved`) so they
see the same machine:

* **first-token latency**: ``generate(max_new_tokens=1)`` -- the prefill (the encoder for the
  encoder-decoder; the whole prompt through every layer for decoder-only models);
* **decode tokens/s**: ``batch * (out - 1) / (t(out) - t(1))`` with ``out`` forced new tokens;
* **first-token FLOPs** (torch's flop counter) and their ratio: what the time ratio would be if compute
  alone set it. With 2/3 of the layers in the encoder and equal parameters the prefill FLOP ratio is
  about 0.64 (the decoder's cross-attention K/V over the source adds to the encoder's share), so at a
  compute-bound size the time ratio approaches that; at tiny sizes Python overhead sets it instead.

Latency does not depend on the weights, so the models are built from their configs at random init
(pass checkpoints to time trained ones). Bar: first-token latency of the encoder-decoder at 512
input tokens <= 0.6x the decoder-only's (RotE: -47%).
"""

from __future__ import annotations

import json
import platform
import statistics
import sys
from typing import Any

import torch

from litbrain.benchmarks.common import achieved, count_flops, fp32_peak, interleaved, peak_line, threads
from litbrain.nn.distill import (CausalLm, CausalLmConfig, Seq2SeqStudent, Seq2SeqStudentConfig, count_parameters,
                                 decoder_only_twin)
from litbrain.utils.io import atomic_write_text

__all__ = ["BARS", "bench_distill"]

BARS: dict[str, tuple[str, float]] = {"first_token_ratio_at_512": ("<=", 0.6)}


def _generate(model: Any, ids: torch.Tensor, new: int, device: str) -> None:
    hf = model.hf
    kw: dict[str, Any] = {"max_new_tokens": new, "min_new_tokens": new, "do_sample": False, "use_cache": True,
                          "attention_mask": torch.ones_like(ids)}
    with torch.inference_mode():
        hf.generate(ids, pad_token_id=0, **kw)
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_distill(student: dict[str, Any] | None = None, teacher: dict[str, Any] | None = None,
                  input_lengths: list[int] | None = None, batch_sizes: list[int] | None = None, output_tokens: int = 32,
                  rounds: int = 3, n_threads: int = 1, device: str = "cpu", out_json: str | None = None) -> dict[str, Any]:
    """First-token latency and decode tokens/s: encoder-decoder vs decoder-only twin vs teacher.

    Args:
        student: :class:`~litbrain.nn.distill.Seq2SeqStudentConfig` fields (the decoder-only twin follows).
        teacher: the teacher's transformers config dict (None: no teacher row).
        input_lengths: source tokens (default 128, 512, 2048).
        batch_sizes: rows per call (default 1, 16).
        output_tokens: forced new tokens of the decode measurement.
        rounds: ABBA rounds per setting (medians reported).
        n_threads: torch CPU threads.
        device: ``cpu`` or ``cuda``.
        out_json: where to write the result (None: print only).
    """
    lengths = list(input_lengths or [128, 512, 2048])
    batches = list(batch_sizes or [1, 16])
    s_cfg = Seq2SeqStudentConfig(**{"vocab_size": 96, **(student or {})})
    s_cfg = s_cfg.replace(max_positions=max(s_cfg.max_positions, max(lengths) + output_tokens + 1))
    torch.manual_seed(0)
    models: dict[str, Any] = {"encoder-decoder": Seq2SeqStudent(s_cfg)}
    twin = decoder_only_twin(s_cfg)
    models["decoder-only"] = CausalLm(twin)
    if teacher:
        t = dict(teacher)
        t.update(vocab_size=s_cfg.vocab_size, max_position_embeddings=max(int(t.get("max_position_embeddings", 0)),
                                                                          max(lengths) + output_tokens + 1))
        t["sliding_window"] = t["max_position_embeddings"]
        models["teacher"] = CausalLm(CausalLmConfig(lm=t))
    for m in models.values():
        m.to(device).eval()
    result: dict[str, Any] = {
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else platform.processor() or platform.machine(),
        "threads": n_threads, "output_tokens": output_tokens, "rounds": rounds,
        "parameters": {k: count_parameters(m) for k, m in models.items()}, "settings": []}
    g = torch.Generator().manual_seed(0)
    # the prefill against this machine's fp32 matmul peak (CPU), measured in this run
    peak = fp32_peak(n_threads) if not device.startswith("cuda") else None
    result["fp32_peak_gflops"] = peak
    with threads(n_threads):
        for length in lengths:
            for batch in batches:
                ids = torch.randint(4, s_cfg.vocab_size, (batch, length), generator=g).to(device)
                first = interleaved({k: (lambda m=m: _generate(m, ids, 1, device)) for k, m in models.items()}, rounds)
                full = interleaved({k: (lambda m=m: _generate(m, ids, output_tokens, device)) for k, m in models.items()},
                                   rounds)
                row = {"input": length, "batch": batch, "first_token_s": first["median"],
                       # None where noise made t(out) <= t(1): no decode time could be resolved
                       "decode_tok_s": {k: (batch * (output_tokens - 1) / (full["median"][k] - first["median"][k])
                                            if full["median"][k] > first["median"][k] else None) for k in models}}
                # what the prefill would cost if compute alone set the time: FLOPs by torch's counter
                flops = {k: count_flops(lambda m=m: _generate(m, ids, 1, device)) for k, m in models.items()}
                row["first_token_gflop"] = {k: v / 1e9 for k, v in flops.items()}
                row["first_token_flop_ratio_vs_decoder_only"] = flops["encoder-decoder"] / flops["decoder-only"]
                if peak:
                    row["first_token_of_fp32_peak"] = {
                        k: achieved(flops[k], first["median"][k], peak)["of_fp32_peak"] for k in models}
                # ratio of the encoder-decoder's first-token time to the decoder-only's, within rounds
                row["first_token_ratio_vs_decoder_only"] = statistics.median(
                    a / b for a, b in zip(first["seconds"]["encoder-decoder"], first["seconds"]["decoder-only"]))
                result["settings"].append(row)
                print(f"[distill bench] input {length} batch {batch}: first token " +
                      ", ".join(f"{k} {v * 1e3:.1f} ms" for k, v in row["first_token_s"].items()) +
                      f" (enc-dec / dec-only {row['first_token_ratio_vs_decoder_only']:.2f}, FLOPs "
                      f"{row['first_token_flop_ratio_vs_decoder_only']:.2f}); decode tok/s " +
                      ", ".join(f"{k} {v:.0f}" if v else f"{k} n/a" for k, v in row["decode_tok_s"].items()) +
                      ("; prefill of fp32 peak " + ", ".join(f"{k} {v:.1%}" for k, v in row["first_token_of_fp32_peak"].items())
                       if peak else ""), file=sys.stderr, flush=True)
    at512 = [r["first_token_ratio_vs_decoder_only"] for r in result["settings"] if r["input"] == 512]
    if at512:
        value = max(at512)
        result["bars"] = {"first_token_ratio_at_512": {"value": value, "bar": "<= 0.6", "met": value <= 0.6}}
    if peak:
        print("[distill bench] " + peak_line(peak, n_threads), file=sys.stderr, flush=True)
    if out_json:
        atomic_write_text(out_json, json.dumps(result, indent=2) + "\n")
    return result
