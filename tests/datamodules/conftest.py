"""Fixtures for the data-layer tests (raw-data helpers live in tests/helpers/fmri_rawkit.py)."""

import numpy as np
import pytest


@pytest.fixture
def rng():
    return np.random.default_rng(1234)
