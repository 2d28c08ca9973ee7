"""ViT token-dropping benchmark of issue 5: images/s dense vs MustDrop stage 1 vs ToMe, on CPU.

``litbrain vlm bench-vit --config configs/bench/vit_dropping.yaml`` builds timm's
``vit_base_patch16_224`` and open_clip's ``ViT-B-16`` visual tower with random weights (nothing is
downloaded) at 224 px (a 14x14 = 196 patch grid, which MustDrop's 3x3 windows tile with ragged
edge windows) and times, under ``torch.inference_mode``, batches of images through

* dense: the model's own ``forward_features``;
* MustDrop stage 1: :class:`~litbrain.nn.VisionTokenReducer` with ``method="mustdrop"``, the
  window merge after ``merge_layer`` blocks with a kept-token budget;
* ToMe: the same reducer with ``method="tome"`` and, at the output, exactly the token count
  MustDrop actually ends with (r per block derived from it).

The MustDrop budget is ``keep_fraction`` of the patches (25% of 196 = 49): the most similar
windows merge until at most 49 tokens are left (a full 3x3 window removes 8 tokens, an edge window
fewer); ToMe is then run at the count MustDrop ends with (the largest over the batch), so both keep
the same number of tokens. The window is 3 (the
method's, PAPERS.md section 5) unless ``window`` says otherwise; a grid the window does not
divide (224 px: 14x14) gets ragged edge windows, so the defaults run on every ViT-B/16.
Repetitions are interleaved (the order rotates every repetition, so a busy machine slows
every method alike) and the median time per batch is reported.

Bars (for this benchmark only; the smoke test runs ``--quick`` and never checks them):
MustDrop >= 3x dense images/s at 25% tokens, and MustDrop >= ToMe.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable

__all__ = ["BARS", "bench_vit_dropping", "run"]

#: The bars of issue 5 for this benchmark: row -> (comparison, value).
BARS: dict[str, tuple[str, float]] = {
    "mustdrop_vs_dense": (">=", 3.0),
    "mustdrop_vs_tome": (">=", 1.0),
}


#: Default image side: the full run (ViT-B/16 -> 14x14 grid) and ``quick`` (patch 4 -> 9x9 grid).
DEFAULT_IMG_SIZE = 224
QUICK_IMG_SIZE = 36


def _build(args: argparse.Namespace, library: str):
    """(tower, dense forward, grid, image size) of a timm ViT or an open_clip visual tower."""
    size = args.img_size or (QUICK_IMG_SIZE if args.quick else DEFAULT_IMG_SIZE)
    if library == "timm":
        import timm
        from timm.models.vision_transformer import VisionTransformer

        vit = (VisionTransformer(img_size=size, patch_size=4, embed_dim=64, depth=4, num_heads=4) if args.quick
               else timm.create_model(args.model, pretrained=False, img_size=size)).eval()
        return vit, vit.forward_features, tuple(vit.patch_embed.grid_size), tuple(vit.patch_embed.img_size)
    if library == "open_clip":
        import open_clip
        from open_clip.transformer import VisionTransformer

        vit = (VisionTransformer(image_size=size, patch_size=4, width=64, layers=4, heads=4, mlp_ratio=4.0,
                                 output_dim=32) if args.quick
               else open_clip.create_model(args.open_clip_model, force_image_size=size).visual).eval()
        return vit, vit, tuple(vit.grid_size), tuple(vit.image_size)
    from litbrain.benchmarks import BenchConfigError

    raise BenchConfigError(f"libraries: {library!r} is not timm or open_clip; fix: use [timm, open_clip] or one of them")


def run(args: argparse.Namespace, library: str = "timm") -> dict[str, Any]:
    """Measure one tower; returns ``{"rows": [...], "bars": {...}, "config": {...}}``."""
    import torch

    from litbrain.benchmarks.common import count_flops, matmul_peak
    from litbrain.nn.vision_reduction import VisionTokenReducer

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    vit, dense, grid, img = _build(args, library)
    reps = 1 if args.quick else args.reps
    batch = 2 if args.quick else args.batch
    n_patch = grid[0] * grid[1]
    keep = max(1, round(args.keep_fraction * n_patch))
    window = args.window
    images = torch.randn(batch, 3, *img)

    mustdrop = VisionTokenReducer(vit, method="mustdrop", keep=keep, window=window, merge_layer=args.merge_layer)
    with torch.inference_mode():
        counts = mustdrop(images).mask.sum(1)
    mustdrop_kept = int(counts.max())  # ragged edge windows may leave images a token or two apart
    tome = VisionTokenReducer(vit, method="tome", keep=mustdrop_kept)  # ToMe at MustDrop's actual count
    methods: dict[str, Callable[[], Any]] = {
        "dense": lambda: dense(images),
        "MustDrop stage 1": lambda: mustdrop(images),
        "ToMe": lambda: tome(images),
    }
    kept: dict[str, float] = {}
    times: dict[str, list[float]] = {name: [] for name in methods}
    with torch.inference_mode():
        for name, fn in methods.items():
            out = None
            for _ in range(max(1, args.warmup)):
                out = fn()
            kept[name] = float(n_patch) if name == "dense" else float(out.mask.sum(1).float().mean())
        names = list(methods)
        for rep in range(reps):
            order = names[rep % len(names) :] + names[: rep % len(names)]
            if rep % 2:
                order.reverse()
            for name in order:
                t0 = time.perf_counter()
                methods[name]()
                times[name].append(time.perf_counter() - t0)

    ips = {name: batch / statistics.median(ts) for name, ts in times.items()}
    # Achieved GFLOP/s against this machine's fp32 matmul peak, measured in the same run at the
    # same thread count (issue 20: every benchmark reports its peak fraction beside its time).
    with torch.inference_mode():
        flops = {name: count_flops(fn) for name, fn in methods.items()}
    n_threads = torch.get_num_threads()
    peak = matmul_peak(dtypes=("float32",), thread_counts=(n_threads,), sizes=(512,) if args.quick else (1024, 2048),
                       reps=1 if args.quick else 5)[f"float32/{n_threads}t"]
    rows = [
        {"method": name, "kept_tokens": kept[name], "images_per_s": ips[name], "vs_dense": ips[name] / ips["dense"],
         "gflop_per_batch": flops[name] / 1e9, "gflops": flops[name] * ips[name] / batch / 1e9,
         "of_fp32_peak": flops[name] * ips[name] / batch / 1e9 / peak}
        for name in methods
    ]
    measured = {
        "mustdrop_vs_dense": ips["MustDrop stage 1"] / ips["dense"],
        "mustdrop_vs_tome": ips["MustDrop stage 1"] / ips["ToMe"],
    }
    bars = {
        key: {"value": measured[key], "bar": f"{op} {val:g}", "ok": measured[key] >= val if op == ">=" else measured[key] <= val}
        for key, (op, val) in BARS.items()
    }
    config = {
        "library": library,
        "model": f"tiny {library} ViT (quick)" if args.quick else (args.model if library == "timm" else args.open_clip_model),
        "batch": batch, "img_size": img, "grid": grid, "patches": n_patch, "keep": keep,
        "mustdrop_kept": mustdrop_kept, "tome_keep": mustdrop_kept, "window": window, "merge_layer": args.merge_layer,
        "reps": reps, "threads": torch.get_num_threads(), "fp32_peak_gflops": peak,
    }
    return {"rows": rows, "bars": bars, "config": config}


def format_table(result: dict[str, Any]) -> str:
    c = result["config"]
    (ih, iw), (gh, gw), w = c["img_size"], c["grid"], c["window"]
    lines = [
        f"ViT token dropping, CPU: {c['library']} {c['model']}, image {ih}x{iw} px, grid {gh}x{gw} = {c['patches']} patches, "
        f"window {w}x{w}, batch {c['batch']}",
        f"MustDrop stage 1: budget {c['keep']} ({c['keep'] / c['patches']:.0%}) after block {c['merge_layer']} -> "
        f"{c['mustdrop_kept']} tokens; ToMe at keep {c['tome_keep']}; "
        f"median of {c['reps']} interleaved reps, {c['threads']} threads; fp32 matmul peak {c['fp32_peak_gflops']:.0f} GFLOP/s",
        f"{'method':<18}{'kept tokens':>12}{'images/s':>12}{'vs dense':>10}{'GFLOP/s':>10}{'of peak':>9}",
    ]
    for r in result["rows"]:
        lines.append(f"{r['method']:<18}{r['kept_tokens']:>12.1f}{r['images_per_s']:>12.2f}{r['vs_dense']:>9.2f}x"
                     f"{r['gflops']:>10.1f}{r['of_fp32_peak']:>9.0%}")
    for key, b in result["bars"].items():
        lines.append(f"bar {key}: {b['value']:.2f} (want {b['bar']}) {'PASS' if b['ok'] else 'FAIL'}")
    return "\n".join(lines)


def bench_vit_dropping(
    libraries: list[str] = ["timm", "open_clip"],
    model: str = "vit_base_patch16_224",
    open_clip_model: str = "ViT-B-16",
    batch: int = 8,
    keep_fraction: float = 0.25,
    merge_layer: int = 1,
    img_size: int | None = None,
    window: int = 3,
    reps: int = 5,
    warmup: int = 1,
    threads: int | None = None,
    seed: int = 0,
    quick: bool = False,
) -> dict[str, Any]:
    """ViT images/s dense vs MustDrop stage 1 vs ToMe at the token count MustDrop ends with; one table.

    Args:
        libraries: towers to measure, each in its own table: ``timm`` and / or ``open_clip``.
        model: timm model name (random init).
        open_clip_model: open_clip model name whose visual tower is measured (random init).
        batch: images per batch.
        keep_fraction: kept patch tokens as a fraction of the grid.
        merge_layer: MustDrop: blocks run before the window merge.
        img_size: image side in pixels (default 224 -> a 14x14 grid for ViT-B/16; quick: 36 -> 9x9 with patch 4).
        window: MustDrop window side (a grid it does not divide gets ragged edge windows).
        reps: timed repetitions per method (interleaved).
        warmup: untimed batches per method first.
        threads: torch threads (default: torch's).
        seed: seed of the weights and images.
        quick: a tiny ViT and one repetition (smoke test).
    """
    args = argparse.Namespace(model=model, open_clip_model=open_clip_model, batch=batch, keep_fraction=keep_fraction,
                              merge_layer=merge_layer, img_size=img_size, window=window, reps=reps, warmup=warmup,
                              threads=threads, seed=seed, quick=quick)
    results = {}
    for library in libraries:
        results[library] = run(args, library)
        print(format_table(results[library]), flush=True)
    return results
