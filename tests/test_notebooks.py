"""Every notebook runs top to bottom (small settings) in a fresh kernel; a failing cell fails.
Each notebook's install cell installs tflm from its TFLM_SOURCE."""

import json
import os
import signal

import nbformat
from nbformat.v4 import new_code_cell
import pytest
from nbclient import NotebookClient

from tests.helpers import ROOT

# Named, not globbed: a deleted or renamed notebook fails its test instead of vanishing.
NOTEBOOKS = [ROOT / "notebooks" / f"{name}.ipynb" for name in
             ("01_quickstart", "02_build_your_own", "03_finetune_sentiment", "04_accelerators")]


def test_the_notebooks_folder_holds_exactly_the_tested_notebooks():
    assert sorted((ROOT / "notebooks").glob("*.ipynb")) == NOTEBOOKS


def outputs(notebook):
    return [output for cell in notebook.cells if cell.cell_type == "code"
            for output in cell.outputs]


def stop_tensorboards(directory):
    """`%tensorboard` leaves its server running after the kernel exits."""
    from tensorboard import manager

    for info in manager.get_all():
        if str(directory) in info.logdir or str(directory) in info.cache_key:
            try:
                os.kill(info.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_the_install_cell_installs_tflm_from_tflm_source(path, tmp_path, monkeypatch):
    """The notebook's own install cell, as on Colab, with TFLM_SOURCE set to a clone of the
    committed checkout; pip installs into a folder of its own, offline, no dependencies."""
    source, install = [cell for cell in nbformat.read(path, as_version=4).cells
                       if cell.cell_type == "code"][:2]
    assert source.source.splitlines()[-1] == 'TFLM_SOURCE = "git+https://github.com/OWNER/tflm"'
    url = f"git+{ROOT.as_uri()}"
    as_on_colab = new_code_cell(f'TFLM_SOURCE = "{url}"\n'
                                'import sys, types\n'
                                'sys.modules["google.colab"] = types.ModuleType("google.colab")')
    target = tmp_path / "target"
    monkeypatch.setenv("PIP_TARGET", str(target))
    monkeypatch.setenv("PIP_NO_DEPS", "1")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_NO_BUILD_ISOLATION", "false")  # pip reads "false" as --no-build-isolation
    notebook = nbformat.v4.new_notebook(cells=[source, as_on_colab, install])
    NotebookClient(notebook, timeout=120, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()

    records = list(target.glob("tflm-*.dist-info/direct_url.json"))
    assert len(records) == 1, [output.get("text") for output in outputs(notebook)]  # pip's error
    assert json.loads(records[0].read_text())["url"] == url.removeprefix("git+")
    assert (target / "tflm" / "data" / "corpora" / "tiny_shakespeare.txt").exists()


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("TFLM_NOTEBOOK_SMALL", "1")
    monkeypatch.setenv("SST2_TSV", str(ROOT / "tests" / "data" / "sst2_sample.tsv"))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]))
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(notebook, timeout=600, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}})
    try:
        client.execute()  # raises CellExecutionError, with the cell and its traceback
    finally:
        stop_tensorboards(tmp_path)

    text = "\n".join(output.get("text", "") for output in outputs(notebook))
    plots = [output for output in outputs(notebook) if "image/png" in output.get("data", {})]
    assert len(plots) == (0 if path.stem == "04_accelerators" else 1)
    if path.stem == "01_quickstart":
        assert (tmp_path / "saved_models" / "shakespeare" / "1" / "saved_model.pb").exists()
        assert list((tmp_path / "logs" / "quickstart" / "train").glob("events.out.tfevents.*"))
    if path.stem == "02_build_your_own":
        assert "transformer:" in text and "lstm:" in text
    if path.stem == "03_finetune_sentiment":
        assert (tmp_path / "saved_models" / "sentiment" / "1" / "saved_model.pb").exists()
        assert "accuracy" in text
    if path.stem == "04_accelerators":
        assert "replica(s) on CPU" in text
