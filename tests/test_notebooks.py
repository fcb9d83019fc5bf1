"""The notebooks in notebooks/ execute top to bottom on the shipped model (nbclient), so they cannot rot.
Notebooks that read real stars skip when the embedded data set is unavailable."""

import pathlib
import time

import pytest

NOTEBOOKS = pathlib.Path(__file__).resolve().parents[1] / "notebooks"
NEEDS_DATA = {"spectra_to_labels.ipynb", "labels_to_spectra.ipynb", "spectra_to_spectra.ipynb", "inversion.ipynb"}
NEEDS = {"spectra_to_labels.ipynb": ["xgboost"], "labels_to_labels_extinction.ipynb": ["extinction"]}
ALL = sorted(p.name for p in NOTEBOOKS.glob("*.ipynb"))


def test_the_six_notebooks_exist():
    assert set(ALL) >= NEEDS_DATA | {"labels_to_labels_extinction.ipynb", "attention.ipynb"}


@pytest.fixture(scope="module")
def data_available():
    try:
        from stellarfm_jax import data as data_lib, pretrained

        data_lib.read_dataset(data_lib.default_dataset_path(pretrained("small").vocab.schema))
        return True
    except Exception:  # noqa: BLE001 - any failure to obtain the data set means those notebooks skip
        return False


@pytest.mark.parametrize("name", ALL)
def test_notebook_executes(name, tmp_path, data_available):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    for module in NEEDS.get(name, []):
        pytest.importorskip(module)
    if name in NEEDS_DATA and not data_available:
        pytest.skip("the embedded real data set is unavailable")
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    t0 = time.perf_counter()
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    seconds = time.perf_counter() - t0
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors
    assert seconds < 120, f"{name} took {seconds:.0f} s; notebooks must stay quick on a CPU"
