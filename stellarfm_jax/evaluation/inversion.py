"""Evaluation task: differentiable inversion of real spectra against APOGEE (DESIGN §5, §7; issue 15).

:func:`inversion_task` takes the first ``n_stars`` stars of a split with APOGEE teff, logg and m_h, fits teff, logg,
m_h (and logebv when the vocabulary has it) to their flux tokens and the colours the model was trained to output
(``jh``), with their observed errors (:func:`stellarfm_jax.inversion.invert` with its defaults, the prior fitted on
the train split; :func:`observed_names`), and reports for each of teff, logg
and m_h the robust scatter and bias against APOGEE and the calibration (z = (fit - APOGEE) / sqrt(fit error^2 +
APOGEE error^2): robust std, fraction within 1 and 2 sigma) next to

* the forward prediction on the same stars (spectra + colours -> labels: the ``xp_colours`` input set), and
* the classical reference when an emulator is given: the chi^2 fit of the labels -> spectrum emulator
  (:func:`stellarfm_jax.evaluation.emulator.fit_labels_chi2`, its default objective).

It also counts the flagged fits and their reasons, times the inversion, and says whether a bad fit is the optimiser's
or the model's (``likelihood_check``: how often the fit's own objective, the model's likelihood with the variance
the fit used, is lower at the catalogue's labels than at the fit; :func:`likelihood_nll`). :func:`inversion_figure` draws recovered
vs APOGEE and the z histograms.
"""

from __future__ import annotations

import collections
import re
import time

import numpy as np

from ..inversion import (MISSING_AT_OR_BELOW, InversionPrior, InversionSettings, default_free_names, invert,
                         resolve_model_error)
from .common import calibration_stats, masked_inputs, paper_input_sets, predict_tokens, residual_stats

HEADLINE = ("teff", "logg", "m_h")


def reason_counts(reasons) -> dict:
    """How many stars carry each reason (a star may have several; numbers such as the ridge size are dropped)."""
    counts = collections.Counter()
    for r in reasons:
        for part in filter(None, str(r).split("; ")):
            counts[re.sub(r"ridge [-+.0-9e]+ added", "ridge added", part)] += 1
    return dict(counts.most_common())


def _method_stats(values, errors, truth, truth_err) -> dict:
    out = {}
    for j, name in enumerate(HEADLINE):
        out[name] = {**residual_stats(values[:, j], truth[:, j]),
                     **calibration_stats(values[:, j], errors[:, j], truth[:, j], truth_err[:, j]),
                     "median_error": float(np.nanmedian(errors[:, j]))}
    return out


def observed_names(vocab) -> list[str]:
    """The tokens the inversion task fits: the spectrum, then the colours among the model's trained outputs."""
    outputs = set(vocab.outputs)
    return list(vocab.group_names("spectrum")) + [n for n in vocab.group_names("colour") if n in outputs]


def likelihood_nll(model, theta, free, observed, errors, names, variance_at=None, model_error=None) -> np.ndarray:
    """The inversion's likelihood term, 0.5 sum_j [(y_j - mu_j)^2 / V_j + ln V_j] in standardised units over the
    observed (finite) tokens, at the physical free values ``theta`` [N, F], from the public ``perceive`` /
    ``request`` API: evaluated at the catalogue's labels and at the fit it says whether a bad fit is the
    optimiser's failure (the labels score better) or the model's (its likelihood prefers the fit). The model's
    variance in V is its prediction at ``theta`` (``model_variance="predicted"``) or at ``variance_at`` [N, F]
    (``"fixed"``: the forward prediction of the free tokens, see :func:`forward_free_values`). With a
    ``model_error`` (:class:`stellarfm_jax.inversion.ModelError`, needs ``variance_at``): the fit's objective with
    the residuals' covariance, 0.5 r^T C^-1 r with r = y - D m - mu and C = D R D, D = diag(sqrt(V)) (the constant
    0.5 ln det C left out, as in the fit)."""
    res = model.perceive(theta, list(free)).request(list(names))
    at = res if variance_at is None else model.perceive(variance_at, list(free)).request(list(names))
    ids = model.vocab.ids(list(names)) - 1
    scale = model.vocab.scale[ids]
    mu = np.stack([res[n] for n in names], 1) / scale
    var = (np.nan_to_num(errors) / scale) ** 2 + (np.stack([at[f"{n}_error"] for n in names], 1) / scale) ** 2
    y = observed / scale
    if model_error is None:
        terms = np.where(np.isfinite(y), (y - mu) ** 2 / var + np.log(var), 0.0)
        return 0.5 * terms.sum(axis=1)
    if variance_at is None:
        raise ValueError("a model error needs the variance at the forward prediction (variance_at)")
    mean, corr = model_error.for_names(list(names))
    out = np.zeros(len(y))
    for i in range(len(y)):
        ok = np.isfinite(y[i])
        d = np.sqrt(var[i, ok])
        r = y[i, ok] - d * mean[ok] - mu[i, ok]
        out[i] = 0.5 * r @ np.linalg.solve(corr[np.ix_(ok, ok)] * d[:, None] * d[None, :], r)
    return out


def forward_free_values(model, observed, errors, names, free) -> np.ndarray:
    """[N, F] the model's forward prediction of the free tokens from the observed ones (physical): the inversion's
    first candidate, where ``model_variance="fixed"`` takes the model's variance."""
    res = model.perceive(observed, list(names), errors, overflow="keep_informative").request(list(free))
    return np.stack([res[n] for n in free], 1)


def inversion_task(model, dataset, split_data, *, n_stars: int = 500, emulator=None, prior="fit", log=print,
                   seed: int = 0, chunk_size: int | None = None, **invert_options) -> dict:
    """Inversion of ``n_stars`` stars of ``split_data`` (a data set split) with APOGEE teff, logg, m_h.

    ``prior``: "fit" (default: :meth:`InversionPrior.fit` on ``dataset.train``), or anything
    :func:`stellarfm_jax.inversion.invert` accepts. ``emulator``: an
    :class:`stellarfm_jax.evaluation.emulator.Emulator` whose flux tokens are in the vocabulary (None: no classical
    reference). ``invert_options`` go to :func:`stellarfm_jax.inversion.invert` (e.g. ``newton_steps``). Returns a
    JSON-able dict (``arrays`` holds the per-star arrays for the figure)."""
    vocab = model.vocab
    cols = vocab.ids(list(HEADLINE)) - 1
    truth_all = split_data.values[:, cols].astype(np.float64)
    stars = np.flatnonzero(np.isfinite(truth_all).all(axis=1))[:n_stars]
    truth, truth_err = truth_all[stars], split_data.errors[stars][:, cols].astype(np.float64)
    # Observed: the spectrum and the colours the model was trained to output (jh; bprp and jk were never
    # requested in training, so the model cannot be asked to reproduce them).
    flux = observed_names(vocab)
    fcols = vocab.ids(flux) - 1
    obs, err = split_data.values[stars][:, fcols], split_data.errors[stars][:, fcols]
    free = default_free_names(vocab)
    if isinstance(prior, str) and prior == "fit":
        prior = InversionPrior.fit(dataset.train.values, vocab, free, seed=seed)
    t0 = time.perf_counter()
    fit = invert(model, obs, flux, err, free=free, prior=prior, seed=seed, chunk_size=chunk_size, **invert_options)
    seconds = time.perf_counter() - t0
    log(f"[inversion] {len(stars)} stars in {seconds:.1f} s ({seconds / max(len(stars), 1):.3f} s/star), "
        f"{int(fit.flagged.sum())} flagged")
    head = [free.index(n) for n in HEADLINE]
    result = {"n_stars": int(len(stars)), "free": list(free), "prior": fit.prior, "model_error": fit.model_error,
              "seconds": seconds,
              "seconds_per_star": seconds / max(len(stars), 1), "flagged": int(fit.flagged.sum()),
              "flagged_fraction": float(fit.flagged.mean()) if len(stars) else float("nan"),
              "flag_reasons": reason_counts(fit.reason),
              "nan_errors_without_flag": int((~np.isfinite(fit.errors).all(axis=1) & ~fit.flagged).sum()),
              "methods": {}}
    result["methods"]["inversion"] = _method_stats(fit.values[:, head], fit.errors[:, head], truth, truth_err)
    arrays = {"truth": truth, "truth_err": truth_err, "inversion": fit.values[:, head],
              "inversion_err": fit.errors[:, head]}

    # Optimiser or model? The likelihood at the catalogue's values of every free token (stars that have them all)
    # against the likelihood at the fit.
    fcols_free = vocab.ids(list(free)) - 1
    known = split_data.values[stars][:, fcols_free].astype(np.float64)
    have = np.isfinite(known).all(axis=1)
    for name, floor in MISSING_AT_OR_BELOW.items():  # e.g. the data's logebv floor means "unknown"
        if name in free:
            have &= known[:, free.index(name)] > floor
    if have.any():
        fixed = invert_options.get("model_variance", InversionSettings.model_variance) == "fixed"  # the fit's objective
        at = forward_free_values(model, obs[have], err[have], flux, free) if fixed else None
        model_err, _ = resolve_model_error(model, flux, invert_options.get("model_error", "auto"),
                                           invert_options.get("model_variance", InversionSettings.model_variance))
        at_truth = likelihood_nll(model, known[have], free, obs[have], err[have], flux, at, model_err)
        at_fit = likelihood_nll(model, fit.values[have], free, obs[have], err[have], flux, at, model_err)
        result["likelihood_check"] = {"stars": int(have.sum()),
                                      "fraction_truth_scores_better": float(np.mean(at_truth < at_fit)),
                                      "median_nll_truth_minus_fit": float(np.median(at_truth - at_fit))}
        log(f"[inversion] the model's likelihood is higher at the catalogue's labels than at the fit for "
            f"{np.mean(at_truth < at_fit):.0%} of {int(have.sum())} stars (median NLL gap "
            f"{np.median(at_truth - at_fit):+.1f})")

    # Forward prediction: spectra + colours -> labels on the same stars.
    xp_colours = next(s for s in paper_input_sets(vocab, model.context_length) if s.key == "xp_colours")
    inputs = masked_inputs(vocab, split_data.values[stars], xp_colours)
    mean, sigma = predict_tokens(model, inputs, list(HEADLINE))
    result["methods"]["forward"] = _method_stats(mean, sigma, truth, truth_err)
    arrays.update(forward=mean, forward_err=sigma)

    if emulator is not None:
        from .emulator import fit_labels_chi2

        ecols = vocab.ids(list(emulator.flux_names)) - 1
        chi2 = fit_labels_chi2(emulator, split_data.values[stars][:, ecols], split_data.errors[stars][:, ecols])
        ehead = [chi2.names.index(n) for n in HEADLINE]
        result["methods"]["emulator_chi2"] = _method_stats(chi2.values[:, ehead], chi2.errors[:, ehead], truth,
                                                           truth_err)
        result["emulator"] = {"seconds": chi2.seconds, "flagged": int(chi2.flagged.sum()),
                              "flag_reasons": reason_counts(chi2.reason)}
        arrays.update(emulator_chi2=chi2.values[:, ehead], emulator_chi2_err=chi2.errors[:, ehead])

    fwd = result["methods"]["forward"]
    result["checks"] = {
        name: {"scatter_ratio_to_forward": result["methods"]["inversion"][name]["scatter"] / fwd[name]["scatter"],
               "within_1.25x_forward": bool(result["methods"]["inversion"][name]["scatter"] <= 1.25 * fwd[name]["scatter"]),
               "coverage68_in_[0.55,0.80]": bool(0.55 <= result["methods"]["inversion"][name]["coverage68"] <= 0.80),
               "coverage95_>=0.90": bool(result["methods"]["inversion"][name]["coverage95"] >= 0.90)}
        for name in HEADLINE}
    result["checks"]["flagged_<=5%"] = bool(result["flagged_fraction"] <= 0.05)
    result["arrays"] = arrays
    return result


def inversion_table(result: dict) -> str:
    """Markdown: per method and label, robust scatter, bias, z std, 1 and 2 sigma coverage."""
    lines = ["| method | label | scatter | bias | z std | within 1σ | within 2σ |", "|---|---|---:|---:|---:|---:|---:|"]
    for method, stats in result["methods"].items():
        for name in HEADLINE:
            s = stats[name]
            lines.append(f"| {method} | {name} | {s['scatter']:.4g} | {s['bias']:.3g} | {s['z_std']:.3g} | "
                         f"{s['coverage68']:.3f} | {s['coverage95']:.3f} |")
    return "\n".join(lines)


def inversion_figure(result: dict, path) -> None:
    """Recovered vs APOGEE (inversion, forward prediction, emulator chi^2 when present) and the inversion's z
    histograms, one column per label; written to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    a = result["arrays"]
    methods = [m for m in ("inversion", "forward", "emulator_chi2") if m in a]
    fig, axes = plt.subplots(2, 3, figsize=(13, 8))
    for j, name in enumerate(HEADLINE):
        ax = axes[0, j]
        t = a["truth"][:, j]
        for m in methods:
            ax.scatter(t, a[m][:, j], s=4, alpha=0.5, label=m)
        lo, hi = np.nanpercentile(t, [0.5, 99.5])
        ax.plot([lo, hi], [lo, hi], "k-", lw=0.8)
        ax.set_xlabel(f"APOGEE {name}")
        ax.set_ylabel(f"recovered {name}")
        if j == 0:
            ax.legend(fontsize=8)
        ax = axes[1, j]
        for m in methods:
            z = (a[m][:, j] - t) / np.sqrt(a[f"{m}_err"][:, j] ** 2 + np.nan_to_num(a["truth_err"][:, j]) ** 2)
            ax.hist(np.clip(z[np.isfinite(z)], -6, 6), bins=48, range=(-6, 6), histtype="step", density=True, label=m)
        x = np.linspace(-6, 6, 200)
        ax.plot(x, np.exp(-0.5 * x**2) / np.sqrt(2 * np.pi), "k--", lw=0.8, label="N(0, 1)")
        ax.set_xlabel(f"z ({name})")
    fig.suptitle(f"inversion of {result['n_stars']} real spectra (prior {result['prior']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


__all__ = ["inversion_figure", "inversion_table", "inversion_task"]
