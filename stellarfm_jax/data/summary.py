"""A Table-1-style summary of a data set (Leung & Bovy 2023, Table 1): star counts per split.

Rows (a star "has" a token when its value is finite):
- stars; with XP (any spectrum token); with teff; with teff, logg and m_h;
- XP without labels (XP but none of teff/logg/m_h); labels without XP (any of teff/logg/m_h but no XP);
- without 2MASS colours (jh or jk missing); without logebv; without g_fakemag (only when the schema has it).
"""

from __future__ import annotations

import json

import numpy as np

from .dataset import SPLITS, Dataset

ROWS = (
    ("stars", "stars"),
    ("with_xp", "with XP"),
    ("with_teff", "with teff"),
    ("with_teff_logg_m_h", "with teff, logg and m_h"),
    ("xp_without_labels", "XP without labels"),
    ("labels_without_xp", "labels without XP"),
    ("without_colours", "without 2MASS colours (jh or jk)"),
    ("without_logebv", "without logebv"),
    ("without_g_fakemag", "without g_fakemag"),
)


def summarise(ds: Dataset) -> dict:
    """{split: {row key: count}} for train, val, test and "all"."""
    spectrum = np.array([g == "spectrum" for g in ds.vocab.groups])
    names = list(ds.vocab.names)
    table = {}
    for split_name in SPLITS + ("all",):
        if split_name == "all":
            values = np.concatenate([ds.split(s).values for s in SPLITS])
        else:
            values = ds.split(split_name).values
        have = np.isfinite(values)

        def has(name):
            return have[:, names.index(name)] if name in names else np.zeros(values.shape[0], dtype=bool)

        xp = have[:, spectrum].any(axis=1)
        any_label = has("teff") | has("logg") | has("m_h")
        counts = {
            "stars": values.shape[0],
            "with_xp": xp.sum(),
            "with_teff": has("teff").sum(),
            "with_teff_logg_m_h": (has("teff") & has("logg") & has("m_h")).sum(),
            "xp_without_labels": (xp & ~any_label).sum(),
            "labels_without_xp": (any_label & ~xp).sum(),
            "without_colours": (~(has("jh") & has("jk"))).sum(),
            "without_logebv": (~has("logebv")).sum(),
        }
        if "g_fakemag" in names:
            counts["without_g_fakemag"] = (~has("g_fakemag")).sum()
        table[split_name] = {k: int(v) for k, v in counts.items()}
    return table


def format_summary(table: dict, title: str = "") -> str:
    """A fixed-width text table of `summarise` output."""
    columns = list(table)
    lines = [title] if title else []
    lines.append(f"{'':36s}" + "".join(f"{c:>10s}" for c in columns))
    for key, label in ROWS:
        if key in table[columns[0]]:
            lines.append(f"{label:36s}" + "".join(f"{table[c][key]:>10d}" for c in columns))
    return "\n".join(lines)


def summary_json(table: dict, extra: dict | None = None) -> str:
    return json.dumps({"counts": table, **(extra or {})}, indent=1)
