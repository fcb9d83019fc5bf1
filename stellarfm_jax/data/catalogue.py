"""A source catalogue in a schema's token columns, before the split (what every reader produces).

Also the conversions shared by readers: colours and their errors, 2MASS sentinels, the logebv floor.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .. import schemas
from ..vocab import Vocabulary
from .dataset import Split

# Gaia EDR3 photometric zero-point uncertainties [mag] (original_spec §4.1), the floor of each band's error.
BP_ZERO_POINT_ERROR = 0.0027901700
RP_ZERO_POINT_ERROR = 0.0037793818
MAG_PER_FLUX_FRACTION = 2.5 / np.log(10.0)
LOGEBV_FLOOR = schemas.LOGEBV_FLOOR  # ln E(B-V) for "no extinction" (original_spec §4.1)
TWO_MASS_SENTINEL_MIN = 50.0  # 2MASS / APOGEE write 99.999 (or -9999) for no measurement


@dataclass(frozen=True, eq=False)
class Catalogue:
    """N stars in a schema's token order, physical units.

    Attributes:
      vocab: the schema vocabulary (identity statistics; `prepare` fits them on the train split).
      values, errors: float32 [N, V], NaN = missing / unknown.
      source_id: int64 [N] (Gaia DR3 source_id).
      provenance: JSON-able description (source, file hash, cuts...).
      flags: per-star flags, name -> bool [N] (e.g. ``g_from_xp``: the spectrum was divided by the G flux of
        synthetic photometry from the XP spectrum itself, not by the catalogue's G).
    """

    vocab: Vocabulary
    values: np.ndarray
    errors: np.ndarray
    source_id: np.ndarray
    provenance: dict = field(default_factory=dict)
    flags: dict = field(default_factory=dict)

    def __post_init__(self):
        stars = Split(self.values, self.errors, self.source_id)  # validates shapes and dtypes
        if stars.values.shape[1] != self.vocab.size:
            raise ValueError(f"catalogue has {stars.values.shape[1]} token columns, the vocabulary {self.vocab.size}")
        object.__setattr__(self, "values", stars.values)
        object.__setattr__(self, "errors", stars.errors)
        object.__setattr__(self, "source_id", stars.source_id)
        flags = {str(k): np.asarray(v, dtype=bool) for k, v in self.flags.items()}
        bad = {k: v.shape for k, v in flags.items() if v.shape != (len(stars),)}
        if bad:
            raise ValueError(f"catalogue flags must be bool [{len(stars)}], got shapes {bad}")
        object.__setattr__(self, "flags", flags)

    def __len__(self) -> int:
        return self.values.shape[0]

    @classmethod
    def from_columns(cls, schema, names, columns: dict, source_id, provenance=None, flags=None) -> "Catalogue":
        """Assemble from ``columns``: token name -> (values [N], errors [N] or None). Schema tokens absent from
        ``columns`` are all NaN; non-finite values become NaN and their errors NaN. In a schema with
        ``logebv_floor_missing``, logebv at or below the floor (-7) becomes missing too."""
        schema = schemas.get_schema(schema)
        names = list(names)
        unknown = sorted(set(columns) - set(names))
        if unknown:
            raise ValueError(f"columns not in the {schema.name} schema: {unknown}")
        n = len(source_id)
        values = np.full((n, len(names)), np.nan, dtype=np.float32)
        errors = np.full((n, len(names)), np.nan, dtype=np.float32)
        for j, name in enumerate(names):
            if name not in columns:
                continue
            v, e = columns[name]
            v = np.asarray(v, dtype=np.float64)
            good = np.isfinite(v)
            if name == schemas.LOGEBV and schema.logebv_floor_missing:
                good &= ~(v <= LOGEBV_FLOOR)
            values[:, j] = np.where(good, v, np.nan)
            if e is not None:
                e = np.asarray(e, dtype=np.float64)
                errors[:, j] = np.where(good & np.isfinite(e), e, np.nan)
        return cls(schema.vocabulary(names), values, errors, source_id, dict(provenance or {}), dict(flags or {}))


def clean_magnitude(mag) -> np.ndarray:
    """Magnitudes with sentinels (>= 50, e.g. 99.999; <= -50, e.g. -9999) and non-finite values -> NaN."""
    mag = np.asarray(mag, dtype=np.float64)
    return np.where(np.isfinite(mag) & (np.abs(mag) < TWO_MASS_SENTINEL_MIN), mag, np.nan)


def band_error_from_flux_over_error(flux_over_error, zero_point_error) -> np.ndarray:
    """Gaia band magnitude error sqrt((2.5/ln10 / flux_over_error)^2 + zp_err^2); a missing flux_over_error
    leaves the zero-point floor alone."""
    foe = np.asarray(flux_over_error, dtype=np.float64)
    photon = np.where(np.isfinite(foe) & (foe > 0), MAG_PER_FLUX_FRACTION / np.where(foe > 0, foe, 1.0), 0.0)
    return np.sqrt(photon**2 + zero_point_error**2)


def bprp_colour(bp_mag, rp_mag, bp_flux_over_error=None, rp_flux_over_error=None):
    """(BP - RP, its error) [N]. Without flux_over_error columns the error is the zero-point floor
    sqrt(0.0027901700^2 + 0.0037793818^2) = 0.0047 mag."""
    bp, rp = clean_magnitude(bp_mag), clean_magnitude(rp_mag)
    n = bp.shape
    bp_err = band_error_from_flux_over_error(np.full(n, np.nan) if bp_flux_over_error is None else bp_flux_over_error,
                                             BP_ZERO_POINT_ERROR)
    rp_err = band_error_from_flux_over_error(np.full(n, np.nan) if rp_flux_over_error is None else rp_flux_over_error,
                                             RP_ZERO_POINT_ERROR)
    colour = bp - rp
    return colour, np.where(np.isfinite(colour), np.hypot(bp_err, rp_err), np.nan)


def colour(mag_a, mag_b, err_a, err_b):
    """(a - b, quadrature error) with sentinel magnitudes -> NaN."""
    a, b = clean_magnitude(mag_a), clean_magnitude(mag_b)
    value = a - b
    err = np.hypot(np.asarray(err_a, dtype=np.float64), np.asarray(err_b, dtype=np.float64))
    return value, np.where(np.isfinite(value), err, np.nan)


def log_ebv(ebv) -> np.ndarray:
    """Natural log of E(B-V), floored at -7 (so E(B-V) <= e^-7, including 0, reads as "no extinction"); NaN stays
    NaN."""
    ebv = np.asarray(ebv, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(np.isfinite(ebv), np.maximum(np.log(np.maximum(ebv, 0.0)), LOGEBV_FLOOR), np.nan)
