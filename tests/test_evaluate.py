"""Evaluation suite: the statistics against hand-computed values, input masking, the XGBoost expert on a known
function, the extinction-curve recovery on an exact fake model, and every task on the shipped model with a few
hundred real test stars (skipped when the embedded data set is unavailable)."""

import json
import math
from statistics import NormalDist

import numpy as np
import pytest

from stellarfm_jax import evaluation as ev
from stellarfm_jax.data.dataset import Split
from stellarfm_jax.evaluation.physics import synthetic_g_extinction
from stellarfm_jax.vocab import Vocabulary


# ----------------------------------------------------------------------------- statistics
def test_residual_stats_by_hand():
    truth = np.array([0.0, 1.0, 2.0, 3.0, 4.0, np.nan])
    pred = truth + np.array([-2.0, -1.0, 0.0, 1.0, 2.0, 5.0])  # residuals -2..2 (+ a star with no truth)
    s = ev.residual_stats(pred, truth)
    assert s["n"] == 5
    assert s["bias"] == 0.0
    assert s["scatter"] == pytest.approx(1.0 / NormalDist().inv_cdf(0.75))  # 1.4826 x MAD; MAD of (-2..2) is 1
    assert s["p16"] == pytest.approx(np.percentile([-2, -1, 0, 1, 2], 16))


def test_calibration_of_right_and_wrong_uncertainties():
    rng = np.random.default_rng(0)
    n = 200_000
    truth = rng.normal(size=n)
    sigma_model, sigma_label = 0.3, 0.4  # total 0.5
    pred = truth + rng.normal(scale=0.5, size=n)
    right = ev.calibration_stats(pred, np.full(n, sigma_model), truth, np.full(n, sigma_label))
    assert right["z_std"] == pytest.approx(1.0, abs=0.01)
    assert right["coverage68"] == pytest.approx(math.erf(1 / math.sqrt(2)), abs=0.005)
    assert right["z_rms"] == pytest.approx(1.0, abs=0.01)
    assert right["coverage95"] == pytest.approx(math.erf(2 / math.sqrt(2)), abs=0.003)
    # Ignoring the label error makes the model look over-confident: z std = 0.5 / 0.3.
    wrong = ev.calibration_stats(pred, np.full(n, sigma_model), truth)
    assert wrong["z_std"] == pytest.approx(0.5 / 0.3, rel=0.01)


def test_calibration_of_heavy_tailed_residuals_with_the_right_variance():
    """Laplace residuals whose sigma is their true std: rms z is 1, but the robust statistics (made for a
    Gaussian) read 0.73 and 0.76 (expected values from the Laplace distribution, computed independently)."""
    rng = np.random.default_rng(1)
    n = 400_000
    b = 0.5
    pred = rng.laplace(scale=b, size=n)
    s = ev.calibration_stats(pred, np.full(n, math.sqrt(2) * b), np.zeros(n))
    assert s["z_rms"] == pytest.approx(1.0, abs=0.01)
    # median |x| of Laplace(b) = b ln 2; robust std = 1.4826 b ln 2 / (sqrt(2) b)
    assert s["z_std"] == pytest.approx(1.4826 * math.log(2) / math.sqrt(2), abs=0.01)
    assert s["coverage68"] == pytest.approx(1 - math.exp(-math.sqrt(2)), abs=0.005)
    assert s["coverage95"] == pytest.approx(1 - math.exp(-2 * math.sqrt(2)), abs=0.005)


def test_spectrum_residuals_by_hand():
    obs = np.array([[1.0, 2.0, 4.0], [2.0, 2.0, 2.0]])
    pred = obs * 1.1
    sigma = np.full_like(obs, 0.1)
    err = np.full_like(obs, 0.2)
    r = ev.spectrum_residuals(pred, sigma, obs, err, [400.0, 500.0, 600.0])
    np.testing.assert_allclose(r["median_fractional_residual"], 0.1)
    np.testing.assert_allclose(r["scatter_fractional_residual"], 0.0, atol=1e-12)
    chi2_star = [np.mean((0.1 * obs[i]) ** 2 / (0.01 + 0.04)) for i in range(2)]
    assert r["median_chi2"] == pytest.approx(np.median(chi2_star))
    assert r["median_chi2_observed_errors_only"] == pytest.approx(np.median([np.mean((0.1 * o) ** 2 / 0.04) for o in obs]))


# ----------------------------------------------------------------------------- input sets
def _vocab(n_flux=20):
    names = [f"f{400 + 10 * k}" for k in range(n_flux)] + ["bprp", "jh", "jk", "teff", "logg", "m_h"]
    groups = ["spectrum"] * n_flux + ["colour"] * 3 + ["label"] * 3
    return Vocabulary.unit(names, groups=groups)


def test_masked_inputs_random_keeps_k_available_tokens():
    vocab = _vocab()
    rng = np.random.default_rng(1)
    values = rng.normal(size=(50, vocab.size))
    values[rng.random(values.shape) < 0.2] = np.nan
    pool = tuple(vocab.group_names("spectrum", "colour"))
    iset = ev.InputSet("r", "random", pool, random_count=8)
    out = ev.masked_inputs(vocab, values, iset, seed=3)
    pool_cols = vocab.ids(list(pool)) - 1
    kept = np.isfinite(out)
    assert not kept[:, np.setdiff1d(np.arange(vocab.size), pool_cols)].any()  # labels never given
    np.testing.assert_array_equal(kept.sum(axis=1), np.minimum(8, np.isfinite(values[:, pool_cols]).sum(axis=1)))
    np.testing.assert_array_equal(out[kept], values[kept])  # values untouched
    np.testing.assert_array_equal(np.isfinite(ev.masked_inputs(vocab, values, iset, seed=3)), kept)  # seeded
    assert not np.array_equal(np.isfinite(ev.masked_inputs(vocab, values, iset, seed=4)), kept)


def test_paper_input_sets():
    vocab = _vocab(n_flux=80)
    values = np.ones((10, vocab.size))
    errors = np.full((10, vocab.size), 0.01)
    noisy = [f"f{400 + 10 * k}" for k in (0, 1, 2, 77, 78, 79)]
    errors[:, vocab.ids(noisy) - 1] = 1.0
    sets = {s.key: s for s in ev.paper_input_sets(vocab, 64, values, errors, coarse_flux=10, least_informative=6)}
    assert len(sets["xp_colours"].names) == 64 and {"bprp", "jh", "jk"} <= set(sets["xp_colours"].names)
    assert len(sets["coarse"].names) == 13
    assert sets["random64"].random_count == 64 and len(sets["random64"].names) == 83
    assert list(sets["least_informative"].names) == noisy
    assert list(sets["least_informative_labels"].names) == noisy + ["teff", "logg", "m_h"]


# ----------------------------------------------------------------------------- XGBoost expert
def test_xgboost_expert_learns_a_known_function_with_missing_inputs():
    pytest.importorskip("xgboost")
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, size=(3000, 4)).astype(np.float32)
    y = 3 * x[:, 0] + np.sin(3 * x[:, 1])
    x[rng.random(x.shape) < 0.1] = np.nan
    y[::50] = np.nan  # unlabelled stars are left out of the fit
    fit = ev.fit_xgboost_expert(x[:2000], y[:2000], x[2000:2500], y[2000:2500],
                                {"num_boost_round": 400, "nthread": 1})
    pred = fit(x[2500:])
    ok = np.isfinite(y[2500:]) & np.isfinite(x[2500:, :2]).all(axis=1)
    assert 1 <= fit.rounds <= 400
    spread = ev.residual_stats(np.zeros(ok.sum()), y[2500:][ok])["scatter"]
    assert ev.residual_stats(pred[ok], y[2500:][ok])["scatter"] < 0.12 * spread
    assert ev.residual_stats(pred[ok], y[2500:][ok])["scatter"] < 0.25


# ----------------------------------------------------------------------------- extinction curve
def test_f99_reference_values():
    pytest.importorskip("extinction")
    a = ev.f99_extinction([440.0, 550.0], 1.0, 3.1)
    assert a[0] - a[1] == pytest.approx(1.0, abs=0.06)  # E(B-V) = A_B - A_V
    assert a[1] == pytest.approx(3.1, abs=0.1)  # A_V = R_V E(B-V)


def test_synthetic_g_extinction_of_a_grey_screen():
    w = np.linspace(340, 1010, 50)
    assert synthetic_g_extinction(w, np.exp(-w / 300), np.full(50, 0.7)) == pytest.approx(0.7)


class _ExactExtinctionModel:
    """A fake model whose spectra obey F99 exactly: flux / F_G with the G band as in synthetic_g_extinction."""

    context_length = 64

    def __init__(self, vocab, token_noise=None):
        self.vocab = vocab
        self.token_noise = token_noise  # per flux token: A_lambda x (1 + noise), a curve that is right on average

    def perceive(self, values, names):
        assert list(names) == ["teff", "logg", "m_h", "logebv"]
        return _Request(self, np.asarray(values, np.float64))


class _Request:
    def __init__(self, model, values):
        self.model, self.values = model, values

    def request(self, names):
        _, waves = ev.flux_tokens(self.model.vocab)
        out = {}
        flux = []
        for teff, _, _, logebv in self.values:
            f0 = (waves / 500.0) ** (-4) * np.exp(-teff / 2000.0 * waves / 500.0)  # any smooth positive SED
            a = ev.f99_extinction(waves, math.exp(logebv))
            if self.model.token_noise is not None:
                a = a * (1 + self.model.token_noise)
            f = f0 * 10 ** (-0.4 * a)
            flux.append(f / np.sum(waves * f))  # divided by the (photon-weighted) G flux
        flux = np.asarray(flux)
        for j, n in enumerate(names):
            out[n], out[f"{n}_error"] = flux[:, j], np.zeros(len(flux))
        return out


def test_extinction_curve_recovers_an_exact_f99_model():
    pytest.importorskip("extinction")
    vocab = Vocabulary.unit([f"f{w}" for w in range(340, 1020, 8)] + ["teff", "logg", "m_h", "logebv"],
                            groups=["spectrum"] * 85 + ["label"] * 4)
    res = ev.extinction_curve(_ExactExtinctionModel(vocab))
    assert res["deviation"] < 1e-3
    assert res["shape_deviation"] < 1e-3
    np.testing.assert_allclose(res["model_a_over_ebv"], res["f99_a_over_ebv"], rtol=1e-3)
    assert res["smooth_deviation"] < 1e-3 and res["token_scatter"] < 1e-3


def test_extinction_curve_separates_token_noise_from_a_wrong_curve():
    """A_lambda off by an independent 10% per token: the max deviation reads the noise, the smooth fit does not."""
    pytest.importorskip("extinction")
    vocab = Vocabulary.unit([f"f{w}" for w in range(340, 1020, 8)] + ["teff", "logg", "m_h", "logebv"],
                            groups=["spectrum"] * 85 + ["label"] * 4)
    noise = np.random.default_rng(0).normal(scale=0.1, size=85)
    res = ev.extinction_curve(_ExactExtinctionModel(vocab, noise))
    assert res["deviation"] > 0.15
    assert 0.06 < res["token_scatter"] < 0.14
    assert res["smooth_deviation"] < 0.08


def _f99_giants(vocab, n, ebv_noise=0.0, seed=0):
    """RGB stars whose G-normalised spectra obey F99 exactly; logebv optionally measured with noise in E(B-V)."""
    rng = np.random.default_rng(seed)
    _, waves = ev.flux_tokens(vocab)
    teff, logg, m_h = rng.uniform(4450, 5050, n), rng.uniform(1.9, 3.1, n), rng.uniform(-0.5, 0.3, n)
    ebv = rng.uniform(0.05, 1.5, n)
    f0 = (waves / 500.0) ** (-4) * np.exp(-np.outer(teff / 2000.0, waves / 500.0)) * (1 + 0.05 * m_h[:, None])
    f = f0 * 10 ** (-0.4 * np.stack([ev.f99_extinction(waves, e) for e in ebv]))
    flux = f / np.sum(waves * f, axis=1, keepdims=True)
    measured = np.clip(ebv + rng.normal(scale=ebv_noise, size=n), 1e-3, None) if ebv_noise else ebv
    values = np.concatenate([flux, np.stack([teff, logg, m_h, np.log(measured)], axis=1)], axis=1)
    return Split(values, np.full(values.shape, np.nan), np.arange(n)), ebv, measured


def test_empirical_extinction_curve_of_f99_stars_and_of_a_noisy_label():
    pytest.importorskip("extinction")
    vocab = Vocabulary.unit([f"f{w}" for w in range(340, 1020, 8)] + ["teff", "logg", "m_h", "logebv"],
                            groups=["spectrum"] * 85 + ["label"] * 4)
    ext = ev.extinction_curve(_ExactExtinctionModel(vocab))
    exact, _, _ = _f99_giants(vocab, 3000)
    res = ev.empirical_extinction_curve(vocab, exact, ext)
    assert res["n_stars"] == 3000
    assert res["data_vs_f99_scale"] == pytest.approx(1.0, abs=0.01) and res["data_vs_f99_shape"] < 0.01
    assert res["model_vs_data_scale"] == pytest.approx(1.0, abs=0.01) and res["model_vs_data_shape"] < 0.01
    assert res["model_local_vs_data_scale"] == pytest.approx(1.0, abs=0.01)
    np.testing.assert_allclose(res["model_chord_vs_data_scale"], 1.0, atol=0.01)
    # Label noise flattens the slopes by the reliability cov(E, E_measured) / var(E_measured) (errors in variables).
    noisy, true_ebv, measured = _f99_giants(vocab, 20000, ebv_noise=0.3, seed=1)
    res = ev.empirical_extinction_curve(vocab, noisy, ext, max_ebv=np.inf)
    reliability = np.cov(true_ebv, measured)[0, 1] / np.var(measured, ddof=1)
    assert reliability < 0.8
    assert res["data_vs_f99_scale"] == pytest.approx(reliability, rel=0.03)
    assert res["data_vs_f99_shape"] < 0.02
    assert res["model_vs_data_scale"] == pytest.approx(1 / reliability, rel=0.03)


# ----------------------------------------------------------------------------- the shipped model on real stars
@pytest.fixture(scope="module")
def real():
    from stellarfm_jax import data as data_lib, pretrained

    try:
        dataset = data_lib.read_dataset(data_lib.default_dataset_path(pretrained("small").vocab.schema))
    except Exception as err:  # noqa: BLE001 - any failure to obtain the embedded data set means skip
        pytest.skip(f"embedded real data set unavailable: {err}")
    model = pretrained("small")
    return model, dataset, dataset.test.subset(np.arange(256))


def test_tasks_on_the_shipped_model(real):
    model, dataset, stars = real
    sets = ev.paper_input_sets(model.vocab, model.context_length, dataset.train.values, dataset.train.errors)
    res = ev.spectra_to_labels(model, stars, sets)
    assert set(res.metrics) == {s.key for s in sets}
    for key, per_label in res.metrics.items():
        for name in ("teff", "logg", "m_h"):
            m = per_label[name]
            assert m["n"] > 150 and np.isfinite(m["scatter"]) and 0 <= m["coverage68"] <= 1
    # The model sees the true labels in the last set: it must reproduce them far better than without them.
    assert res.metrics["least_informative_labels"]["teff"]["scatter"] < 0.5 * res.metrics["least_informative"]["teff"]["scatter"]

    nro = ev.never_requested_outputs(model, stars)
    assert {"bprp", "jk"} <= set(nro) and not any(nro["trained_as_output"].values())
    assert np.isfinite(nro["bprp"]["scatter"])

    l2s = ev.labels_to_spectra(model, stars)
    assert len(l2s["median_fractional_residual"]) == 85 and l2s["n_stars"] > 150
    s2s = ev.spectrum_to_spectrum(model, stars)
    assert len(s2s["blue_from_red"]["requests"]) + len(s2s["red_from_blue"]["requests"]) == 85
    assert set(s2s["blue_from_red"]["requests"]) == set(s2s["red_from_blue"]["inputs"])

    kiel = ev.kiel_diagram(model, 11, 6)
    assert kiel["teff"].shape == (66,) and np.all(kiel["teff_error"] > 0)

    att = ev.attention_case(model)
    for block in att["decoder_blocks"]:
        np.testing.assert_allclose(np.sum(block["attention"], axis=-1), 1.0, rtol=1e-5)


def test_evaluate_cli_writes_a_report(real, tmp_path, capsys):
    pytest.importorskip("xgboost")
    pytest.importorskip("extinction")
    from stellarfm_jax.evaluate import main

    out = tmp_path / "report"
    assert main(["--model", "small", "--out", str(out), "--quick", "--max-stars", "200", "--no-xgboost"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_stars"] == 200 and metrics["model"]["epochs_trained"] >= 1
    report = (out / "report.md").read_text()
    assert report.startswith("# Evaluation report") and "| data vs F99 |" in report
    assert metrics["extinction_in_data"]["n_stars"] > 1000  # the train split's RGB stars
    for png in ("spectra_to_labels", "calibration", "labels_to_spectra", "spectrum_to_spectrum", "kiel_diagram",
                "extinction_curve", "attention", "never_requested_outputs", "spectral_sequences"):
        assert (out / f"{png}.png").stat().st_size > 1000
    assert "| xp_colours | teff |" in capsys.readouterr().out


def test_evaluate_cli_rejects_a_missing_model(tmp_path, capsys):
    from stellarfm_jax.evaluate import main

    assert main(["--model", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert "no shipped model" in capsys.readouterr().err


def test_run_evaluation_refuses_a_data_set_of_another_schema():
    from stellarfm_jax import pretrained
    from stellarfm_jax.evaluate import run_evaluation
    from stellarfm_jax.synthetic import make_synthetic_dataset

    with pytest.raises(ValueError, match="does not match the data set"):
        run_evaluation(pretrained("small"), make_synthetic_dataset(200))
