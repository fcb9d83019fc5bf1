"""Token schemas (DESIGN §3): a registry of the shipped vocabularies, one file per schema.

``get_schema(name)`` returns a frozen `Schema` (names, groups, outputs, ``vocabulary(names=None)``, name
validation, how its flux tokens are made); data readers and the converter ask it instead of testing schema names.

- ``xp_coarse`` (`DEFAULT_SCHEMA`): 57 flux tokens of 12 nm in units of the mean flux over the G passband (~1),
  colours, labels; logebv at the floor missing. A whole spectrum + colours (60 tokens) fit a 64-slot context.
- ``xp_sampled``: 85 flux tokens of 8 nm in W m^-2 nm^-1 per e-/s (~1e-21), colours, labels (the shipped model's).
- ``paper``: the original's 118 tokens (XP coefficients / F_G).

The token-name constants (``TEFF`` ... ``JK``, `HEADLINE_LABELS`, `STELLAR_LABELS`, `COLOURS`) are defined here
once. The functions of the former single-file module (``paper_names``, ``xp_sampled_names``,
``schema_vocabulary``...) are kept.
"""

from __future__ import annotations

from ..vocab import Vocabulary
from .base import (ALPHA_M, BPRP, COLOURS, FLUX_KINDS, G_FAKEMAG, G_PASSBAND_MEAN_FLUX_PER_E_S, GAIA_G_ZERO_POINT,
                   GAIAXPY_G_VEGA_ZERO_POINT, HEADLINE_LABELS, JH, JK, LOGEBV, LOGEBV_FLOOR, LOGG, M_H,
                   PAPER_WITHHELD_OUTPUTS, STELLAR_LABELS, TEFF, CoefficientSchema, SampledFluxSchema, Schema,
                   SchemaTokenError, UnknownSchemaError, bin_centres, flux_token_name, is_flux_token_name)
from .paper import PAPER, PAPER_LABELS, XP_COEFFICIENTS
from .xp_coarse import XP_COARSE
from .xp_sampled import XP_SAMPLED

__all__ = [
    "Schema", "CoefficientSchema", "SampledFluxSchema", "UnknownSchemaError", "SchemaTokenError", "FLUX_KINDS",
    "get_schema", "schema_names", "register", "DEFAULT_SCHEMA", "PAPER", "XP_SAMPLED", "XP_COARSE",
    "TEFF", "LOGG", "M_H", "ALPHA_M", "LOGEBV", "BPRP", "JH", "JK", "G_FAKEMAG", "HEADLINE_LABELS",
    "STELLAR_LABELS", "COLOURS", "PAPER_LABELS", "PAPER_WITHHELD_OUTPUTS", "LOGEBV_FLOOR", "GAIA_G_ZERO_POINT",
    "GAIAXPY_G_VEGA_ZERO_POINT", "G_PASSBAND_MEAN_FLUX_PER_E_S", "XP_COEFFICIENTS", "flux_token_name",
    "is_flux_token_name", "bin_centres", "schema_vocabulary",
]

_REGISTRY: dict[str, Schema] = {}


def register(schema: Schema) -> Schema:
    """Add a schema to the registry (its name must be new); returns it."""
    if schema.name in _REGISTRY:
        raise ValueError(f"a schema named {schema.name!r} is already registered")
    _REGISTRY[schema.name] = schema
    return schema


for _schema in (XP_COARSE, XP_SAMPLED, PAPER):
    register(_schema)

DEFAULT_SCHEMA = XP_COARSE.name


def schema_names() -> tuple[str, ...]:
    """Names of the registered schemas, sorted."""
    return tuple(sorted(_REGISTRY))


def get_schema(name) -> Schema:
    """The registered schema ``name``; an unknown name raises UnknownSchemaError listing the known ones."""
    if isinstance(name, Schema):
        return name
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise UnknownSchemaError(f"unknown schema {name!r}; known schemas: {', '.join(schema_names())}") from None


def is_registered(name) -> bool:
    return isinstance(name, str) and name in _REGISTRY


def schema_vocabulary(schema: str, names=None) -> Vocabulary:
    """Vocabulary of a registered schema, optionally restricted to ``names`` (in that order); unknown schema or token
    names raise a ValueError naming them."""
    return get_schema(schema).vocabulary(names)


# --------------------------------------------------------------------------- the former module's names, kept
LABELS = HEADLINE_LABELS
XP_SAMPLED_COLOURS = COLOURS
XP_SAMPLED_LABELS = STELLAR_LABELS
XP_SAMPLED_NON_FLUX = COLOURS + STELLAR_LABELS
DEFAULT_GRID_START_NM = XP_SAMPLED.start_nm
DEFAULT_GRID_STOP_NM = XP_SAMPLED.stop_nm
DEFAULT_GRID_WIDTH_NM = XP_SAMPLED.width_nm


def paper_names() -> list[str]:
    """The original's 118 tokens in its vocabulary order (original_spec §3)."""
    return PAPER.names()


def paper_groups() -> list[str]:
    return PAPER.groups()


def paper_vocabulary() -> Vocabulary:
    """The paper schema with identity standardisation (fit statistics on a training split)."""
    return PAPER.vocabulary()


def xp_sampled_bin_centres(start_nm: float = DEFAULT_GRID_START_NM, stop_nm: float = DEFAULT_GRID_STOP_NM,
                           width_nm: float = DEFAULT_GRID_WIDTH_NM) -> list[float]:
    """Centres [nm] of the bins [start + k*width, start + (k+1)*width] that end at or before ``stop_nm`` (default:
    the xp_sampled grid, 85 bins centred on 340, 348, ..., 1012 nm)."""
    return bin_centres(start_nm, stop_nm, width_nm)


def xp_sampled_names(grid=None) -> list[str]:
    """Token names of the xp_sampled schema on ``grid`` (bin centres in nm; default its 8 nm grid)."""
    return XP_SAMPLED.names(grid)


def xp_sampled_groups(names) -> list[str]:
    """Token roles: flux tokens "spectrum", bprp/jh/jk "colour", teff/logg/m_h/alpha_m/logebv "label"."""
    return XP_SAMPLED.groups(names)


def xp_sampled_vocabulary(grid=None, names=None) -> Vocabulary:
    """The xp_sampled schema with identity standardisation, on ``grid`` or restricted to ``names``."""
    return XP_SAMPLED.vocabulary(names, grid=None if names is not None else grid)
