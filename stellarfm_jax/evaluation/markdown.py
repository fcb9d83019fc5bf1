"""Text helpers of the evaluation report: number formatting, the headline table, markdown tables and the
conversion of task results to JSON (NumPy arrays to lists, non-finite floats to null, ``arrays`` entries dropped)."""

from __future__ import annotations

import numpy as np


def fmt(x, digits: int = 3) -> str:
    """``x`` with ``digits`` significant digits, ``n/a`` for None / NaN / inf."""
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}g}"


def table(header: list[str], rows: list[list], align: str | None = None) -> list[str]:
    """A markdown table as lines: ``align`` one character per column (``l`` or ``r``; default: first column left,
    the others right)."""
    align = align or "l" + "r" * (len(header) - 1)
    rule = "|" + "|".join("---" if a == "l" else "---:" for a in align) + "|"
    return ["| " + " | ".join(header) + " |", rule] + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def headline_table(rows: list[dict]) -> str:
    """Markdown table: input set, label, model scatter, XGBoost scatter, ratio, z std, 68% coverage."""
    lines = ["| input set | label | model σ | XGBoost σ | model / XGBoost | z std | 68% coverage |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['set']} | {r['label']} | {fmt(r['model'])} | {fmt(r['xgboost'])} | {fmt(r['ratio'])} | "
                     f"{fmt(r['z_std'])} | {fmt(r['coverage68'])} |")
    return "\n".join(lines)


def jsonable(obj):
    """``obj`` as plain JSON types; dictionary entries named ``arrays`` (a task's raw arrays) are dropped."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items() if k != "arrays"}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.bool_,)):
        return bool(obj)
    return obj
