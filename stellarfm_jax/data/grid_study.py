"""How much spectral and label information a coarser flux grid keeps (the measurement behind the default schema's
12 nm grid, docs/data.md).

``python -m stellarfm_jax.data.grid_study [--widths 8,12,16,18,24]`` reads the embedded library (real Gaia XP
sampled spectra on the 2 nm grid, 336-1020 nm) and, for each bin width, reports:

- ``variance_kept``: the fraction of the across-star variance of the 2 nm spectrum (f_lambda / <f_lambda>_G per
  pixel, summed over pixels) reproduced by linearly interpolating the bin means back onto the 2 nm grid (flat beyond
  the first and last bin centre), i.e. ``1 - sum (x - x_hat)^2 / sum (x - mean_x)^2`` over stars and pixels;
- ``median_interp_error``: the median over stars and pixels of |x_hat / x - 1|, against the median XP relative
  flux error per 2 nm pixel (``median_flux_error``): an interpolation error below the noise loses nothing a model
  could learn from;
- ``label_scatter``: robust scatter (1.4826 MAD) on the val split of a quadratic ridge regression from the binned
  spectrum (log tokens, 20 principal components) plus bprp, jh, jk to teff, logg and m_h, fitted on the train split:
  a label-information proxy (not the model's accuracy).
"""

from __future__ import annotations

import argparse
import json

import numpy as np


def interpolate_back(tokens: np.ndarray, centres, sampling) -> np.ndarray:
    """Bin means [N, K] at ``centres`` -> [N, S] on ``sampling`` by linear interpolation (flat at the ends)."""
    centres = np.asarray(centres, dtype=np.float64)
    j = np.clip(np.searchsorted(centres, sampling) - 1, 0, centres.size - 2)
    t = np.clip((sampling - centres[j]) / (centres[j + 1] - centres[j]), 0.0, 1.0)
    return tokens[:, j] * (1 - t) + tokens[:, j + 1] * t


def robust_std(x) -> float:
    x = np.asarray(x, dtype=np.float64)
    x = x[np.isfinite(x)]
    return float(1.482602218505602 * np.median(np.abs(x - np.median(x))))


def _quadratic_ridge_scatter(x_train, y_train, x_val, y_val, n_components=20, ridge=1e-3) -> float:
    mean, std = x_train.mean(0), x_train.std(0) + 1e-12
    a, b = (x_train - mean) / std, (x_val - mean) / std
    _, _, vt = np.linalg.svd(a, full_matrices=False)
    pa, pb = a @ vt[:n_components].T, b @ vt[:n_components].T

    def features(p):
        iu = np.triu_indices(p.shape[1])
        return np.concatenate([np.ones((p.shape[0], 1)), p, (p[:, :, None] * p[:, None, :])[:, iu[0], iu[1]]], 1)

    fa, fb = features(pa), features(pb)
    coef = np.linalg.solve(fa.T @ fa + ridge * len(fa) * np.eye(fa.shape[1]), fa.T @ y_train)
    return robust_std(fb @ coef - y_val)


def study(widths=(8.0, 12.0, 16.0, 18.0, 24.0), start_nm=336.0, stop_nm=1020.0) -> dict:
    from .. import schemas
    from .catalogue import bprp_colour, clean_magnitude, colour
    from .library import LIBRARY_SAMPLING_NM, MAX_LABEL_ERROR, MIN_SNR, dedupe_by_source_id, locate_library, read_library
    from .split import split_of
    from .xp import bin_weights, g_band_flux

    columns, _ = read_library(locate_library())
    keep = dedupe_by_source_id(np.asarray(columns["gaiaedr3_source_id"], np.int64),
                                np.nan_to_num(np.asarray(columns["snr"], np.float64), nan=-np.inf))
    col = {k: np.asarray(v)[keep] for k, v in columns.items()}
    medflux = col["medflux"].astype(np.float64)[:, None]
    f_g = g_band_flux(clean_magnitude(col["gaiaedr3_phot_g_mean_mag"].astype(np.float64)))[:, None]
    unit = schemas.G_PASSBAND_MEAN_FLUX_PER_E_S
    flux = col["flux"].astype(np.float64) * medflux / (f_g * unit)
    rel_err = col["flux_error"].astype(np.float64) / col["flux"].astype(np.float64)
    good = np.isfinite(flux).all(1)
    sampling = LIBRARY_SAMPLING_NM

    which = split_of(col["gaiaedr3_source_id"])
    labels = np.stack([col[c].astype(np.float64) for c in ("teff", "logg", "fe_h")], 1)
    label_err = np.stack([col[c].astype(np.float64) for c in ("teff_err", "logg_err", "fe_h_err")], 1)
    limit = np.array([MAX_LABEL_ERROR[k] for k in schemas.HEADLINE_LABELS])
    good_labels = (col["snr"] >= MIN_SNR) & np.all(np.isfinite(labels) & (labels > -9000) & (label_err <= limit), 1)
    colours = np.stack([bprp_colour(col["gaiaedr3_phot_bp_mean_mag"], col["gaiaedr3_phot_rp_mean_mag"])[0],
                        colour(col["j"], col["h"], 0.0, 0.0)[0], colour(col["j"], col["k"], 0.0, 0.0)[0]], 1)
    usable = good & good_labels & np.isfinite(colours).all(1)
    train, val = usable & (which == "train"), usable & (which == "val")

    total = np.sum((flux[good] - flux[good].mean(0)) ** 2)
    out = {"stars": int(good.sum()), "median_flux_error": float(np.nanmedian(np.abs(rel_err[good]))), "widths": {}}
    for width in widths:
        centres = schemas.bin_centres(start_nm, stop_nm, width)
        tokens = flux @ bin_weights(sampling, centres, width).T
        back = interpolate_back(tokens, centres, sampling)
        resid = np.sum((flux[good] - back[good]) ** 2)
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.concatenate([np.log(np.clip(tokens, 1e-6, None)), colours], 1)
        scatter = {name: _quadratic_ridge_scatter(x[train], labels[train, k], x[val], labels[val, k])
                   for k, name in enumerate(schemas.HEADLINE_LABELS)}
        out["widths"][f"{width:g}"] = {
            "flux_tokens": len(centres), "tokens_with_colours": len(centres) + 3,
            "variance_kept": float(1 - resid / total),
            "median_interp_error": float(np.median(np.abs(back[good] / flux[good] - 1))),
            "p90_interp_error": float(np.quantile(np.abs(back[good] / flux[good] - 1), 0.9)),
            "label_scatter": scatter,
        }
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m stellarfm_jax.data.grid_study", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--widths", default="8,12,16,18,24", help="bin widths in nm, comma-separated")
    p.add_argument("--out", default=None, help="also write the result as JSON to this file")
    args = p.parse_args(argv)
    result = study(tuple(float(w) for w in args.widths.split(",")))
    print(f"{result['stars']} stars; median XP relative flux error per 2 nm pixel {result['median_flux_error']:.4f}")
    print(f"{'width':>6s} {'tokens':>7s} {'+col':>5s} {'var kept':>9s} {'med err':>8s} {'p90 err':>8s} "
          f"{'teff':>7s} {'logg':>7s} {'m_h':>7s}")
    for w, r in result["widths"].items():
        s = r["label_scatter"]
        print(f"{w:>6s} {r['flux_tokens']:7d} {r['tokens_with_colours']:5d} {r['variance_kept']:9.6f} "
              f"{r['median_interp_error']:8.4f} {r['p90_interp_error']:8.4f} {s['teff']:7.1f} {s['logg']:7.3f} "
              f"{s['m_h']:7.3f}")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
