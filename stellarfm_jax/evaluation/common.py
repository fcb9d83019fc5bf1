"""Shared pieces of the evaluation tasks: the paper's input sets, input masking, model predictions on a split,
and the robust statistics every task reports.

Conventions (all tasks):

* residual = prediction - truth (the original's notebooks printed truth - prediction; only the sign of the
  bias and of the percentiles differs);
* robust scatter = 1.4826 x MAD of the residuals (``vocab.robust_scale``), bias = their median,
  p16 / p84 = their 16th / 84th percentiles;
* z = residual / sqrt(sigma_model^2 + sigma_label^2); calibration is the robust std of z (1 when the model's
  uncertainties are right) and the coverage of the 68% interval, the fraction of stars with |z| < 1 (0.683
  for Gaussian residuals with the right width). Two diagnostics go with them: the rms of z (1 when the
  predicted variance is right, whatever the shape of the residuals) and the coverage of the 2-sigma interval
  (0.954 for Gaussian residuals). Heavy-tailed residuals with the right variance give an rms near 1 but a robust
  z std below 1 (0.73 for Laplace residuals) and a 68% coverage above 0.68 (0.76 for Laplace).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

from ..train import spectra_colour_inputs
from ..vocab import evenly_spaced, robust_scale

LABELS = ("teff", "logg", "m_h", "logebv", "alpha_m")
HEADLINE_LABELS = ("teff", "logg", "m_h")
UNITS = {"teff": "K", "logg": "dex", "m_h": "dex", "alpha_m": "dex", "logebv": "", "bprp": "mag", "jk": "mag",
         "jh": "mag"}


@dataclass(frozen=True)
class InputSet:
    """A set of input tokens given to the model (and to the XGBoost expert) for every star.

    ``names``: the tokens given to every star (a star missing one of them simply lacks it). With
    ``random_count > 0`` each star instead gets ``random_count`` tokens drawn at random (seeded) among its
    available tokens of ``names``.
    """

    key: str
    title: str
    names: tuple[str, ...]
    random_count: int = 0

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self.names


def flux_tokens(vocab) -> tuple[list[str], np.ndarray]:
    """The spectrum tokens in vocabulary order and their wavelengths in nm (from names like ``f340``; the
    token's position when a name carries no wavelength)."""
    names = vocab.group_names("spectrum")
    waves = []
    for k, name in enumerate(names):
        match = re.fullmatch(r"f(\d+(?:\.\d+)?)", name)
        waves.append(float(match.group(1)) if match else float(k))
    return names, np.asarray(waves)


def least_informative_flux(vocab, values, errors, count: int) -> list[str]:
    """The ``count`` flux tokens with the lowest median signal-to-noise |value| / error over the given stars
    (the analogue of the paper's high-order XP coefficients BP/RP[25-54]), in vocabulary order."""
    names, _ = flux_tokens(vocab)
    cols = vocab.ids(names) - 1
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = np.nanmedian(np.abs(values[:, cols]) / errors[:, cols], axis=0)
    snr = np.where(np.isfinite(snr), snr, np.inf)
    order = np.argsort(snr, kind="stable")[:count]
    return [names[i] for i in sorted(order)]


def paper_input_sets(vocab, context_length: int, train_values=None, train_errors=None,
                     coarse_flux: int = 10, least_informative: int = 30) -> list[InputSet]:
    """The analogues of the paper's Figure 4 input sets for this vocabulary.

    * ``xp_colours`` (paper: BP/RP[0-29] + J-H, J-K, BP-RP): the training monitor's "spectra + colours" set,
      every colour and as many flux tokens as fit, evenly spaced over the whole spectrum
      (:func:`stellarfm_jax.train.spectra_colour_inputs`);
    * ``coarse`` (paper: BP/RP[0-4] + colours): ``coarse_flux`` evenly spaced flux tokens + colours;
    * ``random64`` (paper: 64 random of XP + colours per star): ``context_length`` random tokens per star among
      all flux and colour tokens;
    * ``least_informative`` (paper: BP/RP[25-54]): the ``least_informative`` flux tokens of lowest median
      S/N in the training split, no colours;
    * ``least_informative_labels`` (paper: the same + teff, logg, m_h): those plus the true teff, logg, m_h.
    """
    colours = vocab.group_names("colour")
    flux, _ = flux_tokens(vocab)
    sets = [
        InputSet("xp_colours", "most of the flux (evenly spaced) + colours", tuple(spectra_colour_inputs(vocab, context_length))),
        InputSet("coarse", f"{coarse_flux} evenly spaced flux tokens + colours", tuple(evenly_spaced(flux, coarse_flux) + colours)),
        InputSet("random64", f"{context_length} random flux/colour tokens per star", tuple(flux + colours), random_count=context_length),
    ]
    if train_values is not None and train_errors is not None:
        worst = least_informative_flux(vocab, train_values, train_errors, least_informative)
        labels = [n for n in HEADLINE_LABELS if n in vocab.names]
        sets.append(InputSet("least_informative", f"the {len(worst)} lowest-S/N flux tokens", tuple(worst)))
        sets.append(InputSet("least_informative_labels", f"the {len(worst)} lowest-S/N flux tokens + true {', '.join(labels)}",
                             tuple(worst + labels)))
    return sets


def masked_inputs(vocab, values, input_set: InputSet, seed: int = 0) -> np.ndarray:
    """[N, V] copy of ``values`` keeping only the input set's tokens (the rest NaN = not given).

    For a random set, each star keeps ``random_count`` of its available (finite) set tokens, drawn with a
    generator seeded by ``seed`` (all of them if it has fewer).
    """
    values = np.asarray(values)
    cols = vocab.ids(list(input_set.names)) - 1
    out = np.full(values.shape, np.nan, dtype=values.dtype)
    if input_set.random_count <= 0:
        out[:, cols] = values[:, cols]
        return out
    rng = np.random.default_rng(seed)
    sub = values[:, cols]
    keys = np.where(np.isfinite(sub), rng.random(sub.shape), np.inf)  # random order among available tokens
    rank = np.argsort(np.argsort(keys, axis=1), axis=1)
    keep = (rank < input_set.random_count) & np.isfinite(sub)
    out[:, cols] = np.where(keep, sub, np.nan)
    return out


def predict_tokens(model, inputs, requests, chunk_size: int = 1024, progress: bool = False):
    """Model predictions for [N, V] vocabulary-ordered inputs (NaN = not given).

    Returns (mean [N, R], sigma [N, R]) float64 in physical units.
    """
    inputs = np.asarray(inputs, dtype=np.float64)
    perception = model.perceive(inputs, list(model.vocab.names), chunk_size=chunk_size)
    res = perception.request(list(requests), progress=progress)
    mean = np.stack([res[n] for n in requests], axis=1)
    sigma = np.stack([res[f"{n}_error"] for n in requests], axis=1)
    return mean, sigma


def residual_stats(pred, truth) -> dict:
    """Robust statistics of prediction - truth over the stars where both are finite."""
    pred, truth = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
    ok = np.isfinite(pred) & np.isfinite(truth)
    resid = pred[ok] - truth[ok]
    if resid.size < 2:
        return {"n": int(resid.size), "scatter": float("nan"), "bias": float("nan"), "p16": float("nan"),
                "p84": float("nan")}
    p16, p84 = np.percentile(resid, [16, 84])
    return {"n": int(resid.size), "scatter": float(robust_scale(resid)), "bias": float(np.median(resid)),
            "p16": float(p16), "p84": float(p84)}


def calibration_stats(pred, sigma, truth, truth_error=None) -> dict:
    """Robust std of z = (pred - truth) / sqrt(sigma^2 + truth_error^2), the 68% coverage (|z| < 1), and the
    diagnostics rms of z (``z_rms``) and 2-sigma coverage (``coverage95``, |z| < 2).

    A NaN truth_error counts as 0 (unknown)."""
    pred, sigma, truth = (np.asarray(a, np.float64) for a in (pred, sigma, truth))
    err = np.zeros_like(truth) if truth_error is None else np.nan_to_num(np.asarray(truth_error, np.float64))
    ok = np.isfinite(pred) & np.isfinite(truth) & np.isfinite(sigma)
    z = (pred[ok] - truth[ok]) / np.sqrt(sigma[ok] ** 2 + err[ok] ** 2)
    if z.size < 2:
        return {"n": int(z.size), "z_std": float("nan"), "coverage68": float("nan"), "z_rms": float("nan"),
                "coverage95": float("nan")}
    return {"n": int(z.size), "z_std": float(robust_scale(z)), "coverage68": float(np.mean(np.abs(z) < 1.0)),
            "z_rms": float(np.sqrt(np.mean(z**2))), "coverage95": float(np.mean(np.abs(z) < 2.0)),
            "median_sigma": float(np.median(sigma[ok]))}
