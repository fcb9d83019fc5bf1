"""The ``xp_sampled`` schema (the shipped model's): 85 flux tokens of 8 nm, in W m^-2 nm^-1 per e-/s, plus colours and
labels (93 tokens).

Flux tokens ``f340, f348, ..., f1012``: Gaia XP sampled flux (GaiaXPy's 336-1020 nm, 2 nm grid) averaged over 8 nm
bins [336 + 8k, 344 + 8k] nm and divided by the G-band flux F_G = 10**((25.6873668671 - G)/2.5) [e-/s]: values are
~1e-21. The last 4 nm (1016-1020) do not fill a bin. Then bprp, jh, jk, teff, logg, m_h, alpha_m, logebv; logebv at
the -7 floor is kept as a value. Kept exactly as it was when the shipped model was trained.
"""

from __future__ import annotations

from .base import SampledFluxSchema

XP_SAMPLED = SampledFluxSchema(
    name="xp_sampled",
    description="85 flux tokens (8 nm bins, f_lambda / F_G in W m^-2 nm^-1 per e-/s, ~1e-21), colours, 5 labels",
    flux_kind="sampled_flux",
    start_nm=336.0,
    stop_nm=1020.0,
    width_nm=8.0,
    flux_unit=1.0,
    flux_unit_text="f_lambda [W m^-2 nm^-1] / F_G [e-/s] (values ~1e-21)",
)
