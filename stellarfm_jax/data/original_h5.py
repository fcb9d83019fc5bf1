"""Reader for the original release's HDF5 layout (original_spec §4.1; Zenodo 12738256 training_set.h5 /
testing_set.h5).

Datasets used: ``raw/xp_coeffs_gnorm`` [N, 110] and ``raw/xp_coeffs_gnorm_err`` (coefficients already divided by
F_G, NaN where absent), ``raw/xp_relevancy`` [N, 110] bool, ``raw/{bprp, jh, jk, teff, logg, m_h, logc19,
g_fakemag}`` [N] with their ``*_err``, and ``gaia_source_id`` [N] (at the root or under ``raw/``).

- ``paper`` schema: exactly the original's training matrix (original_spec §4.2): relevancy fix-up (52-54 follow
  51 in each band), irrelevant coefficients -> missing, logc19 -> logebv.
- sampled-flux schemas (``xp_coarse``, ``xp_sampled``): flux tokens from all 110 normalised coefficients through
  GaiaXPy's design matrix (a band with any NaN coefficient is missing), in the schema's unit; the release has no
  alpha_m, so that token is dropped by `prepare`.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ..errors import BadFileError
from .. import schemas
from .catalogue import Catalogue
from .xp import N_COEFFICIENTS, xp_token_columns

SCALARS = {"bprp": "bprp", "jh": "jh", "jk": "jk", "teff": "teff", "logg": "logg", "m_h": "m_h",
           "logebv": "logc19", "g_fakemag": "g_fakemag"}
SOURCE_NAME = "original-h5"


def _get(f: h5py.File, key: str, path: Path, n: int | None = None, required: bool = True):
    for candidate in (f"raw/{key}", key):
        if candidate in f:
            data = f[candidate][...]
            if n is not None and data.shape[0] != n:
                raise BadFileError(f"{path}: '{candidate}' has {data.shape[0]} rows, expected {n}")
            return data
    if required:
        raise BadFileError(f"{path}: missing dataset 'raw/{key}' (original release layout, original_spec §4.1)")
    return None


def original_relevancy(relevancy: np.ndarray) -> np.ndarray:
    """The original's fix-up: coefficients 52-54 of each band follow the relevancy of 51."""
    relevancy = np.array(relevancy, dtype=bool)
    relevancy[:, 52:55] = relevancy[:, 51:52]
    relevancy[:, 107:110] = relevancy[:, 106:107]
    return relevancy


def read_original_h5(path, schema: str = "paper", grid=None, sha256: str = "") -> Catalogue:
    """Read an original-release file into a Catalogue of ``schema`` (errors name missing datasets / bad shapes)."""
    schemas.get_schema(schema)  # an unknown schema fails before the file is read
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except (OSError, FileNotFoundError) as err:
        raise BadFileError(f"{path}: not a readable HDF5 file ({err})") from None
    with f:
        source_id = _get(f, "gaia_source_id", path).astype(np.int64)
        n = source_id.shape[0]
        if n == 0:
            raise BadFileError(f"{path}: no stars ('gaia_source_id' is empty)")
        coeffs = _get(f, "xp_coeffs_gnorm", path, n).astype(np.float64)
        coeff_err = _get(f, "xp_coeffs_gnorm_err", path, n).astype(np.float64)
        if coeffs.shape[1:] != (2 * N_COEFFICIENTS,) or coeff_err.shape != coeffs.shape:
            raise BadFileError(f"{path}: xp_coeffs_gnorm(_err) must be [N, 110], got {coeffs.shape}, {coeff_err.shape}")
        relevancy = _get(f, "xp_relevancy", path, n)
        scalars = {}
        for token, key in SCALARS.items():
            value = _get(f, key, path, n)
            err = _get(f, f"{key}_err", path, n, required=False)
            scalars[token] = (value.astype(np.float64), None if err is None else err.astype(np.float64))
    provenance = {"source": SOURCE_NAME, "file": str(path), "source_sha256": sha256, "rows_in_file": int(n)}
    columns, names, grid_info = xp_token_columns(
        schema, coeffs[:, :N_COEFFICIENTS], coeffs[:, N_COEFFICIENTS:], None, relevant=original_relevancy(relevancy),
        bp_errors=coeff_err[:, :N_COEFFICIENTS], rp_errors=coeff_err[:, N_COEFFICIENTS:],
        grid=grid)
    provenance.update(grid_info)
    columns.update({t: v for t, v in scalars.items() if t in names})
    return Catalogue.from_columns(schema, names, columns, source_id, provenance)
