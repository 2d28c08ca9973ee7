"""Vision-language data: the DataModule over the synthetic image-question world and its generator."""
