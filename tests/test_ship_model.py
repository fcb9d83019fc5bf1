"""scripts/ship_model.py: a training workdir becomes a saved model with its TRAINING.md and the inversion prior
(fitted on the train split) in its metadata, which invert(prior="auto") then uses without any data set."""

import json
import pathlib
import sys

import numpy as np

from stellarfm_jax.config import apply_overrides, load_config
from stellarfm_jax.data import read_dataset, write_dataset
from stellarfm_jax.inference import StellarModel
from stellarfm_jax.inversion import InversionPrior, auto_prior
from stellarfm_jax.synthetic import make_synthetic_dataset
from stellarfm_jax.train import fit

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_ship_writes_the_model_its_training_record_and_the_inversion_prior(tmp_path):
    sys.path.insert(0, str(REPO / "scripts"))
    from ship_model import ship

    data_file = write_dataset(tmp_path / "stars.h5", make_synthetic_dataset(300, seed=1))  # test_train's program
    data = read_dataset(data_file)
    fit(apply_overrides(load_config("tiny"), ["train.epochs=2"]), data, workdir=tmp_path / "run", log=lambda *a: None)
    dest = ship(tmp_path / "run", name="tiny_test", data=str(data_file), dest=tmp_path / "shipped")

    meta = json.loads((dest / "model.json").read_text())["metadata"]
    assert meta["shipped_name"] == "tiny_test" and meta["epochs_trained"] == 2 and not meta["interim"]
    assert "Final: all 2 planned epochs" in (dest / "TRAINING.md").read_text()
    # The stored prior is the one fitted on the train split (same EM, same seed), and "auto" uses it.
    model = StellarModel.load(dest)
    stored = auto_prior(model)
    expected = InversionPrior.fit(data.train.values, model.vocab, stored.names)
    np.testing.assert_allclose(stored.means, expected.means, rtol=1e-6)
    np.testing.assert_allclose(stored.weights, expected.weights, rtol=1e-6)
    assert stored.info["source"] == "train split of stars.h5"
    # The model error: the residual covariance of the observed tokens (positive definite) with a floor per free
    # token, which invert(model_error="auto") uses; refreshing it in place keeps the parameters and the record.
    from stellarfm_jax.evaluation.inversion import observed_names
    from stellarfm_jax.inversion import ModelError, resolve_model_error

    error = ModelError.from_dict(meta["inversion_model_error"])
    names = observed_names(model.vocab)
    assert error.names == tuple(names) and error.free == stored.names
    assert np.all(np.linalg.eigvalsh(error.covariance) > 0) and np.all(error.floor >= 0)
    assert error.info["floor_calibration"]["n_stars"] > 0
    used, text = resolve_model_error(model, names)
    np.testing.assert_array_equal(used.covariance, error.covariance)
    assert text.startswith(f"covariance of {len(names)} tokens")
    from ship_model import refresh_inversion

    before = json.loads((dest / "model.json").read_text())
    refresh_inversion(dest, data=str(data_file))
    after = json.loads((dest / "model.json").read_text())
    assert after["checksums"] == before["checksums"] and "inversion_refreshed" in after["metadata"]
    assert (dest / "TRAINING.md").read_text().startswith("# Shipped model `tiny_test`")
    np.testing.assert_allclose(after["metadata"]["inversion_model_error"]["covariance"], error.covariance)


def test_a_run_started_from_another_model_records_both_stages(tmp_path):
    """train.init_from: the shipped record names the model the run started from (its checksum, epochs, time and
    command) and the epochs and time in all."""
    sys.path.insert(0, str(REPO / "scripts"))
    from ship_model import ship

    data_file = write_dataset(tmp_path / "stars.h5", make_synthetic_dataset(300, seed=1))
    data = read_dataset(data_file)
    tiny = load_config("tiny")
    first = fit(apply_overrides(tiny, ["train.epochs=2"]), data, workdir=tmp_path / "run", log=lambda *a: None)
    fit(apply_overrides(tiny, ["train.epochs=1", f"train.init_from={tmp_path / 'run'}"]), data,
        workdir=tmp_path / "stage2", log=lambda *a: None)
    dest = ship(tmp_path / "stage2", name="tiny_test", data=str(data_file), dest=tmp_path / "shipped")
    meta = json.loads((dest / "model.json").read_text())["metadata"]
    start = meta["started_from"]
    assert start["epochs_trained"] == 2 and start["spec"] == str(tmp_path / "run")
    seconds = sum(h["epoch_seconds"] for h in first.history)
    assert abs(start["training_seconds"] - seconds) < 1e-6
    import hashlib

    assert start["params_sha256"] == hashlib.sha256((tmp_path / "run" / "model" / "params.npz").read_bytes()).hexdigest()
    assert "In all: 3 epochs" in (dest / "TRAINING.md").read_text()
