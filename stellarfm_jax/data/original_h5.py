"""Reader for the original release's HDF5 layout (original_spec §4.1; Zenodo 12738256 training_set.h5 /
testing_set.h5).

Datasets used: ``raw/xp_coeffs_gnorm`` [N, 110] and ``raw/xp_coeffs_gnorm_err`` (coefficients already divided by
F_G, NaN where absent), ``raw/xp_relevancy`` [N, 110] bool, ``raw/{bprp, jh, jk, teff, logg, m_h, logc19,
g_fakemag}`` [N] with their ``*_err``, and ``gaia_source_id`` [N] (at the root or under ``raw/``).

- ``paper`` schema: exactly the original's training matrix (original_spec §4.2): relevancy fix-up (52-54 follow
  51 in each band), irrelevant coefficients -> missing, logc19 -> logebv.
- ``xp_sampled`` schema: flux tokens from all 110 normalised coefficients through GaiaXPy's design matrix (a band
  with any NaN coefficient is missing); the release has no alpha_m, so that token is dropped by `prepare`.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from .. import schemas
from .catalogue import Catalogue
from .xp import N_COEFFICIENTS, coefficients_to_flux_tokens

SCALARS = {"bprp": "bprp", "jh": "jh", "jk": "jk", "teff": "teff", "logg": "logg", "m_h": "m_h",
           "logebv": "logc19", "g_fakemag": "g_fakemag"}
SOURCE_NAME = "original-h5"


def _get(f: h5py.File, key: str, path: Path, n: int | None = None, required: bool = True):
    for candidate in (f"raw/{key}", key):
        if candidate in f:
            data = f[candidate][...]
            if n is not None and data.shape[0] != n:
                raise ValueError(f"{path}: '{candidate}' has {data.shape[0]} rows, expected {n}")
            return data
    if required:
        raise ValueError(f"{path}: missing dataset 'raw/{key}' (original release layout, original_spec §4.1)")
    return None


def original_relevancy(relevancy: np.ndarray) -> np.ndarray:
    """The original's fix-up: coefficients 52-54 of each band follow the relevancy of 51."""
    relevancy = np.array(relevancy, dtype=bool)
    relevancy[:, 52:55] = relevancy[:, 51:52]
    relevancy[:, 107:110] = relevancy[:, 106:107]
    return relevancy


def read_original_h5(path, schema: str = "paper", grid=None, sha256: str = "") -> Catalogue:
    """Read an original-release file into a Catalogue of ``schema`` (errors name missing datasets / bad shapes)."""
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except (OSError, FileNotFoundError) as err:
        raise ValueError(f"{path}: not a readable HDF5 file ({err})") from None
    with f:
        source_id = _get(f, "gaia_source_id", path).astype(np.int64)
        n = source_id.shape[0]
        if n == 0:
            raise ValueError(f"{path}: no stars ('gaia_source_id' is empty)")
        coeffs = _get(f, "xp_coeffs_gnorm", path, n).astype(np.float64)
        coeff_err = _get(f, "xp_coeffs_gnorm_err", path, n).astype(np.float64)
        if coeffs.shape[1:] != (2 * N_COEFFICIENTS,) or coeff_err.shape != coeffs.shape:
            raise ValueError(f"{path}: xp_coeffs_gnorm(_err) must be [N, 110], got {coeffs.shape}, {coeff_err.shape}")
        relevancy = _get(f, "xp_relevancy", path, n)
        scalars = {}
        for token, key in SCALARS.items():
            value = _get(f, key, path, n)
            err = _get(f, f"{key}_err", path, n, required=False)
            scalars[token] = (value.astype(np.float64), None if err is None else err.astype(np.float64))
    columns = {}
    provenance = {"source": SOURCE_NAME, "file": str(path), "source_sha256": sha256, "rows_in_file": int(n)}
    if schema == "paper":
        relevant = original_relevancy(relevancy)
        names = schemas.paper_names()
        for j in range(2 * N_COEFFICIENTS):
            columns[names[j]] = (np.where(relevant[:, j], coeffs[:, j], np.nan),
                                 np.where(relevant[:, j], coeff_err[:, j], np.nan))
    elif schema == "xp_sampled":
        centres = schemas.xp_sampled_bin_centres() if grid is None else list(grid)
        width = schemas.DEFAULT_GRID_WIDTH_NM if len(centres) < 2 else float(centres[1] - centres[0])
        names = schemas.xp_sampled_names(centres)
        tokens, token_err = coefficients_to_flux_tokens(
            coeffs[:, :N_COEFFICIENTS], coeffs[:, N_COEFFICIENTS:], None, centres, width,
            np.nan_to_num(coeff_err[:, :N_COEFFICIENTS]), np.nan_to_num(coeff_err[:, N_COEFFICIENTS:]))
        for k, c in enumerate(centres):
            columns[schemas.flux_token_name(c)] = (tokens[:, k], token_err[:, k])
        provenance.update(grid_centres_nm=[float(c) for c in centres], grid_width_nm=width)
    else:
        raise ValueError(f"unknown schema {schema!r}; expected 'paper' or 'xp_sampled'")
    columns.update({t: v for t, v in scalars.items() if t in names})
    return Catalogue.from_columns(schema, names, columns, source_id, provenance)
