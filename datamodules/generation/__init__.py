"""Image-caption data for text-to-image generation: the fMRI stimulus world's raw layout
(``stimuli.tsv`` + ``captions.tsv`` + images) or any folder holding those two files."""

from .datamodule import ImageCaptionDataModule, read_image_captions, stated_attributes

__all__ = ["ImageCaptionDataModule", "read_image_captions", "stated_attributes"]
