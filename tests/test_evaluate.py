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
    np.testing.assert_allclose(r["median_abs_fractional_residual_per_wavelength"], 0.1)
    z = (0.1 * obs / np.sqrt(0.05)).ravel()  # z = (pred - obs) / sqrt(sigma^2 + err^2) = 0.1 obs / sqrt(0.05)
    assert r["flux_z_robust_std"] == pytest.approx(1.482602218505602 * np.median(np.abs(z - np.median(z))))
    assert r["flux_z_rms"] == pytest.approx(np.sqrt(np.mean(z**2)))


def test_star_level_z_separates_whole_star_offsets_from_token_noise():
    rng = np.random.default_rng(3)
    n, w = 4000, 50
    waves = np.linspace(400.0, 1000.0, w)
    x = (waves - waves.mean()) / waves.std()
    # every star: its own offset and tilt (10% of stars with 5x larger ones), plus token noise of std 0.3
    scale = np.where(rng.random(n) < 0.1, 5.0, 1.0)
    z = scale[:, None] * (rng.normal(size=(n, 1)) + 0.5 * rng.normal(size=(n, 1)) * x) + 0.3 * rng.normal(size=(n, w))
    z[rng.random((n, w)) < 0.1] = np.nan  # tokens not measured
    z[0, 2:] = np.nan  # a star with 2 tokens cannot be fitted: it leaves no within-star remainder
    r = ev.star_level_z(z, waves)
    # least squares with 2 parameters leaves (k - 2) / k of the noise variance for a star of k tokens (k ~ 45)
    assert r["flux_z_robust_std_within_star"] == pytest.approx(0.3 * np.sqrt(43 / 45), rel=0.03)
    assert r["flux_z_rms_within_star"] == pytest.approx(0.3 * np.sqrt(43 / 45), rel=0.03)
    rms = np.array([np.sqrt(np.nanmean(row**2)) for row in z])
    big = rms > 2.0
    assert r["share_stars_rms_z_above"] == pytest.approx(big.mean())
    assert r["share_z2_from_those_stars"] == pytest.approx(np.nansum(z[big] ** 2) / np.nansum(z**2))
    assert r["star_rms_z_percentiles"]["50"] == pytest.approx(np.percentile(rms, 50))
    # and spectrum_residuals reports it for its z-scores
    obs = np.ones((n, w))
    res = ev.spectrum_residuals(obs + z, np.ones((n, w)), obs, np.zeros((n, w)), waves)
    assert res["flux_z_robust_std_within_star"] == pytest.approx(r["flux_z_robust_std_within_star"])


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


# ----------------------------------------------------------------------------- the task registry
class _FakeModel:
    """Just what run_evaluation and the labels -> spectrum task ask of a model: a vocabulary, metadata and
    (``flux_of``: labels [N, V] -> flux [N, F], ``sigma``) predictions for the flux tokens."""

    context_length = 8
    metadata = {"epochs_trained": 3}

    def __init__(self, vocab, flux_of=None, sigma=0.0):
        self.vocab, self.flux_of, self.sigma = vocab, flux_of, sigma

    def perceive(self, values, names, chunk_size=None):
        assert list(names) == list(self.vocab.names)
        return _FakePerception(self, np.asarray(values, np.float64))


class _FakePerception:
    def __init__(self, model, values):
        self.model, self.values = model, values

    def request(self, names, progress=False, **options):
        flux_names = self.model.vocab.group_names("spectrum")
        flux = self.model.flux_of(self.values)
        out = {}
        for n in names:
            out[n] = flux[:, flux_names.index(n)]
            out[f"{n}_error"] = np.full(len(flux), self.model.sigma)
        return out


def _tiny_dataset(n=60, seed=0):
    """Five labels and 6 flux tokens f400..f900 that depend on teff and logg exactly (no noise); a quarter of the
    stars without alpha_m, a few with logebv at the data's -7 floor."""
    from stellarfm_jax.data.dataset import Dataset

    flux_names = [f"f{w}" for w in range(400, 901, 100)]
    vocab = Vocabulary.unit(flux_names + ["teff", "logg", "m_h", "alpha_m", "logebv"],
                            groups=["spectrum"] * 6 + ["label"] * 5)
    rng = np.random.default_rng(seed)

    def split(k):
        labels = np.stack([rng.uniform(4000, 6000, k), rng.uniform(1, 5, k), rng.uniform(-1, 0.3, k),
                           rng.uniform(0, 0.3, k), rng.uniform(-4, 0, k)], axis=1)
        labels[: k // 4, 3] = np.nan
        labels[k // 4: k // 4 + 3, 4] = -7.0
        values = np.concatenate([_flux_of_labels(labels), labels], axis=1)
        return Split(values, np.full(values.shape, 0.01), np.arange(k))

    return Dataset(vocab, split(n), split(n // 2), split(n))


def _flux_of_labels(labels):
    w = np.linspace(0.4, 0.9, 6)
    return 1.0 + np.outer(labels[:, 0] / 5000.0, w) + 0.1 * labels[:, 1:2]


def _dummy_task(calls):
    from stellarfm_jax.evaluation import Task

    def run(ctx):
        calls.append(ctx.split)
        return {"n": len(ctx.data), "first_train_star": float(ctx.dataset.train.values[0, 0])}

    def figure(ctx, res, out):
        (out / "dummy.txt").write_text(str(res["n"]))

    return Task("dummy", run=run, figures=figure,
                section=lambda m: ["## Dummy", "", f"dummy stars: {m['dummy']['n']}", ""],
                summary=lambda m: [f"dummy: {m['dummy']['n']} stars"])


def test_a_registered_task_shows_up_in_metrics_report_and_summary(tmp_path):
    from stellarfm_jax.evaluation import registry

    data = _tiny_dataset()
    calls = []
    reg = list(registry.TASKS)
    ev.register(_dummy_task(calls), reg)
    assert ev.task_names(reg)[-1] == "dummy" and ev.task_names(reg)[:-1] == ev.task_names()  # built-ins untouched
    with pytest.raises(ValueError, match="registered already"):
        ev.register(_dummy_task(calls), reg)
    settings = ev.EvalSettings(tasks=("dummy",), max_stars=25)
    m = ev.run_evaluation(_FakeModel(data.vocab), data, "val", tmp_path, settings, log=lambda *a: None, registry=reg)
    assert calls == ["val"] and m["tasks"] == ["dummy"]
    assert m["dummy"] == {"n": 25, "first_train_star": pytest.approx(float(data.train.values[0, 0]))}
    assert set(m["seconds"]) == {"dummy", "total", "figures"}
    assert json.loads((tmp_path / "metrics.json").read_text())["dummy"]["n"] == 25
    report = (tmp_path / "report.md").read_text()
    assert "## Dummy\n\ndummy stars: 25\n" in report and "## Spectra" not in report  # only the selected task
    assert report == ev.render_report(m, reg)
    assert ev.summary_lines(m, reg) == ["dummy: 25 stars"]
    assert (tmp_path / "dummy.txt").read_text() == "25"


def test_task_selection():
    from stellarfm_jax.evaluation import Task, registry

    names = ev.task_names()
    assert names[:3] == ["spectra_to_labels", "xgboost_experts", "headline"] and "emulator" in names
    default = [t.name for t in ev.select_tasks(ev.EvalSettings())]
    assert "xgboost_experts" in default and "emulator" in default
    assert "inversion" not in [t.name for t in ev.select_tasks(ev.EvalSettings.quick())]  # off in --quick
    off = [t.name for t in ev.select_tasks(ev.EvalSettings(xgboost=False, emulator=False))]
    assert off == [n for n in default if n not in ("xgboost_experts", "emulator")]
    # An explicit list runs in registry order, whatever its order.
    chosen = ev.select_tasks(ev.EvalSettings(tasks=("kiel_diagram", "labels_to_spectra")))
    assert [t.name for t in chosen] == ["labels_to_spectra", "kiel_diagram"]
    with pytest.raises(ValueError, match="unknown evaluation task.*'nope'"):
        ev.select_tasks(ev.EvalSettings(tasks=("nope",)))
    with pytest.raises(ValueError, match="'headline' needs task.*spectra_to_labels"):
        ev.select_tasks(ev.EvalSettings(tasks=("headline",)))
    with pytest.raises(ValueError, match="'xgboost_experts' is selected but switched off: EvalSettings.xgboost"):
        ev.select_tasks(ev.EvalSettings(tasks=("xgboost_experts",), xgboost=False))
    with pytest.raises(ValueError, match="sequence of task names"):
        ev.EvalSettings(tasks="emulator")
    reg = []
    with pytest.raises(ValueError, match="requires \\['a'\\]"):
        ev.register(Task("b", run=None, requires=("a",)), reg)
    assert registry.TASKS[0].name == "spectra_to_labels"


class _FakeEmulator:
    label_names = ("teff", "logg", "m_h", "alpha_m", "logebv")
    flux_names = tuple(f"f{w}" for w in range(400, 901, 100))

    def __init__(self, n_train):
        from stellarfm_jax.evaluation.emulator import EmulatorConfig

        self.config = EmulatorConfig(hidden=(7,))
        self.info = {"epochs": 4, "best_epoch": 2, "best_val_nll": -1.0, "seconds": 0.5, "n_train": n_train,
                     "n_val": 11, "seed": 0}


def test_labels_to_spectra_with_the_emulator_side_by_side(tmp_path, monkeypatch):
    """A model 10% too bright everywhere against an emulator 5% too faint: the section, the metrics and the figure
    report both on the emulator's stars (all five labels, logebv above the floor), the model also on all stars."""
    from stellarfm_jax.evaluation import emulator as em

    data = _tiny_dataset(n=80)
    fits = []

    def fake_fit(vocab, train_values, train_errors, val_values, val_errors, config, seed):
        fits.append((len(train_values), len(val_values), config.max_epochs, seed))
        return _FakeEmulator(len(train_values))

    def fake_emulate(emulator, labels):
        assert np.isfinite(labels).all()
        return 0.95 * _flux_of_labels(labels), np.full((len(labels), 6), 0.02)

    monkeypatch.setattr(em, "fit_emulator", fake_fit)
    monkeypatch.setattr(em, "emulate", fake_emulate)
    model = _FakeModel(data.vocab, lambda v: 1.1 * _flux_of_labels(v[:, 6:]), sigma=0.05)
    settings = ev.EvalSettings(tasks=("labels_to_spectra", "emulator"), emulator_max_train=50,
                               emulator_config=(("max_epochs", 3),), emulator_seed=4)
    m = ev.run_evaluation(model, data, "test", tmp_path, settings, log=lambda *a: None)
    assert fits == [(50, 40, 3, 4)]
    l2s, emu = m["labels_to_spectra"], m["emulator"]
    test = data.test
    with_labels = np.isfinite(test.values[:, 6:]).all(axis=1) & (test.values[:, 10] > -7)
    assert l2s["n_stars"] == 80 and emu["labels_to_spectra"]["n_stars"] == with_labels.sum() == 57
    assert emu["labels_to_spectra"]["n_stars_without_labels"] == 23
    assert emu["model_same_stars"]["n_stars"] == 57
    assert l2s["median_abs_fractional_residual"] == pytest.approx(0.1)
    assert emu["model_same_stars"]["median_abs_fractional_residual"] == pytest.approx(0.1)
    assert emu["labels_to_spectra"]["median_abs_fractional_residual"] == pytest.approx(0.05)
    # rtol 1e-6: the split stores float32 values (flux and labels each rounded to 6e-8 relative).
    np.testing.assert_allclose(emu["labels_to_spectra"]["median_abs_fractional_residual_per_wavelength"], 0.05, rtol=1e-6)
    np.testing.assert_allclose(emu["model_same_stars"]["median_abs_fractional_residual_per_wavelength"], 0.1, rtol=1e-6)
    obs = _flux_of_labels(test.values[with_labels, 6:])
    z_model = (0.1 * obs / np.sqrt(0.05**2 + 0.01**2)).ravel()
    z_emu = (-0.05 * obs / np.sqrt(0.02**2 + 0.01**2)).ravel()
    for key, z in (("model_same_stars", z_model), ("labels_to_spectra", z_emu)):
        assert emu[key]["flux_z_robust_std"] == pytest.approx(1.482602218505602 * np.median(np.abs(z - np.median(z))),
                                                              rel=1e-5)
    assert emu["comparison"] == {
        "model_median_abs_fractional_residual": pytest.approx(0.1),
        "emulator_median_abs_fractional_residual": pytest.approx(0.05),
        "model_flux_z_robust_std": pytest.approx(emu["model_same_stars"]["flux_z_robust_std"]),
        "emulator_flux_z_robust_std": pytest.approx(emu["labels_to_spectra"]["flux_z_robust_std"]),
        "model_at_most_max": False, "model_not_worse": False,
        "model_z_std_in_range": bool(0.8 <= emu["model_same_stars"]["flux_z_robust_std"] <= 1.25)}
    assert emu["fit"]["n_train"] == 50 and emu["fit"]["config"]["hidden"] == [7]
    report = (tmp_path / "report.md").read_text()
    assert "| model, the emulator's stars | 57 | 0.1 |" in report and "| emulator | 57 | 0.05 |" in report
    assert "not worse than the emulator's: False" in report and "fitted on 50 train stars" in report
    assert (tmp_path / "labels_to_spectra.png").stat().st_size > 1000
    summary = " ".join(ev.summary_lines(m))
    assert "model 0.1" in summary and "emulator 0.05" in summary


def test_the_inversion_task_gets_the_emulator_and_reports_its_table(tmp_path, monkeypatch):
    from stellarfm_jax.evaluation import emulator as em, inversion

    data = _tiny_dataset(n=40)
    fitted = []
    monkeypatch.setattr(em, "fit_emulator", lambda *a, **k: fitted.append(_FakeEmulator(7)) or fitted[-1])
    monkeypatch.setattr(em, "emulate", lambda e, labels: (np.ones((len(labels), 6)), np.ones((len(labels), 6))))
    calls = []

    def fake_inversion_task(model, dataset, split_data, *, n_stars, emulator, log):
        calls.append((model, dataset, len(split_data), n_stars, emulator))
        stats = {n: {"scatter": s, "bias": 0.5 * s, "z_std": 1.0, "coverage68": 0.7, "coverage95": 0.95}
                 for n, s in (("teff", 100.0), ("logg", 0.25), ("m_h", 0.125))}
        fwd = {n: dict(v, scatter=2 * v["scatter"]) for n, v in stats.items()}
        return {"n_stars": n_stars, "free": ["teff", "logg", "m_h"], "prior": "flat", "seconds_per_star": 0.25,
                "flagged": 1, "flagged_fraction": 0.2, "flag_reasons": {"edge": 1}, "methods": {"inversion": stats,
                "forward": fwd}, "checks": {"teff": {"within_1.25x_forward": True}}, "arrays": {"x": np.zeros(3)}}

    monkeypatch.setattr(inversion, "inversion_task", fake_inversion_task)
    monkeypatch.setattr(inversion, "inversion_figure", lambda res, path: path.write_text(str(res["n_stars"])))
    model = _FakeModel(data.vocab)
    settings = ev.EvalSettings(tasks=("emulator", "inversion"), inversion_stars=5)
    m = ev.run_evaluation(model, data, "test", tmp_path, settings, log=lambda *a: None)
    assert calls == [(model, data, 40, 5, fitted[0])]  # the emulator task's emulator is the χ² reference
    assert m["inversion"]["methods"]["inversion"]["teff"]["scatter"] == 100.0 and "arrays" not in m["inversion"]
    report = (tmp_path / "report.md").read_text()
    assert "| inversion | teff | 100 | 50 | 1 | 0.700 | 0.950 |" in report  # inversion_table's row
    assert "5 stars with APOGEE" in report and "1 flagged (20.0%; edge: 1)" in report
    assert "teff: within_1.25x_forward True" in report
    assert (tmp_path / "inversion.png").read_text() == "5"
    assert ev.summary_lines(m)[-1] == ("inversion of 5 spectra, scatter vs APOGEE: teff 100 (forward 200), "
                                       "logg 0.25 (forward 0.5), m_h 0.125 (forward 0.25)")
    with pytest.raises(ValueError, match="'inversion' is selected but switched off: EvalSettings.inversion_stars is 0"):
        ev.select_tasks(ev.EvalSettings.quick(tasks=("inversion",)))

    # When the inversion observes more than the emulator task's outputs (e.g. the spectrum and jh), its χ² reference
    # is an emulator of exactly the observed tokens, fitted with the same settings.
    observed = list(_FakeEmulator.flux_names) + ["logebv"]
    monkeypatch.setattr(inversion, "observed_names", lambda vocab: observed)
    kwargs = []
    monkeypatch.setattr(em, "fit_emulator", lambda *a, **k: kwargs.append(k) or fitted.append(_FakeEmulator(7)) or fitted[-1])
    calls.clear()
    ev.run_evaluation(model, data, "test", tmp_path / "again", settings, log=lambda *a: None)
    assert [k.get("flux_names") for k in kwargs] == [None, observed]
    assert calls == [(model, data, 40, 5, fitted[-1])]


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


def test_whole_real_spectra_and_colours_fit_the_shipped_models_context(real):
    """Every test star's whole XP spectrum plus its colours is answered by perceive with the default options
    (no overflow error): the shipped schema's 57 flux tokens + 3 colours fit the 64-slot context."""
    model, _, stars = real
    names = list(model.vocab.group_names("spectrum")) + list(model.vocab.group_names("colour"))
    values = stars.values[:, model.vocab.ids(names) - 1]
    assert len(names) <= model.context_length and (np.isfinite(values).sum(axis=1) == len(names)).mean() > 0.9
    res = model.perceive(values, names).request(["teff", "logg", "m_h"])
    assert np.isfinite(res["teff"]).all() and np.isfinite(res["teff_error"]).all()


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
    n_flux = len(model.vocab.group_names("spectrum"))
    assert len(l2s["median_fractional_residual"]) == n_flux and l2s["n_stars"] > 150
    s2s = ev.spectrum_to_spectrum(model, stars)
    assert len(s2s["blue_from_red"]["requests"]) + len(s2s["red_from_blue"]["requests"]) == n_flux
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
    # The emulator next to the model on the same stars (quick: 4,000 train stars, 25 epochs at most).
    emu = metrics["emulator"]
    assert 1000 < emu["fit"]["n_train"] <= 4000 and emu["fit"]["epochs"] <= 25
    assert emu["model_same_stars"]["n_stars"] == emu["labels_to_spectra"]["n_stars"] > 100
    assert emu["labels_to_spectra"]["median_abs_fractional_residual"] < 0.1  # a working emulator: ~4% per token
    assert len(emu["labels_to_spectra"]["median_abs_fractional_residual_per_wavelength"]) == \
        len(metrics["labels_to_spectra"]["wavelength_nm"])
    assert "| emulator |" in report and "inversion" not in metrics["tasks"]  # no inversion in --quick
    out_text = capsys.readouterr().out
    assert "| xp_colours | teff |" in out_text and "vs emulator" in out_text


def test_evaluate_cli_rejects_a_missing_model(tmp_path, capsys):
    from stellarfm_jax.evaluate import main

    assert main(["--model", str(tmp_path / "nope"), "--out", str(tmp_path / "r")]) == 2
    assert "no shipped model" in capsys.readouterr().err


def test_run_evaluation_refuses_a_data_set_of_another_schema():
    from stellarfm_jax import pretrained
    from stellarfm_jax.synthetic import make_synthetic_dataset

    with pytest.raises(ValueError, match="does not match the data set"):
        ev.run_evaluation(pretrained("small"), make_synthetic_dataset(200))
