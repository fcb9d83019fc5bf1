"""Evaluate a model on the paper's tasks (DESIGN §7) and write a report:

    python -m stellarfm_jax.evaluate --model DIR [--split test] --out REPORT_DIR [--quick] [--data FILE.h5]

``--model`` is a saved-model directory, a training workdir (its ``model/``) or the name of a shipped
model (``small``). The report folder receives ``report.md``, ``metrics.json`` and PNG figures; the headline
table (model against the per-set XGBoost experts) is printed. ``--quick`` evaluates a subset (for a smoke test
in about a minute): its numbers are not the report's.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import sys
import time
from dataclasses import dataclass

import numpy as np

from . import evaluation as ev
from . import cli
from .evaluation import figures


@dataclass(frozen=True)
class EvalSettings:
    max_stars: int | None = None  # evaluate the first N stars of the split (None = all)
    xgboost: bool = True
    xgb_max_train: int | None = None  # train the experts on the first N train stars (None = all)
    xgb_params: tuple = ()  # overrides of evaluation.XGB_PARAMS as (key, value) pairs
    kiel_grid: tuple[int, int] = (101, 26)

    @classmethod
    def quick(cls) -> "EvalSettings":
        return cls(max_stars=600, xgb_max_train=4000, xgb_params=(("num_boost_round", 300),), kiel_grid=(41, 11))


def _jsonable(obj):
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items() if k != "arrays"}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        return None if not np.isfinite(obj) else float(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    return obj


def _fmt(x, digits=3):
    return "n/a" if x is None or not np.isfinite(x) else f"{x:.{digits}g}"


def headline_table(rows: list[dict]) -> str:
    """Markdown table: input set, label, model scatter, XGBoost scatter, ratio, z std, 68% coverage."""
    lines = ["| input set | label | model σ | XGBoost σ | model / XGBoost | z std | 68% coverage |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['set']} | {r['label']} | {_fmt(r['model'])} | {_fmt(r['xgboost'])} | {_fmt(r['ratio'])} | "
                     f"{_fmt(r['z_std'])} | {_fmt(r['coverage68'])} |")
    return "\n".join(lines)


def run_evaluation(model, dataset, split: str = "test", out=None, settings: EvalSettings = EvalSettings(),
                   log=print) -> dict:
    """Run every task on ``dataset``'s ``split`` and (with ``out``) write report.md, metrics.json and figures.

    Returns the metrics dictionary (what metrics.json holds)."""
    t_start = time.perf_counter()
    vocab = model.vocab
    # Values are in physical units, so only the token names must match (each side standardises with its own).
    if list(vocab.names) != list(dataset.vocab.names):
        raise ValueError(f"the model's vocabulary ({vocab.schema}, {vocab.size} tokens) does not match the data set's "
                         f"({dataset.vocab.schema}, {dataset.vocab.size} tokens)")
    data = dataset.split(split)
    if settings.max_stars is not None:
        data = data.subset(np.arange(min(settings.max_stars, len(data))))
    out = pathlib.Path(out) if out is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    seconds: dict = {}
    metrics: dict = {"split": split, "n_stars": len(data), "settings": _jsonable(vars(settings)),
                     "model": {k: model.metadata.get(k) for k in ("epochs_trained", "interim", "exported_from",
                                                                  "training_command", "data_sha256", "trained_on")},
                     "date": time.strftime("%Y-%m-%d %H:%M:%S")}

    def timed(name, fn, *args, **kwargs):
        t0 = time.perf_counter()
        result = fn(*args, **kwargs)
        seconds[name] = time.perf_counter() - t0
        log(f"[evaluate] {name}: {seconds[name]:.1f} s")
        return result

    sets = ev.paper_input_sets(vocab, model.context_length, dataset.train.values, dataset.train.errors)
    metrics["input_sets"] = {s.key: {"title": s.title, "names": list(s.names), "random_count": s.random_count} for s in sets}
    model_labels = timed("spectra_to_labels", ev.spectra_to_labels, model, data, sets)
    experts = None
    if settings.xgboost:
        experts = timed("xgboost_experts", ev.xgboost_experts, vocab, dataset.train, dataset.val, data, sets,
                        params=dict(settings.xgb_params), max_train=settings.xgb_max_train)
        metrics["xgboost"] = {"params": dict(ev.XGB_PARAMS, **dict(settings.xgb_params)), "metrics": experts.metrics,
                              "fit_seconds": experts.seconds}
    metrics["model_labels"] = model_labels.metrics
    rows = ev.headline_rows(model_labels, experts, model_labels.labels)
    metrics["headline"] = rows
    metrics["claims"] = ev.claim_checks(rows)
    metrics["calibration"] = ev.calibration_checks(model_labels)
    new_outputs = timed("never_requested_outputs", ev.never_requested_outputs, model, data)
    metrics["never_requested_outputs"] = new_outputs
    l2s = timed("labels_to_spectra", ev.labels_to_spectra, model, data)
    metrics["labels_to_spectra"] = l2s
    sequences = timed("spectral_sequences", ev.spectral_sequences, model)
    s2s = timed("spectrum_to_spectrum", ev.spectrum_to_spectrum, model, data)
    metrics["spectrum_to_spectrum"] = s2s
    kiel = timed("kiel_diagram", ev.kiel_diagram, model, *settings.kiel_grid)
    metrics["kiel_diagram"] = kiel["summary"]
    try:
        ext = timed("extinction_curve", ev.extinction_curve, model)
        metrics["extinction_curve"] = ext
        metrics["extinction_in_data"] = timed("extinction_in_data", ev.empirical_extinction_curve, vocab,
                                              dataset.train, ext)
    except ImportError as err:
        ext = None
        metrics["extinction_curve"] = {"skipped": str(err)}
        log(f"[evaluate] extinction curve skipped: {err}")
    att = timed("attention_case", ev.attention_case, model)
    metrics["attention"] = att
    seconds["total"] = time.perf_counter() - t_start
    metrics["seconds"] = seconds

    if out is not None:
        t0 = time.perf_counter()
        figures.label_residuals(model_labels, experts, out / "spectra_to_labels.png")
        figures.calibration_histograms(model_labels, out / "calibration.png")
        figures.new_outputs_figure(new_outputs, out / "never_requested_outputs.png")
        figures.spectrum_residual_figure({"labels → spectrum": l2s}, out / "labels_to_spectra.png",
                                         f"flux from {', '.join(l2s['inputs'])}")
        figures.spectral_sequence_figure(sequences, out / "spectral_sequences.png")
        figures.spectrum_residual_figure({k: s2s[k] for k in ("blue_from_red", "red_from_blue")},
                                         out / "spectrum_to_spectrum.png", "one half of the spectrum from the other")
        core = vocab.ids(["teff", "logg"]) - 1
        figures.kiel_figure(kiel, out / "kiel_diagram.png", stars=(data.values[:, core[0]], data.values[:, core[1]]))
        if ext is not None:
            figures.extinction_figure(ext, out / "extinction_curve.png")
        figures.attention_figure(att, out / "attention.png")
        seconds["figures"] = time.perf_counter() - t0
        (out / "metrics.json").write_text(json.dumps(_jsonable(metrics), indent=1))
        (out / "report.md").write_text(render_report(metrics))
    return _jsonable(metrics)


def render_report(m: dict) -> str:
    """report.md from the metrics dictionary."""
    mm = m["model"]
    lines = [f"# Evaluation report ({m['date']})", "",
             f"Split `{m['split']}`, {m['n_stars']} stars. Model: epochs trained {mm.get('epochs_trained')}"
             f"{' (interim)' if mm.get('interim') else ''}, from `{mm.get('exported_from')}`.", "",
             "Robust scatter σ = 1.4826 MAD of prediction - truth; z = (pred - truth) / sqrt(σ_model² + σ_label²).", "",
             "## Spectra → parameters: model vs XGBoost expert per input set", "", headline_table(m["headline"]), ""]
    if "xgboost" in m:
        xgb = m["xgboost"]
        rounds = {k: {n: v["rounds"] for n, v in d.items()} for k, d in xgb["metrics"].items()}
        lines += [f"XGBoost experts: {sum(len(r) for r in rounds.values())} boosters fitted in "
                  f"{sum(xgb['fit_seconds'].values()):.0f} s; parameters `{json.dumps(xgb['params'])}`; "
                  f"rounds kept: `{json.dumps(rounds)}`.", ""]
    lines += ["Input sets:", ""] + [f"- `{k}`: {v['title']} ({v['random_count'] or len(v['names'])} tokens)"
                                    for k, v in m["input_sets"].items()] + [""]
    lines += ["## The paper's central claim", "", "| set/label | model / XGBoost | must be below | pass |", "|---|---:|---:|---|"]
    lines += [f"| {k} | {_fmt(v['ratio'])} | {'<' if v['limit'] == 1 else '≤'} {v['limit']:.2f} | {v['pass']} |"
              for k, v in m["claims"].items()] + [""]
    lines += ["## Calibration (input set `xp_colours`)", "",
              "| label | robust z std [0.8, 1.25] | 68% coverage [0.6, 0.76] | pass | rms z (diagnostic) | 2σ coverage (0.954) |",
              "|---|---:|---:|---|---:|---:|"]
    lines += [f"| {k} | {_fmt(v['z_std'])} | {_fmt(v['coverage68'])} | {v['pass']} | {_fmt(v.get('z_rms'))} | "
              f"{_fmt(v.get('coverage95'))} |" for k, v in m["calibration"].items()]
    lines += ["", "rms z near 1 with a robust z std below 1 means the predicted variance is right and the residuals are "
              "heavier-tailed than a Gaussian (the training loss is a Gaussian likelihood, whose variance follows the tails).", ""]
    nro = m["never_requested_outputs"]
    lines += ["## Never-requested outputs (from flux tokens only)", "", "| token | σ (mag) | bias | z std | 68% coverage |",
              "|---|---:|---:|---:|---:|"]
    lines += [f"| {k} | {_fmt(nro[k]['scatter'])} | {_fmt(nro[k]['bias'])} | {_fmt(nro[k]['z_std'])} | {_fmt(nro[k]['coverage68'])} |"
              for k in ("bprp", "jk") if k in nro] + [""]
    l2s, s2s = m["labels_to_spectra"], m["spectrum_to_spectrum"]
    lines += ["## Spectra from parameters and from the other half", "",
              "| task | stars | median abs fractional residual | max abs median residual | median χ²/dof (model+obs errors) | median χ²/dof (obs errors) |",
              "|---|---:|---:|---:|---:|---:|"]
    for name, r in (("labels → spectrum", l2s), ("blue from red", s2s["blue_from_red"]), ("red from blue", s2s["red_from_blue"])):
        lines.append(f"| {name} | {r['n_stars']} | {_fmt(r['median_abs_fractional_residual'])} | "
                     f"{_fmt(r['max_abs_median_fractional_residual'])} | {_fmt(r['median_chi2'])} | "
                     f"{_fmt(r['median_chi2_observed_errors_only'])} |")
    lines += ["", f"Labels → spectrum inputs: {', '.join(l2s['inputs'])}.", ""]
    ext = m["extinction_curve"]
    lines += ["## Extinction curve vs Fitzpatrick (1999), R_V = 3.1", ""]
    if "skipped" in ext:
        lines += [f"Skipped: {ext['skipped']}", ""]
    else:
        lines += [f"Max |model / F99 - 1| over {ext['compare_nm'][0]:.0f}-{ext['compare_nm'][1]:.0f} nm: "
                  f"**{ext['deviation']:.3f}** (median {ext['median_deviation']:.3f}); shape only (A_G fitted, "
                  f"{ext['a_g_over_ebv_fitted']:.2f} vs F99 synthetic {ext['a_g_over_ebv_f99']:.2f}): {ext['shape_deviation']:.3f}. "
                  f"Track (teff, logg) {ext['track']}, E(B-V) {ext['ebv']}.", ""]
    if "extinction_in_data" in m:
        d = m["extinction_in_data"]
        chords = ", ".join(f"{e}: {c:.2f}" for e, c in zip(ext["ebv"], d["model_chord_vs_data_scale"]))
        lines += ["What the training data say (`empirical_extinction_curve`: per flux token, least-squares slope of "
                  f"-2.5 log10 flux on E(B-V) over {d['n_stars']} train-split RGB stars, curves centred over "
                  f"{d['compare_nm'][0]:.0f}-{d['compare_nm'][1]:.0f} nm so A_G cancels):", "",
                  "| comparison | amplitude (least-squares scale) | largest shape residual (fraction of range) |",
                  "|---|---:|---:|",
                  f"| data vs F99 | {d['data_vs_f99_scale']:.3f} | {d['data_vs_f99_shape']:.3f} |",
                  f"| model vs data | {d['model_vs_data_scale']:.3f} | {d['model_vs_data_shape']:.3f} |", "",
                  f"Model chords from no extinction, scale vs data per E(B-V): {chords}; local slope between the outer "
                  f"two: {d['model_local_vs_data_scale']:.2f} (all equal for a response linear in E(B-V), as dust's is).", ""]
    k = m["kiel_diagram"]
    lines += ["## Kiel diagram from a (logg, m_h) grid", "",
              f"{k['n_grid']} grid points; teff {k['teff_min']:.0f}-{k['teff_max']:.0f} K; median σ(teff) {k['median_teff_error']:.0f} K; "
              f"median teff for logg > 4: {k['median_teff_dwarfs_logg_gt_4']:.0f} K, for 2 < logg < 3: {k['median_teff_giants_logg_2_3']:.0f} K.", ""]
    att = m["attention"]
    lines += ["## Attention (decoder block 0, head mean, bias slot dropped)", ""]
    for s, le in enumerate(att["logebv"]):
        mat = att["decoder_blocks"][0]["attention"][s]
        lines += [f"logebv = {le}:", "", "| request | " + " | ".join(att["inputs"]) + " |", "|---|" + "---:|" * len(att["inputs"])]
        lines += [f"| {r} | " + " | ".join(f"{v:.2f}" for v in row) + " |" for r, row in zip(att["requests"], mat)] + [""]
    lines += ["## Timings (s)", "", "| step | seconds |", "|---|---:|"] + [f"| {k} | {v:.1f} |" for k, v in m["seconds"].items()]
    return "\n".join(lines) + "\n"


DESCRIPTION = """Evaluate a model on the paper's tasks and write a report.

The report folder (--out) receives report.md, metrics.json and PNG figures; the headline table (the model against
per-input-set XGBoost experts) is printed. --quick evaluates a subset of stars with smaller experts (a smoke test of
about a minute): its numbers are not the report's. Needs the 'eval' extra (xgboost, pandas, extinction)."""


def build_parser():
    p = cli.parser("evaluate", DESCRIPTION)
    cli.add_model_arg(p)
    cli.add_data_arg(p)
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="split to evaluate on")
    cli.add_out_arg(p, "report folder (created)")
    p.add_argument("--quick", action="store_true", help="a subset of stars and smaller experts (smoke test)")
    p.add_argument("--no-xgboost", action="store_true", help="skip the XGBoost experts")
    p.add_argument("--max-stars", type=int, default=None, metavar="N", help="evaluate the first N stars of the split")
    p.add_argument("--xgb-threads", type=int, default=None, metavar="N",
                   help="XGBoost threads (default 2; 1 is faster when another job holds a core)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def work():
        from . import data as data_lib
        from . import resolve_model

        model = resolve_model(args.model)
        dataset = data_lib.read_dataset(cli.data_path(args.data, model.vocab.schema))
        settings = EvalSettings.quick() if args.quick else EvalSettings()
        changes = {}
        if args.no_xgboost:
            changes["xgboost"] = False
        if args.max_stars is not None:
            if args.max_stars < 1:
                raise cli.BadInputError(f"--max-stars must be >= 1, got {args.max_stars}")
            changes["max_stars"] = args.max_stars
        if args.xgb_threads is not None:
            changes["xgb_params"] = settings.xgb_params + (("nthread", args.xgb_threads),)
        settings = dataclasses.replace(settings, **changes)
        if settings.xgboost:
            cli.require("xgboost", "the XGBoost experts (--no-xgboost skips them)")
        metrics = run_evaluation(model, dataset, args.split, args.out, settings)
        print(headline_table(metrics["headline"]))
        cal = ", ".join(f"{k}: z std {v['z_std']:.2f}, cov {v['coverage68']:.2f} (rms z {v['z_rms']:.2f}, 2σ cov {v['coverage95']:.2f})"
                        for k, v in metrics["calibration"].items())
        print(f"calibration (xp_colours): {cal}")
        ext = metrics["extinction_curve"]
        if "deviation" in ext:
            print(f"extinction curve vs F99 (R_V=3.1), {ext['compare_nm'][0]:.0f}-{ext['compare_nm'][1]:.0f} nm: max deviation {ext['deviation']:.3f}")
            d = metrics["extinction_in_data"]
            print(f"  reddening amplitude: training data / F99 {d['data_vs_f99_scale']:.2f} (shape residual "
                  f"{d['data_vs_f99_shape']:.3f}); model / data {d['model_vs_data_scale']:.2f}, local slope "
                  f"{d['model_local_vs_data_scale']:.2f}")
        print(f"report: {pathlib.Path(args.out) / 'report.md'} ({metrics['seconds']['total']:.0f} s)")

    return cli.run_command(work)


if __name__ == "__main__":
    sys.exit(main())
