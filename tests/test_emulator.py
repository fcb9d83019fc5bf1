"""The Payne-style emulator and its chi^2 inversion (stellarfm_jax.evaluation.emulator) on synthetic problems with
known answers: reaching the noise level of a known smooth function, early stopping, determinism, the inversion of
spectra drawn from a known emulator (recovery and calibrated Laplace errors), flags instead of NaN, save/load."""

import math

import jax
import numpy as np
import pytest

from stellarfm_jax.cli import BadFileError, MissingFileError
from stellarfm_jax.evaluation import emulator as em
from stellarfm_jax.vocab import Vocabulary, robust_scale

N_FLUX = 16
LABELS = ("teff", "logg", "m_h")


def _true_flux(labels):
    """A smooth known function of 3 labels (standardised-looking physical values in [-1, 1]) -> [N, 16] flux."""
    a, b, c = labels[:, :1], labels[:, 1:2], labels[:, 2:3]
    j = np.arange(N_FLUX)[None, :] / N_FLUX
    return 2.0 + np.exp(0.6 * a * np.cos(3 * j)) + 0.5 * b * np.sin(4 * j + c) + 0.3 * c * j**2


def _noise_sigma(labels):
    """Known heteroscedastic noise: larger for large first label and towards the red end."""
    j = np.arange(N_FLUX)[None, :] / N_FLUX
    return 0.03 * (1.0 + 0.5 * (labels[:, :1] + 1.0)) * (1.0 + j)


def _synthetic(n, rng, with_errors):
    """values/errors [n, V] in the vocabulary order f0..f15, teff, logg, m_h; flux = known function + noise."""
    labels = rng.uniform(-1.0, 1.0, size=(n, 3))
    sigma = _noise_sigma(labels)
    flux = _true_flux(labels) + sigma * rng.normal(size=sigma.shape)
    values = np.concatenate([flux, labels], axis=1)
    errors = np.concatenate([sigma if with_errors else np.zeros_like(sigma), np.zeros_like(labels)], axis=1)
    return values, errors, labels, sigma


def _vocab(train_values):
    names = tuple(f"f{k}" for k in range(N_FLUX)) + LABELS
    groups = ("spectrum",) * N_FLUX + ("label",) * 3
    return Vocabulary.unit(names, groups=groups, schema="synthetic").with_statistics(train_values)


SMALL = em.EmulatorConfig(hidden=(64, 64), learning_rate=3e-3, batch_size=128, max_epochs=150, patience=30,
                          warmup_epochs=2, logebv_floor=None)
# Training runs with 500 stars share this recipe (and so one compilation).
TINY = em.EmulatorConfig(hidden=(16,), batch_size=256, max_epochs=3, patience=3, logebv_floor=None)


@pytest.fixture(scope="module")
def synthetic():
    rng = np.random.default_rng(0)
    train = _synthetic(4000, rng, with_errors=False)
    val = _synthetic(1000, rng, with_errors=False)
    test = _synthetic(2000, rng, with_errors=False)
    return _vocab(train[0]), train, val, test


@pytest.fixture(scope="module")
def fitted(synthetic):
    vocab, train, val, _ = synthetic
    return em.fit_emulator(vocab, train[0], train[1], val[0], val[1], label_names=LABELS, config=SMALL, seed=0)


def test_reaches_the_noise_level_of_a_known_function(synthetic, fitted):
    """Held-out stars: the residual / true noise has std within [0.97, 1.15] (a perfect emulator gives 1, with a
    sampling error of 1/sqrt(2 x 32,000) = 0.004 over 2,000 stars x 16 tokens; 1.15 allows an emulator error of
    0.57 noise sigma), and the emulator learnt the heteroscedastic noise itself (no errors were given): its sigma
    within 10% of the true one (median ratio) and its z-scores' robust std within [0.92, 1.08] (sampling error
    ~0.007)."""
    vocab, _, _, (values, _, labels, sigma) = synthetic
    mean, pred_sigma = em.emulate(fitted, labels)
    resid = mean - values[:, :N_FLUX]
    assert 0.97 <= np.std(resid / sigma) <= 1.15
    ratio = np.median(pred_sigma / sigma)
    assert abs(ratio - 1.0) < 0.10
    # the sigma follows the noise's dependence on the first label, not just its average
    hi, lo = labels[:, 0] > 0.5, labels[:, 0] < -0.5
    true_ratio = np.median(sigma[hi]) / np.median(sigma[lo])
    assert true_ratio > 1.4  # the pattern the check relies on is there
    assert np.median(pred_sigma[hi]) / np.median(pred_sigma[lo]) == pytest.approx(true_ratio, rel=0.15)
    z = resid / pred_sigma
    assert 0.92 <= robust_scale(z.ravel()) <= 1.08
    # the emulator's mean is within half a noise sigma (rms) of the noiseless function
    assert np.std(mean - _true_flux(labels)) < 0.5 * np.mean(sigma)


def test_observed_errors_enter_the_variance(synthetic):
    """Given the true noise as observed errors, the emulator's own variance is left with (almost) nothing to
    explain: its sigma is below a third of the noise and z = resid / sqrt(sigma^2 + err^2) has robust std ~ 1."""
    vocab, *_ = synthetic
    rng = np.random.default_rng(1)
    train, val, test = (_synthetic(n, rng, with_errors=True) for n in (4000, 1000, 2000))
    emu = em.fit_emulator(vocab, train[0], train[1], val[0], val[1], label_names=LABELS, config=SMALL, seed=0)
    mean, pred_sigma = em.emulate(emu, test[2])
    assert np.median(pred_sigma / test[3]) < 0.33
    z = (mean - test[0][:, :N_FLUX]) / np.sqrt(pred_sigma**2 + test[3] ** 2)
    assert 0.92 <= robust_scale(z.ravel()) <= 1.08


def test_early_stopping_keeps_the_best_validation_params():
    """A big net on 150 stars over-fits: training stops ``patience`` epochs after the best validation epoch, and the
    returned parameters' validation NLL is exactly the minimum of the recorded curve (not the last epoch's)."""
    rng = np.random.default_rng(2)
    train, val = _synthetic(150, rng, with_errors=False), _synthetic(300, rng, with_errors=False)
    vocab = _vocab(train[0])
    cfg = em.EmulatorConfig(hidden=(128, 128), learning_rate=1e-2, batch_size=32, max_epochs=400, patience=15,
                            warmup_epochs=1, logebv_floor=None)
    emu = em.fit_emulator(vocab, train[0], train[1], val[0], val[1], label_names=LABELS, config=cfg, seed=0)
    curve = np.asarray(emu.info["val_nll"])
    assert len(curve) < cfg.max_epochs  # stopped early
    assert emu.info["best_epoch"] == int(np.argmin(curve))
    assert len(curve) == emu.info["best_epoch"] + cfg.patience + 1
    assert curve[-1] > curve.min()
    assert em.emulator_nll(emu, vocab, val[0], val[1]) == pytest.approx(curve.min(), abs=0.0)


def test_deterministic_per_seed(synthetic):
    vocab, train, val, _ = synthetic
    fit = lambda seed: em.fit_emulator(vocab, train[0][:500], train[1][:500], val[0], val[1],  # noqa: E731
                                       label_names=LABELS, config=TINY, seed=seed)
    a, b, c = fit(0), fit(0), fit(1)
    assert a.info["epochs"] == TINY.max_epochs
    leaves = lambda e: jax.tree.leaves(e.params)  # noqa: E731
    assert all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(b)))
    assert a.info["val_nll"] == b.info["val_nll"]
    assert not np.array_equal(leaves(a)[0], leaves(c)[0])
    d = em.fit_emulator(vocab, train[0][:500], train[1][:500], val[0], val[1], label_names=LABELS, config=TINY,
                        seed=jax.random.key(0))  # a typed key is the same as its seed
    assert all(np.array_equal(x, y) for x, y in zip(leaves(a), leaves(d)))


def test_missing_labels_and_flux(synthetic):
    """Stars with a missing label are left out of training (counted); a missing flux token is masked (the loss stays
    finite); emulate answers NaN for a row with a missing label; logebv at the floor counts as missing."""
    vocab, train, val, _ = synthetic
    values = train[0][:600].copy()
    values[:100, N_FLUX + 1] = np.nan  # logg missing
    values[100:200, 3] = np.nan  # a flux token missing
    emu = em.fit_emulator(vocab, values, train[1][:600], val[0], val[1], label_names=LABELS, config=TINY, seed=0)
    assert emu.info["n_train"] == 500
    assert np.isfinite(emu.info["val_nll"]).all()
    mean, sigma = em.emulate(emu, np.array([[0.0, np.nan, 0.0], [0.1, 0.2, 0.3]]))
    assert np.isnan(mean[0]).all() and np.isnan(sigma[0]).all() and np.isfinite(mean[1]).all()
    with pytest.raises(ValueError, match="labels must be"):
        em.emulate(emu, np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"\[N, 19\]"):
        em.fit_emulator(vocab, values[:, :5], train[1][:600], val[0], val[1], label_names=LABELS, config=TINY)
    floor = em.emulator_labels(_known_emulator(0), _five_label_vocab(), _five_label_values([-1.0, em.LOGEBV_FLOOR]))
    assert np.isfinite(floor[0]).all() and np.isnan(floor[1, 4])


# ----------------------------------------------------------------------------- chi^2 inversion
FIVE = em.EMULATOR_LABELS
CENTRE = np.array([4800.0, 2.7, -0.2, 0.05, -1.0])
SCALE = np.array([500.0, 1.0, 0.3, 0.1, 0.8])


def _five_label_vocab():
    names = ("f0",) + FIVE
    return Vocabulary(names, np.r_[1.0, CENTRE], np.r_[1.0, SCALE], names, ("spectrum",) + ("label",) * 5, "synthetic")


def _five_label_values(logebv):
    rows = [[1.0, *CENTRE[:4], e] for e in logebv]
    return np.asarray(rows)


def _known_emulator(seed, n_flux=40, logvar=-30.0):
    """An emulator with random (known) weights: 5 labels -> n_flux tokens, a constant predictive variance,
    negligible (logvar -> the soft floor, sigma 3e-4 flux scales) unless ``logvar`` says otherwise."""
    params = em.init_emulator_params(jax.random.key(seed), 5, n_flux, hidden=(32, 32), logvar_init=logvar)
    params = jax.tree.map(np.array, params)
    params["layers"][-1]["w"][:, n_flux:] = 0.0  # a constant predicted variance
    rng = np.random.default_rng(seed)
    return em.Emulator(params=params, label_names=FIVE, flux_names=tuple(f"f{k}" for k in range(n_flux)),
                       label_centre=CENTRE, label_scale=SCALE, flux_centre=np.full(n_flux, 1.0),
                       flux_scale=np.full(n_flux, 0.5), label_low=CENTRE - 3 * SCALE, label_high=CENTRE + 3 * SCALE,
                       train_labels=CENTRE + SCALE * rng.normal(size=(1000, 5)), config=em.EmulatorConfig())


def _stars(emu, n, rng, noise=0.01):
    truth = CENTRE + SCALE * rng.uniform(-1.5, 1.5, size=(n, 5))
    flux, _ = em.emulate(emu, truth)
    err = np.full(flux.shape, noise)
    return truth, flux + noise * rng.normal(size=flux.shape), err


# Every fit here shares one chunk size, so that fits of >= 64 stars compile each objective once for the whole file.
CHI2 = em.Chi2Settings(model_error="none", chunk_size=64)
FIXED = em.Chi2Settings(model_error="fixed", chunk_size=64)
NLL = em.Chi2Settings(model_error="predicted", chunk_size=64)


@pytest.fixture(scope="module")
def chi2_fit():
    emu = _known_emulator(0)
    truth, flux, err = _stars(emu, 200, np.random.default_rng(3))
    return emu, truth, flux, err, em.fit_labels_chi2(emu, flux, err, fixed={"alpha_m": truth[:, 3]}, settings=CHI2)


def test_chi2_recovers_known_labels_with_calibrated_errors(chi2_fit):
    """200 stars drawn from a known emulator with known Gaussian noise: the fit finds the true labels within their
    Laplace errors. z = (fit - true) / error over 200 stars x 4 labels: robust std within [0.85, 1.15] (its sampling
    error is ~0.03), 68% coverage within [0.62, 0.75] (binomial sd 0.017), no |z| > 5 (no star in a wrong basin), and
    the reduced chi^2 near 1 (mean within 0.05 of 1: 7,200 degrees of freedom)."""
    emu, truth, flux, err, fit = chi2_fit
    assert fit.names == ("teff", "logg", "m_h", "logebv")
    assert not fit.flagged.any()
    z = (fit.values - truth[:, [0, 1, 2, 4]]) / fit.errors
    assert 0.85 <= robust_scale(z.ravel()) <= 1.15
    assert 0.62 <= np.mean(np.abs(z) < 1) <= 0.75
    assert np.abs(z).max() < 5
    dof = fit.n_tokens - 4
    assert np.mean(fit.chi2 / dof) == pytest.approx(1.0, abs=0.05)
    # the covariance is symmetric positive definite and its diagonal is the errors^2
    assert np.allclose(fit.covariance, np.swapaxes(fit.covariance, 1, 2))
    assert np.all(np.linalg.eigvalsh(fit.covariance) > 0)
    assert np.allclose(np.diagonal(fit.covariance, axis1=1, axis2=2), fit.errors**2)


def test_chi2_batched_equals_per_star(chi2_fit):
    emu, truth, flux, err, fit = chi2_fit
    """70 stars alone (2 chunks of 64, the second padded) get the answers they got among 200 (4 chunks): a star's fit
    does not depend on its batch."""
    part = em.fit_labels_chi2(emu, flux[:70], err[:70], fixed={"alpha_m": truth[:70, 3]}, settings=CHI2)
    assert np.all(np.abs(part.values - fit.values[:70]) <= 1e-6 * np.abs(fit.values[:70]) + 1e-6 * SCALE[[0, 1, 2, 4]])
    np.testing.assert_allclose(part.errors, fit.errors[:70], rtol=1e-4)


def test_chi2_model_error_adds_to_the_errors():
    """With the emulator's own variance equal to the observed noise (logvar = ln 0.02^2 in flux-scale units, i.e.
    sigma 0.01 physical, nearly constant), both the fixed floor and the predicted variance give errors ~sqrt(2) x
    those of the classical chi^2 that ignores it."""
    emu = _known_emulator(1, logvar=2 * math.log(0.02))
    assert np.allclose(em.model_error_variance(emu), 0.02**2, rtol=0.01)
    truth, flux, err = _stars(emu, 64, np.random.default_rng(4))
    fixed = {"alpha_m": truth[:, 3]}
    chi2 = em.fit_labels_chi2(emu, flux, err, fixed=fixed, settings=CHI2)
    for settings in (FIXED, NLL):
        fit = em.fit_labels_chi2(emu, flux, err, fixed=fixed, settings=settings)
        assert np.median(fit.errors / chi2.errors) == pytest.approx(math.sqrt(2.0), rel=0.05)


def test_chi2_prior_alone_gives_the_training_distribution():
    """A star without flux, fitted with the prior: the optimum is the prior's mean (the training labels' mean) and
    the Laplace errors its standard deviations, exactly what a Gaussian posterior equal to the prior gives."""
    emu = _known_emulator(0)
    flux = np.full((1, 40), np.nan)
    fit = em.fit_labels_chi2(emu, flux, flux, fixed={"alpha_m": 0.0},
                             settings=em.Chi2Settings(model_error="none", chunk_size=8, prior=True))
    sample = emu.train_labels[:, [0, 1, 2, 4]]
    assert np.all(np.abs(fit.values[0] - sample.mean(axis=0)) < 1e-4 * SCALE[[0, 1, 2, 4]])
    np.testing.assert_allclose(fit.covariance[0], np.cov(sample, rowvar=False), rtol=1e-3, atol=1e-6)
    assert fit.no_data[0] and not fit.hessian_regularised[0]


def test_chi2_flags_instead_of_nan():
    """No usable flux, a label the emulator ignores (a singular Hessian) and a spectrum beyond the training range
    are answered with finite values and errors and a flag with its reason, never a silent NaN."""
    emu = _known_emulator(2)
    truth, flux, err = _stars(emu, 3, np.random.default_rng(5))
    flux[0] = np.nan
    far, _ = em.emulate(emu, (CENTRE + 8 * SCALE * np.array([1, 0, 0, 0, 0]))[None, :])
    flux[2] = far[0]
    fit = em.fit_labels_chi2(emu, flux, err, fixed={"alpha_m": truth[:, 3]}, settings=NLL)
    assert np.isfinite(fit.values).all() and np.isfinite(fit.errors).all()
    assert fit.no_data[0] and "no usable flux" in fit.reason[0]
    assert fit.at_edge[2] and "edge" in fit.reason[2]
    assert not fit.flagged[1] and fit.reason[1] == ""
    # alpha_m has no effect on this emulator's flux: freeing it makes the Hessian singular
    blind = em.Emulator(**{**vars(emu), "params": {"layers": [
        {"w": emu.params["layers"][0]["w"] * np.array([1, 1, 1, 0, 1], np.float32)[:, None], "b": emu.params["layers"][0]["b"]},
        *emu.params["layers"][1:]]}})
    fit = em.fit_labels_chi2(blind, flux[1:2], err[1:2], free=("teff", "logg", "m_h", "alpha_m"),
                             fixed={"logebv": truth[1, 4]}, settings=NLL)
    assert fit.hessian_regularised[0] and "Hessian" in fit.reason[0]
    # finite, and wider than the whole training range of alpha_m (6 scales): the fit says "unconstrained"
    assert np.isfinite(fit.errors).all() and fit.errors[0, 3] > 6 * SCALE[3]


def test_chi2_rejects_bad_input():
    emu = _known_emulator(0)
    flux = np.ones((2, 40))
    with pytest.raises(ValueError, match="free labels"):
        em.fit_labels_chi2(emu, flux, flux, free=("teff", "vmic"))
    with pytest.raises(ValueError, match=r"\[N, 40\]"):
        em.fit_labels_chi2(emu, flux[:, :5], flux[:, :5])
    with pytest.raises(ValueError, match="starts"):
        em.fit_labels_chi2(emu, flux, flux, starts=np.zeros((3, 2)))
    with pytest.raises(ValueError, match="fixed labels"):
        em.fit_labels_chi2(emu, flux, flux, fixed={"teff": 5000.0})


def test_default_starts_grid_contains_the_training_median():
    emu = _known_emulator(0)
    starts = em.default_starts(emu)
    assert starts.shape == (9, 4)
    median = CENTRE[[0, 1, 2, 4]]
    q = np.quantile(emu.train_labels[:, :2], [0.15, 0.5, 0.85], axis=0)
    assert np.allclose(sorted(set(starts[:, 0])), q[:, 0]) and np.allclose(sorted(set(starts[:, 1])), q[:, 1])
    centre = starts[(starts[:, 0] == q[1, 0]) & (starts[:, 1] == q[1, 1])]
    assert centre.shape == (1, 4) and np.allclose(centre[0, 2:], median[2:])


# ----------------------------------------------------------------------------- files
def test_save_load_round_trip_is_bit_exact(fitted, synthetic, tmp_path):
    path = em.save_emulator(fitted, tmp_path / "emu")
    back = em.load_emulator(path)
    for x, y in zip(jax.tree.leaves(fitted.params), jax.tree.leaves(back.params)):
        assert x.dtype == y.dtype and np.array_equal(x, y)
    for name in ("label_centre", "label_scale", "flux_centre", "flux_scale", "label_low", "label_high", "train_labels"):
        assert np.array_equal(getattr(fitted, name), getattr(back, name))
    assert back.config == fitted.config and back.label_names == fitted.label_names
    assert back.flux_names == fitted.flux_names and back.info == fitted.info
    labels = synthetic[3][2][:50]
    for a, b in zip(em.emulate(fitted, labels), em.emulate(back, labels)):
        assert np.array_equal(a, b)
    with pytest.raises(MissingFileError, match="not an emulator directory"):
        em.load_emulator(tmp_path / "nothing")
    (path / "emulator.json").write_text('{"format": "something else", "version": 1}')
    with pytest.raises(BadFileError, match="not a stellarfm_jax.emulator file"):
        em.load_emulator(path)
