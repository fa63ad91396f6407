"""The tutorials run from top to bottom."""

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

TUTORIALS = sorted((Path(__file__).parents[1] / "tutorials").glob("*.ipynb"))
# Those that start a local Dask cluster run where tests/test_simulation.py's do.
ON_DASK = {path for path in TUTORIALS if "LocalCluster(" in path.read_text()}


@pytest.mark.parametrize(
    "path",
    [
        pytest.param(path, marks=pytest.mark.xdist_group("clusters"))
        if path in ON_DASK
        else path
        for path in TUTORIALS
    ],
    ids=lambda path: path.name,
)
def test_tutorial_runs(path, tmp_path, monkeypatch, request):
    if path in ON_DASK:
        request.getfixturevalue("local_dask")  # skips where Dask cannot run
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("SBI_ALFI_TUTORIAL_BUDGET", "small")
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook,
        timeout=600,
        kernel_name="python3",
        resources={"metadata": {"path": tmp_path}},
    )
    client.execute()  # raises CellExecutionError, with the cell, on the first failure
    errors = [
        output
        for cell in notebook.cells
        if cell.cell_type == "code"
        for output in cell.outputs
        if output.output_type == "error"
    ]
    assert not errors
