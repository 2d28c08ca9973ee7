"""fMRI decoding data: the DataModule, prepare (NIfTI betas -> shards) and the synthetic NSD-like world."""
