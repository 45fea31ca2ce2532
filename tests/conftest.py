"""Fixtures shared by the test folders. Plain helpers (tiny models, checks, `ROOT`) are in
tests/helpers.py; fixtures of one folder are in that folder's conftest.py."""

import os

# Most tests compile many small graphs and run each a few times: LLVM's optimizations cost
# more compile time than they save. Set before TensorFlow or JAX starts XLA; the
# subprocesses the tests start inherit it (a test that trains for long sets its own).
os.environ.setdefault("XLA_FLAGS", "--xla_backend_optimization_level=0")

import keras  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def seeded():
    """Python's, NumPy's and Keras' random state fixed for the test: initial weights,
    dropout and shuffling repeat from run to run."""
    keras.utils.set_random_seed(0)


# The longest files, longest first: pytest-xdist hands out whole files in collection order
# (with --no-loadscope-reorder; by default it starts the files with the most tests first),
# so starting these first lets the two workers finish together.
LONGEST_FIRST = ["tests/test_jax_backend.py", "tests/training/test_finetune.py",
                 "tests/test_cli.py", "tests/test_notebooks.py", "tests/export/test_audit.py",
                 "tests/training/test_trainer.py", "tests/training/test_distribute.py",
                 "tests/models/test_quantize.py"]


def pytest_collection_modifyitems(items):
    rank = {path: i for i, path in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::")[0], len(rank)))
