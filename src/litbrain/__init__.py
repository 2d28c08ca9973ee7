"""litbrain: PyTorch Lightning training for brain decoding and multimodal models."""

__version__ = "0.1.0"
