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
