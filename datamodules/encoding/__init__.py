"""Encoding-model data (image -> voxels): the fMRI data path plus descriptions, repeats for the noise ceiling, ROIs."""
