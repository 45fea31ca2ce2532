"""Layers, models and generation run on the JAX backend, on a machine without TensorFlow."""

import os
import subprocess
import sys

from tests.helpers import ROOT


def test_model_code_passes_on_jax_without_tensorflow(tmp_path):
    blocked = tmp_path / "tensorflow"
    blocked.mkdir()
    (blocked / "__init__.py").write_text("raise ImportError('TensorFlow is blocked in this test')\n")
    env = {
        **os.environ,
        "KERAS_BACKEND": "jax",
        "PYTHONPATH": os.pathsep.join([str(tmp_path), str(ROOT)]),
    }

    check = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, keras, tflm; assert keras.backend.backend() == 'jax';"
            "assert 'tensorflow' not in sys.modules, 'tflm imported TensorFlow'",
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
    )
    assert check.returncode == 0, check.stderr[-3000:]

    tests = subprocess.run(
        [
            # -n 0: one process; the outer run's other worker already uses the second core
            sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-n", "0",
            "tests/layers", "tests/models",
            "tests/generation/test_decode.py", "tests/generation/test_samplers.py",
            "-m", "not backend_independent",  # the outer run has them (pyproject.toml)
        ],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=900,
    )
    assert tests.returncode == 0, tests.stdout[-5000:]
    assert " passed" in tests.stdout
