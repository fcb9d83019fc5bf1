"""The schema registry: every shipped schema's names, groups and outputs, unknown names, and the flux unit constant."""

import importlib.util
import pathlib

import numpy as np
import pytest

from stellarfm_jax import schemas
from stellarfm_jax.cli import UserError


def test_registry_lists_the_shipped_schemas_and_names_them_in_errors():
    assert schemas.schema_names() == ("paper", "xp_coarse", "xp_sampled")
    assert schemas.DEFAULT_SCHEMA == "xp_coarse"
    for name in schemas.schema_names():
        schema = schemas.get_schema(name)
        assert schema.name == name and schemas.get_schema(schema) is schema
    with pytest.raises(schemas.UnknownSchemaError, match="unknown schema 'xp_fine'; known schemas: paper, xp_coarse, "
                                                         "xp_sampled") as err:
        schemas.get_schema("xp_fine")
    assert isinstance(err.value, (ValueError, UserError))
    with pytest.raises(ValueError, match="already registered"):
        schemas.register(schemas.XP_SAMPLED)


def test_paper_schema_names_groups_outputs():
    paper = schemas.get_schema("paper")
    expected = ([f"bp{i}" for i in range(55)] + [f"rp{i}" for i in range(55)]
                + ["bprp", "jh", "jk", "teff", "logg", "m_h", "logebv", "g_fakemag"])
    assert paper.names() == expected == schemas.paper_names() and paper.flux_kind == "xp_coefficients"
    assert paper.groups() == ["spectrum"] * 110 + ["colour"] * 3 + ["label"] * 4 + ["other"]
    assert paper.outputs() == [n for n in expected if n not in ("bprp", "jk")]
    assert paper.labels == ("teff", "logg", "m_h", "logebv") and paper.colours == ("bprp", "jh", "jk")
    assert not paper.logebv_floor_missing
    vocab = schemas.paper_vocabulary()
    assert vocab.schema == "paper" and vocab.names == tuple(expected) and "jk" not in vocab.outputs


def test_sampled_schemas_names_groups_outputs():
    sampled, coarse = schemas.get_schema("xp_sampled"), schemas.get_schema("xp_coarse")
    scalars = ["bprp", "jh", "jk", "teff", "logg", "m_h", "alpha_m", "logebv"]
    assert sampled.names() == [f"f{340 + 8 * k}" for k in range(85)] + scalars == schemas.xp_sampled_names()
    assert coarse.names() == [f"f{342 + 12 * k}" for k in range(57)] + scalars
    assert coarse.bin_centres()[-1] + 6 == 1020.0  # 57 bins of 12 nm fill 336-1020 nm exactly
    for schema, n_flux in ((sampled, 85), (coarse, 57)):
        assert schema.flux_kind == "sampled_flux"
        assert schema.groups() == ["spectrum"] * n_flux + ["colour"] * 3 + ["label"] * 5
        assert schema.outputs() == [n for n in schema.names() if n not in ("bprp", "jk")]
        assert schema.labels == schemas.STELLAR_LABELS and schema.colours == schemas.COLOURS
        vocab = schema.vocabulary()
        assert vocab.schema == schema.name and vocab.group_names("colour") == ["bprp", "jh", "jk"]
    assert not sampled.logebv_floor_missing and coarse.logebv_floor_missing
    assert sampled.flux_unit == 1.0 and coarse.flux_unit == schemas.G_PASSBAND_MEAN_FLUX_PER_E_S


def test_the_default_schema_fits_a_whole_spectrum_and_colours_in_the_small_context():
    from stellarfm_jax.config import DataConfig, load_config

    coarse = schemas.get_schema(schemas.DEFAULT_SCHEMA)
    whole = [n for n, g in zip(coarse.names(), coarse.groups()) if g in ("spectrum", "colour")]
    context = load_config("small").model.context_length
    assert len(whole) == 60 <= context == 64
    assert DataConfig().schema == schemas.DEFAULT_SCHEMA


def test_names_are_validated_and_vocabularies_restricted():
    coarse = schemas.get_schema("xp_coarse")
    vocab = coarse.vocabulary(["f342", "bprp", "jk", "teff"])
    assert vocab.names == ("f342", "bprp", "jk", "teff") and vocab.outputs == ("f342", "teff")
    assert vocab.groups == ("spectrum", "colour", "colour", "label")
    with pytest.raises(schemas.SchemaTokenError, match=r"not in the xp_coarse schema \(flux tokens are named like "
                                                       r"'f340'\): \['bp0', 'g_fakemag'\]"):
        coarse.vocabulary(["f342", "bp0", "g_fakemag"])
    with pytest.raises(ValueError, match=r"token names not in the paper schema: \['f340'\]"):
        schemas.schema_vocabulary("paper", ["bp0", "f340"])
    with pytest.raises(ValueError, match="XP coefficient tokens, not a wavelength grid"):
        schemas.get_schema("paper").names(grid=[340.0])
    assert schemas.get_schema("xp_sampled").names(grid=[400.0, 410.0])[:2] == ["f400", "f410"]


def test_flux_unit_constant_is_gaiaxpy_g_passband_zero_point_against_gaia_e_per_s():
    """c = 10**((ZP_XP_G - ZP_G)/2.5): the G-passband mean f_lambda [W m^-2 nm^-1] of a source with F_G = 1 e-/s."""
    assert schemas.GAIA_G_ZERO_POINT == 25.6873668671 and schemas.GAIAXPY_G_VEGA_ZERO_POINT == -26.4899
    np.testing.assert_allclose(schemas.G_PASSBAND_MEAN_FLUX_PER_E_S, 1.3461493727e-21, rtol=1e-10)
    spec = importlib.util.find_spec("gaiaxpy")
    if spec is None:
        pytest.skip("gaiaxpy is not installed")
    from stellarfm_jax.data.xp import G_VEGA_FILTER_FILE, g_passband_bases

    assert (pathlib.Path(spec.submodule_search_locations[0]) / G_VEGA_FILTER_FILE).is_file()
    assert g_passband_bases()[2] == schemas.GAIAXPY_G_VEGA_ZERO_POINT  # the constant is GaiaXPy's own


def test_token_name_constants_are_the_vocabulary_spelling():
    assert schemas.HEADLINE_LABELS == ("teff", "logg", "m_h") == schemas.LABELS
    assert schemas.STELLAR_LABELS == ("teff", "logg", "m_h", "alpha_m", "logebv")
    assert schemas.COLOURS == ("bprp", "jh", "jk") and schemas.PAPER_WITHHELD_OUTPUTS == ("bprp", "jk")
    assert schemas.flux_token_name(342.0) == "f342" and schemas.flux_token_name(338.5) == "f338.5"
    assert schemas.is_flux_token_name("f1014") and not schemas.is_flux_token_name("feh")
