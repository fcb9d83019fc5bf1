"""PNG figures of the evaluation tasks (matplotlib, Agg). Each takes a task's result and a path."""

from __future__ import annotations

import pathlib

import numpy as np

from .common import UNITS


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> pathlib.Path:
    path = pathlib.Path(path)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _plt().close(fig)
    return path


def label_residuals(model_result, expert_result, path, labels=("teff", "logg", "m_h")):
    """Rows = input sets, columns = labels: residual against truth, with model and expert scatter."""
    plt = _plt()
    sets = list(model_result.arrays)
    labels = [n for n in labels if n in model_result.labels]
    fig, axes = plt.subplots(len(sets), len(labels), figsize=(4.2 * len(labels), 2.6 * len(sets)), squeeze=False)
    for i, key in enumerate(sets):
        arr = model_result.arrays[key]
        for j, name in enumerate(labels):
            k = model_result.labels.index(name)
            ax = axes[i, j]
            ax.scatter(arr["truth"][:, k], arr["pred"][:, k] - arr["truth"][:, k], s=1, alpha=0.3, c="k", rasterized=True)
            ax.axhline(0, color="r", lw=0.8)
            m = model_result.metrics[key][name]
            text = f"model σ={m['scatter']:.3g}"
            if expert_result is not None and key in expert_result.metrics:
                text += f"\nXGBoost σ={expert_result.metrics[key][name]['scatter']:.3g}"
            ax.text(0.02, 0.97, text, transform=ax.transAxes, va="top", fontsize=8)
            lim = 5 * m["scatter"] if np.isfinite(m["scatter"]) and m["scatter"] > 0 else 1
            ax.set_ylim(-lim, lim)
            ax.set_xlim(*np.nanpercentile(arr["truth"][:, k], [0.5, 99.5]))
            ax.set_xlabel(f"{name} (APOGEE) {UNITS.get(name, '')}")
            ax.set_ylabel(f"Δ{name}" if j else f"{key}\nΔ{name}")
    return _save(fig, path)


def calibration_histograms(model_result, path, set_key="xp_colours", labels=("teff", "logg", "m_h")):
    plt = _plt()
    labels = [n for n in labels if n in model_result.labels]
    fig, axes = plt.subplots(1, len(labels), figsize=(4 * len(labels), 3), squeeze=False)
    arr = model_result.arrays[set_key]
    grid = np.linspace(-5, 5, 201)
    for j, name in enumerate(labels):
        k = model_result.labels.index(name)
        z = (arr["pred"][:, k] - arr["truth"][:, k]) / np.sqrt(arr["sigma"][:, k] ** 2 + np.nan_to_num(arr["truth_error"][:, k]) ** 2)
        z = z[np.isfinite(z)]
        ax = axes[0, j]
        ax.hist(np.clip(z, -5, 5), bins=60, density=True, color="0.6")
        ax.plot(grid, np.exp(-0.5 * grid**2) / np.sqrt(2 * np.pi), "r")
        m = model_result.metrics[set_key][name]
        ax.set_title(f"{name}: robust std(z)={m['z_std']:.2f}, |z|<1: {m['coverage68']:.2f}", fontsize=9)
        ax.set_xlabel("z = (pred - truth) / sqrt(σ_model² + σ_label²)")
    return _save(fig, path)


def spectrum_residual_figure(results: dict, path, title=""):
    """Median fractional residual (band: robust scatter) per wavelength for one or more residual results."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 3.5))
    for label, res in results.items():
        w = np.asarray(res["wavelength_nm"])
        med, sc = np.asarray(res["median_fractional_residual"]), np.asarray(res["scatter_fractional_residual"])
        ax.plot(w, med, label=f"{label} (median χ²={res['median_chi2']:.2f})")
        ax.fill_between(w, med - sc, med + sc, alpha=0.25)
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xlabel("wavelength (nm)")
    ax.set_ylabel("(predicted - observed) / observed")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def generation_figure(results: dict, path, title=""):
    """Labels -> spectrum for one or more generators (e.g. the model and the emulator on the same stars): the median
    fractional residual per wavelength with its robust scatter (top) and the median |fractional residual| (bottom)."""
    plt = _plt()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    for label, res in results.items():
        w = np.asarray(res["wavelength_nm"])
        med, sc = np.asarray(res["median_fractional_residual"]), np.asarray(res["scatter_fractional_residual"])
        line, = top.plot(w, med, label=f"{label} (median χ²={res['median_chi2']:.2f})")
        top.fill_between(w, med - sc, med + sc, alpha=0.2, color=line.get_color())
        bottom.plot(w, res["median_abs_fractional_residual_per_wavelength"], color=line.get_color(),
                    label=f"{label}: {res['median_abs_fractional_residual']:.3f} overall, "
                          f"flux z robust std {res['flux_z_robust_std']:.2f}")
    top.axhline(0, color="k", lw=0.6)
    top.set_ylabel("(predicted - observed) / observed")
    top.set_title(title)
    top.legend(fontsize=8)
    bottom.set_ylim(bottom=0)
    bottom.set_xlabel("wavelength (nm)")
    bottom.set_ylabel("median |fractional residual|")
    bottom.legend(fontsize=8)
    return _save(fig, path)


def spectral_sequence_figure(sequences: dict, path):
    plt = _plt()
    names = [k for k in sequences if k != "wavelength_nm"]
    w = np.asarray(sequences["wavelength_nm"])
    fig, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.5), squeeze=False)
    for ax, name in zip(axes[0], names):
        seq = sequences[name]
        varying = max(seq["inputs"], key=lambda k: np.ptp(seq["inputs"][k]))
        cmap = plt.get_cmap("coolwarm_r" if varying == "teff" else "viridis")
        vals = np.asarray(seq["inputs"][varying])
        span = np.ptp(vals) or 1.0
        for k, v in enumerate(vals):
            ax.plot(w, seq["flux"][k], color=cmap((v - vals.min()) / span), label=f"{varying}={v:.4g}")
        ax.set_title(name)
        ax.set_xlabel("wavelength (nm)")
        ax.set_ylabel("flux / F_G")
        ax.legend(fontsize=7)
    return _save(fig, path)


def kiel_figure(kiel: dict, path, stars=None):
    """Teff against logg from the grid, coloured by the model's teff uncertainty; optional observed stars
    (teff, logg) in grey behind."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 4.5))
    if stars is not None:
        ax.scatter(stars[0], stars[1], s=1, c="0.8", rasterized=True, label="test stars (APOGEE)")
    sc = ax.scatter(kiel["teff"], kiel["logg"], c=kiel["teff_error"], s=2, cmap="viridis",
                    vmax=np.percentile(kiel["teff_error"], 98))
    fig.colorbar(sc, ax=ax, label="model σ(teff) (K)")
    if stars is not None:  # a few hot stars would squeeze the diagram
        ax.set_xlim(max(np.nanpercentile(stars[0], 99.5), np.max(kiel["teff"])) + 200,
                    min(np.nanpercentile(stars[0], 0.5), np.min(kiel["teff"])) - 200)
    else:
        ax.invert_xaxis()
    ax.invert_yaxis()
    ax.set_xlabel("teff (K), requested from (logg, m_h)")
    ax.set_ylabel("logg")
    return _save(fig, path)


def extinction_figure(ext: dict, path):
    plt = _plt()
    w = np.asarray(ext["wavelength_nm"])
    fig, (a, b) = plt.subplots(2, 1, figsize=(7, 5.5), sharex=True, gridspec_kw={"height_ratios": [2, 1]})
    a.plot(w, ext["f99_a_over_ebv"], "k", label=f"Fitzpatrick (1999), R_V={ext['r_v']}")
    a.plot(w, ext["model_a_over_ebv"], "r", label="model (+ F99 A_G)")
    for e, rel in zip(ext["ebv"], ext["relative_per_ebv"]):
        a.plot(w, np.asarray(rel) + ext["a_g_over_ebv_f99"], lw=0.7, alpha=0.6, label=f"model, E(B-V)={e}")
    a.set_ylabel("A_λ / E(B-V)")
    a.legend(fontsize=7)
    b.plot(w, ext["ratio"], "r", label="model / F99")
    b.plot(w, ext["shape_ratio"], "b--", label="shape only (fitted A_G)")
    b.axhspan(0.85, 1.15, color="0.9")
    b.axvspan(*ext["compare_nm"], color="y", alpha=0.1)
    b.axhline(1, color="k", lw=0.6)
    b.set_ylim(0.5, 1.5)
    b.set_xlabel("wavelength (nm)")
    b.set_ylabel("ratio")
    b.legend(fontsize=7)
    return _save(fig, path)


def attention_figure(att: dict, path, block: int = 0):
    plt = _plt()
    mats = np.asarray(att["decoder_blocks"][block]["attention"])  # [star, R, inputs]
    fig, axes = plt.subplots(1, mats.shape[0], figsize=(4 * mats.shape[0], 3.2), squeeze=False)
    for s, ax in enumerate(axes[0]):
        im = ax.imshow(mats[s], vmin=0, vmax=1, cmap="magma")
        ax.set_xticks(range(len(att["inputs"])), att["inputs"])
        ax.set_yticks(range(len(att["requests"])), att["requests"])
        ax.set_title(f"logebv={att['logebv'][s]} (decoder block {block})", fontsize=9)
        for (r, c), v in np.ndenumerate(mats[s]):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", color="w" if v < 0.6 else "k", fontsize=8)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    fig.savefig(pathlib.Path(path), dpi=110)
    plt.close(fig)
    return pathlib.Path(path)


def new_outputs_figure(res: dict, path):
    plt = _plt()
    arr = res["arrays"]
    fig, axes = plt.subplots(1, len(arr["names"]), figsize=(4 * len(arr["names"]), 3.6), squeeze=False)
    for j, name in enumerate(arr["names"]):
        ax = axes[0, j]
        sc = ax.scatter(arr["truth"][:, j], arr["pred"][:, j], c=arr["sigma"][:, j], s=2, vmin=0, vmax=0.1, rasterized=True)
        lo, hi = np.nanpercentile(arr["truth"][:, j], [0.5, 99.5])
        ax.plot([lo, hi], [lo, hi], "r", lw=0.8)
        ax.set_xlim(lo, hi)
        ax.set_ylim(lo, hi)
        ax.set_xlabel(f"{name} observed (mag)")
        ax.set_ylabel(f"{name} from flux tokens (never requested in training)")
        ax.set_title(f"σ={res[name]['scatter']:.3f}, z std={res[name]['z_std']:.2f}", fontsize=9)
        fig.colorbar(sc, ax=ax, label="model σ (mag)")
    return _save(fig, path)
