"""A synthetic stellar catalogue for tests and demos: tokens are noisy non-linear functions of three
latent parameters (teff, logg, m_h), with random missingness. It has the structure of the real data
(a smooth "spectrum", colours, labels) at a size that trains in seconds.
"""

from __future__ import annotations

import numpy as np

from .data.dataset import Dataset, Split
from .vocab import Vocabulary


def synthetic_vocabulary(n_spectrum: int = 24) -> Vocabulary:
    names = [f"s{i}" for i in range(n_spectrum)] + ["bprp", "jh", "jk", "teff", "logg", "m_h"]
    groups = ["spectrum"] * n_spectrum + ["colour"] * 3 + ["label"] * 3
    return Vocabulary.unit(names, outputs=[n for n in names if n not in ("bprp", "jk")], groups=groups,
                           schema="synthetic")


def synthetic_tokens(teff, logg, m_h, n_spectrum: int = 24):
    """Noise-free token values [N, V] for latent parameters [N] (physical units)."""
    t = (np.asarray(teff, np.float64) - 5000.0) / 1000.0
    g = (np.asarray(logg, np.float64) - 3.0) / 1.2
    m = (np.asarray(m_h, np.float64) + 0.5) / 0.5
    x = np.linspace(0.0, 1.0, n_spectrum)[None, :]
    t, g, m = t[:, None], g[:, None], m[:, None]
    spectrum = (
        np.exp(0.9 * t * (x - 0.4))
        * (1.0 - 0.15 * (m + 1.5) * np.exp(-np.square((x - 0.3) / 0.12)))
        + 0.08 * g * np.cos(3.0 * np.pi * x)
        + 0.03 * t * m
    )
    bprp = 1.3 - 0.55 * t + 0.06 * m + 0.04 * t**2
    jh = 0.55 - 0.18 * t + 0.04 * g
    jk = 0.68 - 0.24 * t + 0.05 * g - 0.02 * m
    labels = np.concatenate([teff[:, None], logg[:, None], m_h[:, None]], axis=1) if np.ndim(teff) else None
    return np.concatenate([spectrum, bprp, jh, jk, labels], axis=1)


def make_synthetic_dataset(n_stars: int = 4000, seed: int = 0, n_spectrum: int = 24,
                           missing_fraction: float = 0.3, noise: float = 0.01) -> Dataset:
    """A Dataset with an 80/10/10 split, train-split standardisation, errors = the injected noise.

    Spectrum and colour noise is ``noise`` (relative scale of each token); labels carry 30 K / 0.03 /
    0.02 dex. Each value is missing independently with probability ``missing_fraction``.
    """
    rng = np.random.default_rng(seed)
    teff = rng.uniform(3800.0, 6800.0, n_stars)
    logg = rng.uniform(0.5, 5.0, n_stars)
    m_h = rng.uniform(-2.0, 0.5, n_stars)
    clean = synthetic_tokens(teff, logg, m_h, n_spectrum)
    sigma = np.empty_like(clean)
    sigma[:, : n_spectrum + 3] = noise * np.std(clean[:, : n_spectrum + 3], axis=0)
    sigma[:, n_spectrum + 3:] = [30.0, 0.03, 0.02]
    values = clean + sigma * rng.standard_normal(clean.shape)
    values[rng.random(values.shape) < missing_fraction] = np.nan
    errors = np.where(np.isnan(values), np.nan, sigma)
    source_id = np.arange(n_stars, dtype=np.int64) + 10_000
    part = rng.permutation(n_stars)
    n_test = n_val = n_stars // 10
    test, val, train = part[:n_test], part[n_test:n_test + n_val], part[n_test + n_val:]
    splits = {name: Split(values[i].astype(np.float32), errors[i].astype(np.float32), source_id[i])
              for name, i in (("train", train), ("val", val), ("test", test))}
    vocab = synthetic_vocabulary(n_spectrum).with_statistics(splits["train"].values)
    return Dataset(vocab, splits["train"], splits["val"], splits["test"],
                   provenance={"source": "synthetic", "seed": seed, "n_stars": n_stars})
