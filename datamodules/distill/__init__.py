"""Synthetic long-input / short-output question answering for the distillation family (issue 17)."""
