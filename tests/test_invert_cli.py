"""The invert command (issue 15): one row per input star in input order, the fitted values, errors, correlations,
flags and reasons; bad input rejected with one ``error:`` line."""

from __future__ import annotations

import csv

import jax
import numpy as np
import pytest

from stellarfm_jax.config import ModelConfig
from stellarfm_jax.inference import StellarModel
from stellarfm_jax.invert import main
from stellarfm_jax.nn.model import StellarPerceptron, init_params
from stellarfm_jax.synthetic import make_synthetic_dataset

FREE = ["teff", "logg", "m_h"]
QUICK = ["--steps", "20", "--starts", "2", "--no-progress", "--prior", "none"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    ds = make_synthetic_dataset(200, seed=5)
    cfg = ModelConfig(embedding_dim=16, encoder_heads=4, encoder_dense=32, decoder_heads=4, decoder_dense=64,
                      dropout=0.0, context_length=16)
    params = init_params(StellarPerceptron(cfg, ds.vocab.size), jax.random.PRNGKey(1))
    model = StellarModel.from_params(params, cfg, ds.vocab)
    root = tmp_path_factory.mktemp("invert_cli")
    model.save(root / "model")
    names = [n for n, g in zip(ds.vocab.names, ds.vocab.groups) if g == "spectrum"]
    cols = ds.vocab.ids(names) - 1
    values, errors = ds.test.values[:4][:, cols].astype(float), ds.test.errors[:4][:, cols].astype(float)
    values[2] = np.nan  # a star without any observed value
    path = root / "stars.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["source_id"] + names + [f"{n}_error" for n in names])
        for i in range(4):
            w.writerow([1000 + 7 * (3 - i)] + ["" if np.isnan(v) else repr(float(v)) for v in values[i]]
                       + [repr(float(e)) for e in errors[i]])
    return StellarModel.load(root / "model"), root, names, values, errors


def read_csv(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return rows


def test_one_row_per_star_in_input_order_matching_the_library(setup, capsys):
    model, root, names, values, errors = setup
    out = root / "fits.csv"
    assert main(["--model", str(root / "model"), "--input", str(root / "stars.csv"), "--output", str(out),
                 "--free", ",".join(FREE)] + QUICK) == 0
    assert "inverted 4 stars" in capsys.readouterr().out
    rows = read_csv(out)
    assert [int(r["source_id"]) for r in rows] == [1021, 1014, 1007, 1000]
    assert set(rows[0]) >= {"teff", "teff_error", "corr_teff_logg", "corr_logg_m_h", "converged", "at_edge",
                            "hessian_regularised", "flagged", "reason", "nll", "objective"}
    assert rows[2]["reason"] == "no observed value" and rows[2]["teff"] == "nan" and rows[2]["flagged"] == "1"
    # The rows with data are the library's answer for the same stars (same settings, flat prior).
    keep = [0, 1, 3]
    lib = model.invert(values[keep], names, errors[keep], free=FREE, prior=None, steps=20, n_starts=2)
    for k, i in enumerate(keep):
        for j, name in enumerate(FREE):
            np.testing.assert_allclose(float(rows[i][name]), lib.values[k, j], rtol=1e-6)
            np.testing.assert_allclose(float(rows[i][f"{name}_error"]), lib.errors[k, j], rtol=1e-5)
            assert np.isfinite(float(rows[i][f"{name}_error"]))  # never NaN: a ridge instead, flagged
        assert rows[i]["reason"] == lib.reason[k]
        assert (rows[i]["flagged"] == "1") == bool(lib.reason[k])
    # HDF5 output: the same values, text reasons.
    import h5py

    assert main(["--model", str(root / "model"), "--input", str(root / "stars.csv"), "--output", str(root / "f.h5"),
                 "--free", ",".join(FREE)] + QUICK) == 0
    with h5py.File(root / "f.h5") as f:
        np.testing.assert_array_equal(f["source_id"][:], [1021, 1014, 1007, 1000])
        np.testing.assert_allclose(f["teff"][:][keep], lib.values[:, 0], rtol=1e-6)
        assert f["reason"][2].decode() == "no observed value"


@pytest.mark.parametrize("edit, args, message", [
    (lambda rows: rows[1].__setitem__(1, "hot"), [], "non-numeric value 'hot'"),
    (None, ["--free", "teff,lgg"], "closest valid names"),
    (None, ["--free", "s0,logg"], "also observed"),
    (None, ["--steps", "0"], "--steps must be >= 1"),
    (None, ["--newton-steps", "-1"], "--newton-steps must be >= 0"),
    (None, ["--prior", "missing.json"], "inversion prior file not found"),
    (None, ["--model-error", "missing.json"], "inversion model error file not found"),
])
def test_bad_input_gives_one_error_line(setup, tmp_path, capsys, edit, args, message):
    _, root, *_ = setup
    src = root / "stars.csv"
    if edit is not None:
        with open(src, newline="") as f:
            rows = list(csv.reader(f))
        edit(rows)
        src = tmp_path / "bad.csv"
        with open(src, "w", newline="") as f:
            csv.writer(f).writerows(rows)
    base = ["--model", str(root / "model"), "--input", str(src), "--output", str(tmp_path / "o.csv"),
            "--no-progress", "--prior", "none", "--free", "teff,logg,m_h"]
    assert main(base + args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0], err
    assert not (tmp_path / "o.csv").exists()


def test_output_equal_to_input_is_refused(setup, capsys):
    _, root, *_ = setup
    assert main(["--model", str(root / "model"), "--input", str(root / "stars.csv"), "--output",
                 str(root / "stars.csv"), "--no-progress"]) == 2
    assert "is the input file" in capsys.readouterr().err
