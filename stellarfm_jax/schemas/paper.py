"""The ``paper`` schema: the original's 118 tokens (original_spec §3), XP coefficients divided by the G-band flux.

bp0..bp54, rp0..rp54 (coefficient / F_G, F_G = 10**((25.6873668671 - G)/2.5) e-/s; coefficients at or beyond Gaia's
n_relevant_bases missing, with the original's fix-up: 52-54 follow 51), then bprp, jh, jk, teff, logg, m_h, logebv
(floored at -7, kept as a value as in the paper), g_fakemag = parallax [mas] * 10**(0.2 G).
"""

from __future__ import annotations

from .base import (BPRP, COLOURS, G_FAKEMAG, HEADLINE_LABELS, JH, JK, LOGEBV, CoefficientSchema)

XP_COEFFICIENTS = 55
PAPER_LABELS = HEADLINE_LABELS + (LOGEBV,)
NAMES = tuple([f"bp{i}" for i in range(XP_COEFFICIENTS)] + [f"rp{i}" for i in range(XP_COEFFICIENTS)]
              + [BPRP, JH, JK, *PAPER_LABELS, G_FAKEMAG])

PAPER = CoefficientSchema(
    name="paper",
    description="the original's 118 tokens: 110 XP coefficients / F_G, colours, teff, logg, m_h, logebv, g_fakemag",
    flux_kind="xp_coefficients",
    token_names=NAMES,
    token_groups=tuple([(c, "colour") for c in COLOURS] + [(n, "label") for n in PAPER_LABELS]
                       + [(G_FAKEMAG, "other")]),
)
