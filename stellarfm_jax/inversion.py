"""Differentiable inversion (DESIGN §5): fit free input tokens so that the model's predicted spectrum
matches an observed one.

For one star with free inputs theta (standardised units, e.g. teff, logg, m_h, logebv), optional fixed
inputs, and observed tokens y with errors e (standardised), the likelihood part of the objective is the
Gaussian negative log-likelihood

    NLL(theta) = 0.5 * sum_j [ (y_j - mu_j(theta))^2 / V_j(theta) + ln V_j(theta) ],
    V_j = e_j^2 + exp(logvar_j(theta))          (observed error^2 + model predictive variance)

over the observed (non-missing) tokens j, with ``model_variance="predicted"``. By default
(``model_variance="fixed"``) the model's variance is held at its value at the forward prediction (candidate 1
below), ``V_j = e_j^2 + exp(logvar_j(theta_forward))``: the classical chi^2 fit with the model's error as a fixed
systematic floor (the emulator's default), so a fit cannot lower its objective by moving to where the model is
less sure (the ``ln V`` term is then a constant). On 100 real test stars (xp_coarse model, spectrum + jh observed)
the predicted variance pulled teff ~500 K low; held fixed, the bias was -81 K (docs/inference.md) (the decoder answers every observed token; the encoder sees only the
free and fixed tokens). The objective is ``NLL(theta) - ln p(theta)`` with an optional prior p: a Gaussian
mixture over the free tokens fitted on the training split (:class:`InversionPrior`), a plain Gaussian of width
``prior_sigma`` around the training median, or none (flat).

With a :class:`ModelError` (``model_error="auto"``: the model's stored one) the tokens are not independent: the
likelihood is the Gaussian with covariance ``C = D R D`` (``D = diag(sqrt(V))`` at the fixed variance, ``R`` the
covariance of the model's normalised residuals measured on training stars at their catalogue labels, which share a
blue-red tilt on real XP spectra) and the observed values shifted by the residuals' mean, fitted by whitening with
C's Cholesky factor; the calibrated systematic floor is added to the errors in quadrature.

One star's fit (every star of a chunk in one jitted ``vmap``; the same program for every star, so a star's
answer does not depend on its batch):

1. **Candidates**: the model's own forward prediction of the free tokens from the observed (and fixed) tokens,
   ``n_draws`` draws around it with its predicted sigma, a coarse grid over the training distribution (the
   prior's mixture means, or a teff x logg grid at -1, 0, 1 robust sigma without a mixture prior) and the
   training median. The objective is evaluated at every candidate; the ``n_starts`` best are kept.
2. **Adam** (optax, cosine-decayed step from ``learning_rate``) from each kept start, for at most ``steps``
   iterations; a start stops early when its objective has not improved by ``1e-4`` for ``patience`` steps
   (``lax.while_loop``: under ``vmap`` a finished star's state is held fixed, the loop ends when every star
   has finished).
3. **Damped Newton** (Levenberg-Marquardt) from the best start for at most ``newton_steps`` iterations,
   stopping early per star when a step moves less than ``1e-4`` (standardised) or would lower the objective by
   less than ``1e-3`` (the Newton decrement). Its curvature (``curvature``):
   by default Fisher scoring, the likelihood's Fisher information ``J_mu^T V^-1 J_mu + 1/2 J_lnV^T J_lnV``
   (forward-mode Jacobians of the model's mean and variance: positive semi-definite, the classical chi^2 fit's
   ``J^T W J`` plus the variance term) plus the prior's exact Hessian; or the objective's exact ``jax.hessian``.
4. **Laplace covariance**: the inverse of that curvature (prior included) at the optimum. A
   matrix that is not positive definite gets a ridge (``max(0, -lambda_min) + 1e-4 max(1, |lambda|_max)``)
   until it is, a Hessian that is not finite gives the training spread (identity in standardised units):
   both flagged, with the reason per star, never a silent NaN.

Flags per star (``InversionResult.reason`` says which, '' when none): not converged, Hessian regularised, a
gradient not finite, and an optimum at (within 0.5% of the span) or beyond the edge of the training range
(``token_range`` in the model's metadata, else the prior's training support).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
import warnings
from dataclasses import dataclass, field
from typing import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import forward
from .forward import ModelSpec, default_chunk_size, map_chunks
from .inputs import as_float_array, prepare_inputs, token_ids

DEFAULT_FREE = ("teff", "logg", "m_h", "logebv")
# Values at or below these count as missing when a prior is fitted (the data's logebv floor means "unknown").
MISSING_AT_OR_BELOW = {"logebv": -7.0}
EDGE_FRACTION = 0.005  # an optimum within this fraction of the training span of a bound is "at the edge"
PRIOR_FORMAT = "stellarfm_jax.inversion_prior"
MODEL_ERROR_FORMAT = "stellarfm_jax.inversion_model_error"


def _save_json(doc: dict, path) -> pathlib.Path:
    from .formats import write_text_atomic

    return write_text_atomic(path, json.dumps(doc, indent=1))


def _load_json(path, what: str) -> dict:
    from .errors import MissingFileError
    from .formats import read_json

    if not pathlib.Path(path).is_file():
        raise MissingFileError(f"{what} file not found: {path}")
    return read_json(path)


# ============================================================================== the prior
@dataclass(frozen=True, eq=False)
class InversionPrior:
    """A Gaussian mixture over some tokens (physical units), fitted on training values.

    names [P]; weights [K]; means [K, P]; covariances [K, P, P]; low / high [P] the training min / max (the
    support used for the edge flag when the model has no ``token_range``); info: how it was fitted."""

    names: tuple[str, ...]
    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    low: np.ndarray
    high: np.ndarray
    info: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, train_values, vocab, names: Sequence[str] = DEFAULT_FREE, n_components: int = 8, seed: int = 0,
            iterations: int = 200, max_stars: int = 30000, reg: float = 1e-3,
            missing_at_or_below: dict | None = None) -> "InversionPrior":
        """Fit a ``n_components`` Gaussian mixture (EM in NumPy, in the vocabulary's standardised units, ``reg``
        added to every covariance's diagonal) to the stars of ``train_values`` ([N, V] in vocabulary order, or
        [N, P] in ``names`` order) that have every one of ``names`` (values at or below
        ``missing_at_or_below[name]``, default ``MISSING_AT_OR_BELOW``, count as missing); at most ``max_stars``
        of them (a seeded subset)."""
        names = tuple(n for n in names if n in vocab.names)
        if not names:
            raise ValueError("none of the prior's names is in the vocabulary")
        x = np.asarray(train_values, np.float64)
        if x.ndim != 2:
            raise ValueError(f"train_values must be [N, V] or [N, P], got shape {x.shape}")
        if x.shape[1] == vocab.size:
            x = x[:, vocab.ids(list(names)) - 1]
        elif x.shape[1] != len(names):
            raise ValueError(f"train_values must have {vocab.size} (vocabulary) or {len(names)} columns, got {x.shape[1]}")
        floors = MISSING_AT_OR_BELOW if missing_at_or_below is None else missing_at_or_below
        ok = np.isfinite(x).all(axis=1)
        for j, n in enumerate(names):
            if n in floors:
                ok &= x[:, j] > floors[n]
        x = x[ok]
        if len(x) < 2 * n_components:
            raise ValueError(f"{len(x)} complete training stars are too few for a {n_components}-component prior")
        rng = np.random.default_rng(seed)
        if len(x) > max_stars:
            x = x[rng.choice(len(x), max_stars, replace=False)]
        ids = vocab.ids(list(names))
        centre, scale = vocab.centre_by_id[ids], vocab.scale_by_id[ids]
        z = (x - centre) / scale
        w, mu, cov, loglik = _em(z, n_components, rng, iterations, reg)
        return cls(names=names, weights=w, means=mu * scale + centre,
                   covariances=cov * scale[None, :, None] * scale[None, None, :], low=x.min(axis=0),
                   high=x.max(axis=0), info={"n_stars": int(len(x)), "n_components": int(n_components),
                                             "seed": int(seed), "mean_log_likelihood_z": float(loglik),
                                             "missing_at_or_below": dict(floors)})

    def to_dict(self) -> dict:
        return {"format": PRIOR_FORMAT, "version": 1, "names": list(self.names), "weights": self.weights.tolist(),
                "means": self.means.tolist(), "covariances": self.covariances.tolist(), "low": self.low.tolist(),
                "high": self.high.tolist(), "info": self.info}

    @classmethod
    def from_dict(cls, doc: dict) -> "InversionPrior":
        from .errors import BadFileError

        if doc.get("format") != PRIOR_FORMAT:
            raise BadFileError(f"not an inversion prior (format {doc.get('format')!r}, expected {PRIOR_FORMAT!r})")
        arr = {k: np.asarray(doc[k], np.float64) for k in ("weights", "means", "covariances", "low", "high")}
        p, k = len(doc["names"]), len(arr["weights"])
        if arr["means"].shape != (k, p) or arr["covariances"].shape != (k, p, p) or arr["low"].shape != (p,):
            raise BadFileError(f"inversion prior arrays do not match its {p} names and {k} components")
        return cls(names=tuple(doc["names"]), info=dict(doc.get("info", {})), **arr)

    def save(self, path) -> pathlib.Path:
        return _save_json(self.to_dict(), path)

    @classmethod
    def load(cls, path) -> "InversionPrior":
        return cls.from_dict(_load_json(path, "inversion prior"))

    def log_prob(self, x) -> np.ndarray:
        """ln p(x) for x [N, P] physical (NumPy, float64)."""
        x = np.atleast_2d(np.asarray(x, np.float64))
        out = []
        for w, m, c in zip(self.weights, self.means, self.covariances):
            d = x - m
            sol = np.linalg.solve(c, d.T).T
            out.append(np.log(w) - 0.5 * np.sum(d * sol, 1) - 0.5 * np.linalg.slogdet(2 * np.pi * c)[1])
        return np.logaddexp.reduce(np.stack(out, 1), axis=1)


def _em(z, k, rng, iterations, reg):
    """EM for a k-component full-covariance Gaussian mixture on z [N, P]; k-means++-style seeded init."""
    n, p = z.shape
    centres = [z[rng.integers(n)]]
    for _ in range(1, k):
        d2 = np.min(((z[:, None, :] - np.array(centres)[None]) ** 2).sum(-1), axis=1)
        centres.append(z[rng.choice(n, p=d2 / d2.sum())])
    mu = np.array(centres)
    cov = np.repeat((np.cov(z.T) + reg * np.eye(p))[None], k, axis=0)
    w = np.full(k, 1.0 / k)
    previous = -np.inf
    for _ in range(iterations):
        logp = np.stack([np.log(w[j]) - 0.5 * np.sum((z - mu[j]) * np.linalg.solve(cov[j], (z - mu[j]).T).T, 1)
                         - 0.5 * np.linalg.slogdet(2 * np.pi * cov[j])[1] for j in range(k)], 1)
        total = np.logaddexp.reduce(logp, axis=1)
        r = np.exp(logp - total[:, None])
        nk = r.sum(0) + 1e-12
        w = nk / n
        mu = (r.T @ z) / nk[:, None]
        cov = np.stack([((r[:, j:j + 1] * (z - mu[j])).T @ (z - mu[j])) / nk[j] + reg * np.eye(p) for j in range(k)])
        loglik = float(total.mean())
        if loglik - previous < 1e-6:
            break
        previous = loglik
    return w, mu, cov, loglik


def flat_prior_arrays(n_free: int) -> dict:
    """The prior arrays of a flat prior (ln p = 0)."""
    return dict(log_w=np.zeros(1, np.float32), means=np.zeros((1, n_free), np.float32),
                precision=np.zeros((1, n_free, n_free), np.float32), log_norm=np.zeros(1, np.float32))


def gaussian_prior_arrays(n_free: int, sigma: float) -> dict:
    """N(0, sigma^2 I) in standardised units, without its constant: ln p = -0.5 |theta|^2 / sigma^2."""
    arrays = flat_prior_arrays(n_free)
    arrays["precision"] = (np.eye(n_free, dtype=np.float32) / sigma**2)[None]
    return arrays


def mixture_prior_arrays(prior: InversionPrior, vocab, free: Sequence[str]) -> dict:
    """The mixture's marginal over the free tokens it covers, in the vocabulary's standardised units (a free token
    it does not cover is flat): log_w [K], means [K, F], precision [K, F, F], log_norm [K]."""
    free = list(free)
    covered = [j for j, n in enumerate(free) if n in prior.names]
    if not covered:
        return flat_prior_arrays(len(free))
    src = [prior.names.index(free[j]) for j in covered]
    ids = vocab.ids([free[j] for j in covered])
    centre, scale = vocab.centre_by_id[ids], vocab.scale_by_id[ids]
    k, f = len(prior.weights), len(free)
    means, precision, log_norm = np.zeros((k, f)), np.zeros((k, f, f)), np.zeros(k)
    for c in range(k):
        cov = prior.covariances[c][np.ix_(src, src)] / (scale[:, None] * scale[None, :])
        means[c, covered] = (prior.means[c, src] - centre) / scale
        precision[c][np.ix_(covered, covered)] = np.linalg.inv(cov)
        log_norm[c] = -0.5 * np.linalg.slogdet(2 * np.pi * cov)[1]
    return dict(log_w=np.log(prior.weights).astype(np.float32), means=means.astype(np.float32),
                precision=precision.astype(np.float32), log_norm=log_norm.astype(np.float32))


def neg_log_prior(theta, prior):
    """-ln p(theta) of one star: theta [F]; prior arrays (see :func:`mixture_prior_arrays`) -> scalar."""
    d = theta[None, :] - prior["means"]  # [K, F]
    quad = jnp.einsum("kf,kfg,kg->k", d, prior["precision"], d)
    return -jax.scipy.special.logsumexp(prior["log_w"] + prior["log_norm"] - 0.5 * quad)


# ============================================================================== the model error
@dataclass(frozen=True, eq=False)
class ModelError:
    """The model's error as a generator of observed tokens, measured on training stars at their catalogue labels.

    With the variance held at the forward prediction, V_j = e_j^2 + model variance, the normalised residuals
    u_j = (y_j - mu_j(labels)) / sqrt(V_j) of real stars are neither independent nor centred: on the shipped
    model's train split they share a blue-red tilt (one eigenvalue of their correlation is 35 of 58), the residual
    of labels the model does not quite map to colour. ``invert`` then fits with the full covariance C = D R D
    (D = diag(sqrt(V_j)), R = ``covariance``) and the observed values shifted by D ``mean``, instead of
    independent tokens, and adds ``floor`` (physical, per free token) in quadrature to the fitted errors: the
    systematic error left after that, calibrated on the validation split (:func:`calibrate_model_error`).

    names [S] observed tokens; mean [S], covariance [S, S] of u; free [F] the free tokens the residuals were
    measured with; floor [F]; info: how it was measured."""

    names: tuple[str, ...]
    mean: np.ndarray
    covariance: np.ndarray
    free: tuple[str, ...]
    floor: np.ndarray
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        s, f = len(self.names), len(self.free)
        if np.shape(self.mean) != (s,) or np.shape(self.covariance) != (s, s) or np.shape(self.floor) != (f,):
            raise ValueError(f"model error arrays do not match its {s} names and {f} free tokens: mean "
                             f"{np.shape(self.mean)}, covariance {np.shape(self.covariance)}, floor {np.shape(self.floor)}")

    def covers(self, names: Sequence[str]) -> bool:
        return set(names) <= set(self.names)

    def for_names(self, names: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(mean [S'], covariance [S', S']) of the observed ``names`` in that order (a sub-matrix)."""
        missing = [n for n in names if n not in self.names]
        if missing:
            raise ValueError(f"the model error was measured on {len(self.names)} tokens and does not cover the observed "
                             f"{missing[:10]}; observe only its tokens or pass model_error=None")
        idx = np.array([self.names.index(n) for n in names], dtype=int)
        return self.mean[idx], self.covariance[np.ix_(idx, idx)]

    def floor_for(self, free: Sequence[str]) -> np.ndarray:
        """[F] the systematic floor of each free token (0 for tokens it was not calibrated for)."""
        return np.array([self.floor[self.free.index(n)] if n in self.free else 0.0 for n in free])

    def to_dict(self) -> dict:
        return {"format": MODEL_ERROR_FORMAT, "version": 1, "names": list(self.names), "mean": self.mean.tolist(),
                "covariance": self.covariance.tolist(), "free": list(self.free), "floor": self.floor.tolist(),
                "info": self.info}

    @classmethod
    def from_dict(cls, doc: dict) -> "ModelError":
        from .errors import BadFileError

        if doc.get("format") != MODEL_ERROR_FORMAT:
            raise BadFileError(f"not an inversion model error (format {doc.get('format')!r}, expected {MODEL_ERROR_FORMAT!r})")
        try:
            return cls(names=tuple(doc["names"]), mean=np.asarray(doc["mean"], np.float64),
                       covariance=np.asarray(doc["covariance"], np.float64), free=tuple(doc["free"]),
                       floor=np.asarray(doc["floor"], np.float64), info=dict(doc.get("info", {})))
        except ValueError as err:
            raise BadFileError(str(err)) from None

    def save(self, path) -> pathlib.Path:
        return _save_json(self.to_dict(), path)

    @classmethod
    def load(cls, path) -> "ModelError":
        return cls.from_dict(_load_json(path, "inversion model error"))


def _complete_stars(values, errors, vocab, names, free):
    """Indices of the stars of a split ([N, V] vocabulary order) with every free token known (the data's floors
    count as missing) and an observed token measured, and their (known [N', F], observed [N', S], errors)."""
    values, errors = np.asarray(values, np.float64), np.asarray(errors, np.float64)
    known = values[:, vocab.ids(list(free)) - 1]
    obs, err = values[:, vocab.ids(list(names)) - 1], errors[:, vocab.ids(list(names)) - 1]
    ok = np.isfinite(known).all(axis=1) & np.isfinite(obs).any(axis=1)
    for j, n in enumerate(free):
        if n in MISSING_AT_OR_BELOW:
            ok &= known[:, j] > MISSING_AT_OR_BELOW[n]
    idx = np.flatnonzero(ok)
    return idx, known[idx], obs[idx], np.nan_to_num(err[idx])


def normalised_residuals(model, known, free, observed, errors, names) -> np.ndarray:
    """u [N, S] = (y - mu(known)) / sqrt(V): the observed tokens' residuals from the model's mean at the known free
    values [N, F] (physical), over the fit's total sigma with the variance at the forward prediction (V = e^2 +
    the model's variance given the observed tokens' forward prediction of the free ones), all through the public
    ``perceive`` / ``request`` API."""
    names, free = list(names), list(free)
    at_truth = model.perceive(known, free).request(names)
    forward_pred = model.perceive(observed, names, errors, overflow="keep_informative").request(free)
    at_forward = model.perceive(np.stack([forward_pred[n] for n in free], 1), free).request(names)
    mu = np.stack([at_truth[n] for n in names], 1)
    var = np.stack([at_forward[f"{n}_error"] for n in names], 1) ** 2 + np.nan_to_num(errors) ** 2
    return (np.asarray(observed, np.float64) - mu) / np.sqrt(var)


def measure_model_error(model, values, errors, names: Sequence[str], free: Sequence[str] | None = None, *,
                        n_stars: int = 4000, seed: int = 0, shrinkage: float = 0.05, clip: float = 8.0) -> ModelError:
    """The mean and covariance of the normalised residuals (:func:`normalised_residuals`) of ``n_stars`` stars (a
    seeded subset) of a split (``values``, ``errors`` [N, V] in vocabulary order, e.g. the train split) that have
    every free token. Residuals are clipped to +-``clip`` (a few stars with wrong catalogue labels would otherwise
    dominate); a missing token leaves its star out of that token's terms (pairwise-complete covariance); the
    covariance is shrunk by ``shrinkage`` towards its diagonal and its eigenvalues held >= 1e-3 of the largest
    variance, so its inverse is well conditioned. The floor is zero: :func:`calibrate_model_error` sets it."""
    free = list(default_free_names(model.vocab) if free is None else free)
    names = list(names)
    if not 0.0 <= shrinkage < 1.0 or not clip > 0:
        raise ValueError(f"shrinkage must be in [0, 1) and clip > 0, got {shrinkage}, {clip}")
    idx, known, obs, err = _complete_stars(values, errors, model.vocab, names, free)
    if len(idx) < 2 * len(names):
        raise ValueError(f"{len(idx)} stars with every free and observed token are too few to measure a "
                         f"{len(names)}-token covariance (need >= {2 * len(names)})")
    pick = np.sort(np.random.default_rng(seed).permutation(len(idx))[:n_stars])
    u = np.clip(normalised_residuals(model, known[pick], free, obs[pick], err[pick], names), -clip, clip)
    have = np.isfinite(u)
    if (have.sum(axis=0) < 2).any():
        raise ValueError(f"tokens {[n for n, k in zip(names, have.sum(axis=0)) if k < 2]} are measured in fewer "
                         "than 2 of the stars with every free token")
    mean = np.nanmean(u, axis=0)
    d = np.where(have, u - mean, 0.0)
    pairs = have.T.astype(np.float64) @ have
    cov = (d.T @ d) / np.maximum(pairs - 1.0, 1.0)
    cov = (1.0 - shrinkage) * cov + shrinkage * np.diag(np.diag(cov))
    eig, vec = np.linalg.eigh(0.5 * (cov + cov.T))
    cov = (vec * np.maximum(eig, 1e-3 * np.max(np.diag(cov)))) @ vec.T
    return ModelError(names=tuple(names), mean=mean, covariance=cov, free=tuple(free),
                      floor=np.zeros(len(free)), info={"n_stars": int(len(pick)), "seed": int(seed),
                                                       "shrinkage": float(shrinkage), "clip": float(clip)})


def calibration_floor(values, errors, truth, truth_errors, target: float = 0.6827) -> np.ndarray:
    """[F] the smallest systematic floor f >= 0 per column such that a fraction ``target`` of |value - truth| /
    sqrt(error^2 + truth_error^2 + f^2) is below 1 (0 where it already is). NaN rows are ignored."""
    values, errors = np.atleast_2d(np.asarray(values, np.float64)), np.atleast_2d(np.asarray(errors, np.float64))
    truth, truth_errors = np.atleast_2d(np.asarray(truth, np.float64)), np.atleast_2d(np.asarray(truth_errors, np.float64))
    out = np.zeros(values.shape[1])
    for j in range(values.shape[1]):
        d, s2 = np.abs(values[:, j] - truth[:, j]), errors[:, j] ** 2 + np.nan_to_num(truth_errors[:, j]) ** 2
        ok = np.isfinite(d) & np.isfinite(s2)
        d, s2 = d[ok], s2[ok]
        if not len(d) or np.mean(d**2 <= s2) >= target:
            continue
        lo, hi = 0.0, float(np.max(d))  # coverage is 1 at f = max |d|
        for _ in range(60):
            mid = 0.5 * (lo + hi)
            lo, hi = (lo, mid) if np.mean(d**2 <= s2 + mid**2) >= target else (mid, hi)
        out[j] = hi
    return out


def calibrate_model_error(model, model_error: ModelError, values, errors, *, n_stars: int = 500, prior="auto",
                          target: float = 0.6827, **invert_options) -> ModelError:
    """``model_error`` with its floor set on a calibration split (``values``, ``errors`` [N, V] in vocabulary
    order; use the validation split, not the test split): the first ``n_stars`` stars with every free and observed
    token are inverted with ``model_error`` (floor 0; ``invert_options`` as for :func:`invert`), and each free
    token's floor is :func:`calibration_floor` of the fit against the catalogue (its errors included)."""
    names, free = list(model_error.names), list(model_error.free)
    idx, known, obs, err = _complete_stars(values, errors, model.vocab, names, free)
    idx, known, obs, err = idx[:n_stars], known[:n_stars], obs[:n_stars], err[:n_stars]
    if not len(idx):
        raise ValueError("no star of the calibration split has every free and observed token")
    known_err = np.asarray(errors, np.float64)[idx][:, model.vocab.ids(free) - 1]
    unfloored = dataclasses.replace(model_error, floor=np.zeros(len(free)))
    fit = invert(model, obs, names, err, free=free, prior=prior, model_error=unfloored, **invert_options)
    floor = calibration_floor(fit.values, fit.errors, known, known_err, target)
    info = {**model_error.info, "floor_calibration": {"n_stars": int(len(idx)), "target_coverage": float(target),
                                                      "flagged": int(fit.flagged.sum())}}
    return dataclasses.replace(model_error, floor=floor, info=info)


# ============================================================================== the functional core
MODEL_VARIANCES = ("predicted", "fixed")
# Damped Newton iterations at most. On 1,000 real test stars with the model error (2026-12-02) 10 left 8.4% of the
# fits short of the convergence test, 15 4.8%, 20 2.6%, 25 2.1%, with the same recovered labels: the slow ones
# converge, they are not stuck.
DEFAULT_NEWTON_STEPS = 25


@dataclass(frozen=True)
class InversionSettings:
    """Static optimiser settings (hashable: part of the jit key)."""

    steps: int = 30  # Adam iterations at most (per kept start)
    learning_rate: float = 0.05
    n_starts: int = 2  # candidates kept for Adam
    patience: int = 5  # Adam stops a start whose objective has not improved by 1e-4 for this many steps
    newton_steps: int = DEFAULT_NEWTON_STEPS
    newton_xtol: float = 1e-4  # standardised units
    # Converged when the Newton decrement g^T H^-1 g / 2 (the objective's predicted decrease from a full Newton step)
    # is below this: the optimum is then within ~sqrt(2 * 1e-3) = 0.045 sigma, and steps that small are often
    # rejected by float32 rounding of the objective, so a step-size test alone leaves good fits "not converged".
    newton_ftol: float = 1e-3
    # Curvature for Newton and Laplace: "fisher" (the likelihood's Fisher information from forward-mode Jacobians
    # of the model's mean and variance, plus the prior's exact Hessian) or "hessian" (jax.hessian of the whole
    # objective: forward-over-reverse through the network, ~4x the work and compile time).
    curvature: str = "fisher"
    # The model's variance in V: "fixed" (at the forward prediction, held constant) or "predicted" (at theta).
    model_variance: str = "fixed"

    def __post_init__(self):
        for name in ("steps", "n_starts", "patience"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)!r}")
        if self.curvature not in ("fisher", "hessian"):
            raise ValueError(f"curvature must be 'fisher' or 'hessian', got {self.curvature!r}")
        if self.model_variance not in MODEL_VARIANCES:
            raise ValueError(f"model_variance must be one of {MODEL_VARIANCES}, got {self.model_variance!r}")
        if self.newton_steps < 0 or not self.learning_rate > 0:
            raise ValueError(f"newton_steps must be >= 0 and learning_rate > 0, got {self.newton_steps}, {self.learning_rate}")


def _moments(params, theta, problem, spec: ModelSpec):
    """The model's mean [S] and total variance V [S] (its own + the observed error^2) of every observed token of
    one star at theta [F]; problem: one star's arrays (see :func:`invert_batch`). With ``problem["model_var"]``
    (``model_variance="fixed"``) the model's own variance is that constant instead of its prediction at theta."""
    values = jnp.concatenate([theta, problem["fixed_z"]])[None, :]  # [1, F + K]
    tokens = jnp.concatenate([problem["free_ids"], problem["fixed_ids"]])[None, :]
    mean, logvar = forward.apply(params, values, tokens, problem["obs_ids"][None, :], spec=spec)
    if "whiten" in problem:  # a model-error covariance: the whitened mean, unit variance (_with_model_error)
        return problem["whiten"] @ mean[0], jnp.ones_like(mean[0])
    model_var = problem["model_var"] if "model_var" in problem else jnp.exp(logvar[0])
    return mean[0], model_var + problem["obs_var"]


def _with_model_error(problem):
    """One star's problem with a model-error correlation ``resid_corr`` [S, S] (and optional ``resid_mean`` [S]) of
    the normalised residuals u = (y - mu) / sqrt(V) (measured on training stars at their catalogue labels) turned
    into a whitened least-squares problem: total covariance C = D R D with D = diag(sqrt(V)) at the fixed variance,
    the observed values shifted by the expected residual D m, and W = L^-1 (C = L L^T) applied to both sides, so
    the objective 0.5 |W (y - D m - mu)|^2 is the Gaussian NLL with covariance C (up to a constant). Missing tokens
    are decoupled (identity rows) and masked out of W. Without ``resid_corr``: the problem unchanged."""
    if "resid_corr" not in problem:
        return problem
    mask = problem["obs_mask"]
    d = jnp.where(mask, jnp.sqrt(problem["model_var"] + problem["obs_var"]), 1.0)
    both = mask[:, None] & mask[None, :]
    cov = jnp.where(both, problem["resid_corr"] * d[:, None] * d[None, :], jnp.eye(d.shape[0], dtype=d.dtype))
    chol = jnp.linalg.cholesky(cov)
    whiten = jax.scipy.linalg.solve_triangular(chol, jnp.eye(d.shape[0], dtype=d.dtype), lower=True)
    whiten = jax.lax.stop_gradient(whiten * mask[None, :])
    shift = d * problem["resid_mean"] if "resid_mean" in problem else 0.0
    y = whiten @ jnp.where(mask, problem["obs_z"] - shift, 0.0)
    out = {k: v for k, v in problem.items() if k not in ("resid_corr", "resid_mean")}
    return {**out, "whiten": whiten, "obs_z": y}


def _nll_of_moments(mean, var, problem):
    """Likelihood part of one star's objective from the model's mean and total variance [S]."""
    resid = problem["obs_z"] - mean
    terms = jnp.where(problem["obs_mask"], resid**2 / var + jnp.log(var), 0.0)
    return 0.5 * jnp.sum(terms)


def _nll(params, theta, problem, spec: ModelSpec):
    """Likelihood part of one star's objective."""
    return _nll_of_moments(*_moments(params, theta, problem, spec), problem)


def _objective(params, theta, problem, prior, spec):
    return _nll(params, theta, problem, spec) + neg_log_prior(theta, prior)


def _finite_or_inf(x):
    return jnp.where(jnp.isfinite(x), x, jnp.inf)


def _adam(objective, theta0, settings: InversionSettings):
    """Adam from theta0 [F] with early stopping -> (theta, objective, steps taken, all gradients finite)."""
    optimizer = optax.adam(optax.cosine_decay_schedule(settings.learning_rate, settings.steps, alpha=0.01))
    value_and_grad = jax.value_and_grad(objective)

    def cond(state):
        return (state["i"] < settings.steps) & (state["stall"] < settings.patience)

    def body(state):
        value, grad = value_and_grad(state["theta"])
        finite = jnp.isfinite(value) & jnp.all(jnp.isfinite(grad))
        grad = jnp.where(finite, grad, 0.0)
        updates, opt_state = optimizer.update(grad, state["opt"], state["theta"])
        improved = value < state["best_value"] - 1e-4
        better = value < state["best_value"]
        return dict(theta=optax.apply_updates(state["theta"], updates), opt=opt_state, i=state["i"] + 1,
                    stall=jnp.where(improved, 0, state["stall"] + 1),
                    best_value=jnp.where(better, value, state["best_value"]),
                    best_theta=jnp.where(better, state["theta"], state["best_theta"]),
                    finite=state["finite"] & finite)

    init = dict(theta=theta0, opt=optimizer.init(theta0), i=jnp.array(0), stall=jnp.array(0),
                best_value=jnp.array(jnp.inf, theta0.dtype), best_theta=theta0, finite=jnp.array(True))
    state = jax.lax.while_loop(cond, body, init)
    last = _finite_or_inf(objective(state["theta"]))
    use_last = last <= state["best_value"]
    theta = jnp.where(use_last, state["theta"], state["best_theta"])
    return theta, jnp.minimum(last, state["best_value"]), state["i"], state["finite"]


def grad_and_hessian(objective, theta):
    """(gradient [F], Hessian [F, F]) of ``objective`` at theta [F] from one forward-over-reverse pass (the
    gradient is the primal of the Hessian's JVPs, so it is not traced twice)."""
    basis = jnp.eye(theta.shape[0], dtype=theta.dtype)
    grad, hess = jax.vmap(lambda v: jax.jvp(jax.grad(objective), (theta,), (v,)), out_axes=(None, 0))(basis)
    return grad, 0.5 * (hess + hess.T)


def grad_and_fisher(moments, y, mask, neg_log_prior_fn, theta):
    """(gradient [F], curvature [F, F]) of NLL + prior at theta [F] for the Gaussian likelihood of ``moments(theta)
    -> (mean [S], V [S])`` with observations y [S] (``mask`` [S] bool: the observed ones): the exact gradient and
    the Fisher information J_mu^T V^-1 J_mu + 1/2 J_lnV^T J_lnV (positive semi-definite; the expected Hessian),
    both from one forward-mode Jacobian of the model, plus the prior's exact gradient and Hessian."""
    basis = jnp.eye(theta.shape[0], dtype=theta.dtype)
    (mean, var), (j_mean, j_var) = jax.vmap(lambda v: jax.jvp(moments, (theta,), (v,)), out_axes=(None, 0))(basis)
    w = jnp.where(mask, 1.0 / var, 0.0)  # [S]
    resid = jnp.where(mask, y - mean, 0.0)
    j_lnv = j_var / var  # [F, S]
    grad = -j_mean @ (w * resid) + 0.5 * j_lnv @ jnp.where(mask, 1.0 - resid**2 * w, 0.0)
    fisher = (j_mean * w) @ j_mean.T + 0.5 * (j_lnv * mask) @ j_lnv.T
    g_prior, h_prior = grad_and_hessian(neg_log_prior_fn, theta)
    return grad + g_prior, 0.5 * (fisher + fisher.T) + h_prior


def _newton(objective, theta0, value0, settings: InversionSettings, curvature=None):
    """Levenberg-Marquardt from theta0 [F] (objective value0 there) -> (theta, objective, converged, iterations,
    gradient, curvature matrix). ``curvature(theta) -> (gradient, matrix)``, default the exact Hessian
    (:func:`grad_and_hessian`). The last iteration only evaluates them at the final theta (for Laplace), so the
    curvature is traced once."""
    curvature = curvature or functools.partial(grad_and_hessian, objective)
    f = theta0.shape[0]
    eye = jnp.eye(f, dtype=theta0.dtype)

    def cond(state):
        return ~state["done"]

    def body(state):
        theta = state["theta"]
        grad, hess = curvature(theta)
        ok = jnp.all(jnp.isfinite(grad)) & jnp.all(jnp.isfinite(hess))
        finish = state["converged"] | (state["i"] >= settings.newton_steps) | (state["lam"] >= 1e6)
        h = jnp.where(ok, hess, eye)
        g = jnp.where(ok, grad, 0.0)
        eig = jnp.linalg.eigvalsh(h)
        top = jnp.maximum(jnp.max(jnp.abs(eig)), 1e-6)
        shift = jnp.maximum(0.0, -eig[0]) + state["lam"] * top
        step = -jnp.linalg.solve(h + shift * eye, g)
        step = step * jnp.minimum(1.0, 1.0 / jnp.maximum(jnp.max(jnp.abs(step)), 1e-12))  # at most 1 sigma a step
        new_value = _finite_or_inf(objective(theta + step))
        accept = ok & (new_value <= state["value"]) & ~finish
        small = jnp.max(jnp.abs(step)) < settings.newton_xtol
        psd = eig[0] > -1e-6 * top
        decrement = 0.5 * g @ jnp.linalg.solve(h + (jnp.maximum(0.0, -eig[0]) + 1e-9 * top) * eye, g)
        # Converged: at a positive semi-definite curvature, a (nearly undamped) Newton step is tiny or would lower
        # the objective by less than newton_ftol.
        converged = state["converged"] | (ok & psd & ((small & (state["lam"] <= 1e-2)) | (decrement < settings.newton_ftol)))
        return dict(theta=jnp.where(accept, theta + step, theta), value=jnp.where(accept, new_value, state["value"]),
                    lam=jnp.where(accept, jnp.maximum(state["lam"] * 0.3, 1e-9), state["lam"] * 10.0),
                    i=state["i"] + jnp.where(finish, 0, 1), converged=converged, done=finish, grad=grad, hess=hess)

    init = dict(theta=theta0, value=value0, lam=jnp.array(1e-3, theta0.dtype), i=jnp.array(0),
                converged=jnp.array(settings.newton_steps == 0), done=jnp.array(False), grad=jnp.zeros_like(theta0),
                hess=jnp.zeros((f, f), theta0.dtype))
    state = jax.lax.while_loop(cond, body, init)
    return state["theta"], state["value"], state["converged"], state["i"], state["grad"], state["hess"]


def laplace_covariance(hess):
    """[F, F] Hessian -> (covariance, ridge added (0 when positive definite), finite).

    Not positive definite: a ridge ``max(0, -lambda_min) + 1e-4 * max(1, |lambda|_max)`` makes it so; not
    finite: the identity (the training spread in standardised units). Never NaN."""
    f = hess.shape[0]
    finite = jnp.all(jnp.isfinite(hess))
    h = jnp.where(finite, 0.5 * (hess + hess.T), jnp.eye(f, dtype=hess.dtype))
    eig, vec = jnp.linalg.eigh(h)
    top = jnp.max(jnp.abs(eig))
    positive = eig[0] > 1e-7 * jnp.maximum(top, 1e-30)
    ridge = jnp.where(positive, 0.0, jnp.maximum(0.0, -eig[0]) + 1e-4 * jnp.maximum(1.0, top))
    cov = (vec / (eig + ridge)[None, :]) @ vec.T
    cov = 0.5 * (cov + cov.T)
    return cov, jnp.where(finite, ridge, 0.0), finite


def fit_star(objective, candidates, settings: InversionSettings, curvature=None, screened=None) -> dict:
    """Minimise one star's ``objective(theta [F]) -> scalar`` (traceable) from candidates [C, F]: screen them, Adam
    from the ``settings.n_starts`` best, damped Newton from the best of those, Laplace covariance (module docstring).
    ``curvature(theta) -> (gradient, matrix)`` for Newton and Laplace; default the objective's exact Hessian.
    ``screened`` [C]: the objective at the candidates when the caller has it already (else computed here).
    Returns theta [F], objective, covariance [F, F], ridge, hessian_finite, start_objective [n_starts],
    grad_finite, converged, steps, candidate (index of the winning candidate)."""
    screened = _finite_or_inf(jax.vmap(objective)(candidates) if screened is None else screened)  # [C]
    keep = jnp.argsort(screened)[: settings.n_starts]
    thetas, values, steps, finite = jax.vmap(lambda t: _adam(objective, t, settings))(candidates[keep])
    best = jnp.argmin(values)
    start = jnp.where(jnp.all(jnp.isfinite(thetas[best])), thetas[best], candidates[keep[0]])
    theta, value, converged, newton_iters, grad, hess = _newton(objective, start, values[best], settings, curvature)
    cov, ridge, hess_finite = laplace_covariance(hess)
    return dict(theta=theta, objective=value, covariance=cov, ridge=ridge,
                hessian_finite=hess_finite, start_objective=values,
                grad_finite=jnp.all(finite) & jnp.all(jnp.isfinite(grad)), converged=converged,
                steps=jnp.max(steps) + newton_iters, candidate=keep[best])


def _invert_one_star(params, prior, problem, candidates, spec, settings: InversionSettings):
    """One star: candidates [C, F] -> dict of its fit (see :func:`invert_batch`)."""
    # The model once at every candidate: the screening objective and, for model_variance="fixed", the model's
    # variance at the forward prediction (candidate 0). Each model evaluation written here is one more copy of
    # the network in the compiled program, so none is repeated.
    means, variances = jax.vmap(lambda t: _moments(params, t, problem, spec))(candidates)  # [C, S]
    if settings.model_variance == "fixed":
        problem = {**problem, "model_var": jax.lax.stop_gradient(variances[0] - problem["obs_var"])}
        variances = jnp.broadcast_to(problem["model_var"] + problem["obs_var"], variances.shape)
        if "resid_corr" in problem:
            problem = _with_model_error(problem)
            means = means @ problem["whiten"].T
            variances = jnp.ones_like(variances)
    screened = jax.vmap(lambda m, v, t: _nll_of_moments(m, v, problem) + neg_log_prior(t, prior))(
        means, variances, candidates)
    objective = functools.partial(_objective, params, problem=problem, prior=prior, spec=spec)
    curvature = None
    if settings.curvature == "fisher":
        curvature = functools.partial(grad_and_fisher, functools.partial(_moments, params, problem=problem, spec=spec),
                                      problem["obs_z"], problem["obs_mask"], functools.partial(neg_log_prior, prior=prior))
    out = fit_star(objective, candidates, settings, curvature, screened)
    # The likelihood part of the final objective (the network is not evaluated again for it).
    out["nll"] = out["objective"] - neg_log_prior(out["theta"], prior)
    if "model_var" in problem:
        out["model_var"] = problem["model_var"]
    return out


@functools.partial(jax.jit, static_argnames=("spec", "settings"))
def invert_batch(params, prior, problems, candidates, *, spec: ModelSpec, settings: InversionSettings):
    """Invert B stars at once (vmap of the one-star inversion).

    prior: arrays of the prior (:func:`mixture_prior_arrays`, :func:`flat_prior_arrays`); problems: dict of arrays
    with a leading star axis B: free_ids [B, F], fixed_z [B, K], fixed_ids [B, K], obs_z [B, S], obs_var [B, S],
    obs_mask [B, S] bool, obs_ids [B, S]; candidates [B, C, F] starting candidates (standardised). Returns a dict:
    theta [B, F], objective [B], nll [B], covariance [B, F, F], ridge [B], hessian_finite [B], start_objective
    [B, n_starts], grad_finite [B], converged [B], steps [B], candidate [B] (index of the winning candidate).
    """
    chex.assert_rank(candidates, 3)
    return jax.vmap(_invert_one_star, in_axes=(None, None, 0, 0, None, None))(
        params, prior, problems, candidates, spec, settings)


@functools.partial(jax.jit, static_argnames=("spec",))
def importance_batch(params, prior, problems, theta, covariance, eps, *, spec: ModelSpec):
    """Laplace importance sampling: draws theta + L eps (L L^T = covariance; eps [S, F] shared) -> (samples
    [B, S, F], normalised log weights [B, S]) of the target exp(-objective) against the Laplace proposal."""

    def one(problem, mean, cov):
        problem = _with_model_error(problem)
        chol = jnp.linalg.cholesky(cov + 1e-9 * jnp.eye(cov.shape[0]))
        samples = mean[None, :] + eps @ chol.T
        target = -jax.vmap(lambda t: _objective(params, t, problem, prior, spec))(samples)
        proposal = -0.5 * jnp.sum(eps**2, axis=1)
        logw = target - proposal  # the proposal's normalisation is the same for every sample
        logw = jnp.where(jnp.isfinite(logw), logw, -jnp.inf)
        return samples, logw - jax.scipy.special.logsumexp(logw)

    return jax.vmap(one)(problems, theta, covariance)


# ============================================================================== the object shell
def flag_reasons(names, converged, hessian_finite, ridge, grad_finite, edge, newton_steps: int) -> np.ndarray:
    """Why each star's fit is flagged ('' when it is not): [N] object array of '; '-joined reasons from the flags
    converged, hessian_finite, grad_finite [N] bool, ridge [N] float, edge [N, F] bool."""
    reasons = []
    for i in range(len(converged)):
        r = []
        if not converged[i]:
            r.append(f"not converged in {newton_steps} Newton steps")
        if not hessian_finite[i]:
            r.append("Hessian not finite: errors are the training spread")
        elif ridge[i] > 0:
            r.append(f"Hessian not positive definite: ridge {ridge[i]:.3g} added")
        if not grad_finite[i]:
            r.append("a gradient was not finite")
        if np.any(edge[i]):
            r.append("optimum at the edge of the training range (" + ",".join(np.array(names)[np.asarray(edge[i])]) + ")")
        reasons.append("; ".join(r))
    return np.array(reasons, dtype=object)


@dataclass(frozen=True)
class InversionResult:
    """Fitted free tokens of N stars in physical units.

    ``res["teff"]``, ``res["teff_error"]`` (Laplace 1-sigma, prior included); ``covariance`` [N, F, F]
    (physical); ``z`` [N, F] standardised; ``nll`` [N] the likelihood part at the optimum, ``objective`` [N]
    with the prior; ``start_nll`` [N, n_starts] the kept starts' objective after Adam; flags [N]:
    ``grad_finite``, ``laplace_ok`` (Hessian positive definite, no ridge), ``hessian_regularised``,
    ``converged``, ``at_edge``, ``flagged`` (any problem) and ``reason`` (why, '' when none); ``steps`` [N]
    optimiser iterations; ``prior`` what prior was used, ``model_error`` what model error; ``seconds`` wall time. With ``posterior_samples``:
    ``samples`` [N, S, F] (physical), ``log_weights`` [N, S] (normalised importance weights against the Laplace
    proposal) and ``ess`` [N] (effective sample size / S: near 1 when the Laplace Gaussian is adequate).
    """

    names: tuple[str, ...]
    values: np.ndarray
    errors: np.ndarray
    covariance: np.ndarray
    z: np.ndarray
    nll: np.ndarray
    objective: np.ndarray
    start_nll: np.ndarray
    grad_finite: np.ndarray
    laplace_ok: np.ndarray
    hessian_regularised: np.ndarray
    converged: np.ndarray
    at_edge: np.ndarray
    reason: np.ndarray
    steps: np.ndarray
    prior: str
    seconds: float
    model_error: str = "none"
    samples: np.ndarray | None = None
    log_weights: np.ndarray | None = None
    ess: np.ndarray | None = None

    @property
    def flagged(self) -> np.ndarray:
        return np.array([bool(r) for r in self.reason], dtype=bool)

    def __getitem__(self, key: str) -> np.ndarray:
        for j, name in enumerate(self.names):
            if key == name:
                return self.values[:, j]
            if key == f"{name}_error":
                return self.errors[:, j]
        raise KeyError(f"{key!r} is not in this result; free tokens: {list(self.names)} (and their _error)")

    def __len__(self) -> int:
        return self.values.shape[0]

    def to_dict(self) -> dict[str, np.ndarray]:
        """Columns: each value and ``_error``, ``corr_<a>_<b>`` (correlation of every pair), the objective, the
        flags and ``reason``."""
        out = {n: self.values[:, j] for j, n in enumerate(self.names)}
        out.update({f"{n}_error": self.errors[:, j] for j, n in enumerate(self.names)})
        for a in range(len(self.names)):
            for b in range(a + 1, len(self.names)):
                out[f"corr_{self.names[a]}_{self.names[b]}"] = (
                    self.covariance[:, a, b] / (self.errors[:, a] * self.errors[:, b]))
        out.update(nll=self.nll, objective=self.objective, converged=self.converged, at_edge=self.at_edge,
                   hessian_regularised=self.hessian_regularised, grad_finite=self.grad_finite,
                   laplace_ok=self.laplace_ok, flagged=self.flagged, reason=self.reason)
        return out

    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame(self.to_dict())


def _names_list(names) -> list:
    return [names] if isinstance(names, (str, int, np.integer)) else list(names)


def default_free_names(vocab) -> list[str]:
    """``DEFAULT_FREE`` restricted to the vocabulary's tokens (a schema without logebv fits the other three)."""
    free = [n for n in DEFAULT_FREE if n in vocab.names]
    if not free:
        raise ValueError(f"none of the default free tokens {DEFAULT_FREE} is in the vocabulary; pass free=[...]")
    return free


_AUTO_PRIORS: dict = {}


def auto_prior(model) -> InversionPrior | None:
    """The prior ``prior="auto"`` uses: the model's own (``metadata["inversion_prior"]``) if it has one; else one
    fitted (:meth:`InversionPrior.fit`, cached per process) on the train split of the embedded real data set of the
    model's schema when that data set has exactly the model's tokens (needs the 'data' extra); else None (flat)."""
    stored = model.metadata.get("inversion_prior")
    if stored:
        return InversionPrior.from_dict(stored)
    key = (model.vocab.schema, tuple(model.vocab.names))
    if key in _AUTO_PRIORS:
        return _AUTO_PRIORS[key]
    prior = None
    try:
        from . import data as data_lib
        from .schemas import get_schema

        get_schema(model.vocab.schema)
        dataset = data_lib.read_dataset(data_lib.default_dataset_path(schema=model.vocab.schema))
        if list(dataset.vocab.names) == list(model.vocab.names):
            prior = InversionPrior.fit(dataset.train.values, model.vocab, default_free_names(model.vocab))
            prior.info["source"] = f"train split of {dataset.provenance.get('file', 'the embedded data set')}"
    except Exception as err:  # noqa: BLE001 - no data set for this model: a flat prior, said once
        warnings.warn(f"prior='auto': no training data set for schema {model.vocab.schema!r} ({type(err).__name__}: "
                      f"{err}); the inversion uses a flat prior", stacklevel=3)
    _AUTO_PRIORS[key] = prior
    return prior


def resolve_prior(model, free: Sequence[str], prior="auto", prior_sigma: float | None = None):
    """(prior arrays, InversionPrior or None, description) for ``prior``: "auto" (:func:`auto_prior`), None
    (flat), an :class:`InversionPrior` or a path to its JSON; ``prior_sigma`` (a Gaussian N(0, sigma^2) in
    standardised units) replaces it when given."""
    if prior_sigma is not None:
        if not prior_sigma > 0:
            raise ValueError(f"prior_sigma must be > 0, got {prior_sigma}")
        return gaussian_prior_arrays(len(free), float(prior_sigma)), None, f"gaussian(sigma={prior_sigma})"
    if isinstance(prior, str) and prior == "auto":
        prior = auto_prior(model)
    elif isinstance(prior, (str, pathlib.Path)):
        prior = InversionPrior.load(prior)
    if prior is None:
        return flat_prior_arrays(len(free)), None, "flat"
    if not isinstance(prior, InversionPrior):
        raise ValueError(f"prior must be 'auto', None, an InversionPrior or a path to its JSON, got {type(prior).__name__}")
    covered = [n for n in free if n in prior.names]
    return (mixture_prior_arrays(prior, model.vocab, free), prior,
            f"mixture({len(prior.weights)} components over {','.join(covered)})")


def resolve_model_error(model, observed_names: Sequence[str], model_error="auto", model_variance: str = "fixed"):
    """(ModelError or None, description) for ``model_error``: "auto" (the model's stored one,
    ``metadata["inversion_model_error"]``, when it covers every observed token and the variance is fixed; else
    none), None, a :class:`ModelError` or the path of its JSON."""
    if isinstance(model_error, str) and model_error == "auto":
        stored = model.metadata.get("inversion_model_error")
        model_error = ModelError.from_dict(stored) if stored else None
        if model_error is None or model_variance != "fixed" or not model_error.covers(observed_names):
            return None, "none"
    elif isinstance(model_error, (str, pathlib.Path)):
        model_error = ModelError.load(model_error)
    if model_error is None:
        return None, "none"
    if not isinstance(model_error, ModelError):
        raise ValueError(f"model_error must be 'auto', None, a ModelError or a path to its JSON, got "
                         f"{type(model_error).__name__}")
    if model_variance != "fixed":
        raise ValueError("a model error covariance needs model_variance='fixed' (it scales the variance at the "
                         "forward prediction)")
    model_error.for_names(observed_names)  # says which observed tokens it does not cover
    floor = ", ".join(f"{n} {f:.3g}" for n, f in zip(model_error.free, model_error.floor) if f > 0)
    return model_error, (f"covariance of {len(model_error.names)} tokens from {model_error.info.get('n_stars', '?')} "
                         f"training stars" + (f"; floor {floor}" if floor else ""))


def _support(model, free_ids, prior: InversionPrior | None, names):
    """Training range [F] low, high (physical) for the edge flag: the model's token_range, else the prior's."""
    if model.token_range is not None:
        return model.token_range[0][free_ids - 1], model.token_range[1][free_ids - 1]
    lo, hi = np.full(len(names), -np.inf), np.full(len(names), np.inf)
    if prior is not None:
        for j, n in enumerate(names):
            if n in prior.names:
                lo[j], hi[j] = prior.low[prior.names.index(n)], prior.high[prior.names.index(n)]
    return lo, hi


def _grid(free: list[str], prior_arrays: dict, prior: InversionPrior | None) -> np.ndarray:
    """Coarse grid over the training distribution [G, F] (standardised): the training median, plus the mixture
    means (with a mixture prior) or a teff x logg grid at -1, 0, 1 robust sigma."""
    f = len(free)
    points = [np.zeros(f)]
    if prior is not None and len(prior.weights) > 1:
        points += list(np.asarray(prior_arrays["means"], np.float64))
    else:
        axes = [j for j, n in enumerate(free) if n in ("teff", "logg")]
        for combo in np.array(np.meshgrid(*[[-1.0, 0.0, 1.0]] * len(axes))).reshape(len(axes), -1).T if axes else []:
            p = np.zeros(f)
            p[axes] = combo
            if np.any(p):
                points.append(p)
    return np.array(points, np.float32)


def invert(model, observed, observed_names: Sequence[str], observed_errors=None, *, free: Sequence[str] | None = None,
           fixed=None, fixed_names: Sequence[str] = (), prior="auto", prior_sigma: float | None = None,
           steps: int = 30, learning_rate: float = 0.05, n_starts: int = 2, n_draws: int = 4,
           newton_steps: int = DEFAULT_NEWTON_STEPS,
           patience: int = 5, curvature: str = "fisher", model_variance: str = "fixed",
           posterior_samples: int = 0, seed: int = 0, model_error="auto",
           chunk_size: int | None = None, progress: bool = False) -> InversionResult:
    """Fit ``free`` input tokens of N stars to observed tokens (typically a spectrum); see the module docstring.

    Args:
      model: a :class:`stellarfm_jax.inference.StellarModel`.
      observed: [N, S] or [S] physical values of the observed tokens (NaN = missing, ignored).
      observed_names: their S token names.
      observed_errors: [N, S] or [S] 1-sigma errors (physical units; NaN or None = 0, only the model variance).
      free: free token names; default ``DEFAULT_FREE`` restricted to the vocabulary's tokens.
      fixed, fixed_names: optional known inputs [N, K] (NaN = not given) held fixed during the fit.
      prior: "auto" (default: the model's stored prior, else one fitted on the train split of the embedded data
        set of the model's schema, else flat; :func:`auto_prior`), None (flat), an :class:`InversionPrior` or the
        path of its JSON. ``prior_sigma``: a Gaussian N(0, sigma^2) (standardised) instead.
      steps, learning_rate, patience: Adam iterations at most, its step size and early-stopping patience.
      n_starts: candidates kept (of the forward prediction, ``n_draws`` draws around it, the grid and the median).
      newton_steps: damped Newton iterations at most after Adam.
      curvature: "fisher" (default: the likelihood's Fisher information + the prior's Hessian, positive
        semi-definite and ~4x cheaper) or "hessian" (the objective's exact Hessian) for Newton and the Laplace errors.
      model_variance: "fixed" (default: the model's variance at its forward prediction of the free tokens, held
        constant: a chi^2 fit with the model's error as a systematic floor) or "predicted" (its variance at the
        fitted values: the Gaussian NLL, which on real spectra drifts to where the model is less sure).
      model_error: "auto" (default: the model's stored :class:`ModelError`, if it has one covering the observed
        tokens: the fit then uses the residuals' covariance measured on training stars and adds the calibrated
        systematic floor to the errors), None (independent tokens, no floor), a :class:`ModelError` or its JSON path.
      posterior_samples: Laplace importance samples per star (0 = none; drawn from the fit's covariance without the
        floor).
      seed: the draws around the forward prediction and the posterior samples (the same for every star).
      chunk_size: stars per device call (default 32 on a CPU, 1024 elsewhere).
    """
    vocab = model.vocab
    free = default_free_names(vocab) if free is None else free
    free, observed_names, fixed_names = _names_list(free), _names_list(observed_names), _names_list(fixed_names)
    free_ids = token_ids(vocab, free)
    obs_ids = token_ids(vocab, observed_names)
    fixed_ids = token_ids(vocab, fixed_names) if fixed_names else np.zeros(0, np.int32)
    free = list(vocab.names_of(free_ids))
    overlap = set(free_ids.tolist()) & (set(obs_ids.tolist()) | set(fixed_ids.tolist()))
    if overlap:
        raise ValueError(f"free tokens {vocab.names_of(sorted(overlap))} are also observed or fixed; a token is one of the three")
    if len(free) + len(fixed_ids) > model.context_length:
        raise ValueError(f"{len(free)} free + {len(fixed_ids)} fixed inputs exceed the context length {model.context_length}")
    if n_starts < 1 or steps < 1 or n_draws < 0 or posterior_samples < 0:
        raise ValueError(f"n_starts and steps must be >= 1, n_draws and posterior_samples >= 0; got {n_starts}, "
                         f"{steps}, {n_draws}, {posterior_samples}")

    obs = as_float_array(observed, "observed")
    obs = obs[None, :] if obs.ndim == 1 else obs
    if obs.ndim != 2 or obs.shape[1] != len(obs_ids):
        raise ValueError(f"observed must be [N, {len(obs_ids)}] for {len(obs_ids)} observed names, got {obs.shape}")
    n = obs.shape[0]
    if np.isinf(obs).any():
        raise ValueError("observed values must be finite or NaN (missing)")
    if observed_errors is None:
        err = np.zeros_like(obs)
    else:
        err = np.broadcast_to(as_float_array(observed_errors, "observed_errors"), obs.shape)
        if (err < 0).any():
            raise ValueError("observed_errors must be >= 0")
        err = np.where(np.isfinite(err), err, 0.0)
    scale, centre = vocab.scale_by_id[obs_ids], vocab.centre_by_id[obs_ids]
    obs_mask = np.isfinite(obs)
    if not obs_mask.any(axis=1).all():
        raise ValueError(f"stars {np.flatnonzero(~obs_mask.any(axis=1))[:10].tolist()} have no observed value to fit")
    obs_z = np.where(obs_mask, (obs - centre) / scale, 0.0)
    obs_var = (err / scale) ** 2

    if len(fixed_ids):
        fx = as_float_array(fixed, "fixed")
        fx = np.broadcast_to(fx[None, :] if fx.ndim == 1 else fx, (n, len(fixed_ids)))
        fixed_z, fixed_tok, _ = vocab.standardize(fx, fixed_ids)
    else:
        fx = np.zeros((n, 0))
        fixed_z, fixed_tok = np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int32)

    prior_arrays, prior_obj, prior_text = resolve_prior(model, free, prior, prior_sigma)
    model_err, model_err_text = resolve_model_error(model, observed_names, model_error, model_variance)
    settings = InversionSettings(int(steps), float(learning_rate), int(n_starts), int(patience), int(newton_steps),
                                 curvature=curvature, model_variance=model_variance)
    chunk = default_chunk_size() if chunk_size is None else int(chunk_size)
    t0 = time.perf_counter()

    # Candidates: the forward prediction from the observed (+ fixed) tokens, draws around it, the grid, the median.
    context = prepare_inputs(vocab, np.concatenate([obs, fx], 1), np.concatenate([obs_ids, fixed_ids]).astype(np.int32),
                             np.concatenate([err, np.zeros_like(fx)], 1), context_length=model.context_length,
                             overflow="keep_informative")

    def forward_chunk(values, tokens):
        mean, logvar, _ = forward.predict(model.params, values, tokens, jnp.asarray(free_ids), spec=model.spec)
        return mean, logvar

    chunk = max(int(chunk), 8)
    pad = (-n) % chunk  # see below: every device call has the same row count
    padded = lambda a: np.concatenate([a, np.zeros((pad,) + a.shape[1:], a.dtype)]) if pad else a  # noqa: E731
    f_mean, f_logvar = map_chunks(forward_chunk, [padded(context.values), padded(context.tokens)], chunk)
    f_mean, f_logvar = np.asarray(f_mean)[:n], np.asarray(f_logvar)[:n]
    f_sigma = np.exp(0.5 * np.asarray(f_logvar, np.float64))
    f_mean = np.asarray(f_mean, np.float64)
    f_scale, f_centre = vocab.scale_by_id[free_ids], vocab.centre_by_id[free_ids]
    low, high = _support(model, free_ids, prior_obj, free)
    z_low, z_high = (low - f_centre) / f_scale, (high - f_centre) / f_scale
    eps = np.random.default_rng(seed).standard_normal((n_draws, len(free)))
    draws = f_mean[:, None, :] + eps[None] * f_sigma[:, None, :]
    grid = _grid(free, prior_arrays, prior_obj)
    grid = np.broadcast_to(grid[None], (n,) + grid.shape)
    candidates = np.concatenate([f_mean[:, None, :], draws, grid], axis=1)
    candidates = np.where(np.isfinite(candidates), candidates, 0.0)
    candidates = np.clip(candidates, np.nan_to_num(z_low, neginf=-1e3), np.nan_to_num(z_high, posinf=1e3))
    settings = dataclasses.replace(settings, n_starts=min(settings.n_starts, candidates.shape[1]))

    problems = dict(
        free_ids=np.broadcast_to(free_ids, (n, len(free_ids))).astype(np.int32),
        fixed_z=fixed_z.astype(np.float32), fixed_ids=fixed_tok.astype(np.int32),
        obs_z=obs_z.astype(np.float32), obs_var=obs_var.astype(np.float32), obs_mask=obs_mask,
        obs_ids=np.broadcast_to(obs_ids, obs.shape).astype(np.int32),
    )
    if model_err is not None:
        m_err, c_err = model_err.for_names(observed_names)
        problems["resid_corr"] = np.broadcast_to(c_err.astype(np.float32), (n,) + c_err.shape)
        problems["resid_mean"] = np.broadcast_to(m_err.astype(np.float32), (n, len(m_err)))
    keys = list(problems)
    prior_j = {k: jnp.asarray(v) for k, v in prior_arrays.items()}

    def run(cands, *arrays):
        return invert_batch(model.params, prior_j, dict(zip(keys, arrays)), cands.astype(np.float32),
                            spec=model.spec, settings=settings)

    # Every chunk has the same row count (padding stars have no observed token), so every star goes through the
    # same compiled program whatever the number of stars: a star's fit is bit for bit its fit alone.
    if pad:
        candidates = np.concatenate([candidates, np.zeros((pad,) + candidates.shape[1:], candidates.dtype)])
        problems = {k: np.concatenate([v, np.zeros((pad,) + v.shape[1:], v.dtype)]) for k, v in problems.items()}
    out = map_chunks(run, [candidates] + [problems[k] for k in keys], chunk, progress=progress, desc="inverting")
    if "model_var" in out:  # the importance weights use the fit's objective, with the same fixed variance
        problems["model_var"] = np.asarray(out["model_var"])
        keys.append("model_var")
    out = {k: np.asarray(v)[:n] for k, v in out.items()}
    theta = np.asarray(out["theta"], np.float64)
    chex.assert_shape(theta, (n, len(free)))
    cov_z = np.asarray(out["covariance"], np.float64)
    cov_phys = cov_z * f_scale[None, :, None] * f_scale[None, None, :]
    if model_err is not None:  # the systematic floor, in quadrature
        cov_phys = cov_phys + np.diag(model_err.floor_for(free) ** 2)[None]
    values = theta * f_scale + f_centre
    errors = np.sqrt(np.diagonal(cov_phys, axis1=1, axis2=2))
    margin = np.where(np.isfinite(high - low), EDGE_FRACTION * (high - low), 0.0)
    edge = (values <= low + margin) | (values >= high - margin)
    ridge, hess_finite = np.asarray(out["ridge"]), np.asarray(out["hessian_finite"], bool)
    grad_finite, converged = np.asarray(out["grad_finite"], bool), np.asarray(out["converged"], bool)
    reasons = flag_reasons(free, converged, hess_finite, ridge, grad_finite, edge, settings.newton_steps)

    samples = log_weights = ess = None
    if posterior_samples:
        eps_s = jnp.asarray(np.random.default_rng(seed + 1).standard_normal((posterior_samples, len(free))), jnp.float32)

        def sample_chunk(th, cv, *arrays):
            return importance_batch(model.params, prior_j, dict(zip(keys, arrays)), th.astype(np.float32),
                                    cv.astype(np.float32), eps_s, spec=model.spec)

        th_pad = np.concatenate([theta, np.zeros((pad, len(free)))])
        cov_pad = np.concatenate([cov_z, np.broadcast_to(np.eye(len(free)), (pad, len(free), len(free)))])
        s_z, log_weights = map_chunks(sample_chunk, [th_pad, cov_pad] + [problems[k] for k in keys], chunk)
        s_z, log_weights = np.asarray(s_z)[:n], np.asarray(log_weights)[:n]
        samples = np.asarray(s_z, np.float64) * f_scale + f_centre
        log_weights = np.asarray(log_weights, np.float64)
        ess = 1.0 / np.sum(np.exp(2 * log_weights), axis=1) / posterior_samples
    seconds = time.perf_counter() - t0
    return InversionResult(
        names=tuple(free), values=values, errors=errors, covariance=cov_phys, z=theta,
        nll=np.asarray(out["nll"], np.float64), objective=np.asarray(out["objective"], np.float64),
        start_nll=np.asarray(out["start_objective"], np.float64), grad_finite=grad_finite,
        laplace_ok=hess_finite & (ridge == 0), hessian_regularised=~hess_finite | (ridge > 0), converged=converged,
        at_edge=edge.any(axis=1), reason=reasons, steps=np.asarray(out["steps"]),
        prior=prior_text, model_error=model_err_text, seconds=seconds, samples=samples, log_weights=log_weights, ess=ess)


__all__ = ["DEFAULT_FREE", "InversionPrior", "InversionResult", "InversionSettings", "ModelError", "auto_prior",
           "calibrate_model_error", "calibration_floor", "default_free_names", "measure_model_error",
           "normalised_residuals", "resolve_model_error",
           "fit_star", "flag_reasons", "grad_and_fisher", "grad_and_hessian", "flat_prior_arrays", "gaussian_prior_arrays", "importance_batch", "invert", "invert_batch",
           "laplace_covariance", "mixture_prior_arrays", "neg_log_prior", "resolve_prior"]
