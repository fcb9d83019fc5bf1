"""The catalogue prediction CLI: formats, streaming order, equality with the Python API, bad input."""

from __future__ import annotations

import csv
import os
import pathlib

import h5py
import jax
import numpy as np
import pytest

from stellarfm_jax.config import ModelConfig
from stellarfm_jax.data.h5io import write_dataset
from stellarfm_jax.inference import StellarModel
from stellarfm_jax.nn.model import StellarPerceptron, init_params
from stellarfm_jax.predict import main
from stellarfm_jax.schemas import paper_vocabulary
from stellarfm_jax.synthetic import make_synthetic_dataset

CONFIG = ModelConfig(embedding_dim=16, encoder_heads=4, encoder_dense=32, decoder_heads=4, decoder_dense=64,
                     dropout=0.0, context_length=32)
SHARED = pathlib.Path(os.environ.get("STELLARFM_SHARED", pathlib.Path(__file__).resolve().parents[2] / "shared"))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("predict")
    ds = make_synthetic_dataset(300, seed=5)
    params = init_params(StellarPerceptron(CONFIG, ds.vocab.size), jax.random.PRNGKey(1))
    model = StellarModel.from_params(params, CONFIG, ds.vocab)
    model.save(root / "model")
    write_dataset(root / "data.h5", ds)
    return root, model, ds


def read_csv_columns(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


def test_hdf5_input_streams_in_order_and_matches_the_api(setup, capsys):
    root, model, ds = setup
    out = root / "pred.h5"
    rc = main(["--model", str(root / "model"), "--input", str(root / "data.h5"), "--request", "teff,logg",
               "--output", str(out), "--split", "test", "--read-rows", "7", "--batch-size", "16", "--no-progress"])
    assert rc == 0
    assert "predicted teff, logg for 30 stars" in capsys.readouterr().out
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["source_id"][...], ds.test.source_id)  # one row per star, input order
        teff, logg_err = f["teff"][...], f["logg_error"][...]
    keep = [j for j, n in enumerate(ds.vocab.names) if n not in ("teff", "logg")]  # requested tokens are not inputs
    expected = model.perceive(ds.test.values[:, keep], [ds.vocab.names[j] for j in keep]).request(["teff", "logg"])
    np.testing.assert_allclose(teff, expected["teff"], rtol=1e-6)
    np.testing.assert_allclose(logg_err, expected["logg_error"], rtol=1e-6)


def test_csv_input_with_errors_ids_and_missing_cells(setup):
    root, model, _ = setup
    path = root / "stars.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source_id", "s0", "s3", "s3_error", "jh"])
        w.writerows([[11, 1.0, 0.9, 0.01, 0.5], [12, "", 1.1, "", 0.4], [13, "", "", "", ""], [14, 1.2, 1.0, 0.02, 0.6]])
    out = root / "pred.csv"
    rc = main(["--model", str(root / "model"), "--input", str(path), "--request", "m_h", "--output", str(out),
               "--read-rows", "3", "--no-progress"])
    assert rc == 0
    cols = read_csv_columns(out)
    assert cols["source_id"].tolist() == [11, 12, 13, 14]
    assert cols["prior_only"].tolist() == [0, 0, 1, 0]
    values = np.array([[1.0, 0.9, 0.5], [np.nan, 1.1, 0.4], [np.nan] * 3, [1.2, 1.0, 0.6]])
    expected = model.perceive(values, ["s0", "s3", "jh"]).request(["m_h"])
    np.testing.assert_allclose(cols["m_h"], expected["m_h"], rtol=1e-6)
    assert np.isfinite(cols["m_h_error"]).all()


def test_bad_inputs_fail_with_a_clear_message(setup, capsys):
    root, _, _ = setup
    bad = root / "bad.csv"
    bad.write_text("source_id,s0,jh\n1,1.0,0.5\n2,warm,0.4\n")
    args = ["--model", str(root / "model"), "--request", "teff", "--no-progress"]
    assert main(args + ["--input", str(bad), "--output", str(root / "o.csv")]) == 2
    assert "non-numeric value 'warm' in column 's0', data row 2" in capsys.readouterr().err
    unknown = root / "unknown.csv"
    unknown.write_text("s0,jhh\n1.0,0.5\n")
    assert main(args + ["--input", str(unknown), "--output", str(root / "o.csv")]) == 2
    assert "closest valid names: ['jh']" in capsys.readouterr().err
    assert main(["--model", str(root / "model"), "--request", "tef", "--input", str(bad), "--output",
                 str(root / "o.csv")]) == 2
    assert "closest valid names: ['teff']" in capsys.readouterr().err
    assert not (root / "o.csv").exists()  # nothing half-written


def test_gaia_archive_rows(tmp_path, capsys):
    source = SHARED / "realdata" / "gaiaxpy_archive_rows" / "XP_CONTINUOUS_RAW.csv"
    if not source.is_file():
        pytest.skip(f"shared real data not found at {source}")
    vocab = paper_vocabulary()
    params = init_params(StellarPerceptron(CONFIG, vocab.size), jax.random.PRNGKey(2))
    model_dir = StellarModel.from_params(params, CONFIG, vocab).save(tmp_path / "paper_model")
    args = ["--model", str(model_dir), "--request", "teff,logg,m_h", "--no-progress", "--overflow", "keep_informative"]
    # The archive's XP table lacks the G magnitude needed for the flux normalisation: a clear error.
    assert main(args + ["--input", str(source), "--output", str(tmp_path / "o.csv")]) == 2
    assert "phot_g_mean_mag" in capsys.readouterr().err
    # Joined with G (as a user would from gaia_source), it predicts one row per archive row.
    with open(source, newline="") as f:
        rows = list(csv.reader(f))
    joined = tmp_path / "xp_with_g.csv"
    with open(joined, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(rows[0] + ["phot_g_mean_mag"])
        w.writerows(r + ["15.0"] for r in rows[1:])
    assert main(args + ["--input", str(joined), "--output", str(tmp_path / "o.csv")]) == 0
    cols = read_csv_columns(tmp_path / "o.csv")
    assert len(cols["teff"]) == len(rows) - 1 and np.isfinite(cols["teff"]).all()
    assert cols["source_id"].tolist() == [float(r[0]) for r in rows[1:]]


def test_the_shipped_model_answers_a_real_archive_star_with_no_option(tmp_path):
    """18 Sco (a solar twin) from Gaia DR3 archive rows: its whole XP spectrum fits the shipped model's context, so
    the predict command needs no --overflow option, and the answer agrees with the literature within 2 sigma
    (Teff 5810 K, logg 4.44, [Fe/H] +0.05; the 18Sco file's README)."""
    source = SHARED / "realdata" / "gaiaxpy_archive_rows" / "18Sco-XP-spectra.csv"
    if not source.is_file():
        pytest.skip(f"shared real data not found at {source}")
    out = tmp_path / "18sco.csv"
    assert main(["--model", "small", "--input", str(source), "--request", "teff,logg,m_h", "--output", str(out),
                 "--no-progress"]) == 0
    cols = read_csv_columns(out)
    assert len(cols["teff"]) == 1 and cols["n_out_of_range"][0] == 0
    for name, literature in (("teff", 5810.0), ("logg", 4.44), ("m_h", 0.05)):
        assert abs(cols[name][0] - literature) < 2 * cols[f"{name}_error"][0], (name, cols[name][0], cols[f"{name}_error"][0])
