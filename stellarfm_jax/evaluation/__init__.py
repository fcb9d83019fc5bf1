"""The paper's science checks on real stars (DESIGN §7), one library function per task:

1. :func:`spectra_to_labels` (input sets: :func:`paper_input_sets`), 2. :func:`xgboost_experts`,
3. :func:`labels_to_spectra` and :func:`spectral_sequences`, 4. :func:`spectrum_to_spectrum`,
5. :func:`kiel_diagram`, 6. :func:`extinction_curve` (and the data's own, :func:`empirical_extinction_curve`), 7. :func:`attention_case`,
8. :func:`never_requested_outputs`, 9. calibration (in every :func:`spectra_to_labels` result;
:func:`calibration_checks`).

Each is registered once as an evaluation task (:mod:`.registry`: name, run function, metrics, figures, report
section, printed summary; the built-in tasks in :mod:`.tasks`, among them the labels -> spectrum ``emulator``
reference of :mod:`.emulator`); :func:`run_evaluation` runs the selected ones in order and writes metrics.json,
figures and report.md (:func:`render_report`); ``python -m stellarfm_jax.evaluate`` is its command line.
"""

from .common import (HEADLINE_LABELS, LABELS, InputSet, calibration_stats, flux_tokens, masked_inputs,
                     paper_input_sets, predict_tokens, residual_stats)
from .labels import (XGB_PARAMS, LabelResult, calibration_checks, claim_checks, fit_xgboost_expert, headline_rows,
                     never_requested_outputs, spectra_to_labels, xgboost_experts)
from .physics import attention_case, empirical_extinction_curve, extinction_curve, f99_extinction, kiel_diagram
from .spectra import labels_to_spectra, spectral_sequences, spectrum_residuals, spectrum_to_spectrum, star_level_z
from .markdown import headline_table
from .registry import EvalContext, EvalSettings, Task, register, select_tasks, task_names
from .report import render_report, run_evaluation, summary_lines

__all__ = [
    "EvalContext", "EvalSettings", "Task", "register", "render_report", "run_evaluation", "select_tasks",
    "summary_lines", "task_names", "headline_table",
    "HEADLINE_LABELS", "LABELS", "InputSet", "LabelResult", "XGB_PARAMS", "attention_case", "calibration_checks",
    "calibration_stats", "claim_checks", "empirical_extinction_curve", "extinction_curve", "f99_extinction",
    "fit_xgboost_expert", "flux_tokens",
    "headline_rows", "kiel_diagram", "labels_to_spectra", "masked_inputs", "never_requested_outputs",
    "paper_input_sets", "predict_tokens", "residual_stats", "spectra_to_labels", "spectral_sequences",
    "spectrum_residuals", "spectrum_to_spectrum", "star_level_z", "xgboost_experts",
]
