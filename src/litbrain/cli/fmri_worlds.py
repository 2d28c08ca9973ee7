"""The fMRI decoder recipe across synthetic worlds other than the demo's: decoder vs ridge vs oracle.

Each world differs from the demo's (1200 voxels, latent 16, noise 4.0, target [128]) in all four
knobs; they were fixed before any result was seen (a spread of voxel counts, latent sizes, noise
around the demo's and target widths). For each: synthesize, prepare, fit the recipe, evaluate on
the shared test stimuli, and print one row (top-1 among 300, mean over subjects).

    litbrain fmri evaluate-worlds --recipe configs/fmri/demo_ridge.yaml     # demo size (make fmri-worlds)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import yaml

from litbrain.errors import ConfigError

__all__ = ["WORLDS", "evaluate_worlds", "format_worlds", "run_world"]

REPO = Path(__file__).resolve().parents[3]
# name: (voxels of sub-01, latent_dim, noise, image target width)
WORLDS: dict[str, tuple[int, int, float, int]] = {
    "w1": (800, 24, 5.0, 96),
    "w2": (2000, 12, 3.0, 192),
    "w3": (1500, 32, 6.0, 64),
    "w4": (1000, 20, 4.5, 256),
}


def run_world(name: str, out_dir: str | Path, config: str, seed: int, synth: dict[str, Any] | None = None,
              fit_args: list[str] | None = None, scale: float = 1.0) -> dict[str, Any]:
    """Synthesize, prepare, fit ``config`` and evaluate one world; returns the evaluation summary.

    ``synth`` overrides configs/data/synthetic_demo.yaml (e.g. fewer stimuli for a test);
    ``scale`` multiplies the world's voxel count; ``fit_args`` are appended to ``litbrain fit``.
    """
    from litbrain.cli import main
    from litbrain.datamodules import prepare_fmri, synthesize_fmri
    from litbrain.evaluation.fmri import evaluate_decoder

    voxels, latent, noise, width = WORLDS[name]
    w = Path(out_dir) / name
    params = yaml.safe_load((REPO / "configs" / "data" / "synthetic_demo.yaml").read_text())
    params.update(out_dir=str(w / "raw"), n_voxels=max(8, int(voxels * scale)), latent_dim=latent, noise=noise,
                  image_embedding_shape=[width], seed=seed, overwrite=True, **(synth or {}))
    raw = synthesize_fmri(**params)
    prep = prepare_fmri(raw, w / "prepared", overwrite=True)
    run = w / "run"
    main(["fit", "--config", config, "--data.init_args.data_dir", str(prep), "--trainer.default_root_dir", str(run),
          *(fit_args or [])])
    return evaluate_decoder(str(prep), str(run / "checkpoints" / "best.ckpt"), out_dir=str(w / "results"),
                            raw_dir=str(raw))


def format_worlds(results: dict[str, dict[str, Any]]) -> str:
    """One row per world: decoder / ridge / oracle (both directions), decoder over oracle, beats ridge."""
    head = (f"{'world (voxels, latent, noise, target)':<38} {'decoder b->i/i->b':>18} {'ridge':>12} {'oracle':>12} "
            f"{'dec/oracle':>11}  beats ridge")
    lines = [head, "-" * len(head)]
    for name, res in results.items():
        by = {r["method"]: r for r in res["rows"]}
        v, latent, noise, width = WORLDS[name]
        pair = lambda m: f"{100 * by[m]['brain_to_image']:.1f}/{100 * by[m]['image_to_brain']:.1f}"  # noqa: E731
        frac = res.get("decoder_over_oracle", {})
        beats = all(by["decoder"][d] > by["ridge"][d] for d in ("brain_to_image", "image_to_brain"))
        lines.append(f"{f'{name} ({v}, {latent}, {noise}, {width})':<38} {pair('decoder'):>18} {pair('ridge'):>12} "
                     f"{pair('oracle') if 'oracle' in by else '-':>12} "
                     f"{frac.get('brain_to_image', 0):.2f}/{frac.get('image_to_brain', 0):.2f}  {'yes' if beats else 'NO'}")
    return "\n".join(lines)


def evaluate_worlds(recipe: str = "configs/fmri/demo_ridge.yaml", out_dir: str = "runs/fmri_worlds",
                    worlds: Optional[list[str]] = None) -> dict[str, dict[str, Any]]:
    """Fit and score ``recipe`` (a ``litbrain fit`` config) on each world at demo size; print the table.

    Args:
        recipe: the decoder config every world is fitted with (``configs/fmri/demo.yaml``: the MLP adapters).
        out_dir: one folder per world (raw, prepared, run, results).
        worlds: names from ``WORLDS`` (default: all four), seeded 1..4 in that order.
    """
    names = list(worlds or WORLDS)
    unknown = [w for w in names if w not in WORLDS]
    if unknown:
        raise ConfigError(f"worlds={unknown}: unknown; fix: choose from {list(WORLDS)}")
    results = {}
    for name in names:
        results[name] = run_world(name, out_dir, recipe, seed=list(WORLDS).index(name) + 1)
        print(format_worlds(results), flush=True)
    print(f"\nrecipe {recipe}; test split, top-1 among 300 x 30 draws, mean over subjects")
    print(format_worlds(results))
    return results
