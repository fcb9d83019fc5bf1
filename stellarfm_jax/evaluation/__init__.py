"""The paper's science checks on real stars (DESIGN §7), one library function per task:

1. :func:`spectra_to_labels` (input sets: :func:`paper_input_sets`), 2. :func:`xgboost_experts`,
3. :func:`labels_to_spectra` and :func:`spectral_sequences`, 4. :func:`spectrum_to_spectrum`,
5. :func:`kiel_diagram`, 6. :func:`extinction_curve` (and the data's own, :func:`empirical_extinction_curve`), 7. :func:`attention_case`,
8. :func:`never_requested_outputs`, 9. calibration (in every :func:`spectra_to_labels` result;
:func:`calibration_checks`).

``python -m stellarfm_jax.evaluate`` runs them all and writes a report (:func:`stellarfm_jax.evaluate.run_evaluation`).
"""

from .common import (HEADLINE_LABELS, LABELS, InputSet, calibration_stats, flux_tokens, masked_inputs,
                     paper_input_sets, predict_tokens, residual_stats)
from .labels import (XGB_PARAMS, LabelResult, calibration_checks, claim_checks, fit_xgboost_expert, headline_rows,
                     never_requested_outputs, spectra_to_labels, xgboost_experts)
from .physics import attention_case, empirical_extinction_curve, extinction_curve, f99_extinction, kiel_diagram
from .spectra import labels_to_spectra, spectral_sequences, spectrum_residuals, spectrum_to_spectrum

__all__ = [
    "HEADLINE_LABELS", "LABELS", "InputSet", "LabelResult", "XGB_PARAMS", "attention_case", "calibration_checks",
    "calibration_stats", "claim_checks", "empirical_extinction_curve", "extinction_curve", "f99_extinction",
    "fit_xgboost_expert", "flux_tokens",
    "headline_rows", "kiel_diagram", "labels_to_spectra", "masked_inputs", "never_requested_outputs",
    "paper_input_sets", "predict_tokens", "residual_stats", "spectra_to_labels", "spectral_sequences",
    "spectrum_residuals", "spectrum_to_spectrum", "xgboost_experts",
]
