"""Fixtures shared by the test folders. Plain helpers (tiny models, checks, `ROOT`) are in
tests/helpers.py; fixtures of one folder are in that folder's conftest.py."""

import keras
import pytest


@pytest.fixture
def seeded():
    """Python's, NumPy's and Keras' random state fixed for the test: initial weights,
    dropout and shuffling repeat from run to run."""
    keras.utils.set_random_seed(0)
