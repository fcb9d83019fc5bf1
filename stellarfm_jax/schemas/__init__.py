"""Token schemas (DESIGN §3): the names, roles and training outputs of each shipped vocabulary.

Standardisation statistics are not part of a schema; they come from the training split
(``Vocabulary.with_statistics``).
"""

from __future__ import annotations

from .vocab import Vocabulary

XP_COEFFICIENTS = 55
LABELS = ("teff", "logg", "m_h")
# Tokens the paper never requests during training (to test generalisation to unseen outputs).
PAPER_WITHHELD_OUTPUTS = ("bprp", "jk")


def paper_names() -> list[str]:
    """The original's 118 tokens in its vocabulary order (original_spec §3)."""
    return (
        [f"bp{i}" for i in range(XP_COEFFICIENTS)]
        + [f"rp{i}" for i in range(XP_COEFFICIENTS)]
        + ["bprp", "jh", "jk", "teff", "logg", "m_h", "logebv", "g_fakemag"]
    )


def paper_groups() -> list[str]:
    groups = {"bprp": "colour", "jh": "colour", "jk": "colour", "g_fakemag": "other"}
    return [groups.get(n, "label" if n in ("teff", "logg", "m_h", "logebv") else "spectrum") for n in paper_names()]


def paper_vocabulary() -> Vocabulary:
    """The paper schema with identity standardisation (fit statistics on a training split)."""
    names = paper_names()
    return Vocabulary.unit(
        names,
        outputs=[n for n in names if n not in PAPER_WITHHELD_OUTPUTS],
        groups=paper_groups(),
        schema="paper",
    )


# ---------------------------------------------------------------------------------------------------------------
# xp_sampled (the default schema, DESIGN §3): Gaia XP sampled flux averaged over wavelength bins and divided by the
# G-band flux, plus colours and APOGEE labels.

XP_SAMPLED_COLOURS = ("bprp", "jh", "jk")
XP_SAMPLED_LABELS = ("teff", "logg", "m_h", "alpha_m", "logebv")
XP_SAMPLED_NON_FLUX = XP_SAMPLED_COLOURS + XP_SAMPLED_LABELS
# Default grid: 8 nm bins whose edges start at 336 nm and stay within 1020 nm (GaiaXPy's default sampling range):
# 85 bins centred on 340, 348, ..., 1012 nm. The last 4 nm (1016-1020 nm) do not fill a bin and are left out.
DEFAULT_GRID_START_NM = 336.0
DEFAULT_GRID_STOP_NM = 1020.0
DEFAULT_GRID_WIDTH_NM = 8.0


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


def xp_sampled_bin_centres(
    start_nm: float = DEFAULT_GRID_START_NM, stop_nm: float = DEFAULT_GRID_STOP_NM, width_nm: float = DEFAULT_GRID_WIDTH_NM
) -> list[float]:
    """Centres [nm] of the bins [start + k*width, start + (k+1)*width] that end at or before ``stop_nm``."""
    if not (width_nm > 0 and stop_nm - start_nm >= width_nm):
        raise ValueError(
            f"wavelength grid needs width > 0 and at least one bin in [start, stop]; got start={start_nm}, "
            f"stop={stop_nm}, width={width_nm}"
        )
    n_bins = int((stop_nm - start_nm) / width_nm + 1e-9)
    return [start_nm + (k + 0.5) * width_nm for k in range(n_bins)]


def xp_sampled_names(grid=None) -> list[str]:
    """Token names of the xp_sampled schema: one flux token per bin centre of ``grid`` (a sequence of centres in nm;
    default: `xp_sampled_bin_centres()`), then bprp, jh, jk, teff, logg, m_h, alpha_m, logebv."""
    centres = xp_sampled_bin_centres() if grid is None else list(grid)
    return [flux_token_name(c) for c in centres] + list(XP_SAMPLED_NON_FLUX)


def xp_sampled_groups(names) -> list[str]:
    """Token roles: flux tokens "spectrum", bprp/jh/jk "colour", teff/logg/m_h/alpha_m/logebv "label"."""
    return [
        "colour" if n in XP_SAMPLED_COLOURS else "label" if n in XP_SAMPLED_LABELS else
        "spectrum" if is_flux_token_name(n) else "other"
        for n in names
    ]


def xp_sampled_vocabulary(grid=None, names=None) -> Vocabulary:
    """The xp_sampled schema with identity standardisation (fit statistics on a training split).

    ``names`` (optional) restricts the schema to a subset, e.g. when a source has no alpha_m at all. Outputs: every
    token except the paper's withheld pair (bprp, jk)."""
    names = xp_sampled_names(grid) if names is None else list(names)
    return Vocabulary.unit(
        names,
        outputs=[n for n in names if n not in PAPER_WITHHELD_OUTPUTS],
        groups=xp_sampled_groups(names),
        schema="xp_sampled",
    )


def schema_vocabulary(schema: str, names=None) -> Vocabulary:
    """Vocabulary of a shipped schema ("paper" or "xp_sampled"), optionally restricted to ``names`` (in that order);
    unknown schema or token names raise a ValueError naming them."""
    if schema == "paper":
        vocab = paper_vocabulary()
        if names is None:
            return vocab
        unknown = [n for n in names if n not in vocab.names]
        if unknown:
            raise ValueError(f"token names not in the paper schema: {unknown}")
        return Vocabulary.unit(list(names), [n for n in names if n in vocab.outputs], [vocab.groups[vocab.names.index(n)] for n in names], "paper")
    if schema == "xp_sampled":
        if names is not None:
            unknown = [n for n in names if not (n in XP_SAMPLED_NON_FLUX or is_flux_token_name(n))]
            if unknown:
                raise ValueError(f"token names not in the xp_sampled schema (flux tokens are named like 'f340'): {unknown}")
        return xp_sampled_vocabulary(names=names)
    raise ValueError(f"unknown schema {schema!r}; expected 'paper' or 'xp_sampled'")
