"""Readers for Gaia DR3 XP_CONTINUOUS tables (the archive's ``xp_continuous_mean_spectrum`` rows).

Accepted files (by suffix):
- ``.csv`` (as the archive or GaiaXPy write them: array columns as "(a, b, ...)" or "[a b ...]" strings; an
  empty cell is a missing band);
- ``.ecsv``, ``.fits``/``.fit``/``.fits.gz``, ``.vot``/``.xml``/``.votable`` through ``astropy.table``, with
  either array columns (``bp_coefficients``, ``bp_coefficient_errors``, ``bp_coefficient_correlations``, fixed or
  variable length) or one column per coefficient (``bp_coeff_0..54`` and ``e_bp_coeff_0..54``, the
  xp_spectral_lines convention).

Required columns: ``source_id``, BP and RP coefficients. Optional: errors, correlations (55*54/2 values, the
strict lower triangle in row-major order as GaiaXPy reads them), ``bp_n_relevant_bases``/``rp_n_relevant_bases``
and any other scalar column (``phot_g_mean_mag``, labels...), returned in ``XPContinuous.columns``.

A band whose coefficients are empty, masked or NaN is missing: all its coefficients become NaN and its
relevant-bases count 0.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BadFileError, BadInputError
from .xp import N_COEFFICIENTS

BANDS = ("bp", "rp")
N_CORRELATIONS = N_COEFFICIENTS * (N_COEFFICIENTS - 1) // 2


class ArchiveFormatError(BadFileError):
    """An XP_CONTINUOUS file that cannot be read (wrong format, truncated, missing columns, no rows)."""


@dataclass(frozen=True, eq=False)
class XPContinuous:
    """XP continuous mean spectra of N stars, in archive flux units.

    Attributes:
      source_id: int64 [N].
      coefficients, errors: per band ("bp", "rp"), float64 [N, 55] (NaN rows = missing band; errors NaN = unknown).
      correlations: per band float64 [N, 55, 55] full correlation matrices, or None when the file has none.
      n_relevant_bases: per band int64 [N] (0 when missing or not given... see ``has_relevancy``).
      has_relevancy: whether the file gave n_relevant_bases.
      columns: other scalar columns by lower-case name, float64 [N] (NaN where masked / empty).
      non_numeric: scalar text columns that are not numbers, by lower-case name -> (row index, the first cell that
        is not a number); kept out of ``columns`` so a converter can name the cell when it needs the column.
    """

    source_id: np.ndarray
    coefficients: dict
    errors: dict
    correlations: dict
    n_relevant_bases: dict
    has_relevancy: bool
    columns: dict = field(default_factory=dict)
    non_numeric: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return self.source_id.shape[0]

    def has_band(self, band: str) -> np.ndarray:
        """[N] bool: the band's coefficients are all finite."""
        return np.all(np.isfinite(self.coefficients[band]), axis=1)


def _parse_array_string(text, length: int, what: str) -> np.ndarray:
    """ "(a, b, ...)" / "[a b ...]" / "" -> float64 [length] (NaN for an empty cell)."""
    if text is None:
        return np.full(length, np.nan)
    if not isinstance(text, str):
        return _as_vector(text, length, what)
    body = text.strip().strip("()[]{}").replace(",", " ").split()
    if not body or body == ["--"] or body[0].lower() in ("nan", "null", "none") and len(body) == 1:
        return np.full(length, np.nan)
    if len(body) != length:
        raise ArchiveFormatError(f"{what}: expected {length} values, got {len(body)}")
    try:
        return np.array([float(v) for v in body])
    except ValueError as err:
        raise ArchiveFormatError(f"{what}: not a list of numbers ({err})") from None


def _as_vector(cell, length: int, what: str) -> np.ndarray:
    """An array cell from astropy (ndarray, masked array, or a masked/empty scalar) -> float64 [length]."""
    if cell is None or np.ma.is_masked(cell) and np.ndim(cell) == 0:
        return np.full(length, np.nan)
    if isinstance(cell, (bytes, str)):
        return _parse_array_string(cell.decode() if isinstance(cell, bytes) else cell, length, what)
    arr = np.ma.asarray(cell, dtype=np.float64)
    if arr.size == 0 or arr.size == 1 and not np.isfinite(arr.filled(np.nan)).all():
        return np.full(length, np.nan)
    if arr.size != length:
        raise ArchiveFormatError(f"{what}: expected {length} values, got {arr.size}")
    return arr.filled(np.nan).reshape(length)


def _correlation_matrix(lower: np.ndarray) -> np.ndarray:
    """[55*54/2] strict lower triangle (row-major) -> [55, 55] symmetric with unit diagonal."""
    matrix = np.eye(N_COEFFICIENTS)
    rows, cols = np.tril_indices(N_COEFFICIENTS, -1)
    matrix[rows, cols] = lower
    matrix[cols, rows] = lower
    return matrix


def _read_table(path: Path) -> dict:
    """Column name (lower case) -> list/array of cells; raises ArchiveFormatError for unreadable files."""
    suffixes = "".join(path.suffixes[-2:]).lower()
    if path.suffix.lower() == ".csv":
        try:
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames is None:
                    raise ArchiveFormatError(f"{path}: empty CSV file (no header)")
                rows = list(reader)
        except (UnicodeDecodeError, csv.Error) as err:
            raise ArchiveFormatError(f"{path}: not a readable CSV file ({err})") from None
        names = [n.strip().lower() for n in reader.fieldnames]
        return {n: [row[orig] for row in rows] for n, orig in zip(names, reader.fieldnames)}
    formats = {".ecsv": "ascii.ecsv", ".fits": "fits", ".fit": "fits", ".fits.gz": "fits", ".vot": "votable",
               ".votable": "votable", ".xml": "votable"}
    fmt = formats.get(suffixes) or formats.get(path.suffix.lower())
    if fmt is None:
        raise ArchiveFormatError(
            f"{path}: unknown XP_CONTINUOUS file type {path.suffix!r}; expected .csv, .ecsv, .fits, .fits.gz or .vot"
        )
    from astropy.table import Table  # lazy: astropy is the data extra's dependency

    try:
        table = Table.read(path, format=fmt)
    except Exception as err:  # astropy raises many types for truncated / foreign files
        raise ArchiveFormatError(f"{path}: cannot read as {fmt} ({type(err).__name__}: {err})") from None
    return {name.lower(): table[name] for name in table.colnames}


def _scalar_column(cells, n: int) -> np.ndarray | None:
    """Float64 [N] for a scalar numeric column (masked / empty / non-numeric -> NaN); None for array columns."""
    if isinstance(cells, list):
        out = np.full(n, np.nan)
        for i, c in enumerate(cells):
            c = c.strip()
            if c.startswith(("(", "[")):
                return None
            try:
                out[i] = float(c) if c else np.nan
            except ValueError:
                return None
        return out
    if getattr(cells, "ndim", 1) != 1 or cells.dtype.kind not in "biuf":
        return None
    return np.ma.asarray(cells, dtype=np.float64).filled(np.nan)


def _first_non_number(cells) -> tuple[int, str] | None:
    """(row, text) of the first non-empty cell of a scalar text column that is not a number; None for numeric or
    array columns."""
    if not isinstance(cells, list):
        if getattr(cells, "ndim", 1) != 1 or cells.dtype.kind not in "USO":
            return None
        cells = [c.decode() if isinstance(c, bytes) else str(c) for c in np.ma.asarray(cells).filled("")]
    for i, c in enumerate(cells):
        c = c.strip()
        if c.startswith(("(", "[")):
            return None
        if c and c != "--":
            try:
                float(c)
            except ValueError:
                return i, c
    return None


def _band_array(table: dict, band: str, kind: str, n: int, path: Path, required: bool):
    """[N, 55] coefficients ("coefficients") or errors ("coefficient_errors") from array or per-index columns."""
    array_name = f"{band}_{kind}"
    if array_name in table:
        return np.stack([_parse_array_string(c, N_COEFFICIENTS, f"{path}: {array_name} row {i}")
                         for i, c in enumerate(table[array_name])]) if n else np.zeros((0, N_COEFFICIENTS))
    split_prefix = f"{band}_coeff_" if kind == "coefficients" else f"e_{band}_coeff_"
    split_names = [f"{split_prefix}{i}" for i in range(N_COEFFICIENTS)]
    present = [s in table for s in split_names]
    if all(present):
        return np.stack([_scalar_column(table[s], n) for s in split_names], axis=1)
    if any(present):
        missing = [s for s, p in zip(split_names, present) if not p]
        raise ArchiveFormatError(f"{path}: missing columns {missing[:5]}{'...' if len(missing) > 5 else ''}")
    if required:
        raise ArchiveFormatError(
            f"{path}: missing column {array_name!r} (or {split_prefix}0..{N_COEFFICIENTS - 1}); columns present: "
            f"{sorted(table)[:20]}"
        )
    return np.full((n, N_COEFFICIENTS), np.nan)


def read_xp_continuous(path) -> XPContinuous:
    """Read an XP_CONTINUOUS table (see the module docstring). Raises ArchiveFormatError on a bad file, missing
    columns (named) or an empty table."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"XP_CONTINUOUS file not found: {path}")
    table = _read_table(path)
    if "source_id" not in table:
        raise ArchiveFormatError(f"{path}: missing column 'source_id'; columns present: {sorted(table)[:20]}")
    n = len(table["source_id"])
    if n == 0:
        raise ArchiveFormatError(f"{path}: the table has no rows")
    try:
        source_id = np.array([int(str(s).strip()) for s in table["source_id"]], dtype=np.int64)
    except ValueError as err:
        raise ArchiveFormatError(f"{path}: source_id must be integers ({err})") from None

    coefficients, errors, correlations, n_relevant = {}, {}, {}, {}
    has_relevancy = all(f"{b}_n_relevant_bases" in table for b in BANDS)
    for band in BANDS:
        coeffs = _band_array(table, band, "coefficients", n, path, required=True)
        errs = _band_array(table, band, "coefficient_errors", n, path, required=False)
        missing = ~np.all(np.isfinite(coeffs), axis=1)
        coeffs[missing] = np.nan
        errs[missing] = np.nan
        coefficients[band], errors[band] = coeffs, errs
        corr_name = f"{band}_coefficient_correlations"
        if corr_name in table:
            corr = np.full((n, N_COEFFICIENTS, N_COEFFICIENTS), np.nan)
            for i, cell in enumerate(table[corr_name]):
                lower = _parse_array_string(cell, N_CORRELATIONS, f"{path}: {corr_name} row {i}")
                if not missing[i] and np.all(np.isfinite(lower)):
                    corr[i] = _correlation_matrix(lower)
            correlations[band] = corr
        else:
            correlations[band] = None
        if has_relevancy:
            counts = _scalar_column(table[f"{band}_n_relevant_bases"], n)
            n_relevant[band] = np.where(missing | ~np.isfinite(counts), 0, np.nan_to_num(counts)).astype(np.int64)
        else:
            n_relevant[band] = np.where(missing, 0, N_COEFFICIENTS).astype(np.int64)

    skip = {"source_id"} | {f"{b}_{k}" for b in BANDS for k in ("coefficients", "coefficient_errors",
                                                                   "coefficient_correlations", "n_relevant_bases")}
    columns, non_numeric = {}, {}
    for name, cells in table.items():
        if name in skip or name.startswith(("bp_coeff_", "rp_coeff_", "e_bp_coeff_", "e_rp_coeff_")):
            continue
        values = _scalar_column(cells, n)
        if values is not None:
            columns[name] = values
        elif (bad := _first_non_number(cells)) is not None:
            non_numeric[name] = bad
    return XPContinuous(source_id, coefficients, errors, correlations, n_relevant, has_relevancy, columns,
                        non_numeric)


def relevancy_mask(xp: XPContinuous) -> np.ndarray:
    """[N, 110] bool: which of bp0..54, rp0..54 are relevant (original_spec §4.1-4.2).

    Coefficient i of a band is relevant when i < that band's n_relevant_bases; then, as the original's fix-up,
    coefficients 52-54 follow the relevancy of 51. Each band is judged on its own (the original cleared RP too when
    BP had no relevant bases; its data had no star with only one band, so this matters only for such stars, whose
    available band we keep). Without n_relevant_bases in the file, every present coefficient is relevant.
    """
    index = np.arange(N_COEFFICIENTS)
    masks = []
    for band in BANDS:
        mask = index[None, :] < xp.n_relevant_bases[band][:, None]
        mask[:, 52:55] = mask[:, 51:52]
        masks.append(mask & xp.has_band(band)[:, None])
    return np.concatenate(masks, axis=1)


# ---------------------------------------------------------------------------------------------- to a catalogue
G_MAG_COLUMN = "phot_g_mean_mag"


def _other_tokens(xp: XPContinuous, g_mag: np.ndarray, names) -> dict:
    """Non-XP tokens from the table's scalar columns: a column named as the token (errors in ``<name>_err`` or
    ``<name>_error``); bprp from phot_bp/rp_mean_mag (+ flux_over_error); g_fakemag = parallax * 10**(0.2 G)."""
    from .catalogue import bprp_colour

    cols = xp.columns
    out = {}
    for name in names:
        if name in cols:
            err = cols.get(f"{name}_err", cols.get(f"{name}_error"))
            out[name] = (cols[name], err)
    if "bprp" in names and "bprp" not in out and "phot_bp_mean_mag" in cols and "phot_rp_mean_mag" in cols:
        out["bprp"] = bprp_colour(cols["phot_bp_mean_mag"], cols["phot_rp_mean_mag"],
                                  cols.get("phot_bp_mean_flux_over_error"), cols.get("phot_rp_mean_flux_over_error"))
    if "g_fakemag" in names and "g_fakemag" not in out and "parallax" in cols:
        fakemag = cols["parallax"] * 10.0 ** (0.2 * g_mag)
        err = None
        if "parallax_error" in cols:
            with np.errstate(divide="ignore", invalid="ignore"):
                err = np.abs(cols["parallax_error"] / cols["parallax"]) * np.abs(fakemag)
        out["g_fakemag"] = (fakemag, err)
    return out


G_FROM = ("catalogue", "xp", "catalogue_or_xp")
# The query a user runs to add G to XP_CONTINUOUS rows (named in the error for a table without it).
G_JOIN_HINT = ("SELECT xp.*, g.phot_g_mean_mag FROM gaiadr3.xp_continuous_mean_spectrum AS xp "
               "JOIN gaiadr3.gaia_source AS g ON g.source_id = xp.source_id WHERE ...")


class UnusableStarsError(ArchiveFormatError):
    """Stars whose spectra cannot be converted (e.g. no usable G); ``source_ids`` lists them."""

    def __init__(self, message: str, source_ids):
        super().__init__(message)
        self.source_ids = np.asarray(source_ids, dtype=np.int64)


def _listed(ids, limit: int = 10) -> str:
    ids = [str(int(i)) for i in ids]
    return ", ".join(ids[:limit]) + (f" and {len(ids) - limit} more" if len(ids) > limit else "")


def g_magnitudes(xp: XPContinuous, g_from: str = "catalogue", where: str = "XP table") -> tuple[np.ndarray, np.ndarray]:
    """The G magnitude each star's spectrum is divided by, and where it came from.

    ``g_from``: "catalogue" (``phot_g_mean_mag``, required), "xp" (synthetic G from the star's own XP coefficients,
    GaiaXPy's Gaia_DR3_Vega G: `stellarfm_jax.data.xp.synthetic_g_mag`), or "catalogue_or_xp" (the catalogue's G
    where it is usable, synthetic G elsewhere). Returns (G [N], from_xp bool [N]). A star left without a usable G
    raises UnusableStarsError naming its source_id; a missing G column (with "catalogue") or a non-numeric G cell
    raises ArchiveFormatError saying how to add G or which option to use.
    """
    if g_from not in G_FROM:
        raise BadInputError(f"g_from must be one of {G_FROM}, got {g_from!r}")
    from .catalogue import clean_magnitude
    from .xp import synthetic_g_mag

    n = len(xp)
    if g_from != "xp" and G_MAG_COLUMN in xp.non_numeric:
        row, text = xp.non_numeric[G_MAG_COLUMN]
        raise ArchiveFormatError(f"{where}: column '{G_MAG_COLUMN}' holds a value that is not a number: {text!r} in "
                                 f"data row {row + 1} (source_id {xp.source_id[row]}); G must be a magnitude")
    if g_from == "xp":
        catalogue_g = np.full(n, np.nan)
    elif G_MAG_COLUMN in xp.columns:
        catalogue_g = clean_magnitude(xp.columns[G_MAG_COLUMN])
    elif g_from == "catalogue":
        raise ArchiveFormatError(
            f"{where}: no '{G_MAG_COLUMN}' column. Each spectrum is divided by the star's G-band flux, so the table "
            f"needs its G magnitude: join it from gaia_source on source_id (ADQL: {G_JOIN_HINT}), or use synthetic G "
            f"photometry from the XP spectrum itself with g_from='xp' (command line: --g-from xp), flagged per star")
    else:
        catalogue_g = np.full(n, np.nan)
    from_xp = np.zeros(n, dtype=bool) if g_from == "catalogue" else ~np.isfinite(catalogue_g)
    g_mag = catalogue_g.copy()
    if from_xp.any():
        g_mag[from_xp] = synthetic_g_mag(xp.coefficients["bp"][from_xp], xp.coefficients["rp"][from_xp])
    bad = ~np.isfinite(g_mag)
    if bad.any():
        if g_from == "catalogue":
            problem = (f"no usable {G_MAG_COLUMN} (empty, NaN or a sentinel), so their spectra cannot be divided by "
                       f"the G-band flux")
            fix = ("or use g_from='catalogue_or_xp' (command line: --g-from catalogue_or_xp) to take synthetic G "
                   "from their XP spectra (flagged per star)")
        else:
            problem = (f"neither a usable {G_MAG_COLUMN} nor synthetic G from their XP spectrum (it needs both BP "
                       f"and RP and a positive G flux)")
            fix = f"or join {G_MAG_COLUMN} from gaia_source (ADQL: {G_JOIN_HINT}) and use g_from='catalogue_or_xp'"
        raise UnusableStarsError(f"{where}: {int(bad.sum())} star(s) have {problem}: source_id "
                                 f"{_listed(xp.source_id[bad])}. Remove them, {fix}", xp.source_id[bad])
    return g_mag, from_xp


def archive_catalogue(xp: XPContinuous, schema: str | None = None, grid=None, path: str = "", sha256: str = "",
                      g_from: str = "catalogue"):
    """Convert XP_CONTINUOUS rows to a schema's tokens (default schema: `stellarfm_jax.schemas.DEFAULT_SCHEMA`).

    Spectra are divided by the G-band flux from `g_magnitudes` (``g_from``: "catalogue" needs ``phot_g_mean_mag``;
    "xp" / "catalogue_or_xp" use synthetic G from the XP spectrum, flagged per star in ``Catalogue.flags["g_from_xp"]``).
    XP coefficient schemas (``paper``): bp0..54, rp0..54 = coefficient / F_G where relevant (`relevancy_mask`), else
    missing. Sampled-flux schemas (``xp_coarse``, ``xp_sampled``): flux tokens from all 55 coefficients of each band
    through GaiaXPy's design matrix (`stellarfm_jax.data.xp`), in the schema's unit, errors from the coefficient
    errors and correlations when given. Other tokens come from same-named columns (see `_other_tokens`); a column the
    schema needs that holds text is reported with its first non-numeric cell.
    """
    from .. import schemas
    from .catalogue import Catalogue
    from .xp import xp_token_columns

    schema = schemas.get_schema(schemas.DEFAULT_SCHEMA if schema is None else schema)
    where = path or "XP table"
    g_mag, from_xp = g_magnitudes(xp, g_from, where)
    has_errors = np.isfinite(xp.errors["bp"]).any() or np.isfinite(xp.errors["rp"]).any()
    columns, names, grid_info = xp_token_columns(
        schema, xp.coefficients["bp"], xp.coefficients["rp"], g_mag, relevant=relevancy_mask(xp),
        bp_errors=xp.errors["bp"] if has_errors else None, rp_errors=xp.errors["rp"] if has_errors else None,
        bp_correlations=xp.correlations["bp"], rp_correlations=xp.correlations["rp"], grid=grid)
    others = [n for n in names if n not in columns]
    inputs = set(others) | {f"{n}{s}" for n in others for s in ("_err", "_error")} | {
        "phot_bp_mean_mag", "phot_rp_mean_mag", "phot_bp_mean_flux_over_error", "phot_rp_mean_flux_over_error",
        "parallax", "parallax_error"}
    text = sorted(inputs & set(xp.non_numeric))
    if text:
        row, cell = xp.non_numeric[text[0]]
        raise ArchiveFormatError(f"{where}: column '{text[0]}' holds a value that is not a number: {cell!r} in data "
                                 f"row {row + 1} (source_id {xp.source_id[row]})")
    columns.update(_other_tokens(xp, g_mag, others))
    provenance = {"source": "gaia-archive", "file": str(path), "source_sha256": sha256, "rows_in_file": len(xp),
                  "g_from": g_from, "g_from_xp_stars": int(from_xp.sum()), **grid_info}
    return Catalogue.from_columns(schema, names, columns, xp.source_id, provenance, flags={"g_from_xp": from_xp})
