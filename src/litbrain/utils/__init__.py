"""Lowest layer: atomic writes, the one safe checkpoint reader, the optimiser recipe.

Imports nothing of litbrain but :mod:`litbrain.errors`.
"""
