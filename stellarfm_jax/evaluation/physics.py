"""Tasks 5, 6, 7: the Kiel diagram from a parameter grid (paper Figure 10), the extinction curve learned by
the model against Fitzpatrick (1999) (paper §6.5), and the attention maps of the paper's Figure 12 case."""

from __future__ import annotations

import numpy as np

from ..inference import attention_without_bias
from ..vocab import robust_scale
from .common import flux_tokens
from .spectra import NO_EXTINCTION_LOGEBV

# The paper's RGB track for the extinction curve, and its E(B-V) values (original_spec §7.3).
RGB_TRACK = ((4500.0, 2.2), (4700.0, 2.5), (4900.0, 2.8))
EXTINCTION_EBV = (0.4, 0.8, 1.2)
COMPARE_NM = (450.0, 900.0)


def kiel_diagram(model, n_logg: int = 101, n_mh: int = 26, logg_range=(0.0, 5.0), mh_range=(-2.0, 0.5),
                 logebv: float = NO_EXTINCTION_LOGEBV) -> dict:
    """Task 5: teff and its uncertainty requested from a logg x m_h grid with no extinction.

    Returns {"logg", "m_h", "teff", "teff_error"} flat [n_logg * n_mh] arrays and a summary."""
    logg, m_h = np.meshgrid(np.linspace(*logg_range, n_logg), np.linspace(*mh_range, n_mh), indexing="ij")
    values = np.stack([logg.ravel(), m_h.ravel(), np.full(logg.size, logebv)], axis=1)
    res = model.perceive(values, ["logg", "m_h", "logebv"]).request(["teff"])
    teff, err = res["teff"], res["teff_error"]
    dwarfs, giants = logg.ravel() > 4.0, (logg.ravel() > 2.0) & (logg.ravel() < 3.0)
    return {
        "logg": logg.ravel(), "m_h": m_h.ravel(), "teff": teff, "teff_error": err,
        "summary": {"n_grid": int(teff.size), "teff_min": float(teff.min()), "teff_max": float(teff.max()),
                    "median_teff_error": float(np.median(err)),
                    "median_teff_dwarfs_logg_gt_4": float(np.median(teff[dwarfs])) if dwarfs.any() else float("nan"),
                    "median_teff_giants_logg_2_3": float(np.median(teff[giants])) if giants.any() else float("nan")},
    }


def f99_extinction(wavelength_nm, ebv: float, r_v: float = 3.1) -> np.ndarray:
    """Fitzpatrick (1999) A_lambda in mag for E(B-V) = ``ebv`` (the ``extinction`` package, eval extra)."""
    try:
        import extinction
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError("the extinction-curve comparison needs the `extinction` package: pip install 'stellarfm_jax[eval]'") from exc
    return extinction.fitzpatrick99(np.asarray(wavelength_nm, np.float64) * 10.0, r_v * ebv, r_v)


def synthetic_g_extinction(wavelength_nm, flux, a_lambda) -> float:
    """A_G (mag) of a spectrum f_lambda on the flux grid under extinction A_lambda, with the G band
    approximated as a flat photon-counting response over the grid (weights lambda * f_lambda)."""
    w = np.asarray(wavelength_nm) * np.asarray(flux)
    return float(-2.5 * np.log10(np.sum(w * 10 ** (-0.4 * np.asarray(a_lambda))) / np.sum(w)))


def extinction_curve(model, track=RGB_TRACK, ebvs=EXTINCTION_EBV, m_h: float = 0.0, r_v: float = 3.1,
                     compare_nm=COMPARE_NM) -> dict:
    """Task 6: the extinction curve the model learned, against F99 at ``r_v``.

    For each (teff, logg) of ``track`` and each E(B-V) in ``ebvs`` the model predicts the spectrum with
    logebv = ln E(B-V) and with "no extinction" (``NO_EXTINCTION_LOGEBV``, E(B-V) = 0.01). Flux tokens are divided by the star's (extincted) G-band flux,
    so -2.5 log10(f_ext / f_0) / E(B-V) measures (A_lambda - A_G) / E(B-V). A_G is added back from F99 by
    synthetic photometry of the model's unextincted spectrum (:func:`synthetic_g_extinction`), giving the
    model's A_lambda / E(B-V); ``ratio`` = model / F99 per wavelength, averaged over the track and E(B-V).
    ``deviation`` = max |ratio - 1| over ``compare_nm``; ``shape_deviation`` the same after fitting the one
    free offset (A_G) by least squares, i.e. the curve's shape alone. To tell a curve that is off from one that is
    noisy, the ratio is also fitted over ``compare_nm`` by a quadratic in 1/lambda: ``smooth_deviation`` =
    max |smooth ratio - 1| (how far the curve is off) and ``token_scatter`` = the robust std of the ratio about
    that fit (token-to-token noise of the model's spectra, which F99 does not have).
    """
    flux, waves = flux_tokens(model.vocab)
    ebvs = np.asarray(ebvs, np.float64)
    names = ["teff", "logg", "m_h", "logebv"]
    rows = [(t, g, m_h, le) for t, g in track for le in [NO_EXTINCTION_LOGEBV, *np.log(ebvs)]]
    res = model.perceive(np.asarray(rows), names).request(flux)
    f = np.stack([res[n] for n in flux], axis=1).reshape(len(track), 1 + len(ebvs), len(flux))
    f0, fext = f[:, :1], f[:, 1:]
    # Differences against the "no extinction" reference E0 = exp(NO_EXTINCTION_LOGEBV), per unit E - E0.
    delta = ebvs - np.exp(NO_EXTINCTION_LOGEBV)
    with np.errstate(invalid="ignore", divide="ignore"):
        relative = -2.5 * np.log10(fext / f0) / delta[None, :, None]
    f99 = np.stack([f99_extinction(waves, e, r_v) / e for e in ebvs])  # [ebv, W]: A_l / E (F99 is linear in E)
    # A_G of the extra E - E0 on the model's reference spectrum (synthetic photometry), per unit E - E0.
    a_g = np.array([[synthetic_g_extinction(waves, f0[i, 0], f99[j] * d) / d for j, d in enumerate(delta)]
                    for i in range(len(track))])  # [track, ebv]
    model_curve = np.nanmean(relative + a_g[:, :, None], axis=(0, 1))  # [W]: A_l / E
    f99_curve = f99.mean(axis=0)
    ratio = model_curve / f99_curve
    inside = (waves >= compare_nm[0]) & (waves <= compare_nm[1])
    rel_mean = np.nanmean(relative, axis=(0, 1))
    offset = float(np.nanmean(f99_curve[inside] - rel_mean[inside]))  # least-squares free A_G / E
    shape_ratio = (rel_mean + offset) / f99_curve
    ok = inside & np.isfinite(ratio)
    smooth = np.polyval(np.polyfit(1.0 / waves[ok], ratio[ok], 2), 1.0 / waves)
    return {
        "wavelength_nm": waves.tolist(), "ebv": ebvs.tolist(), "track": [list(p) for p in track], "r_v": r_v,
        "model_a_over_ebv": model_curve.tolist(), "f99_a_over_ebv": f99_curve.tolist(), "ratio": ratio.tolist(),
        "relative_per_ebv": np.nanmean(relative, axis=0).tolist(),
        "a_g_over_ebv_f99": float(a_g.mean()), "a_g_over_ebv_fitted": offset,
        "compare_nm": list(compare_nm),
        "deviation": float(np.nanmax(np.abs(ratio[inside] - 1))),
        "median_deviation": float(np.nanmedian(np.abs(ratio[inside] - 1))),
        "shape_deviation": float(np.nanmax(np.abs(shape_ratio[inside] - 1))),
        "shape_ratio": shape_ratio.tolist(),
        "smooth_ratio": smooth.tolist(),
        "smooth_deviation": float(np.max(np.abs(smooth[ok] - 1))),
        "token_scatter": float(robust_scale(ratio[ok] - smooth[ok])),
    }


def _scale_and_shape(curve, reference):
    """Least-squares scale s of ``curve`` ~ s x ``reference`` and the largest residual as a fraction of the
    reference's range (both curves already centred)."""
    scale = float(np.sum(curve * reference) / np.sum(reference**2))
    shape = float(np.max(np.abs(curve - scale * reference)) / np.ptp(reference))
    return scale, shape


def empirical_extinction_curve(vocab, split, ext: dict, teff_range=(4400.0, 5100.0), logg_range=(1.8, 3.2),
                               max_ebv: float = 2.0) -> dict:
    """What the training data themselves say about the extinction curve, against F99 and against the model's
    curve ``ext`` (from :func:`extinction_curve`).

    Over the RGB stars of ``split`` near the model curve's track (``teff_range``, ``logg_range``, finite m_h
    and logebv, E(B-V) <= ``max_ebv``), each flux token's -2.5 log10(flux / F_G) is regressed (least squares)
    on E(B-V) = exp(logebv) with intrinsic terms (teff - 4750, its square, logg - 2.5, m_h). Its E(B-V) slope
    is (A_lambda - A_G) / E(B-V) per unit of the data's label. Curves are compared after removing their mean
    over ``ext``'s compare range, which cancels A_G (the same for every token of a star) exactly, so no
    synthetic photometry is involved: ``scale`` is the least-squares amplitude of one centred curve against
    another (1 = the same reddening per unit E(B-V)) and ``shape`` the largest residual after that scale, as a
    fraction of the reference's range. A noisy label flattens such slopes (regression dilution) for the data and
    for a model trained on them alike, so model-vs-data isolates what the model did not learn, and data-vs-F99
    what the label and the sample's dust differ by.

    The model's curve is a chord from "no extinction" to each E(B-V); a response linear in E(B-V), as dust's
    is, gives the same scale for every chord and for the local slope between the outer two E(B-V) values
    (``model_chord_vs_data_scale`` per E(B-V), ``model_local_vs_data_scale``).
    """
    names, waves = flux_tokens(vocab)
    col = lambda n: split.values[:, vocab.token_id(n) - 1].astype(np.float64)  # noqa: E731
    teff, logg, m_h, logebv = col("teff"), col("logg"), col("m_h"), col("logebv")
    ebv = np.exp(logebv)
    with np.errstate(invalid="ignore"):
        stars = (np.isfinite(teff) & np.isfinite(logg) & np.isfinite(m_h) & np.isfinite(logebv)
                 & (teff >= teff_range[0]) & (teff <= teff_range[1]) & (logg >= logg_range[0])
                 & (logg <= logg_range[1]) & (ebv <= max_ebv))
    dt = (teff - 4750.0) / 1000.0
    design = np.stack([np.ones_like(dt), dt, dt**2, logg - 2.5, m_h, ebv], axis=1)
    flux = split.values[:, vocab.ids(names) - 1].astype(np.float64)
    slope = np.full(len(names), np.nan)
    for j in range(len(names)):
        with np.errstate(invalid="ignore"):
            ok = stars & (flux[:, j] > 0)
        if ok.sum() > 20:
            coef, *_ = np.linalg.lstsq(design[ok], -2.5 * np.log10(flux[ok, j]), rcond=None)
            slope[j] = coef[-1]
    inside = (waves >= ext["compare_nm"][0]) & (waves <= ext["compare_nm"][1]) & np.isfinite(slope)
    centred = lambda c: np.asarray(c, np.float64)[inside] - np.mean(np.asarray(c, np.float64)[inside])  # noqa: E731
    data, f99 = centred(slope), centred(ext["f99_a_over_ebv"])
    chords, ebvs = np.asarray(ext["relative_per_ebv"]), np.asarray(ext["ebv"])  # [E, W]: (A - A_G) / E from E ~ 0
    model = centred(np.nanmean(chords, axis=0))
    data_scale, data_shape = _scale_and_shape(data, f99)
    model_scale, model_shape = _scale_and_shape(model, data)
    local = (chords[-1] * ebvs[-1] - chords[0] * ebvs[0]) / (ebvs[-1] - ebvs[0])
    return {
        "n_stars": int(stars.sum()), "teff_range": list(teff_range), "logg_range": list(logg_range),
        "max_ebv": max_ebv, "ebv_median": float(np.median(ebv[stars])) if stars.any() else float("nan"),
        "compare_nm": list(ext["compare_nm"]), "wavelength_nm": waves[inside].tolist(),
        "data_relative": data.tolist(), "f99_relative": f99.tolist(), "model_relative": model.tolist(),
        "data_vs_f99_scale": data_scale, "data_vs_f99_shape": data_shape,
        "model_vs_data_scale": model_scale, "model_vs_data_shape": model_shape,
        "model_vs_f99_scale": _scale_and_shape(model, f99)[0],
        "model_chord_vs_data_scale": [_scale_and_shape(centred(c), data)[0] for c in chords],
        "model_local_vs_data_scale": _scale_and_shape(centred(local), data)[0],
    }


def nearest_flux_token(vocab, wavelength_nm: float) -> str:
    names, waves = flux_tokens(vocab)
    return names[int(np.argmin(np.abs(waves - wavelength_nm)))]


def attention_case(model, teff: float = 5000.0, m_h: float = 0.0, logebvs=(NO_EXTINCTION_LOGEBV, -1.0),
                   flux_nm=(500.0, 800.0)) -> dict:
    """Task 7 (paper Figure 12): inputs (teff, m_h, logebv) for a star without and with extinction; requests
    teff, m_h and a blue and a red flux token (the analogues of bp0, rp0).

    Returns per decoder block the head-averaged attention [star, request, input] over the real inputs
    (bias slot dropped and renormalised), the bias slot's share, and the names."""
    inputs = ["teff", "m_h", "logebv"]
    requests = ["teff", "m_h"] + [nearest_flux_token(model.vocab, w) for w in flux_nm]
    values = np.array([[teff, m_h, le] for le in logebvs])
    res = model.perceive(values, inputs).request(requests, return_attention=True)
    blocks = []
    for w in res.attention["decoder"]:  # [N, h, R, T+1]
        w = np.asarray(w)
        real = attention_without_bias(w)[..., : len(inputs)]  # padded key slots carry no weight
        blocks.append({"attention": real.mean(axis=1).tolist(), "bias_share": w[..., -1].mean(axis=1).tolist()})
    return {"inputs": inputs, "requests": requests, "logebv": list(logebvs), "teff": teff, "m_h": m_h,
            "decoder_blocks": blocks}
