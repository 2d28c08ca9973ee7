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
    """Flat (C-order) grid indices of each sphere's voxels, as nilearn's NiftiSpheresMasker picks them."""
    from nilearn.maskers.nifti_spheres_masker import apply_mask_and_get_affinity

    mask = np.asarray(mask_img.dataobj) != 0
    flat = np.flatnonzero(mask)  # nilearn's mask_coords are np.where order = C order
    _, A = apply_mask_and_get_affinity([tuple(c) for c in coords], None, radius, True, mask_img=mask_img)
    A = A.tocsr()
    return [flat[A.indices[A.indptr[i]:A.indptr[i + 1]]] for i in range(A.shape[0])]


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
