"""The ``xp_coarse`` schema (the default): the whole XP spectrum in 57 flux tokens of 12 nm, in units of the star's
mean flux over the G passband, plus colours and labels (65 tokens; spectrum + colours = 60 fit a 64-slot context).

Flux tokens ``f342, f354, ..., f1014``: Gaia XP sampled flux (GaiaXPy's 336-1020 nm, 2 nm grid) averaged over 12 nm
bins [336 + 12k, 348 + 12k] nm (57 bins fill 336-1020 nm exactly), divided by

    <f_lambda>_G = F_G * c,   F_G = 10**((25.6873668671 - G) / 2.5) [e-/s],
    c = 10**((-26.4899 - 25.6873668671) / 2.5) = 1.3462e-21 W m^-2 nm^-1 per e-/s,

the mean f_lambda over the G passband of a source of that G magnitude (GaiaXPy's Gaia_DR3_Vega synthetic G zero
point -26.4899 against Gaia's e-/s zero point). The tokens are dimensionless, of order 1 (a Sun-like star's f498 is
about 1.2), and equal the ``xp_sampled`` value divided by c exactly. Then bprp, jh, jk, teff, logg, m_h, alpha_m,
logebv; logebv at the data's -7 floor (RJCE failures, mostly hot dwarfs) is missing, not a value. The grid was chosen
by measurement (`stellarfm_jax.data.grid_study`, docs/data.md).
"""

from __future__ import annotations

from .base import G_PASSBAND_MEAN_FLUX_PER_E_S, SampledFluxSchema

XP_COARSE = SampledFluxSchema(
    name="xp_coarse",
    description="57 flux tokens (12 nm bins, f_lambda / mean f_lambda over the G passband, ~1), colours, 5 labels; "
                "logebv at the floor missing",
    flux_kind="sampled_flux",
    start_nm=336.0,
    stop_nm=1020.0,
    width_nm=12.0,
    flux_unit=G_PASSBAND_MEAN_FLUX_PER_E_S,
    flux_unit_text="f_lambda / <f_lambda>_G, the mean f_lambda over the G passband (dimensionless, ~1)",
    logebv_floor_missing=True,
    first_format_version=2,
)
