"""Every notebook runs top to bottom (small settings) in a fresh kernel; a failing cell fails."""

import os
import signal

import nbformat
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
