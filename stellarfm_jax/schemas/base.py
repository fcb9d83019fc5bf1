"""What every token schema shares: the token-name constants, flux-token names, wavelength grids, the flux unit
constants, and the two kinds of schema (XP coefficient tokens, sampled-flux tokens).

A schema says which tokens exist (names), their roles (groups), which are training outputs, how its flux tokens are
made (`flux_kind`, grid, unit) and whether ``logebv`` at the data's floor is a value or missing. Standardisation
statistics are not part of a schema; they come from the training split (``Vocabulary.with_statistics``).
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import BadInputError
from ..vocab import Vocabulary

# ------------------------------------------------------------------------------------------ token names, once
TEFF, LOGG, M_H, ALPHA_M, LOGEBV = "teff", "logg", "m_h", "alpha_m", "logebv"
BPRP, JH, JK = "bprp", "jh", "jk"
G_FAKEMAG = "g_fakemag"
HEADLINE_LABELS = (TEFF, LOGG, M_H)  # the labels every report leads with
STELLAR_LABELS = (TEFF, LOGG, M_H, ALPHA_M, LOGEBV)  # every label token of the xp_* schemas, vocabulary order
COLOURS = (BPRP, JH, JK)
# Tokens the paper never requests during training (to test generalisation to unseen outputs).
PAPER_WITHHELD_OUTPUTS = (BPRP, JK)
LOGEBV_FLOOR = -7.0  # ln E(B-V) the data use for "no extinction" (original_spec §4.1); mostly RJCE failures here

# ------------------------------------------------------------------------------------------- photometric constants
GAIA_G_ZERO_POINT = 25.6873668671  # Gaia (E)DR3 G-band zero point [mag] for F_G in e-/s: G = -2.5 log10 F_G + ZP
# GaiaXPy's Gaia_DR3_Vega synthetic G zero point (config/filters/XpFilter_GaiaDr3Vega_v375wiv142r.xml): the
# passband-mean f_lambda [W m^-2 nm^-1] of a source of magnitude G is 10**((ZP_XP - G) / 2.5).
GAIAXPY_G_VEGA_ZERO_POINT = -26.4899
# The mean f_lambda over the G passband [W m^-2 nm^-1] per e-/s of G-band flux:
# 10**((-26.4899 - 25.6873668671) / 2.5) = 1.3462e-21. A source with F_G e-/s has G-passband mean f_lambda F_G * this.
G_PASSBAND_MEAN_FLUX_PER_E_S = 10.0 ** ((GAIAXPY_G_VEGA_ZERO_POINT - GAIA_G_ZERO_POINT) / 2.5)

FLUX_KINDS = ("xp_coefficients", "sampled_flux")


class UnknownSchemaError(BadInputError):
    """A schema name that is not registered (the message lists the known ones)."""


class SchemaTokenError(BadInputError):
    """Token names that a schema does not have (the message names them)."""


# ---------------------------------------------------------------------------------------------- flux token names
def flux_token_name(centre_nm: float) -> str:
    """Flux token name from its bin centre in nm: 340.0 -> "f340", 338.5 -> "f338.5"."""
    return f"f{float(centre_nm):g}"


def is_flux_token_name(name: str) -> bool:
    """True for names made by `flux_token_name` ("f" followed by a positive number)."""
    if not name.startswith("f"):
        return False
    try:
        return float(name[1:]) > 0
    except ValueError:
        return False


def bin_centres(start_nm: float, stop_nm: float, width_nm: float) -> list[float]:
    """Centres [nm] of the bins [start + k*width, start + (k+1)*width] that end at or before ``stop_nm``."""
    if not (width_nm > 0 and stop_nm - start_nm >= width_nm):
        raise BadInputError(
            f"wavelength grid needs width > 0 and at least one bin in [start, stop]; got start={start_nm}, "
            f"stop={stop_nm}, width={width_nm}"
        )
    n_bins = int((stop_nm - start_nm) / width_nm + 1e-9)
    return [start_nm + (k + 0.5) * width_nm for k in range(n_bins)]


# ------------------------------------------------------------------------------------------------------ schemas
@dataclass(frozen=True)
class Schema:
    """A token schema. Subclasses say how names and groups are made.

    Attributes:
      name: the registry name (stored in data files and saved models).
      description: one line for listings and errors.
      flux_kind: "xp_coefficients" (tokens are XP coefficients / F_G) or "sampled_flux" (binned sampled flux).
      withheld_outputs: tokens never requested in training (the paper's bprp, jk).
      logebv_floor_missing: whether logebv at or below `LOGEBV_FLOOR` is made missing (NaN) rather than kept as a
        value.
      first_format_version: the first data-file format version that can hold this schema (older files claiming it
        are refused).
    """

    name: str
    description: str
    flux_kind: str
    withheld_outputs: tuple[str, ...] = PAPER_WITHHELD_OUTPUTS
    logebv_floor_missing: bool = False
    first_format_version: int = 1

    def __post_init__(self):
        if self.flux_kind not in FLUX_KINDS:
            raise ValueError(f"schema flux_kind must be one of {FLUX_KINDS}, got {self.flux_kind!r}")

    # -- to be provided by each kind
    def names(self, grid=None) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    def group_of(self, name: str) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def unknown_names(self, names) -> list[str]:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- shared
    @property
    def non_flux_names(self) -> tuple[str, ...]:
        return tuple(n for n in self.names() if self.group_of(n) != "spectrum")

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(n for n in self.names() if self.group_of(n) == "label")

    @property
    def colours(self) -> tuple[str, ...]:
        return tuple(n for n in self.names() if self.group_of(n) == "colour")

    def groups(self, names=None) -> list[str]:
        """Token roles ("spectrum", "colour", "label", "other") of ``names`` (default: all of the schema's)."""
        return [self.group_of(n) for n in (self.names() if names is None else names)]

    def outputs(self, names=None) -> list[str]:
        """The training outputs among ``names``: every token except `withheld_outputs`."""
        return [n for n in (self.names() if names is None else names) if n not in self.withheld_outputs]

    def validate_names(self, names) -> None:
        """Raise SchemaTokenError naming the tokens of ``names`` that are not in this schema."""
        unknown = self.unknown_names(list(names))
        if unknown:
            raise SchemaTokenError(f"token names not in the {self.name} schema{self._name_hint()}: {unknown}")

    def _name_hint(self) -> str:
        return ""

    def vocabulary(self, names=None, grid=None) -> Vocabulary:
        """The schema's vocabulary with identity standardisation (fit statistics on a training split), optionally
        restricted to ``names`` (in that order; checked), or on another flux ``grid`` (bin centres, nm)."""
        if names is None:
            names = self.names(grid)
        else:
            names = list(names)
            self.validate_names(names)
        return Vocabulary.unit(names, outputs=self.outputs(names), groups=self.groups(names), schema=self.name)


@dataclass(frozen=True)
class CoefficientSchema(Schema):
    """Tokens are Gaia XP coefficients divided by the G-band flux, plus fixed scalar tokens.

    Attributes:
      token_names: every token in vocabulary order.
      token_groups: role of each non-spectrum token (the rest are "spectrum").
    """

    token_names: tuple[str, ...] = ()
    token_groups: tuple[tuple[str, str], ...] = ()

    def names(self, grid=None) -> list[str]:
        if grid is not None:
            raise ValueError(f"the {self.name} schema has XP coefficient tokens, not a wavelength grid")
        return list(self.token_names)

    def group_of(self, name: str) -> str:
        return dict(self.token_groups).get(name, "spectrum")

    def unknown_names(self, names) -> list[str]:
        return [n for n in names if n not in self.token_names]


@dataclass(frozen=True)
class SampledFluxSchema(Schema):
    """Tokens are XP sampled flux averaged over wavelength bins and divided by ``F_G * flux_unit``, then colours and
    labels.

    Attributes:
      start_nm, stop_nm, width_nm: the default grid (bins [start + k width, start + (k+1) width] within stop).
      flux_unit: c in ``token = f_lambda [W m^-2 nm^-1] / (F_G [e-/s] * c)``, F_G = 10**((25.6873668671 - G)/2.5).
      flux_unit_text: the token unit in words.
      scalar_names: the non-flux tokens in vocabulary order, with their groups in ``scalar_groups``.
    """

    start_nm: float = 336.0
    stop_nm: float = 1020.0
    width_nm: float = 8.0
    flux_unit: float = 1.0
    flux_unit_text: str = ""
    scalar_names: tuple[str, ...] = COLOURS + STELLAR_LABELS
    scalar_groups: tuple[str, ...] = ("colour",) * 3 + ("label",) * 5

    def bin_centres(self, start_nm=None, stop_nm=None, width_nm=None) -> list[float]:
        """Bin centres [nm] of the schema's grid (any of start/stop/width overridden)."""
        return bin_centres(self.start_nm if start_nm is None else start_nm, self.stop_nm if stop_nm is None else stop_nm,
                           self.width_nm if width_nm is None else width_nm)

    def grid_width(self, centres) -> float:
        """Bin width [nm] of a grid given by its centres (the spacing; the schema's width for a single bin)."""
        centres = list(centres)
        return self.width_nm if len(centres) < 2 else float(centres[1] - centres[0])

    def names(self, grid=None) -> list[str]:
        """One flux token per bin centre of ``grid`` (centres in nm; default: the schema's grid), then the scalar
        tokens."""
        centres = self.bin_centres() if grid is None else list(grid)
        return [flux_token_name(c) for c in centres] + list(self.scalar_names)

    def group_of(self, name: str) -> str:
        groups = dict(zip(self.scalar_names, self.scalar_groups))
        if name in groups:
            return groups[name]
        return "spectrum" if is_flux_token_name(name) else "other"

    def unknown_names(self, names) -> list[str]:
        return [n for n in names if not (n in self.scalar_names or is_flux_token_name(n))]

    def _name_hint(self) -> str:
        return " (flux tokens are named like 'f340')"
