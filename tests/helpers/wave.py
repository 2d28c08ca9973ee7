"""Shared pieces of the WAVE tests: the tiny world's parameters and hand-made BIDS runs for bad inputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Small enough for tests (~10 s to synthesize + prepare on the 8 mm grid), big enough for the ablation bar
# (2 x 100 test events; Visual 10, DefaultMode 6, DorsalAttention 4 latent dims).
TINY_WAVE = dict(n_subjects=2, n_stimuli=500, n_test=100, task_runs=3, rest_runs=1, rest_volumes=40, voxel_size=8.0,
                 sphere_radius=8.0, latent_dim=20, image_embedding_dim=16, text_embedding_dim=8, signal=3.0, seed=0)


def write_run(root: Path, data: np.ndarray, affine: np.ndarray, tr: float | None = 2.0, sub: str = "sub-01",
              events: list[tuple[float, float, str]] | None = None, stimuli: tuple[str, ...] = ("s0", "s1")) -> Path:
    """One fMRIPrep-named run (+ events, stimuli.tsv and embeddings) under ``root``; returns ``root``."""
    import nibabel as nib

    from litbrain.datamodules.wave.synthetic import bold_name

    func = root / sub / "func"
    func.mkdir(parents=True, exist_ok=True)
    img = nib.Nifti1Image(data.astype(np.float32), affine)
    if data.ndim == 4:
        img.header.set_xyzt_units("mm", "sec")
        img.header.set_zooms(tuple(abs(float(v)) for v in np.diag(affine)[:3]) + (float(tr or 0.0),))
    nib.save(img, func / bold_name(sub, "images", 1))
    if events is not None:
        (func / f"{sub}_task-images_run-1_events.tsv").write_text(
            "onset\tduration\tstimulus_id\n" + "".join(f"{o}\t{d}\t{s}\n" for o, d, s in events))
    (root / "stimuli.tsv").write_text("stimulus_id\tshared\n" + "".join(f"{s}\t0\n" for s in stimuli))
    (root / "embeddings").mkdir(exist_ok=True)
    for k in ("image", "text"):
        np.savez(root / "embeddings" / f"{k}.npz", ids=np.array(stimuli), embeddings=np.eye(len(stimuli), 4))
    return root


def mni_run(root: Path, T: int = 12, voxel_size: float = 8.0, seed: int = 0, **kw) -> Path:
    """A random 4D run on nilearn's MNI152 mask at ``voxel_size`` mm."""
    from litbrain.datamodules.wave.atlas import grid_mask

    m = grid_mask(voxel_size)
    rng = np.random.default_rng(seed)
    data = 100 + rng.standard_normal(m.shape + (T,))
    return write_run(root, data, m.affine, **kw)


def wave_fit_args(config: str, data_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    """`litbrain fit` on a configs/wave recipe, shrunk to test size."""
    from tests.helpers.fit import REPO

    return ["fit", "--config", str(REPO / "configs" / "wave" / config), "--data.init_args.data_dir", str(data_dir),
            "--model.init_args.net.d_model", "32", "--model.init_args.net.n_layers", "1", "--model.init_args.net.n_heads",
            "2", "--trainer.check_val_every_n_epoch", "1000", "--trainer.default_root_dir", str(run_dir),
            "--data.init_args.subjects", "[sub-01, sub-02]", *extra]
