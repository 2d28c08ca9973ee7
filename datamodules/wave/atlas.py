"""The parcellation WAVE's path reads whole-brain BOLD through: Seitzman-2018 spheres on nilearn's MNI152 grid.

Everything here is offline: nilearn ships the 300 Seitzman ROI coordinates (14 networks) and its
MNI152 brain mask. :func:`grid_mask` resamples that mask to a coarser isotropic grid (the
synthetic world and the tests use 6-10 mm voxels so that runs stay small); :func:`sphere_voxels`
is nilearn's own sphere assignment (mask voxels within ``radius`` mm of the seed, plus the seed's
nearest voxel), which both the generator and the validation of ``prepare`` use.
"""

from __future__ import annotations

import numpy as np

from litbrain.errors import DataError

__all__ = ["seitzman_atlas", "grid_mask", "sphere_voxels", "check_parcels_in_mask", "SPACE"]

SPACE = "MNI152NLin2009cAsym"


def seitzman_atlas() -> dict:
    """``coords`` (300, 3) mm, ``networks`` (300,) names, ``radius`` (mm) of the Seitzman-2018 ROIs."""
    from nilearn import datasets

    s = datasets.fetch_coords_seitzman_2018()
    coords = np.asarray(s.rois[["x", "y", "z"]], dtype=np.float64)
    return {"coords": coords, "networks": np.asarray(s.networks).astype(str),
            "radius": float(np.median(np.asarray(s.radius, dtype=np.float64))), "name": "seitzman_2018"}


def grid_mask(voxel_size: float = 8.0):
    """nilearn's MNI152 brain mask resampled (nearest) to an isotropic ``voxel_size`` mm grid (a Nifti1Image)."""
    import nibabel as nib
    from nilearn import datasets, image

    mask = datasets.load_mni152_brain_mask(resolution=2)
    vs = float(voxel_size)
    shape = np.ceil(np.array(mask.shape) * np.abs(np.diag(mask.affine)[:3]) / vs).astype(int)
    affine = np.diag([vs, vs, vs, 1.0])
    affine[:3, 3] = mask.affine[:3, 3]
    out = image.resample_img(mask, target_affine=affine, target_shape=tuple(shape), interpolation="nearest",
                             force_resample=True, copy_header=True)
    data = (np.asarray(out.dataobj) > 0).astype(np.uint8)
    return nib.Nifti1Image(data, affine)


def sphere_voxels(coords: np.ndarray, mask_img, radius: float) -> list[np.ndarray]:
    """Flat (C-order) grid indices of each sphere's voxels, as nilearn's NiftiSpheresMasker picks them:
    the mask voxels within ``radius`` mm of the seed, plus the seed's nearest voxel when it is in the mask
    (nilearn's ``apply_mask_and_get_affinity``, which raises on an empty sphere instead of naming it)."""
    from sklearn.neighbors import NearestNeighbors

    mask = np.asarray(mask_img.dataobj) != 0
    ijk = np.argwhere(mask)  # C order, as nilearn's np.where
    flat = np.ravel_multi_index(ijk.T, mask.shape)
    aff = mask_img.affine
    xyz = ijk @ aff[:3, :3].T + aff[:3, 3]
    graph = NearestNeighbors(radius=float(radius)).fit(xyz).radius_neighbors(np.asarray(coords, float),
                                                                              return_distance=False)
    inv = np.linalg.inv(aff)
    out = []
    for c, rows in zip(np.asarray(coords, float), graph):
        near = np.round(inv[:3, :3] @ c + inv[:3, 3]).astype(int)
        sel = set(flat[rows].tolist())
        if np.all((near >= 0) & (near < mask.shape)) and mask[tuple(near)]:
            sel.add(int(np.ravel_multi_index(tuple(near), mask.shape)))
        out.append(np.array(sorted(sel), dtype=np.int64))
    return out


def check_parcels_in_mask(coords: np.ndarray, mask_img, radius: float, where: str) -> list[np.ndarray]:
    """:func:`sphere_voxels`, refusing parcels with no voxel inside the brain mask (one DataError)."""
    vox = sphere_voxels(coords, mask_img, radius)
    empty = [i for i, v in enumerate(vox) if v.size == 0]
    if empty:
        c = coords[empty[0]]
        raise DataError(f"{where}: {len(empty)} atlas parcel(s) lie outside the brain mask (first: parcel {empty[0]} "
                        f"at {c[0]:.0f}, {c[1]:.0f}, {c[2]:.0f} mm, no voxel within {radius:g} mm); fix: use an atlas "
                        f"in the same MNI space as the images, or a larger sphere radius")
    return vox
