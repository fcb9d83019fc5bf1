"""Residual and calibration statistics and the input sets they are measured on: one module for the training
monitor (``train.fit``'s validation label metrics) and the evaluation report alike, so the two cannot drift.

Conventions:

* residual = prediction - truth;
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

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .vocab import evenly_spaced, robust_scale

MONITOR_LABELS = ("teff", "logg", "m_h")  # the labels the training monitor and the headline tables report


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


# ------------------------------------------------------------------------------------------------ input sets
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


def spectra_colour_inputs(vocab, context_length: int) -> list[str]:
    """The "spectra + colours" input set (the training monitor's and the report's ``xp_colours``): every colour
    token and as many spectrum tokens as fit in the context, evenly spaced over the spectrum."""
    colours = vocab.group_names("colour")
    return evenly_spaced(vocab.group_names("spectrum"), max(context_length - len(colours), 0)) + colours


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


# ------------------------------------------------------------------------------------------------ label metrics
def label_metrics(predict_fn: Callable, vocab, values, errors, input_names, label_names) -> dict:
    """Robust scatter, bias and robust z-score std of labels predicted from ``input_names`` (the training
    monitor's numbers, keyed ``{label}_scatter``, ``{label}_bias``, ``{label}_z_std``, plus ``label_scatter``,
    the mean of the scatters in units of each label's training scale).

    ``predict_fn(values_z [N, T], tokens [N, T], requests [R]) -> (mean, logvar) [N, R]`` (standardised).
    values/errors: raw [N, V]. Only stars with a finite true label enter each label's numbers.
    """
    in_ids = vocab.ids(input_names)
    z, tokens, _ = vocab.standardize(values[:, in_ids - 1], in_ids)
    label_ids = vocab.ids(label_names)
    mean, logvar = predict_fn(z, tokens, label_ids)
    requests = label_ids[None, :]
    pred = vocab.destandardize(np.asarray(mean), requests)
    sigma = vocab.destandardize_error(np.sqrt(np.exp(np.asarray(logvar, np.float64))), requests)
    out = {}
    for j, name in enumerate(label_names):
        col = label_ids[j] - 1
        truth = values[:, col].astype(np.float64)
        res = residual_stats(pred[:, j], truth)
        if res["n"] < 2:
            continue
        cal = calibration_stats(pred[:, j], sigma[:, j], truth, errors[:, col])
        out[f"{name}_scatter"], out[f"{name}_bias"], out[f"{name}_z_std"] = res["scatter"], res["bias"], cal["z_std"]
    scaled = [out[f"{n}_scatter"] / vocab.scale[vocab.token_id(n) - 1] for n in label_names if f"{n}_scatter" in out]
    if scaled:
        out["label_scatter"] = float(np.mean(scaled))
    return out
