"""tflm installs from a clone of the repository on the Python versions it claims, and pip
refuses it on the others.

Offline, in seconds: the wheel is built from a clone of the committed checkout
(`git+file://`); pip checks its Requires-Python with `--dry-run --no-deps` for each
version; every claimed interpreter found on this machine compiles the installed modules;
the running interpreter imports them, with the dependencies it already has. What needs the
package index, that every dependency has wheels for every claimed version, .ci/run checks.
"""

import email
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from tests.helpers import ROOT

# Offline and outside the user's environment, whatever pip's configuration says.
PIP = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
OFFLINE = ["--no-index", "--no-deps"]
MINOR_VERSIONS = [f"3.{minor}" for minor in range(8, 16)]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel `pip install "tflm @ git+file://…"` builds from a fresh clone."""
    directory = tmp_path_factory.mktemp("wheel")
    subprocess.run([*PIP, "wheel", "-q", *OFFLINE, "--no-build-isolation", "-w", directory,
                    f"tflm @ git+{ROOT.as_uri()}"], check=True, capture_output=True)
    (path,) = directory.glob("tflm-*.whl")
    return path


def metadata(wheel):
    with zipfile.ZipFile(wheel) as archive:
        (name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
        return email.message_from_bytes(archive.read(name))


def claimed_versions(wheel):
    """The Python versions named in the wheel's classifiers."""
    return {m.group(1) for c in metadata(wheel).get_all("Classifier")
            if (m := re.fullmatch(r"Programming Language :: Python :: (3\.\d+)", c))}


def test_the_classifiers_name_exactly_the_versions_requires_python_admits(wheel):
    requires_python = SpecifierSet(metadata(wheel)["Requires-Python"])
    assert claimed_versions(wheel) == {v for v in MINOR_VERSIONS if v in requires_python}


def test_every_claimed_version_is_one_the_installed_dependencies_support(wheel):
    # keras >= 3.13 and keras-hub 0.32 need Python 3.11: a claim of 3.10 fails here.
    for requirement in map(Requirement, metadata(wheel).get_all("Requires-Dist")):
        if requirement.marker:  # an extra's requirement
            continue
        supported = SpecifierSet(importlib.metadata.metadata(requirement.name)["Requires-Python"] or "")
        unsupported = {v for v in claimed_versions(wheel) if v not in supported}
        assert not unsupported, f"{requirement.name} requires Python {supported}"


@pytest.mark.parametrize("version", MINOR_VERSIONS)
def test_pip_installs_the_wheel_on_claimed_versions_only(wheel, version, tmp_path):
    result = subprocess.run([*PIP, "install", "--dry-run", *OFFLINE, "--python-version", version,
                             "--target", tmp_path, wheel], capture_output=True, text=True)
    if version in claimed_versions(wheel):
        assert result.returncode == 0, result.stderr
    else:
        assert result.returncode != 0
        assert "requires a different Python" in result.stderr


def interpreter(version):
    """`pythonX.Y` on this machine (on the PATH or from pyenv), or None."""
    candidates = [shutil.which(f"python{version}"),
                  *sorted(Path.home().glob(f".pyenv/versions/{version}.*/bin/python{version}"))]
    for candidate in filter(None, candidates):
        result = subprocess.run([candidate, "-c", "import sys; print(sys.version_info[:2])"],
                                capture_output=True, text=True)  # a pyenv shim may not run
        if result.returncode == 0 and result.stdout.strip() == str(tuple(map(int, version.split(".")))):
            return candidate
    return None


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory):
    """The wheel installed without its dependencies into a folder of its own."""
    target = tmp_path_factory.mktemp("target")
    subprocess.run([*PIP, "install", "-q", *OFFLINE, "--target", target, wheel], check=True)
    return target


def test_the_running_python_is_a_claimed_version(wheel):
    assert f"{sys.version_info.major}.{sys.version_info.minor}" in claimed_versions(wheel)


def test_each_claimed_interpreter_on_this_machine_compiles_every_module(wheel, installed):
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    found = {v: sys.executable if v == running else interpreter(v)
             for v in sorted(claimed_versions(wheel))}
    for version, python in found.items():
        if python:
            result = subprocess.run([python, "-m", "compileall", "-q", "-f", installed / "tflm"],
                                    capture_output=True, text=True)
            assert result.returncode == 0, f"Python {version}: {result.stdout}{result.stderr}"


def test_the_installed_wheel_imports_and_builds_a_preset(installed, tmp_path):
    code = """
import tflm
print(tflm.__file__)
model = tflm.GPT.from_preset("shakespeare-char")
print(model.tokenizer.vocabulary_size(), tflm.data.corpora.tiny_shakespeare().stat().st_size)
"""
    # From a folder of its own, so that the checkout is not on the path.
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                            text=True, env={**os.environ, "PYTHONPATH": str(installed),
                                            "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert result.returncode == 0, result.stderr
    path, sizes = result.stdout.split("\n")[:2]
    assert Path(path) == installed / "tflm" / "__init__.py"
    corpus = ROOT / "tflm" / "data" / "corpora" / "tiny_shakespeare.txt"
    assert sizes.split() == [str(len(set(corpus.read_text()))), str(corpus.stat().st_size)]
