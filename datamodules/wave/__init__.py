"""Whole-brain fMRI (WAVE): fMRIPrep-style BIDS derivatives, nilearn parcellation, synthetic world."""
