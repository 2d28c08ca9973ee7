"""Synthetic whole-brain fMRI in fMRIPrep's BIDS-derivatives layout, with known network contributions.

:func:`synthesize_wave` writes::

    <out>/dataset_description.json                BIDS derivative description
    <out>/stimuli.tsv, images/, captions.tsv       the fMRI world's stimuli (synthesize_fmri's images and captions)
    <out>/embeddings/image.npz, text.npz           their image and caption embeddings (ids, embeddings)
    <out>/truth.json                               network weights, latent dims per network, parameters
    <out>/truth.npz                                z (stimuli x L), loadings (parcels x L), the world's truth
    <out>/sub-XX/func/sub-XX_task-images_run-R_space-MNI152NLin2009cAsym_desc-preproc_bold.nii.gz
    <out>/sub-XX/func/sub-XX_task-images_run-R_events.tsv            onset, duration, stimulus_id
    <out>/sub-XX/func/sub-XX_task-<t>_run-R_desc-confounds_timeseries.tsv  trans_*/rot_*, cosine00..
    <out>/sub-XX/func/sub-XX_task-rest_run-1_space-..._bold.nii.gz   rest runs: no stimuli (pretraining)

Generative model. Stimulus ``n`` has latent features ``z_n`` (the fMRI world's: its image and caption
are rendered from them). Informative networks own disjoint blocks of latent dimensions, sized by
their weight (``truth.json`` ``network_dims``); a Seitzman parcel ``p`` of network ``k`` responds to
event ``e`` with ``loading_p . z_e`` where ``loading_p`` is nonzero on network ``k``'s block only
(shared by subjects, plus a small per-subject perturbation), so removing a network removes exactly its
share of the stimulus information. Parcel responses are boxcars (event duration) convolved with
nilearn's SPM HRF on the TR grid; a voxel carries the response of the nearest parcel seed within the
sphere radius. Added per voxel: spatially smooth Gaussian noise, slow cosine drifts and a linear
trend, and motion-like confounds (six random walks, each with its own spatial map), all listed in the
confounds file (so the masker's confound regression and detrending remove them), then a baseline
and gain per voxel. Spontaneous activity is structured by network, as resting-state BOLD is (rest
networks mirror the networks that task activates, Smith et al. 2009, PNAS 106:13040): each network has
slow latent time courses (Gaussian-smoothed white noise, ``spontaneous_timescale`` s) shared by its
parcels, with the network's own stimulus loadings for an informative network (so rest reveals the
subspace that stimuli drive) and ``spontaneous_rank`` random loadings for the others, at amplitude
``spontaneous``; plus a small parcel-specific fluctuation. ``truth.json`` records these parameters and
``truth.npz`` the spontaneous loadings. Rest runs are the same without events. The last task run of
every subject shows the shared test stimuli.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np

from litbrain.errors import DataError
from ..io import synthetic_is_current
from litbrain.utils.io import atomic_dir

from ..fmri.synthetic import synthesize_fmri
from .atlas import SPACE, check_parcels_in_mask, grid_mask, seitzman_atlas

__all__ = ["synthesize_wave", "DEFAULT_NETWORK_WEIGHTS", "bold_name", "load_wave_truth"]

# Share of the stimulus information per network (WAVE's finding: visual, then default mode, then
# dorsal attention); every other Seitzman network carries none.
DEFAULT_NETWORK_WEIGHTS = {"Visual": 0.5, "DefaultMode": 0.33, "DorsalAttention": 0.17}
MOTION = ("trans_x", "trans_y", "trans_z", "rot_x", "rot_y", "rot_z")


def bold_name(sub: str, task: str, run: int) -> str:
    return f"{sub}_task-{task}_run-{run}_space-{SPACE}_desc-preproc_bold.nii.gz"


def _network_dims(weights: dict[str, float], latent_dim: int) -> dict[str, list[int]]:
    """Disjoint blocks of latent dims, sized by weight (largest remainder), every network at least one."""
    names = sorted(weights, key=lambda k: -weights[k])
    total = sum(weights.values())
    raw = np.array([weights[k] / total * latent_dim for k in names])
    n = np.maximum(np.floor(raw).astype(int), 1)
    while n.sum() < latent_dim:
        n[np.argmax(raw - n)] += 1
    while n.sum() > latent_dim:
        n[np.argmax(n)] -= 1
    out, start = {}, 0
    for k, c in zip(names, n):
        out[k] = list(range(start, start + int(c)))
        start += int(c)
    return out


def _smooth_noise(shape: tuple[int, ...], n: int, sigma: float, rng: np.random.Generator) -> np.ndarray:
    from scipy.ndimage import gaussian_filter

    x = rng.standard_normal((n,) + shape).astype(np.float32)
    x = gaussian_filter(x, sigma=(0,) + (sigma,) * len(shape))
    return x / (x.std() + 1e-12)


def _event_responses(z_events: np.ndarray, onsets: np.ndarray, duration: float, frame_times: np.ndarray) -> np.ndarray:
    """(T, L): each latent dim's HRF-convolved event train (nilearn's SPM HRF)."""
    from nilearn.glm.first_level import compute_regressor

    out = np.zeros((frame_times.size, z_events.shape[1]))
    for d in range(z_events.shape[1]):
        cond = np.vstack([onsets, np.full(onsets.size, duration), z_events[:, d]])
        reg, _ = compute_regressor(cond, "spm", frame_times, oversampling=16)
        out[:, d] = reg[:, 0]
    return out


def synthesize_wave(
    out_dir: str | os.PathLike,
    n_subjects: int = 3,
    n_stimuli: int = 700,
    n_test: int = 100,
    task_runs: int = 4,
    rest_runs: int = 1,
    rest_volumes: int = 120,
    isi_volumes: int = 4,
    tr: float = 2.0,
    event_duration: float = 2.0,
    voxel_size: float = 8.0,
    sphere_radius: float = 8.0,
    latent_dim: int = 20,
    image_embedding_dim: int = 64,
    text_embedding_dim: int = 32,
    network_weights: dict[str, float] | None = None,
    signal: float = 2.0,
    noise: float = 1.0,
    subject_variability: float = 0.2,
    smoothness_mm: float = 8.0,
    drift: float = 2.0,
    motion: float = 1.0,
    spontaneous: float = 0.3,
    spontaneous_rank: int = 3,
    spontaneous_timescale: float = 4.0,
    seed: int = 0,
    overwrite: bool = False,
) -> Path:
    """Write a synthetic whole-brain BIDS-derivatives dataset with known network weights; return its path.

    Args:
        out_dir: Destination (built beside it, then renamed into place).
        n_subjects: Subjects ``sub-01`` ...; they share the parcel loadings (up to ``subject_variability``).
        n_stimuli: Stimuli of the world; ``n_test`` of them are the shared test set (last task run of everyone),
            the others are split between subjects' training runs.
        task_runs: Task runs per subject (the last one is the test run; >= 2).
        rest_runs / rest_volumes: Resting-state runs per subject and their length (TRs).
        isi_volumes: Volumes between event onsets (plus a jitter of up to one TR).
        tr: Repetition time (s), written into the NIfTI header.
        event_duration: Stimulus duration (s).
        voxel_size / sphere_radius: Isotropic grid (mm) of the MNI152 mask; Seitzman sphere radius (mm).
        latent_dim: Latent stimulus features, split between informative networks by weight.
        image_embedding_dim / text_embedding_dim: Widths of the cached image and caption embeddings.
        network_weights: Seitzman network -> share of the stimulus information (default: Visual 0.5,
            DefaultMode 0.33, DorsalAttention 0.17: 10 / 7 / 3 of 20 latent dims, so the order is clear; the rest 0).
        signal / noise: Response and (spatially smooth) noise standard deviations per voxel.
        subject_variability: Relative s.d. of each subject's perturbation of the shared loadings.
        smoothness_mm: FWHM-like smoothing (mm, as a Gaussian sigma) of the noise.
        drift / motion: Amplitudes of the slow drifts and motion-like confounds (removed by prepare).
        spontaneous: Amplitude of the network-shared spontaneous fluctuations (0 = none; see the module doc).
        spontaneous_rank: Latent spontaneous time courses of each uninformative network (an informative one has
            as many as its latent stimulus dims, on the same loadings).
        spontaneous_timescale: Gaussian s.d. (s) of the spontaneous time courses' smoothing.
        seed: Random seed; same arguments = identical files.
        overwrite: Replace ``out_dir``.
    """
    out = Path(out_dir)
    params = {k: v for k, v in locals().items() if k not in ("out_dir", "overwrite", "out")}
    params = json.loads(json.dumps(params, default=list))
    if synthetic_is_current(out, params, "truth.json", overwrite):
        return out
    if task_runs < 2:
        raise DataError(f"synthesize_wave: task_runs={task_runs}; fix: at least 2 (the last one is the test run)")
    if not 0 < n_test < n_stimuli:
        raise DataError(f"synthesize_wave: n_test={n_test} must be in (0, n_stimuli={n_stimuli}); fix: lower it")
    atlas = seitzman_atlas()
    weights = dict(DEFAULT_NETWORK_WEIGHTS if network_weights is None else network_weights)
    unknown = sorted(set(weights) - set(atlas["networks"]))
    if unknown:
        raise DataError(f"synthesize_wave: network_weights names {unknown}, not Seitzman networks; fix: use "
                        f"{sorted(set(atlas['networks']))}")
    weights = {k: float(v) for k, v in weights.items() if v > 0}
    if len(weights) > latent_dim:
        raise DataError(f"synthesize_wave: {len(weights)} informative networks but latent_dim={latent_dim}; fix: "
                        f"latent_dim >= the number of networks with weight > 0")
    dims = _network_dims(weights, latent_dim)
    mask_img = grid_mask(voxel_size)
    mask = np.asarray(mask_img.dataobj) != 0
    coords, networks = atlas["coords"], atlas["networks"]
    check_parcels_in_mask(coords, mask_img, sphere_radius, "synthesize_wave")
    P, L = coords.shape[0], int(latent_dim)

    ss = np.random.SeedSequence([int(seed), 18])
    rng_load, rng_split, *rng_subs = [np.random.default_rng(s) for s in ss.spawn(2 + n_subjects)]
    loadings = np.zeros((P, L))
    for k, d in dims.items():
        rows = np.flatnonzero(networks == k)
        # every latent dim gets the same total signal energy whichever network carries it (as if spread over
        # 5 parcels of unit loading), so a network's information is its number of dims, whatever its size
        loadings[np.ix_(rows, d)] = rng_load.standard_normal((rows.size, len(d))) * math.sqrt(5.0 / rows.size)
    # spontaneous loadings of the uninformative networks (the informative ones reuse their stimulus loadings)
    quiet = [k for k in sorted(set(networks.tolist())) if k not in dims]
    R = int(spontaneous_rank)
    spont_load = np.zeros((P, R * len(quiet)))
    for j, k in enumerate(quiet):
        rows = np.flatnonzero(networks == k)
        spont_load[rows, j * R:(j + 1) * R] = rng_load.standard_normal((rows.size, R)) * math.sqrt(5.0 / rows.size)

    # voxels -> nearest parcel seed within the radius (the voxel carries that parcel's response)
    ijk = np.argwhere(mask)
    xyz = ijk @ mask_img.affine[:3, :3].T + mask_img.affine[:3, 3]
    d2 = ((xyz[:, None, :] - coords[None]) ** 2).sum(-1)
    nearest = d2.argmin(1)
    owner = np.where(d2[np.arange(len(xyz)), nearest] <= sphere_radius ** 2, nearest, -1)

    with atomic_dir(out, overwrite=overwrite) as tmp:
        world = synthesize_fmri(tmp / "_world", n_subjects=1, n_stimuli=n_stimuli, n_shared=n_test, repeats=1,
                                trials_per_session=n_stimuli, n_voxels=50, latent_dim=L,
                                image_embedding_shape=(image_embedding_dim,), text_embedding_dim=text_embedding_dim,
                                image_size=32, seed=seed)
        for name in ("images", "stimuli.tsv", "captions.tsv", "embeddings"):
            os.replace(world / name, tmp / name)
        with np.load(world / "truth.npz") as f:
            wtruth = {k: f[k] for k in f.files if not k.startswith("sub-")}
        shutil.rmtree(world)
        z, ids, shared = wtruth["z"], wtruth["ids"].astype(str), wtruth["shared"].astype(bool)
        test_idx = np.flatnonzero(shared)
        own = np.flatnonzero(~shared)
        own = own[rng_split.permutation(own.size)]
        own_parts = np.array_split(own, n_subjects)
        shape = mask.shape
        sigma = float(smoothness_mm) / float(voxel_size)
        for s in range(n_subjects):
            sub = f"sub-{s + 1:02d}"
            rng = rng_subs[s]
            fdir = tmp / sub / "func"
            fdir.mkdir(parents=True)
            sub_load = loadings * (1 + subject_variability * rng.standard_normal((P, L)))
            baseline = 100.0 + 20.0 * rng.random(owner.size)
            gain = 0.5 + rng.random(owner.size)
            train_parts = np.array_split(own_parts[s], task_runs - 1)
            runs = [("images", r + 1, train_parts[r]) for r in range(task_runs - 1)]
            runs.append(("images", task_runs, test_idx[rng.permutation(test_idx.size)]))
            runs += [("rest", r + 1, np.zeros(0, int)) for r in range(rest_runs)]
            for task, run, stim in runs:
                if task == "images":
                    onsets = (np.arange(stim.size) * isi_volumes + 2) * tr + rng.uniform(0, tr, stim.size)
                    T = int(math.ceil((onsets[-1] + event_duration) / tr)) + 8 if stim.size else 8
                else:
                    onsets = np.zeros(0)
                    T = int(rest_volumes)
                ft = np.arange(T) * tr
                resp = _event_responses(z[stim], onsets, event_duration, ft) if stim.size else np.zeros((T, L))
                parcel = resp @ sub_load.T  # (T, P)
                # spontaneous activity (what rest runs are made of): slow time courses shared by each network's
                # parcels, on the stimulus loadings for informative networks, plus a parcel-specific part
                sl = np.hstack([sub_load, spont_load])
                net_spont = _smooth_noise((T,), sl.shape[1], spontaneous_timescale / tr, rng).T @ sl.T
                spont = spontaneous * net_spont + _smooth_noise((T,), P, 1.5, rng).T * 0.5
                sig = np.zeros((T, owner.size))
                inside = owner >= 0
                sig[:, inside] = signal * parcel[:, owner[inside]] + spont[:, owner[inside]]
                vol_noise = _smooth_noise(shape, T, sigma, rng)[:, mask] * noise
                cosines = np.stack([np.cos(np.pi * (k + 1) * (ft + tr / 2) / (T * tr)) for k in range(3)], 1)
                mot = np.cumsum(rng.standard_normal((T, 6)) * 0.1, axis=0) * motion
                mot -= mot.mean(0)
                mot_maps = _smooth_noise(shape, 6, 2.0, rng)[:, mask]
                drift_maps = rng.standard_normal((3, owner.size)) * drift
                lin = (ft - ft.mean()) / (ft.std() + 1e-12)
                x = sig + vol_noise + cosines @ drift_maps + mot @ mot_maps + np.outer(lin, rng.standard_normal(
                    owner.size) * drift * 0.5)
                x = baseline + gain * x
                vol = np.zeros(shape + (T,), np.float32)
                vol[mask] = x.T.astype(np.float32)
                import nibabel as nib

                img = nib.Nifti1Image(vol, mask_img.affine)
                img.header.set_xyzt_units("mm", "sec")
                img.header.set_zooms((voxel_size,) * 3 + (tr,))
                img.header["descrip"] = b"litbrain synthesize_wave"
                nib.save(img, fdir / bold_name(sub, task, run))
                conf = np.hstack([mot, cosines])
                cols = list(MOTION) + [f"cosine{k:02d}" for k in range(cosines.shape[1])]
                with open(fdir / f"{sub}_task-{task}_run-{run}_desc-confounds_timeseries.tsv", "w") as f:
                    f.write("\t".join(cols) + "\n")
                    for row in conf:
                        f.write("\t".join(f"{v:.6f}" for v in row) + "\n")
                if task == "images":
                    with open(fdir / f"{sub}_task-{task}_run-{run}_events.tsv", "w") as f:
                        f.write("onset\tduration\tstimulus_id\n")
                        for o, i in zip(onsets, stim):
                            f.write(f"{o:.3f}\t{event_duration:g}\t{ids[i]}\n")
        (tmp / "dataset_description.json").write_text(json.dumps({
            "Name": "litbrain synthetic whole-brain (WAVE) world", "BIDSVersion": "1.8.0",
            "DatasetType": "derivative", "GeneratedBy": [{"Name": "litbrain.datamodules.wave.synthesize_wave"}]},
            indent=1))
        np.savez(tmp / "truth.npz", z=z, ids=ids, shared=shared, loadings=loadings, networks=networks,
                 spontaneous_loadings=spont_load,
                 **{f"world.{k}": v for k, v in wtruth.items() if k.startswith(("image_", "text_"))})
        total = sum(weights.values())
        (tmp / "truth.json").write_text(json.dumps({
            "generator": "litbrain.datamodules.wave.synthesize_wave", "parameters": params,
            "network_weights": {k: weights.get(k, 0.0) / total for k in sorted(set(networks))},
            "network_dims": dims, "spontaneous": {"amplitude": spontaneous, "timescale_s": spontaneous_timescale,
                                                   "rank_uninformative": R, "uninformative_networks": quiet},
            "atlas": atlas["name"], "sphere_radius": sphere_radius, "tr": tr}, indent=1))
    return out


def load_wave_truth(raw_dir: str | os.PathLike) -> dict:
    """``truth.json`` merged with the arrays of ``truth.npz`` of a :func:`synthesize_wave` world."""
    raw = Path(raw_dir)
    try:
        info = json.loads((raw / "truth.json").read_text())
        with np.load(raw / "truth.npz", allow_pickle=False) as f:
            info.update({k: f[k] for k in f.files})
    except (OSError, ValueError) as err:
        raise DataError(f"{raw}: no readable truth.json / truth.npz ({err}); fix: point at a synthesize_wave "
                        f"world") from None
    return info
