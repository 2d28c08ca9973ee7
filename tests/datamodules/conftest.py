"""Fixtures for the data-layer tests (helpers live in fmri_rawkit.py)."""

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
