"""The built-in evaluation tasks (DESIGN §7), registered once each in run and report order:

``spectra_to_labels``, ``xgboost_experts``, ``headline`` (the comparison, the paper's central claim and
calibration), ``never_requested_outputs``, ``labels_to_spectra``, ``emulator`` (the Payne-style labels -> spectrum
reference, side by side with the model in the labels -> spectrum section), ``spectral_sequences``,
``spectrum_to_spectrum``, ``extinction_curve``, ``extinction_in_data``, ``kiel_diagram``, ``attention_case``,
``inversion`` (gradient inversion of real spectra, :mod:`stellarfm_jax.evaluation.inversion`; off in ``--quick``).

Each task is a few small functions of the :class:`~stellarfm_jax.evaluation.registry.EvalContext` and one
:func:`~stellarfm_jax.evaluation.registry.register` call; see :mod:`stellarfm_jax.evaluation.registry`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json

import numpy as np

from . import figures
from .common import flux_tokens
from .labels import XGB_PARAMS, calibration_checks, claim_checks, headline_rows, never_requested_outputs, \
    spectra_to_labels, xgboost_experts
from .markdown import fmt, headline_table, table
from .physics import attention_case, empirical_extinction_curve, extinction_curve, kiel_diagram
from .registry import Task, register
from .spectra import labels_to_spectra, spectral_sequences, spectrum_residuals, spectrum_to_spectrum


def _off_unless(flag: str):
    return lambda settings: None if getattr(settings, flag) else f"EvalSettings.{flag} is {getattr(settings, flag)}"


# ----------------------------------------------------------------------------- spectra -> labels
def _input_sets_metric(ctx):
    return {s.key: {"title": s.title, "names": list(s.names), "random_count": s.random_count} for s in ctx.input_sets}


register(Task(
    "spectra_to_labels", run=lambda ctx: spectra_to_labels(ctx.model, ctx.data, ctx.input_sets),
    metrics=lambda ctx, res: {"input_sets": _input_sets_metric(ctx), "model_labels": res.metrics},
    description="the model's labels from each of the paper's input sets"))


def _xgboost_run(ctx):
    s = ctx.settings
    return xgboost_experts(ctx.model.vocab, ctx.dataset.train, ctx.dataset.val, ctx.data, ctx.input_sets,
                           params=dict(s.xgb_params), max_train=s.xgb_max_train)


register(Task(
    "xgboost_experts", run=_xgboost_run,
    metrics=lambda ctx, res: {"xgboost": {"params": dict(XGB_PARAMS, **dict(ctx.settings.xgb_params)),
                                          "metrics": res.metrics, "fit_seconds": res.seconds}},
    allowed=_off_unless("xgboost"),
    description="a dedicated XGBoost model per input set and label (the spectra -> labels reference)"))


def _headline_metrics(ctx, _):
    model_labels = ctx.results["spectra_to_labels"]
    rows = headline_rows(model_labels, ctx.results.get("xgboost_experts"), model_labels.labels)
    return {"headline": rows, "claims": claim_checks(rows), "calibration": calibration_checks(model_labels)}


def _headline_figures(ctx, _, out):
    model_labels = ctx.results["spectra_to_labels"]
    figures.label_residuals(model_labels, ctx.results.get("xgboost_experts"), out / "spectra_to_labels.png")
    figures.calibration_histograms(model_labels, out / "calibration.png")


def _headline_section(m):
    lines = ["## Spectra → parameters: model vs XGBoost expert per input set", "", headline_table(m["headline"]), ""]
    if "xgboost" in m:
        xgb = m["xgboost"]
        rounds = {k: {n: v["rounds"] for n, v in d.items()} for k, d in xgb["metrics"].items()}
        lines += [f"XGBoost experts: {sum(len(r) for r in rounds.values())} boosters fitted in "
                  f"{sum(xgb['fit_seconds'].values()):.0f} s; parameters `{json.dumps(xgb['params'])}`; "
                  f"rounds kept: `{json.dumps(rounds)}`.", ""]
    lines += ["Input sets:", ""] + [f"- `{k}`: {v['title']} ({v['random_count'] or len(v['names'])} tokens)"
                                    for k, v in m["input_sets"].items()] + [""]
    lines += ["## The paper's central claim", "", "| set/label | model / XGBoost | must be below | pass |", "|---|---:|---:|---|"]
    lines += [f"| {k} | {fmt(v['ratio'])} | {'<' if v['limit'] == 1 else '≤'} {v['limit']:.2f} | {v['pass']} |"
              for k, v in m["claims"].items()] + [""]
    lines += ["## Calibration (input set `xp_colours`)", "",
              "| label | robust z std [0.8, 1.25] | 68% coverage [0.6, 0.76] | pass | rms z (diagnostic) | 2σ coverage (0.954) |",
              "|---|---:|---:|---|---:|---:|"]
    lines += [f"| {k} | {fmt(v['z_std'])} | {fmt(v['coverage68'])} | {v['pass']} | {fmt(v.get('z_rms'))} | "
              f"{fmt(v.get('coverage95'))} |" for k, v in m["calibration"].items()]
    lines += ["", "rms z near 1 with a robust z std below 1 means the predicted variance is right and the residuals are "
              "heavier-tailed than a Gaussian (the training loss is a Gaussian likelihood, whose variance follows the tails).", ""]
    return lines


def _headline_summary(m):
    cal = ", ".join(f"{k}: z std {v['z_std']:.2f}, cov {v['coverage68']:.2f} (rms z {v['z_rms']:.2f}, 2σ cov {v['coverage95']:.2f})"
                    for k, v in m["calibration"].items())
    return [headline_table(m["headline"]), f"calibration (xp_colours): {cal}"]


register(Task(
    "headline", run=None, metrics=_headline_metrics, figures=_headline_figures, section=_headline_section,
    summary=_headline_summary, requires=("spectra_to_labels",),
    description="model against expert per input set, the paper's central claim, calibration"))


# ----------------------------------------------------------------------------- never-requested outputs
def _nro_section(m):
    nro = m["never_requested_outputs"]
    lines = ["## Never-requested outputs (from flux tokens only)", "", "| token | σ (mag) | bias | z std | 68% coverage |",
             "|---|---:|---:|---:|---:|"]
    return lines + [f"| {k} | {fmt(nro[k]['scatter'])} | {fmt(nro[k]['bias'])} | {fmt(nro[k]['z_std'])} | "
                    f"{fmt(nro[k]['coverage68'])} |" for k in ("bprp", "jk") if k in nro] + [""]


register(Task(
    "never_requested_outputs", run=lambda ctx: never_requested_outputs(ctx.model, ctx.data),
    figures=lambda ctx, res, out: figures.new_outputs_figure(res, out / "never_requested_outputs.png"),
    section=_nro_section, description="bprp and jk (never requested in training) from flux tokens"))


# ----------------------------------------------------------------------------- labels -> spectrum (+ emulator)
SPECTRUM_COLUMNS = ["task", "stars", "median abs fractional residual", "max abs median residual",
                    "median χ²/dof (model+obs errors)", "median χ²/dof (obs errors)"]


def _spectrum_row(name, r):
    return [name, r["n_stars"], fmt(r["median_abs_fractional_residual"]), fmt(r["max_abs_median_fractional_residual"]),
            fmt(r["median_chi2"]), fmt(r["median_chi2_observed_errors_only"])]


# Issue 16's generation acceptance: median |fractional residual| at most 5% and not worse than the emulator's,
# flux z-score robust std in [0.8, 1.25].
GENERATION_MAX_RESIDUAL = 0.05
GENERATION_Z_RANGE = (0.8, 1.25)


def _l2s_section(m):
    l2s = m["labels_to_spectra"]
    emu = m.get("emulator")
    lines = ["## Spectra from parameters", "", *table(SPECTRUM_COLUMNS, [_spectrum_row("labels → spectrum", l2s)]), "",
             f"Labels → spectrum inputs: {', '.join(l2s['inputs'])}.", ""]
    def row(name, r):
        return [name, r["n_stars"], fmt(r["median_abs_fractional_residual"]), fmt(r.get("flux_z_robust_std")),
                fmt(r.get("flux_z_rms")), fmt(r.get("flux_z_robust_std_within_star")),
                f"{fmt(r.get('share_stars_rms_z_above'))} / {fmt(r.get('share_z2_from_those_stars'))}"]

    rows = [row("model, stars with teff, logg, m_h", l2s)]
    if emu is not None:
        rows += [row("model, the emulator's stars", emu["model_same_stars"]), row("emulator", emu["labels_to_spectra"])]
    lines += ["Model against the dedicated emulator (`emulator` task; z = (pred - obs) / sqrt(σ_pred² + σ_obs²) over "
              "every star and flux token):" if emu is not None else "Flux z-scores (z = (pred - obs) / sqrt(σ_pred² + σ_obs²)):",
              "", *table(["generator", "stars", "median abs fractional residual", "flux z robust std", "flux z rms",
                          "z robust std within a star (its offset and tilt removed)",
                          "share of stars with rms z > 2 / their share of Σz²"], rows), ""]
    if emu is not None:
        c = emu["comparison"]
        lines += [f"Acceptance (issue 16): model median |fractional residual| ≤ {GENERATION_MAX_RESIDUAL:.0%}: "
                  f"{c['model_at_most_max']}; not worse than the emulator's: {c['model_not_worse']}; flux z robust std "
                  f"in [{GENERATION_Z_RANGE[0]}, {GENERATION_Z_RANGE[1]}]: {c['model_z_std_in_range']}. Per-wavelength "
                  f"median |fractional residual| of both: `labels_to_spectra.png`, and in metrics.json.", ""]
    return lines


def _l2s_figures(ctx, res, out):
    curves = {"model": res}
    emu = ctx.results.get("emulator")
    if emu is not None:
        curves = {"model (the emulator's stars)": emu["model_same_stars"], "emulator": emu["labels_to_spectra"]}
    figures.generation_figure(curves, out / "labels_to_spectra.png", f"flux from {', '.join(res['inputs'])}")


def _l2s_summary(m):
    l2s = m["labels_to_spectra"]
    line = (f"labels → spectrum: median |pred/obs - 1| {fmt(l2s['median_abs_fractional_residual'])}, flux z robust std "
            f"{fmt(l2s.get('flux_z_robust_std'))}")
    emu = m.get("emulator")
    if emu is not None:
        same, e = emu["model_same_stars"], emu["labels_to_spectra"]
        line += (f"; on the emulator's {e['n_stars']} stars model {fmt(same['median_abs_fractional_residual'])} "
                 f"(z {fmt(same['flux_z_robust_std'])}) vs emulator {fmt(e['median_abs_fractional_residual'])} "
                 f"(z {fmt(e['flux_z_robust_std'])})")
    return [line]


register(Task(
    "labels_to_spectra", run=lambda ctx: labels_to_spectra(ctx.model, ctx.data), figures=_l2s_figures,
    section=_l2s_section, summary=_l2s_summary, description="every flux token from the stars' labels"))


def _fit_emulator(ctx, flux_names=None):
    """The evaluation's emulator (its settings) of ``flux_names`` (default the spectrum), fit on the train split."""
    from . import emulator as em

    s = ctx.settings
    train = ctx.dataset.train
    if s.emulator_max_train is not None:
        train = train.subset(np.arange(min(s.emulator_max_train, len(train))))
    config = dataclasses.replace(em.EmulatorConfig(), **dict(s.emulator_config))
    outputs = {} if flux_names is None else {"flux_names": flux_names}
    return em.fit_emulator(ctx.model.vocab, train.values, train.errors, ctx.dataset.val.values, ctx.dataset.val.errors,
                           config=config, seed=s.emulator_seed, **outputs)


def _emulator_run(ctx):
    from . import emulator as em

    vocab = ctx.model.vocab
    emulator = _fit_emulator(ctx)
    labels = em.emulator_labels(emulator, vocab, ctx.data.values)
    stars = np.flatnonzero(np.isfinite(labels).all(axis=1))
    pred, sigma = em.emulate(emulator, labels[stars])
    names, waves = flux_tokens(vocab)
    wave_of = dict(zip(names, waves))
    cols = vocab.ids(list(emulator.flux_names)) - 1
    obs = ctx.data.values[stars][:, cols].astype(np.float64)
    err = ctx.data.errors[stars][:, cols].astype(np.float64)
    report = spectrum_residuals(pred, sigma, obs, err, [wave_of[n] for n in emulator.flux_names])
    report["n_stars_without_labels"] = int(len(ctx.data) - len(stars))
    out = {"emulator": emulator, "labels_to_spectra": report, "stars": stars}
    model = ctx.results.get("labels_to_spectra")
    if model is not None:  # the model on exactly these stars (the emulator needs all five labels: a subset)
        arr = model["arrays"]
        if list(emulator.flux_names) != list(names):
            raise ValueError("the emulator's flux tokens differ from the vocabulary's spectrum tokens")
        row = {star: k for k, star in enumerate(arr["stars"])}
        keep = np.array([row[s] for s in stars if s in row], dtype=int)
        out["model_same_stars"] = spectrum_residuals(arr["pred"][keep], arr["sigma"][keep], arr["observed"][keep],
                                                     arr["observed_error"][keep], arr["wavelength"])
    return out


def _emulator_metrics(ctx, res):
    emulator = res["emulator"]
    info = {k: emulator.info.get(k) for k in ("epochs", "best_epoch", "best_val_nll", "seconds", "n_train", "n_val", "seed")}
    out = {"fit": {**info, "config": dataclasses.asdict(emulator.config), "labels": list(emulator.label_names)},
           "labels_to_spectra": res["labels_to_spectra"]}
    if "model_same_stars" in res:
        same, e = res["model_same_stars"], res["labels_to_spectra"]
        out["model_same_stars"] = same
        out["comparison"] = {
            "model_median_abs_fractional_residual": same["median_abs_fractional_residual"],
            "emulator_median_abs_fractional_residual": e["median_abs_fractional_residual"],
            "model_flux_z_robust_std": same["flux_z_robust_std"],
            "emulator_flux_z_robust_std": e["flux_z_robust_std"],
            "model_at_most_max": bool(same["median_abs_fractional_residual"] <= GENERATION_MAX_RESIDUAL),
            "model_not_worse": bool(same["median_abs_fractional_residual"] <= e["median_abs_fractional_residual"]),
            "model_z_std_in_range": bool(GENERATION_Z_RANGE[0] <= same["flux_z_robust_std"] <= GENERATION_Z_RANGE[1]),
        }
    return {"emulator": out}


def _emulator_section(m):
    f = m["emulator"]["fit"]
    return [f"Emulator (`stellarfm_jax.evaluation.emulator`, labels {', '.join(f['labels'])} → every flux token, MLP "
            f"{tuple(f['config']['hidden'])}): fitted on {f['n_train']} train stars, early-stopped on {f['n_val']} val "
            f"stars at epoch {f['best_epoch']} of {f['epochs']} ({f['seconds']:.0f} s); "
            f"{m['emulator']['labels_to_spectra']['n_stars_without_labels']} evaluated stars lack one of its labels.", ""]


register(Task(
    "emulator", run=_emulator_run, metrics=_emulator_metrics, section=_emulator_section,
    allowed=_off_unless("emulator"),
    description="the Payne-style labels -> spectrum emulator (fitted on train, early-stopped on val)"))


# ----------------------------------------------------------------------------- sequences, spectrum -> spectrum
register(Task(
    "spectral_sequences", run=lambda ctx: spectral_sequences(ctx.model), metrics=lambda ctx, res: {},
    figures=lambda ctx, res, out: figures.spectral_sequence_figure(res, out / "spectral_sequences.png"),
    description="model spectra along dwarf, giant and metallicity sequences"))


def _s2s_section(m):
    s2s = m["spectrum_to_spectrum"]
    return ["## Spectrum from the other half", "",
            *table(SPECTRUM_COLUMNS, [_spectrum_row(name, s2s[key]) for name, key in
                                      (("blue from red", "blue_from_red"), ("red from blue", "red_from_blue"))]), ""]


register(Task(
    "spectrum_to_spectrum", run=lambda ctx: spectrum_to_spectrum(ctx.model, ctx.data), section=_s2s_section,
    figures=lambda ctx, res, out: figures.spectrum_residual_figure(
        {k: res[k] for k in ("blue_from_red", "red_from_blue")}, out / "spectrum_to_spectrum.png",
        "one half of the spectrum from the other"),
    description="one half of the spectrum from the other"))


# ----------------------------------------------------------------------------- extinction
def _extinction_run(ctx):
    try:
        return extinction_curve(ctx.model)
    except ImportError as err:
        ctx.log(f"[evaluate] extinction curve skipped: {err}")
        return {"skipped": str(err)}


def _extinction_section(m):
    ext = m["extinction_curve"]
    lines = ["## Extinction curve vs Fitzpatrick (1999), R_V = 3.1", ""]
    if "skipped" in ext:
        return lines + [f"Skipped: {ext['skipped']}", ""]
    return lines + [f"Max |model / F99 - 1| over {ext['compare_nm'][0]:.0f}-{ext['compare_nm'][1]:.0f} nm: "
                    f"**{ext['deviation']:.3f}** (median {ext['median_deviation']:.3f}); shape only (A_G fitted, "
                    f"{ext['a_g_over_ebv_fitted']:.2f} vs F99 synthetic {ext['a_g_over_ebv_f99']:.2f}): {ext['shape_deviation']:.3f}. "
                    f"Track (teff, logg) {ext['track']}, E(B-V) {ext['ebv']}.", ""]


def _extinction_summary(m):
    ext = m["extinction_curve"]
    if "deviation" not in ext:
        return []
    return [f"extinction curve vs F99 (R_V=3.1), {ext['compare_nm'][0]:.0f}-{ext['compare_nm'][1]:.0f} nm: max deviation {ext['deviation']:.3f}"]


register(Task(
    "extinction_curve", run=_extinction_run, section=_extinction_section, summary=_extinction_summary,
    figures=lambda ctx, res, out: None if "skipped" in res else figures.extinction_figure(res, out / "extinction_curve.png"),
    description="the model's reddening along an RGB track against Fitzpatrick (1999)"))


def _extinction_data_run(ctx):
    ext = ctx.results["extinction_curve"]
    if "skipped" in ext:
        return None
    return empirical_extinction_curve(ctx.model.vocab, ctx.dataset.train, ext)


def _extinction_data_section(m):
    if "extinction_in_data" not in m:
        return []
    ext, d = m["extinction_curve"], m["extinction_in_data"]
    chords = ", ".join(f"{e}: {c:.2f}" for e, c in zip(ext["ebv"], d["model_chord_vs_data_scale"]))
    return ["What the training data say (`empirical_extinction_curve`: per flux token, least-squares slope of "
            f"-2.5 log10 flux on E(B-V) over {d['n_stars']} train-split RGB stars, curves centred over "
            f"{d['compare_nm'][0]:.0f}-{d['compare_nm'][1]:.0f} nm so A_G cancels):", "",
            "| comparison | amplitude (least-squares scale) | largest shape residual (fraction of range) |",
            "|---|---:|---:|",
            f"| data vs F99 | {d['data_vs_f99_scale']:.3f} | {d['data_vs_f99_shape']:.3f} |",
            f"| model vs data | {d['model_vs_data_scale']:.3f} | {d['model_vs_data_shape']:.3f} |", "",
            f"Model chords from no extinction, scale vs data per E(B-V): {chords}; local slope between the outer "
            f"two: {d['model_local_vs_data_scale']:.2f} (all equal for a response linear in E(B-V), as dust's is).", ""]


def _extinction_data_summary(m):
    if "extinction_in_data" not in m:
        return []
    d = m["extinction_in_data"]
    return [f"  reddening amplitude: training data / F99 {d['data_vs_f99_scale']:.2f} (shape residual "
            f"{d['data_vs_f99_shape']:.3f}); model / data {d['model_vs_data_scale']:.2f}, local slope "
            f"{d['model_local_vs_data_scale']:.2f}"]


register(Task(
    "extinction_in_data", run=_extinction_data_run, section=_extinction_data_section, summary=_extinction_data_summary,
    requires=("extinction_curve",), description="the extinction curve measured in the training data"))


# ----------------------------------------------------------------------------- Kiel diagram, attention
def _kiel_figures(ctx, res, out):
    core = ctx.model.vocab.ids(["teff", "logg"]) - 1
    figures.kiel_figure(res, out / "kiel_diagram.png", stars=(ctx.data.values[:, core[0]], ctx.data.values[:, core[1]]))


def _kiel_section(m):
    k = m["kiel_diagram"]
    return ["## Kiel diagram from a (logg, m_h) grid", "",
            f"{k['n_grid']} grid points; teff {k['teff_min']:.0f}-{k['teff_max']:.0f} K; median σ(teff) {k['median_teff_error']:.0f} K; "
            f"median teff for logg > 4: {k['median_teff_dwarfs_logg_gt_4']:.0f} K, for 2 < logg < 3: {k['median_teff_giants_logg_2_3']:.0f} K.", ""]


register(Task(
    "kiel_diagram", run=lambda ctx: kiel_diagram(ctx.model, *ctx.settings.kiel_grid),
    metrics=lambda ctx, res: {"kiel_diagram": res["summary"]}, figures=_kiel_figures, section=_kiel_section,
    description="teff requested from a (logg, m_h) grid"))


def _attention_section(m):
    att = m["attention"]
    lines = ["## Attention (decoder block 0, head mean, bias slot dropped)", ""]
    for s, le in enumerate(att["logebv"]):
        mat = att["decoder_blocks"][0]["attention"][s]
        lines += [f"logebv = {le}:", "", "| request | " + " | ".join(att["inputs"]) + " |", "|---|" + "---:|" * len(att["inputs"])]
        lines += [f"| {r} | " + " | ".join(f"{v:.2f}" for v in row) + " |" for r, row in zip(att["requests"], mat)] + [""]
    return lines


register(Task(
    "attention_case", run=lambda ctx: attention_case(ctx.model), metrics=lambda ctx, res: {"attention": res},
    figures=lambda ctx, res, out: figures.attention_figure(res, out / "attention.png"), section=_attention_section,
    description="the attention maps of the paper's Figure 12 case"))


# ----------------------------------------------------------------------------- inversion
def inversion_available() -> bool:
    """Whether :mod:`stellarfm_jax.evaluation.inversion` (``inversion_task``, ``inversion_table``,
    ``inversion_figure``) is present."""
    return importlib.util.find_spec(f"{__package__}.inversion") is not None


def _inversion_allowed(settings):
    if settings.inversion_stars < 1:
        return "EvalSettings.inversion_stars is 0"
    if not inversion_available():
        return "stellarfm_jax.evaluation.inversion is not available"
    return None


def _inversion_run(ctx):
    from .inversion import inversion_task, observed_names

    # The classical reference, when the emulator task ran: the chi^2 fit of an emulator of the same observed tokens
    # (the emulator task's own when they are its outputs, else one fitted with its settings).
    emulator = ctx.results.get("emulator")
    if emulator is not None:
        emulator = emulator["emulator"]
        observed = observed_names(ctx.model.vocab)
        if list(emulator.flux_names) != observed:
            ctx.log(f"[inversion] fitting the emulator of {len(observed)} observed tokens for the chi^2 reference")
            emulator = _fit_emulator(ctx, observed)
    return inversion_task(ctx.model, ctx.dataset, ctx.data, n_stars=ctx.settings.inversion_stars,
                          emulator=emulator, log=ctx.log)


def _inversion_figures(ctx, res, out):
    from .inversion import inversion_figure

    inversion_figure(res, out / "inversion.png")


def _inversion_section(m):
    from .inversion import inversion_table

    res = m["inversion"]
    reasons = "; ".join(f"{k}: {v}" for k, v in res.get("flag_reasons", {}).items()) or "none"
    def text(v):
        return str(v) if isinstance(v, bool) else fmt(v)

    checks = "; ".join(f"{k}: " + (", ".join(f"{c} {text(x)}" for c, x in v.items()) if isinstance(v, dict) else text(v))
                       for k, v in res.get("checks", {}).items())
    lik = res.get("likelihood_check")
    lik_text = ("" if not lik else
                f" Optimiser or model: for {lik['fraction_truth_scores_better']:.0%} of {lik['stars']} stars with every "
                f"free token in the catalogue the model's likelihood is higher at the catalogue's values than at the "
                f"fit (median NLL gap {lik['median_nll_truth_minus_fit']:+.1f}); where it is not, the fit is the "
                f"likelihood's optimum and the error is the model's.")
    return ["## Gradient inversion of observed spectra (vs the forward prediction and the emulator's χ² fit)", "",
            f"{res['n_stars']} stars with APOGEE teff, logg and m_h; free {', '.join(res['free'])}; prior {res['prior']}; "
            f"{res['seconds_per_star']:.3f} s per star; {res['flagged']} flagged ({res['flagged_fraction']:.1%}; {reasons})."
            + lik_text, "", inversion_table(res), "", f"Checks: {checks}.", ""]


def _inversion_summary(m):
    methods = m["inversion"]["methods"]
    parts = [f"{name} {fmt(methods['inversion'][name]['scatter'])} (forward {fmt(methods['forward'][name]['scatter'])}"
             + (f", emulator χ² {fmt(methods['emulator_chi2'][name]['scatter'])}" if "emulator_chi2" in methods else "") + ")"
             for name in ("teff", "logg", "m_h") if name in methods["inversion"]]
    return [f"inversion of {m['inversion']['n_stars']} spectra, scatter vs APOGEE: " + ", ".join(parts)]


register(Task(
    "inversion", run=_inversion_run, figures=_inversion_figures, section=_inversion_section,
    summary=_inversion_summary, allowed=_inversion_allowed,
    description="gradient inversion of real spectra against APOGEE (and the emulator's χ² fit)"))
