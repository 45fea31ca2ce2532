"""Fixtures shared by the test folders. Plain helpers (tiny models, checks, `ROOT`) are in
tests/helpers.py; fixtures of one folder are in that folder's conftest.py."""

import keras
import pytest


@pytest.fixture
def seeded():
    """Python's, NumPy's and Keras' random state fixed for the test: initial weights,
    dropout and shuffling repeat from run to run."""
    keras.utils.set_random_seed(0)


# The longest files, longest first: pytest-xdist hands out whole files in collection order,
# so starting these first lets the two workers finish together.
LONGEST_FIRST = ["tests/test_jax_backend.py", "tests/training/test_finetune.py",
                 "tests/test_cli.py", "tests/test_notebooks.py", "tests/export/test_audit.py",
                 "tests/training/test_trainer.py", "tests/training/test_distribute.py",
                 "tests/models/test_quantize.py"]


def pytest_collection_modifyitems(items):
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
