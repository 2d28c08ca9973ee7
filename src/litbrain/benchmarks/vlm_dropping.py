"""Vision-token dropping benchmark (issue 5): tokens kept, FLOPs and accuracy per method, on CPU.

One run, side by side on the same machine:

1. Train a tiny LLaVA-style VLM (:class:`~litbrain.tasks.vlm.VisionLanguageTask`, Lightning) on
   the synthetic VQA world densely, and one more per ``trained_with`` setting with that
   dropping on during training (default ToMe, FastV and MustDrop 1+2+3; same seed, data, steps).
2. Evaluate the dense-trained model with every setting at the same final budget (``keep`` =
   25% of the vision tokens by default): dense / ToMe / FastV-style / MustDrop stage 1 /
   stages 1+2 / 1+2+3, plus each dropping-trained model with its own setting. Per row: vision
   tokens entering the LM, vision tokens per LM layer (mean over layers), prefill FLOPs
   (``torch.utils.flop_counter.FlopCounterMode``: ViT + projector + LM prefill, per image),
   compression vs dense, greedy exact-match answer accuracy on the val split, and the chance
   (majority-answer) accuracy of the split.
3. Latency on the dense-trained model: prefill ms per batch and greedy decode tokens/s (a fixed
   number of new tokens, EOS ignored), dense vs MustDrop stages 2+3 (LM-side) and 1+2+3.

With ``seeds: [0, 1, 2]`` every training is repeated per seed (``workers`` processes at once) and
the table gives the mean accuracy with each seed's beside it; bars are checked on the means, and
the paired comparisons also say in how many seeds they hold.

Bars (checked and printed, never enforced by tests): at 25% kept MustDrop 1+2+3 within 3 points of
dense; MustDrop >= ToMe and >= FastV (inference-only on the dense model, and each trained with
its own dropping); training with dropping within 3 points of dense training.
"""

from __future__ import annotations

import json
import os
import statistics
import time
import warnings
from typing import Any

from litbrain.benchmarks import BenchConfigError
from litbrain.utils.io import atomic_write_text

__all__ = ["SETTINGS", "bench_vlm_dropping"]

#: name -> DroppingConfig kwargs (``keep`` is filled in from the benchmark's ``keep``).
SETTINGS: dict[str, dict[str, Any]] = {
    "dense": {"method": "none"},
    "tome": {"method": "tome"},
    "fastv": {"method": "fastv"},
    "mustdrop_1": {"method": "mustdrop", "stages": [1]},
    "mustdrop_12": {"method": "mustdrop", "stages": [1, 2]},
    "mustdrop_123": {"method": "mustdrop", "stages": [1, 2, 3]},
}


def _dropping(kw: dict[str, Any], field: str):
    """``DroppingConfig(**kw)``, or one :class:`BenchConfigError` naming the benchmark ``field`` that set it."""
    from dataclasses import fields

    from litbrain.nn.vlm import DroppingConfig

    unknown = sorted(set(kw) - {f.name for f in fields(DroppingConfig)})
    if unknown:
        raise BenchConfigError(f"{field}: unknown DroppingConfig field(s) {unknown}; fix: use "
                               f"{[f.name for f in fields(DroppingConfig)]}")
    try:
        return DroppingConfig(**kw)
    except ValueError as err:
        raise BenchConfigError(f"{field}: {err}") from None


def _setting(name: str, keep: float, stage1_keep: float | None, lm_layers: list[int], extra: dict[str, Any]):
    kw = dict(SETTINGS[name])
    if kw["method"] != "none":
        kw["keep"] = keep
        kw["lm_layers"] = list(lm_layers)
    if kw["method"] == "mustdrop" and 2 in kw["stages"]:
        kw["stage1_keep"] = stage1_keep
    kw.update(extra)
    return _dropping(kw, "mustdrop" if extra else "keep / stage1_keep / lm_layers")


def _evaluate(model, batches, cfg) -> dict[str, float]:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from litbrain.tasks.vlm import QTYPES

    model.eval()
    correct = n = 0
    into_lm, per_layer = [], []
    by_type = {q: [0, 0] for q in QTYPES}  # question type -> [correct, asked]
    for b in batches:
        gen, pre = model.generate(b, max_new_tokens=3, cfg=cfg)
        ok = model.answer_correct(gen, b["answer"], b["answer_mask"])
        correct += int(ok.sum())
        n += gen.shape[0]
        for i, q in enumerate(QTYPES):
            sel = b["qtype"] == i
            by_type[q][0] += int(ok[sel].sum())
            by_type[q][1] += int(sel.sum())
        per_layer.append(pre.vision_per_layer.float().mean())
        into_lm.append(pre.vision_per_layer[0].float().mean())
    b = batches[0]
    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        _, inp = model.lm_inputs(b, cfg, left_pad=True)
        from litbrain.nn.lm_dropping import prefill

        prefill(model.lm, inp.embeds, inp.attention_mask, inp.kind, inp.key, position_ids=inp.position_ids,
                policy=cfg.policy(model.n_patches), logits_mode="last", size=inp.size)
    return {"acc": correct / max(n, 1), **{f"acc_{q}": c / k for q, (c, k) in by_type.items() if k},
            "tokens_into_lm": float(torch.stack(into_lm).mean()),
            "tokens_per_layer": float(torch.stack(per_layer).mean()), "gflops": fc.get_total_flops() / b["image"].shape[0] / 1e9}


def _latency(model, batch, cfg, new_tokens: int, reps: int) -> dict[str, float]:
    import torch

    from litbrain.nn.lm_dropping import decode_step, prefill

    from litbrain.benchmarks.common import count_flops

    model.eval()
    pol = cfg.policy(model.n_patches)
    pre_t, dec_t = [], []

    def run_prefill():
        _, inp = model.lm_inputs(batch, cfg, left_pad=True)
        return inp, prefill(model.lm, inp.embeds, inp.attention_mask, inp.kind, inp.key, position_ids=inp.position_ids,
                            policy=pol, use_cache=True, logits_mode="last", size=inp.size)

    with torch.no_grad():
        prefill_flops = count_flops(run_prefill)  # vision tower + LM prefill, as timed below
        for _ in range(reps):
            t0 = time.perf_counter()
            inp, out = run_prefill()
            nxt = out.logits.argmax(-1)
            t1 = time.perf_counter()
            pos, L = out.next_position, inp.embeds.shape[1]
            for t in range(new_tokens):
                nxt = decode_step(model.lm, out.cache, nxt, pos + t, L + t).argmax(-1)
            t2 = time.perf_counter()
            pre_t.append(t1 - t0)
            dec_t.append(t2 - t1)
    B = batch["image"].shape[0]
    pre, dec = sorted(pre_t)[len(pre_t) // 2], sorted(dec_t)[len(dec_t) // 2]
    return {"prefill_ms": 1e3 * pre, "decode_tok_s": B * new_tokens / dec, "prefill_gflop": prefill_flops / 1e9}


def _with_dropping(task_kwargs: dict[str, Any], dropping: dict[str, Any]) -> dict[str, Any]:
    return {**task_kwargs, "net": {**task_kwargs["net"], "dropping": dropping}}


def _train(task_kwargs: dict[str, Any], dm, steps: int, seed: int):
    import lightning as L

    from litbrain.tasks.vlm import VisionLanguageTask

    L.seed_everything(seed, workers=True, verbose=False)
    task = VisionLanguageTask(**task_kwargs)
    trainer = L.Trainer(accelerator="cpu", devices=1, max_steps=steps, logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0, gradient_clip_val=1.0,
                        num_sanity_val_steps=0)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(task, datamodule=dm)
    task.model.eval()
    return task, time.perf_counter() - t0


def _run_seed(seed: int, base: dict[str, Any], data: dict[str, Any], settings: dict[str, dict[str, Any]],
              trained_with: dict[str, dict[str, Any]], train_steps: int, eval_batches: int, latency_cfgs: dict[str, dict[str, Any]],
              latency_new_tokens: int, latency_reps: int, threads: int) -> dict[str, Any]:
    """One seed: the dense training and every ``trained_with`` training, their rows and the latency rows.

    Top-level and fed plain dicts so that it can run in a spawned worker process.
    """
    import torch

    from litbrain.datamodules.vqa.datamodule import VqaDataModule
    from litbrain.nn.vlm import DroppingConfig

    torch.set_num_threads(int(threads))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    dm = VqaDataModule(**data)
    dm.setup("fit")
    val = [b for _, b in zip(range(eval_batches), dm.val_dataloader())]
    dense_task, t_dense = _train(_with_dropping(base, {"method": "none"}), dm, train_steps, seed)
    rows = {name: _evaluate(dense_task.model, val, DroppingConfig(**kw)) for name, kw in settings.items()}
    train_seconds = {"dense": t_dense}
    for name, kw in trained_with.items():  # each method trained with its own dropping on, evaluated with it
        task_, train_seconds[name] = _train(_with_dropping(base, kw), dm, train_steps, seed)
        rows[f"{name} (trained with dropping)"] = _evaluate(task_.model, val, DroppingConfig(**kw))
        del task_
    latency = {k: _latency(dense_task.model, val[0], DroppingConfig(**c), latency_new_tokens, latency_reps)
               for k, c in latency_cfgs.items()}
    return {"seed": seed, "rows": rows, "latency": latency, "train_seconds": train_seconds, "chance": dm.chance,
            "n_patches": dense_task.model.n_patches, "n_val": len(val) * dm.batch_size,
            "batch_size": int(val[0]["image"].shape[0])}


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def bench_vlm_dropping(
    vision: dict[str, Any],
    lm: dict[str, Any],
    data: dict[str, Any],
    keep: float = 0.25,
    stage1_keep: float | None = None,
    lm_layers: list[int] | None = None,
    mustdrop: dict[str, Any] | None = None,
    train_steps: int = 1500,
    lr: float = 2e-3,
    eval_batches: int = 8,
    latency_new_tokens: int = 16,
    latency_reps: int = 3,
    seed: int = 0,
    seeds: list[int] | None = None,
    workers: int = 1,
    threads: int = 1,
    out_json: str | None = "runs/bench_vlm_dropping.json",
    task: dict[str, Any] | None = None,
    net: dict[str, Any] | None = None,
    trained_with: list[str] | None = None,
    trained_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train, then print the table of dense / ToMe / FastV / MustDrop stages (see the module docstring).

    Args:
        vision / lm: the task's ``vision`` spec and LM config dict (tiny, random init).
        data: :class:`~litbrain.datamodules.VqaDataModule` arguments.
        keep: final vision-token budget for every method (fraction of the patches).
        stage1_keep: MustDrop stage-1 budget when stage 2 follows (None: the merge threshold alone decides).
        lm_layers: LM layers after which FastV / MustDrop stage 2 drop (0-based).
        mustdrop: extra :class:`~litbrain.nn.vlm.DroppingConfig` fields for the MustDrop rows.
        train_steps: optimiser steps of each of the two trainings.
        lr: peak learning rate.
        eval_batches: val batches per evaluation (``data.batch_size`` rows each).
        latency_new_tokens / latency_reps: decode length and repetitions (median) of the latency rows.
        seed: training seed (one run); seeds: several training seeds (overrides ``seed``): every
            training is repeated per seed, the table shows the mean accuracy and each seed's, and
            the bars are checked on the means (tiny models trained for minutes differ by several
            points from seed to seed). workers: seeds run in this many spawned processes at once,
            ``threads`` torch threads each (latency rows measured beside the other workers).
        threads: torch intra-op threads.
        out_json: where to write the figures (``None`` = nowhere).
        task: further :class:`~litbrain.tasks.vlm.VisionLanguageTask` arguments for both trainings
            (e.g. ``vision_init_from``, ``freeze_vision``).
        net: further :class:`~litbrain.nn.vlm.VlmConfig` fields for both trainings (e.g. ``vision_pos``).
        trained_with: settings (names in :data:`SETTINGS`) that also get a model trained with that
            dropping on (default ``tome``, ``fastv``, ``mustdrop_123``).
        trained_overrides: :class:`~litbrain.nn.vlm.DroppingConfig` fields for those trainings (and
            their evaluation) only, e.g. ``{proportional_attention: false}``.
    """
    lm_layers = list(lm_layers or [1, 2])
    extra = dict(mustdrop or {})
    base = {"net": {"vision": vision, "lm": lm, **(net or {})}, "lr": lr, **(task or {})}
    trained_with = list(trained_with if trained_with is not None else ["tome", "fastv", "mustdrop_123"])
    bad = [n for n in trained_with if n not in SETTINGS or n == "dense"]
    if bad or "mustdrop_123" not in trained_with:
        raise BenchConfigError(f"trained_with={trained_with}: needs mustdrop_123 and names from {list(SETTINGS)[1:]}; "
                         f"fix: e.g. [tome, fastv, mustdrop_123]")
    seeds = [int(x) for x in (seeds if seeds else [seed])]
    if int(workers) < 1:
        raise BenchConfigError(f"workers={workers}: must be >= 1 (processes running seeds at once)")

    def setting(name: str) -> dict[str, Any]:
        return dict(_setting(name, keep, stage1_keep, lm_layers, extra if name.startswith("mustdrop") else {}).__dict__)

    settings = {name: setting(name) for name in SETTINGS}
    latency_cfgs = {"dense": settings["dense"], "mustdrop_23": {**settings["mustdrop_123"], "stages": [2, 3]},
                    "mustdrop_123": settings["mustdrop_123"]}
    trained = {name: {**settings[name], **(trained_overrides or {})} for name in trained_with}
    for kw in trained.values():  # checked now, not after the first training
        _dropping(kw, "trained_overrides")
    args = (base, data, settings, trained, train_steps, eval_batches, latency_cfgs, latency_new_tokens,
            latency_reps, threads)
    if int(workers) > 1 and len(seeds) > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(max_workers=min(int(workers), len(seeds)), mp_context=mp.get_context("spawn")) as ex:
            runs = list(ex.map(_run_seed, seeds, *[[a] * len(seeds) for a in args]))
    else:
        runs = [_run_seed(sd, *args) for sd in seeds]

    first = runs[0]
    rows: dict[str, dict[str, Any]] = {}
    for name in first["rows"]:
        per = [r["rows"][name] for r in runs]
        keys = ["acc", "tokens_into_lm", "tokens_per_layer", "gflops"] + [k for k in per[0] if k.startswith("acc_")]
        rows[name] = {k: _mean([p[k] for p in per]) for k in keys}
        rows[name]["acc_per_seed"] = [p["acc"] for p in per]
    dense_flops = rows["dense"]["gflops"]
    for r in rows.values():
        r["flops_saved"] = 1.0 - r["gflops"] / dense_flops
    latency = {k: {m: _mean([r["latency"][k][m] for r in runs]) for m in ("prefill_ms", "decode_tok_s", "prefill_gflop")}
               for k in latency_cfgs}
    from litbrain.benchmarks.common import achieved, fp32_peak, peak_line

    peak = fp32_peak(int(threads))
    for v in latency.values():
        v.update({"prefill_" + k: x for k, x in achieved(v["prefill_gflop"] * 1e9, v["prefill_ms"] / 1e3, peak).items()})
    train_seconds = {k: _mean([r["train_seconds"][k] for r in runs]) for k in first["train_seconds"]}
    chance = first["chance"]
    n_patch = first["n_patches"]
    T = " (trained with dropping)"
    # paired bars (a >= b): same data, seed and items, so they also count the seeds in which they hold
    pairs = {"mustdrop_123 >= tome": ("mustdrop_123", "tome"), "mustdrop_123 >= fastv": ("mustdrop_123", "fastv")}
    pairs.update({f"trained with dropping: mustdrop_123 >= {o}": ("mustdrop_123" + T, o + T)
                  for o in ("tome", "fastv") if o + T in rows})
    dense_acc = rows["dense"]["acc"]
    bars = {"mustdrop_123 within 3 points of dense": rows["mustdrop_123"]["acc"] >= dense_acc - 0.03,
            "training with dropping within 3 points of dense training": rows["mustdrop_123" + T]["acc"] >= dense_acc - 0.03,
            **{k: rows[a]["acc"] >= rows[b]["acc"] for k, (a, b) in pairs.items()}}
    multi = len(seeds) > 1
    qtypes = [k[4:] for k in rows["dense"] if k.startswith("acc_") and k != "acc_per_seed"]  # per question type

    def wins(a: str, b: str) -> str:
        n = sum(x >= y for x, y in zip(rows[a]["acc_per_seed"], rows[b]["acc_per_seed"]))
        return f" ({n} of {len(seeds)} seeds)" if multi else ""

    lines = [f"VLM vision-token dropping on the synthetic VQA world: {n_patch} patch tokens, keep {keep:.0%} "
             f"(= {max(1, round(keep * n_patch))} tokens), {train_steps} training steps "
             f"(seconds: {', '.join(f'{k} {v:.0f}' for k, v in train_seconds.items())}), "
             f"{first['n_val']} val items, seeds {seeds}, torch threads {threads}"
             + (f", {min(int(workers), len(seeds))} worker processes" if multi and int(workers) > 1 else ""),
             f"{'setting':<40}{'into LM':>8}{'per layer':>10}{'GFLOPs':>9}{'saved':>8}{'acc':>8}"
             + "".join(f"{q:>8}" for q in qtypes) + ("   acc per seed" if multi else "")]
    for name, r in rows.items():
        lines.append(f"{name:<40}{r['tokens_into_lm']:>8.1f}{r['tokens_per_layer']:>10.1f}{r['gflops']:>9.4f}"
                     f"{r['flops_saved']:>8.1%}{r['acc']:>8.3f}" + "".join(f"{r['acc_' + q]:>8.3f}" for q in qtypes)
                     + ("   " + " ".join(f"{a:.3f}" for a in r["acc_per_seed"]) if multi else ""))
    lines.append(f"{'chance (majority answer / per question type)':<40}{'':>35}{chance['majority']:>8.3f} / "
                 f"{chance['majority_per_type']:.3f}")
    lines.append("")
    lines.append(f"{'latency (dense-trained model, batch ' + str(first['batch_size']) + ')':<40}"
                 f"{'prefill ms':>12}{'decode tok/s':>14}{'prefill GFLOP/s':>17}{'of fp32 peak':>14}"
                 + ("   (mean over seeds)" if multi else ""))
    for k, v in latency.items():
        lines.append(f"{k:<40}{v['prefill_ms']:>12.1f}{v['decode_tok_s']:>14.0f}{v['prefill_gflops']:>17.1f}"
                     f"{v['prefill_of_fp32_peak']:>13.1%}")
    lines.append(peak_line(peak, int(threads)))
    lines.append("")
    for k, ok in bars.items():
        lines.append(f"bar: {k}: {'PASS' if ok else 'FAIL'}" + (" on the mean" if multi else "")
                     + (wins(*pairs[k]) if k in pairs else ""))
    print("\n".join(lines))
    result = {"rows": rows, "latency": latency, "chance": chance, "bars": bars, "train_seconds": train_seconds,
              "keep": keep, "n_patches": n_patch, "train_steps": train_steps, "seeds": seeds,
              "settings": settings, "trained_with": trained}
    if out_json:
        atomic_write_text(out_json, json.dumps(result, indent=2))
    return result


def bench_lm_loop(
    lm: dict[str, Any] | None = None,
    prompt_tokens: int = 128,
    new_tokens: int = 32,
    batch_sizes: list[int] = [1, 8],
    rounds: int = 5,
    threads: int = 1,
    seed: int = 0,
    out_json: str | None = "runs/bench/lm_loop.json",
) -> dict[str, Any]:
    """litbrain's layer-by-layer prefill + decode loop (the one dropping needs) against Hugging Face
    ``generate`` with its KV cache, on the same dense LM and prompt embeddings: first-token latency and
    decode tokens/s side by side, in interleaved rounds.

    Args:
        lm: a transformers config dict (``model_type`` llama/qwen2/mistral); default a 4-layer 256-wide Llama.
        prompt_tokens: prompt length (embeddings fed to both loops).
        new_tokens: greedy tokens generated (EOS ignored: both loops run every step).
        batch_sizes: batch sizes to measure.
        rounds: interleaved rounds (medians and median per-round ratios).
        threads: torch threads.
        seed: weights and prompts.
        out_json: JSON file for the figures (None: do not write).
    """
    import torch

    from litbrain.benchmarks.common import achieved, count_flops, fp32_peak, interleaved, peak_line
    from litbrain.nn.encoders import causal_lm
    from litbrain.nn.lm_dropping import KIND_TEXT, decode_step, prefill

    cfg = lm or {"model_type": "llama", "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 4,
                 "num_attention_heads": 4, "num_key_value_heads": 4, "vocab_size": 1024, "max_position_embeddings": 1024}
    if min(prompt_tokens, new_tokens, rounds) < 1 or not batch_sizes:
        raise BenchConfigError("prompt_tokens, new_tokens and rounds must be >= 1 and batch_sizes non-empty")
    torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    model = causal_lm(dict(cfg), "eager").eval()
    peak = fp32_peak(int(threads))
    rows = []
    for B in batch_sizes:
        embeds = torch.randn(B, prompt_tokens, model.config.hidden_size) * 0.02
        mask = torch.ones(B, prompt_tokens, dtype=torch.long)
        kind = torch.full((B, prompt_tokens), KIND_TEXT)
        got: dict[str, Any] = {}

        def ours(n: int) -> None:
            with torch.no_grad():
                out = prefill(model, embeds, mask, kind, use_cache=True, logits_mode="last")
                nxt, pos = out.logits.argmax(-1), out.next_position
                tokens = [nxt]
                for t in range(1, n):
                    nxt = decode_step(model, out.cache, nxt, pos + t - 1, prompt_tokens + t - 1).argmax(-1)
                    tokens.append(nxt)
                got["ours"] = torch.stack(tokens, 1)

        def hf(n: int) -> None:
            with torch.no_grad():
                ids = model.generate(inputs_embeds=embeds, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                                     do_sample=False, use_cache=True, pad_token_id=0)
                got["hf"] = ids[:, -n:]

        first_flops = count_flops(lambda: ours(1))
        decode_flops = (count_flops(lambda: ours(new_tokens)) - first_flops) / max(new_tokens - 1, 1)
        first = interleaved({"hf": lambda: hf(1), "litbrain": lambda: ours(1)}, rounds=rounds)
        full = interleaved({"hf": lambda: hf(new_tokens), "litbrain": lambda: ours(new_tokens)}, rounds=rounds)
        same = bool(torch.equal(got["ours"], got["hf"]))
        dec = {k: B * (new_tokens - 1) / max(full["median"][k] - first["median"][k], 1e-9) for k in ("hf", "litbrain")}
        per_round = [(B * (new_tokens - 1) / (fo - f1)) / (B * (new_tokens - 1) / (ho - h1)) for fo, f1, ho, h1 in zip(
            full["seconds"]["litbrain"], first["seconds"]["litbrain"], full["seconds"]["hf"], first["seconds"]["hf"])]
        rows.append({"batch": B, "first_token_ms_hf": 1e3 * first["median"]["hf"],
                     "first_token_ms_litbrain": 1e3 * first["median"]["litbrain"],
                     "decode_tok_s_hf": dec["hf"], "decode_tok_s_litbrain": dec["litbrain"],
                     "decode_ratio_median": statistics.median(per_round), "same_tokens": same,
                     "first_token_of_fp32_peak": {k: achieved(first_flops, first["median"][k], peak)["of_fp32_peak"]
                                                  for k in ("hf", "litbrain")},
                     "decode_of_fp32_peak": {k: achieved(decode_flops * B, B / dec[k], peak)["of_fp32_peak"]
                                             for k in ("hf", "litbrain")}})
    lines = [f"LM decoding loops, dense {cfg.get('model_type')} {cfg.get('num_hidden_layers')}x{cfg.get('hidden_size')}, "
             f"prompt {prompt_tokens} tokens, {new_tokens} new, {threads} thread(s), {rounds} interleaved rounds",
             f"{'batch':>5}{'first token HF':>16}{'litbrain':>10}{'decode tok/s HF':>17}{'litbrain':>10}{'ratio':>8}"
             f"{'of fp32 peak: prefill HF/litbrain':>36}{'decode HF/litbrain':>20}  same tokens"]
    for r in rows:
        fp, dp = r["first_token_of_fp32_peak"], r["decode_of_fp32_peak"]
        lines.append(f"{r['batch']:>5}{r['first_token_ms_hf']:>14.1f}ms{r['first_token_ms_litbrain']:>8.1f}ms"
                     f"{r['decode_tok_s_hf']:>17.1f}{r['decode_tok_s_litbrain']:>10.1f}{r['decode_ratio_median']:>7.2f}x"
                     f"{fp['hf']:>28.1%} / {fp['litbrain']:<6.1%}{dp['hf']:>12.1%} / {dp['litbrain']:<6.1%}  {r['same_tokens']}")
    lines.append(peak_line(peak, int(threads)))
    lines.append("bar: litbrain decode tokens/s >= 0.9x HF generate (median of per-round ratios)")
    print("\n".join(lines), flush=True)
    result = {"rows": rows, "config": {"lm": cfg, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
                                       "threads": threads, "rounds": rounds}}
    if out_json:
        atomic_write_text(out_json, json.dumps(result, indent=2))
    return result
