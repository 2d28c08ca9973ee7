"""Brain-to-image reconstruction data: a prepared fMRI dataset plus the pipeline's targets (VAE latents, caption conditioning)."""
