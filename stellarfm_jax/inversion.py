"""Differentiable inversion (DESIGN §5): fit free input tokens so that the model's predicted spectrum
matches an observed one.

For one star with free inputs theta (standardised units, e.g. teff, logg, m_h, logebv), optional fixed
inputs, and observed tokens y with errors e (standardised), the objective is the Gaussian negative
log-likelihood

    NLL(theta) = 0.5 * sum_j [ (y_j - mu_j(theta))^2 / V_j(theta) + ln V_j(theta) ],
    V_j = e_j^2 + exp(logvar_j(theta))          (observed error^2 + model predictive variance)

over the observed (non-missing) tokens j, plus ``0.5 * |theta|^2 / prior_sigma^2`` when a Gaussian prior
(in standardised units, centred on the training median) is asked for. It is minimised with optax Adam on
``jax.grad`` over the float input *values* (token ids never move), from several starts per star (the
training median plus random draws; the same starts for every star, so a star's answer does not depend on
its batch; the step size decays along a cosine to 1% of its start), ``vmap``ped over starts and stars. The best start wins; the Laplace covariance is the inverse
``jax.hessian`` of the NLL at that optimum.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import forward
from .forward import DEFAULT_CHUNK_SIZE, ModelSpec, map_chunks
from .inputs import as_float_array, token_ids

DEFAULT_FREE = ("teff", "logg", "m_h", "logebv")


@dataclass(frozen=True)
class InversionSettings:
    """Static optimiser settings (hashable: part of the jit key)."""

    steps: int = 300
    learning_rate: float = 0.05
    n_starts: int = 4
    prior_sigma: float | None = None  # Gaussian prior width on theta (standardised units); None = flat


def _nll(params, theta, problem, spec: ModelSpec, prior_sigma):
    """NLL of one star. theta [F]; problem: dict of one star's arrays (see ``_star_problem``)."""
    values = jnp.concatenate([theta, problem["fixed_z"]])[None, :]  # [1, F + K]
    tokens = jnp.concatenate([problem["free_ids"], problem["fixed_ids"]])[None, :]
    mean, logvar = forward.apply(params, values, tokens, problem["obs_ids"][None, :], spec=spec)
    var = jnp.exp(logvar[0]) + problem["obs_var"]  # [S]
    resid = problem["obs_z"] - mean[0]
    terms = jnp.where(problem["obs_mask"], resid**2 / var + jnp.log(var), 0.0)
    nll = 0.5 * jnp.sum(terms)
    if prior_sigma is not None:
        nll = nll + 0.5 * jnp.sum(theta**2) / prior_sigma**2
    return nll


def _fit_one_start(params, theta0, problem, spec, settings: InversionSettings):
    """Adam from theta0 [F] -> (theta [F], nll, all gradients finite)."""
    objective = functools.partial(_nll, params, problem=problem, spec=spec, prior_sigma=settings.prior_sigma)
    # Cosine decay to 1% of the step size: large steps to find the basin, small ones to settle in it.
    optimizer = optax.adam(optax.cosine_decay_schedule(settings.learning_rate, settings.steps, alpha=0.01))

    def step(carry, _):
        theta, opt_state, finite = carry
        grad = jax.grad(objective)(theta)
        finite = finite & jnp.all(jnp.isfinite(grad))
        updates, opt_state = optimizer.update(grad, opt_state, theta)
        return (optax.apply_updates(theta, updates), opt_state, finite), None

    (theta, _, finite), _ = jax.lax.scan(step, (theta0, optimizer.init(theta0), jnp.array(True)), None,
                                         length=settings.steps)
    return theta, objective(theta), finite


def _invert_one_star(params, starts, problem, spec, settings):
    """starts [S0, F] -> best theta [F], its NLL, covariance [F, F], per-start NLL [S0], flags."""
    thetas, nlls, finite = jax.vmap(_fit_one_start, in_axes=(None, 0, None, None, None))(
        params, starts, problem, spec, settings)
    nlls = jnp.where(jnp.isfinite(nlls), nlls, jnp.inf)
    best = jnp.argmin(nlls)
    theta = thetas[best]
    objective = functools.partial(_nll, params, problem=problem, spec=spec, prior_sigma=settings.prior_sigma)
    hessian = jax.hessian(objective)(theta)
    hessian = 0.5 * (hessian + hessian.T)
    eigenvalues = jnp.linalg.eigvalsh(hessian)
    positive = jnp.all(eigenvalues > 0)
    covariance = jnp.where(positive, jnp.linalg.inv(jnp.where(positive, hessian, jnp.eye(theta.shape[0]))), jnp.nan)
    final_grad = jax.grad(objective)(theta)
    return theta, nlls[best], covariance, nlls, jnp.all(finite) & jnp.all(jnp.isfinite(final_grad)), positive


@functools.partial(jax.jit, static_argnames=("spec", "settings"))
def invert_batch(params, starts, problems, *, spec: ModelSpec, settings: InversionSettings):
    """Invert B stars at once (vmap of the one-star inversion).

    starts [S0, F] standardised starting points shared by all stars; problems: dict of arrays with a
    leading star axis B: free_ids [B, F], fixed_z [B, K], fixed_ids [B, K], obs_z [B, S], obs_var [B, S],
    obs_mask [B, S] bool, obs_ids [B, S]. Returns (theta [B, F], nll [B], covariance [B, F, F],
    start_nll [B, S0], grad_finite [B], laplace_ok [B]), standardised units.
    """
    return jax.vmap(_invert_one_star, in_axes=(None, None, 0, None, None))(params, starts, problems, spec, settings)


@dataclass(frozen=True)
class InversionResult:
    """Fitted free tokens of N stars in physical units.

    ``res["teff"]``, ``res["teff_error"]`` (Laplace 1-sigma); ``covariance`` [N, F, F] (physical units);
    ``nll`` [N] (best start), ``start_nll`` [N, n_starts]; flags ``grad_finite`` [N] (every gradient of every
    start finite) and ``laplace_ok`` [N] (Hessian positive definite at the optimum; errors are NaN
    otherwise); ``seconds`` wall time of the whole inversion.
    """

    names: tuple[str, ...]
    values: np.ndarray
    errors: np.ndarray
    covariance: np.ndarray
    z: np.ndarray
    nll: np.ndarray
    start_nll: np.ndarray
    grad_finite: np.ndarray
    laplace_ok: np.ndarray
    seconds: float

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
        out = {n: self.values[:, j] for j, n in enumerate(self.names)}
        out.update({f"{n}_error": self.errors[:, j] for j, n in enumerate(self.names)})
        out.update(nll=self.nll, grad_finite=self.grad_finite, laplace_ok=self.laplace_ok)
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


def invert(model, observed, observed_names: Sequence[str], observed_errors=None, *, free: Sequence[str] | None = None,
           fixed=None, fixed_names: Sequence[str] = (), steps: int = 300, learning_rate: float = 0.05,
           n_starts: int = 4, prior_sigma: float | None = None, seed: int = 0,
           chunk_size: int = DEFAULT_CHUNK_SIZE // 4, progress: bool = False) -> InversionResult:
    """Fit ``free`` input tokens of N stars to observed tokens (typically a spectrum).

    Args:
      model: a :class:`stellarfm_jax.inference.StellarModel`.
      observed: [N, S] or [S] physical values of the observed tokens (NaN = missing, ignored).
      observed_names: their S token names.
      observed_errors: [N, S] or [S] 1-sigma errors (physical units; NaN or None = 0, only the model variance).
      free: free token names; default ``DEFAULT_FREE`` restricted to the vocabulary's tokens.
      fixed, fixed_names: optional known inputs [N, K] (NaN = not given) held fixed during the fit.
      steps, learning_rate: Adam iterations and step size (standardised units).
      n_starts: starting points per star: the training median, then ``n_starts - 1`` draws of N(0, 1)
        (standardised; the same for every star, from ``seed``).
      prior_sigma: optional Gaussian prior width on the free inputs (standardised units).
    """
    vocab = model.vocab
    free = default_free_names(vocab) if free is None else free
    free, observed_names, fixed_names = _names_list(free), _names_list(observed_names), _names_list(fixed_names)
    free_ids = token_ids(vocab, free)
    obs_ids = token_ids(vocab, observed_names)
    fixed_ids = token_ids(vocab, fixed_names) if fixed_names else np.zeros(0, np.int32)
    overlap = set(free_ids.tolist()) & (set(obs_ids.tolist()) | set(fixed_ids.tolist()))
    if overlap:
        raise ValueError(f"free tokens {vocab.names_of(sorted(overlap))} are also observed or fixed; a token is one of the three")
    if len(free) + len(fixed_ids) > model.context_length:
        raise ValueError(f"{len(free)} free + {len(fixed_ids)} fixed inputs exceed the context length {model.context_length}")
    if n_starts < 1 or steps < 1:
        raise ValueError(f"n_starts and steps must be >= 1, got {n_starts}, {steps}")

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
        fixed_z, fixed_tok = np.zeros((n, 0), np.float32), np.zeros((n, 0), np.int32)

    problems = dict(
        free_ids=np.broadcast_to(free_ids, (n, len(free_ids))).astype(np.int32),
        fixed_z=fixed_z.astype(np.float32), fixed_ids=fixed_tok.astype(np.int32),
        obs_z=obs_z.astype(np.float32), obs_var=obs_var.astype(np.float32), obs_mask=obs_mask,
        obs_ids=np.broadcast_to(obs_ids, obs.shape).astype(np.int32),
    )
    rng = np.random.default_rng(seed)
    starts = np.concatenate([np.zeros((1, len(free))), rng.standard_normal((n_starts - 1, len(free)))]).astype(np.float32)
    settings = InversionSettings(steps, float(learning_rate), n_starts, None if prior_sigma is None else float(prior_sigma))
    keys = list(problems)

    def run(*arrays):
        return invert_batch(model.params, jnp.asarray(starts), dict(zip(keys, arrays)), spec=model.spec, settings=settings)

    t0 = time.perf_counter()
    theta, nll, cov, start_nll, grad_finite, laplace_ok = map_chunks(
        run, [problems[k] for k in keys], chunk_size, progress=progress, desc="inverting")
    seconds = time.perf_counter() - t0
    chex.assert_shape(theta, (n, len(free)))
    f_scale, f_centre = vocab.scale_by_id[free_ids], vocab.centre_by_id[free_ids]
    cov_phys = np.asarray(cov, np.float64) * f_scale[None, :, None] * f_scale[None, None, :]
    return InversionResult(
        names=tuple(vocab.names_of(free_ids)),
        values=np.asarray(theta, np.float64) * f_scale + f_centre,
        errors=np.sqrt(np.diagonal(cov_phys, axis1=1, axis2=2)),
        covariance=cov_phys, z=np.asarray(theta), nll=np.asarray(nll, np.float64), start_nll=np.asarray(start_nll),
        grad_finite=np.asarray(grad_finite, bool), laplace_ok=np.asarray(laplace_ok, bool), seconds=seconds,
    )


__all__ = ["DEFAULT_FREE", "InversionResult", "default_free_names", "InversionSettings", "invert", "invert_batch"]
