"""The Payne-style emulator on the real data (stellarfm_jax.evaluation.emulator): trained on the embedded data set's
train split, early-stopped on val, measured on the test split.

    python benchmarks/emulator_real.py [--data FILE.h5] [--seed 0] [--max-epochs 150] [--invert-stars 300]
                                       [--save DIR | --load DIR] [--with-colours]
                                       [--out benchmarks/results/emulator_real.json]

Reports (printed table + JSON):

* labels -> spectrum on every test star with all five labels: median |pred/obs - 1| over stars and flux tokens,
  the flux z-scores' robust std and rms (z = (pred - obs) / sqrt(sigma_emulator^2 + err_obs^2)), per wavelength
  the median |fractional residual| and the observational floor (the median |fractional residual| a perfect
  emulator would have from the XP errors alone: 0.6745 x median err / |obs|);
* the chi^2 inversion of ``--invert-stars`` test stars with APOGEE teff, logg and m_h (their flux tokens and
  observed errors; free teff, logg, m_h, logebv; alpha_m fixed at the training median) for each ``INVERSIONS``
  variant (the emulator's typical error added to the observed one, the default; observed errors alone; its predicted
  variance, the Gaussian NLL; the default with a prior from the training labels; with ``--with-colours`` the
  default with a second emulator whose outputs are the flux tokens + bprp, jh, jk): robust scatter and bias against APOGEE, the fraction within 1 and 2 sigma (fit error (+) APOGEE
  error), the flagged fits and why, seconds.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import datetime
import json
import pathlib
import platform
import time

import numpy as np

from stellarfm_jax import data as data_lib
from stellarfm_jax.evaluation import emulator as em
from stellarfm_jax.evaluation.common import calibration_stats, residual_stats

RESULTS = pathlib.Path(__file__).resolve().parent / "results"
HEADLINE = ("teff", "logg", "m_h")


INVERSIONS = {  # key: (title, settings)
    "fixed": ("chi2, observed errors + the emulator's typical error (default)", em.Chi2Settings()),
    "none": ("chi2, observed errors only", em.Chi2Settings(model_error="none")),
    "predicted": ("Gaussian NLL with the emulator's predicted variance", em.Chi2Settings(model_error="predicted")),
    "fixed_prior": ("default + Gaussian prior from the training labels", em.Chi2Settings(prior=True)),
}


def invert(emulator, vocab, split, n_stars: int, settings, warm_up: bool = False) -> dict:
    """The chi^2 fit of the first ``n_stars`` stars of ``split`` with APOGEE teff, logg and m_h (all of the
    emulator's output tokens with their observed errors); ``warm_up``: fit once before timing (else the seconds
    include the compilation)."""
    cols = vocab.ids(list(HEADLINE)) - 1
    truth = split.values[:, cols].astype(np.float64)
    truth_err = split.errors[:, cols].astype(np.float64)
    stars = np.flatnonzero(np.isfinite(truth).all(axis=1))[:n_stars]
    fcols = vocab.ids(list(emulator.flux_names)) - 1
    flux, err = split.values[stars][:, fcols], split.errors[stars][:, fcols]
    fit = em.fit_labels_chi2(emulator, flux, err, settings=settings)
    if warm_up:
        fit = em.fit_labels_chi2(emulator, flux, err, settings=settings)
    out = {"n_stars": int(len(stars)), "settings": dataclasses.asdict(settings), "outputs": list(emulator.flux_names),
           "seconds": fit.seconds, "seconds_include_compilation": not warm_up,
           "seconds_per_star": fit.seconds / max(len(stars), 1), "flagged": int(fit.flagged.sum()),
           "flag_reasons": dict(collections.Counter(r for r in fit.reason if r)),
           "median_reduced_chi2": float(np.median(fit.chi2 / np.maximum(fit.n_tokens - len(fit.names), 1)))}
    for j, name in enumerate(HEADLINE):
        k = fit.names.index(name)
        out[name] = {**residual_stats(fit.values[:, k], truth[stars, j]),
                     **calibration_stats(fit.values[:, k], fit.errors[:, k], truth[stars, j], truth_err[stars, j]),
                     "median_error": float(np.median(fit.errors[:, k]))}
    return out


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=None, help="our HDF5 data set (default: the embedded APOGEE x Gaia XP set)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-epochs", type=int, default=em.EmulatorConfig().max_epochs)
    parser.add_argument("--invert-stars", type=int, default=300, help="0: no inversion")
    parser.add_argument("--save", default=None, help="also write the fitted emulator to this directory")
    parser.add_argument("--load", default=None, help="measure this saved emulator instead of training one")
    parser.add_argument("--with-colours", action="store_true",
                        help="also train an emulator of the flux tokens + colours and invert with it")
    parser.add_argument("--out", default=str(RESULTS / "emulator_real.json"))
    args = parser.parse_args(argv)

    path = pathlib.Path(args.data) if args.data else data_lib.default_dataset_path()
    ds = data_lib.read_dataset(path)
    if args.load:
        emulator = em.load_emulator(args.load)
        config = emulator.config
    else:
        config = dataclasses.replace(em.EmulatorConfig(), max_epochs=args.max_epochs)
        emulator = em.fit_emulator(ds.vocab, ds.train.values, ds.train.errors, ds.val.values, ds.val.errors,
                                   config=config, seed=args.seed)
    if args.save:
        em.save_emulator(emulator, args.save)
    spec = em.emulator_spectrum_report(emulator, ds.vocab, ds.test)
    arrays = spec.pop("arrays")
    obs, err, pred = arrays["observed"], arrays["observed_error"], arrays["pred"]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.abs(pred / obs - 1.0)
        floor = 0.6745 * np.abs(err / obs)
    spec["median_abs_fractional_residual_per_wavelength"] = np.nanmedian(frac, axis=0).tolist()
    spec["observational_floor_per_wavelength"] = np.nanmedian(floor, axis=0).tolist()
    spec["observational_floor"] = float(np.nanmedian(floor))
    emulate_stars = np.repeat(emulator.train_labels[:1], 10_000, axis=0)
    em.emulate(emulator, emulate_stars)  # compile
    t0 = time.perf_counter()
    em.emulate(emulator, emulate_stars)
    spec["emulate_stars_per_second"] = len(emulate_stars) / (time.perf_counter() - t0)

    inversion = {key: {"title": title, **invert(emulator, ds.vocab, ds.test, args.invert_stars, settings,
                                                warm_up=key == "fixed")}
                 for key, (title, settings) in INVERSIONS.items()} if args.invert_stars > 0 else {}
    if args.with_colours and args.invert_stars > 0:  # a second emulator whose outputs are the flux tokens and the colours (bprp, jh, jk)
        outputs = ds.vocab.group_names("spectrum") + ds.vocab.group_names("colour")
        colour_emulator = em.fit_emulator(ds.vocab, ds.train.values, ds.train.errors, ds.val.values, ds.val.errors,
                                          flux_names=outputs, config=config, seed=args.seed)
        inversion["fixed_colours"] = {"title": "default, emulator of flux + colours (bprp, jh, jk)",
                                      "fit": {k: v for k, v in colour_emulator.info.items() if k not in ("train_nll", "val_nll")},
                                      **invert(colour_emulator, ds.vocab, ds.test, args.invert_stars, em.Chi2Settings())}
    info = {k: v for k, v in emulator.info.items() if k not in ("train_nll", "val_nll")}
    result = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python benchmarks/emulator_real.py " + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}", "data": str(path),
        "config": dataclasses.asdict(config), "fit": info, "val_nll_curve": emulator.info["val_nll"],
        "spectrum": spec, "inversion": inversion,
    }
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    _print(result)
    print(f"wrote {out}")
    return result


def _print(r: dict) -> None:
    f, s = r["fit"], r["spectrum"]
    print(f"emulator: {f['n_train']} train / {f['n_val']} val stars, {f['epochs']} epochs (best {f['best_epoch']}, "
          f"val NLL {f['best_val_nll']:.4f}), {f['seconds']:.0f} s")
    print(f"labels -> spectrum, {s['n_stars']} test stars ({s['n_stars_without_labels']} without all five labels):")
    print(f"  median |pred/obs - 1| = {s['median_abs_fractional_residual']:.4f} (observational floor "
          f"{s['observational_floor']:.4f}); flux z robust std {s['flux_z_robust_std']:.3f}, rms {s['flux_z_rms']:.3f}; "
          f"median reduced chi2 {s['median_chi2']:.3f} (observed errors only {s['median_chi2_observed_errors_only']:.1f})")
    print("  wavelength [nm] | median |frac| | floor | median frac (bias)")
    for w, a, fl, b in list(zip(s["wavelength_nm"], s["median_abs_fractional_residual_per_wavelength"],
                                s["observational_floor_per_wavelength"], s["median_fractional_residual"]))[::6]:
        print(f"  {w:7.0f} | {a:.4f} | {fl:.4f} | {b:+.4f}")
    for key, inv in r["inversion"].items():
        print(f"inversion, {inv['title']}: {inv['n_stars']} test stars, {inv['seconds_per_star'] * 1e3:.1f} ms/star, "
              f"flagged {inv['flagged']} {inv['flag_reasons']}, median reduced chi2 {inv['median_reduced_chi2']:.2f}")
        print("  label | scatter | bias | within 1 sigma | within 2 sigma | robust z std | median error")
        for name in HEADLINE:
            m = inv[name]
            print(f"  {name} | {m['scatter']:.4g} | {m['bias']:+.4g} | {m['coverage68']:.3f} | {m['coverage95']:.3f} | "
                  f"{m['z_std']:.3f} | {m['median_error']:.4g}")


if __name__ == "__main__":
    main()
