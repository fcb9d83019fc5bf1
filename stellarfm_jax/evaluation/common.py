"""Shared pieces of the evaluation tasks: the paper's input sets, input masking, model predictions on a split,
and the robust statistics every task reports.

Residual and calibration statistics, input sets and their conventions live in :mod:`stellarfm_jax.metrics`
(shared with the training monitor) and are re-exported here.
"""

from __future__ import annotations

import re
import numpy as np

from ..metrics import (InputSet, MONITOR_LABELS, calibration_stats, masked_inputs, residual_stats,  # noqa: F401
                       spectra_colour_inputs)
from ..vocab import evenly_spaced

LABELS = ("teff", "logg", "m_h", "logebv", "alpha_m")
HEADLINE_LABELS = MONITOR_LABELS
UNITS = {"teff": "K", "logg": "dex", "m_h": "dex", "alpha_m": "dex", "logebv": "", "bprp": "mag", "jk": "mag",
         "jh": "mag"}


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
      (:func:`stellarfm_jax.metrics.spectra_colour_inputs`);
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


def predict_tokens(model, inputs, requests, chunk_size: int = 1024, progress: bool = False,
                   allow_untrained: bool = False):
    """Model predictions for [N, V] vocabulary-ordered inputs (NaN = not given); ``allow_untrained`` lets
    ``requests`` hold tokens the model was never trained to output.

    Returns (mean [N, R], sigma [N, R]) float64 in physical units.
    """
    inputs = np.asarray(inputs, dtype=np.float64)
    perception = model.perceive(inputs, list(model.vocab.names), chunk_size=chunk_size)
    res = perception.request(list(requests), progress=progress, allow_untrained=allow_untrained)
    mean = np.stack([res[n] for n in requests], axis=1)
    sigma = np.stack([res[f"{n}_error"] for n in requests], axis=1)
    return mean, sigma
