"""Inference core and shell: exactness of batching / chunking / multi-request decoding, attention,
input validation, result structure and save -> load round trips (issue #4, must-show 1, 2, 3, 6)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stellarfm_jax.cli import BadInputError
from stellarfm_jax.config import ModelConfig
from stellarfm_jax.inference import (
    MAX_ABS_Z,
    OUT_OF_RANGE_Z,
    StellarModel,
    UntrainedOutputError,
    attention_without_bias,
    decode,
    encode,
    predict,
)
from stellarfm_jax.nn.model import StellarPerceptron, init_params
from stellarfm_jax.vocab import UnknownTokenError, Vocabulary

CONFIG = ModelConfig(embedding_dim=16, encoder_heads=4, encoder_dense=32, decoder_heads=4, decoder_dense=64,
                     dropout=0.0, context_length=12)
NAMES = [f"bp{i}" for i in range(10)] + ["jh", "teff", "logg", "m_h", "logebv"]


def make_vocab() -> Vocabulary:
    rng = np.random.default_rng(1)
    centre = rng.normal(size=len(NAMES)) * 3
    centre[NAMES.index("teff")] = 5000.0
    scale = rng.uniform(0.5, 2.0, size=len(NAMES))
    scale[NAMES.index("teff")] = 600.0
    return Vocabulary(tuple(NAMES), centre, scale, tuple(NAMES), ("spectrum",) * 10 + ("colour",) + ("label",) * 4)


@pytest.fixture(scope="module")
def model() -> StellarModel:
    vocab = make_vocab()
    params = init_params(StellarPerceptron(CONFIG, vocab.size), jax.random.PRNGKey(3))
    return StellarModel.from_params(params, CONFIG, vocab, {"note": "random init"})


def random_catalogue(model, n_stars, n_cols=8, seed=0, missing=0.25):
    """Physical values of n_cols random tokens per star (per-star names), with NaN holes."""
    rng = np.random.default_rng(seed)
    vocab = model.vocab
    names = np.array([rng.choice(vocab.names, n_cols, replace=False) for _ in range(n_stars)])
    ids = vocab.ids(names)
    z = rng.normal(size=(n_stars, n_cols))
    values = z * vocab.scale_by_id[ids] + vocab.centre_by_id[ids]
    values[rng.random(values.shape) < missing] = np.nan
    return values, names


def direct_prediction(model, values, names, request_names):
    """Independent expectation: standardise by hand and call the Flax module directly, one star at a time."""
    vocab = model.vocab
    module = StellarPerceptron(model.model_config, vocab.size)
    means, errors = [], []
    for row, row_names in zip(np.atleast_2d(values), np.broadcast_to(np.asarray(names), np.atleast_2d(values).shape)):
        keep = np.isfinite(row)
        ids = np.array([NAMES.index(n) + 1 for n in row_names[keep]], dtype=np.int32)
        z = (row[keep] - vocab.centre[ids - 1]) / vocab.scale[ids - 1]
        if ids.size == 0:  # an empty star: one padding slot
            ids, z = np.zeros(1, np.int32), np.zeros(1)
        req = np.array([[NAMES.index(n) + 1 for n in request_names]], dtype=np.int32)
        mu, logvar = module.apply({"params": model.params}, jnp.asarray(z[None], jnp.float32), jnp.asarray(ids[None]),
                                  jnp.asarray(req))
        r = req[0] - 1
        means.append(np.asarray(mu[0], np.float64) * vocab.scale[r] + vocab.centre[r])
        errors.append(np.sqrt(np.exp(np.asarray(logvar[0], np.float64))) * vocab.scale[r])
    return np.array(means), np.array(errors)


# ------------------------------------------------------------------------------------------ exactness
def test_request_matches_direct_module_in_physical_units(model):
    values, names = random_catalogue(model, 6, seed=1)
    res = model.perceive(values, names).request(["teff", "bp3", "logebv"])
    mean, err = direct_prediction(model, values, names, ["teff", "bp3", "logebv"])
    for j, name in enumerate(["teff", "bp3", "logebv"]):
        np.testing.assert_allclose(res[name], mean[:, j], rtol=2e-6, atol=1e-5 * model.vocab.scale[NAMES.index(name)])
        np.testing.assert_allclose(res[f"{name}_error"], err[:, j], rtol=2e-6)
        assert res[name].dtype == np.float64 and res[name].shape == (6,)


def test_r_requests_in_one_call_equal_r_single_calls(model):
    values, names = random_catalogue(model, 50, seed=2)
    perception = model.perceive(values, names)
    requests = ["teff", "logg", "m_h", "bp0", "jh"]
    together = perception.request(requests)
    for name in requests:
        alone = perception.request([name])
        for col in (name, f"{name}_error"):
            scale = model.vocab.scale[NAMES.index(name)]
            np.testing.assert_allclose(together[col], alone[col], rtol=1e-6, atol=1e-6 * scale)


def standardised(model, res, names):
    """(mean z, logvar) [N, R] of a result, back in the network's standardised units."""
    ids = model.vocab.ids(names)
    z = np.stack([(res[n] - model.vocab.centre_by_id[i]) / model.vocab.scale_by_id[i] for n, i in zip(names, ids)], 1)
    logvar = np.stack([2 * np.log(res[f"{n}_error"] / model.vocab.scale_by_id[i]) for n, i in zip(names, ids)], 1)
    return z, logvar


def float32_program_tolerance(config: ModelConfig) -> float:
    """How far two float32 programs that sum in a different order (another chunk size: other row tiling) may
    disagree, in standardised units relative to max(1, |value|). Each of the L stages (the embedding, the
    attention and dense sub-layers of every block, the 4-layer output head) sums at most K terms (K: the widest
    contraction); reordering such a sum moves it by ~sqrt(K) roundings of relative size eps (2^-23) (a random
    walk of unit roundoffs, x2 margin), LayerNorm keeps every stage's scale O(1), and the stages add up."""
    stages = 1 + 2 * (config.encoder_blocks + config.decoder_blocks) + 4
    widest = max(config.embedding_dim, config.encoder_dense, config.decoder_dense, config.context_length + 1)
    return stages * np.sqrt(widest) * np.finfo(np.float32).eps


def test_same_chunk_size_is_bit_exact_at_any_position_within_and_across_chunks(model):
    values, names = random_catalogue(model, 70, seed=3)
    request = ["teff", "bp1"]
    base = model.perceive(values, names, chunk_size=16).request(request)  # chunks of 16, 16, 16, 16, 6 stars
    perm = np.random.default_rng(0).permutation(70)  # every star moves, many into or out of the last chunk
    moved = model.perceive(values[perm], names[perm], chunk_size=16).request(request)
    other, other_names = random_catalogue(model, 70, seed=30)  # different neighbours, same stars at 0, 17, 69
    keep = [0, 17, 69]
    other[keep], other_names[keep] = values[keep], names[keep]
    neighbours = model.perceive(other, other_names, chunk_size=16).request(request)
    for col in base.keys():
        np.testing.assert_array_equal(moved[col], base[col][perm])
        np.testing.assert_array_equal(neighbours[col][keep], base[col][keep])


def test_different_chunk_sizes_agree_to_float32_rounding(model):
    values, names = random_catalogue(model, 70, seed=3)
    request = ["teff", "bp1"]
    tol = float32_program_tolerance(CONFIG)
    assert 1e-6 < tol < 1e-4  # ~1.4e-5 here: a real bound, far below any modelling effect
    full = model.perceive(values, names, chunk_size=1024).request(request)
    chunked = model.perceive(values, names, chunk_size=16).request(request)
    runs = [chunked] + [model.perceive(values[i:i + 1], names[i:i + 1]).request(request) for i in (0, 17, 69)]
    rows = [slice(None), [0], [17], [69]]
    z_full, lv_full = standardised(model, full, request)
    for res, row in zip(runs, rows):
        z, lv = standardised(model, res, request)
        np.testing.assert_allclose(z, z_full[row], rtol=0, atol=tol * max(1.0, np.abs(z_full).max()))
        np.testing.assert_allclose(lv, lv_full[row], rtol=0, atol=tol * max(1.0, np.abs(lv_full).max()))
    for col in ("prior_only", "n_out_of_range"):
        np.testing.assert_array_equal(chunked[col], full[col])


def test_functional_core_encode_decode_equals_fused_predict(model):
    values, names = random_catalogue(model, 5, seed=4, missing=0.0)
    inp = model.perceive(values, names).inputs
    requests = jnp.asarray(model.vocab.ids(["teff", "logg"]))
    mean, logvar, emb = predict(model.params, inp.values, inp.tokens, requests, spec=model.spec)
    perception = encode(model.params, inp.values, inp.tokens, spec=model.spec)
    mean2, logvar2 = decode(model.params, perception, inp.tokens != 0, jnp.broadcast_to(requests, (5, 2)), spec=model.spec)
    tol = float32_program_tolerance(CONFIG)  # two compiled programs (fused vs split): float32-close, not bit-exact
    np.testing.assert_allclose(mean, mean2, rtol=0, atol=tol * max(1.0, np.abs(mean).max()))
    np.testing.assert_allclose(logvar, logvar2, rtol=0, atol=tol * max(1.0, np.abs(logvar).max()))
    assert mean.shape == (5, 2) and perception.shape == (5, inp.values.shape[1], CONFIG.embedding_dim)


def test_embedding_is_masked_mean_of_encoder_output(model):
    values, names = random_catalogue(model, 7, seed=5)
    values[3] = np.nan  # an empty star
    p = model.perceive(values, names)
    emb = p.embedding()
    perception = np.asarray(p.perception(), np.float64)
    mask = p.inputs.tokens != 0
    for i in range(7):
        if mask[i].any():
            np.testing.assert_allclose(emb[i], perception[i][mask[i]].mean(axis=0), rtol=1e-5, atol=1e-6)
        else:
            assert np.isnan(emb[i]).all()
    assert emb.shape == (7, CONFIG.embedding_dim)


def test_permutation_of_input_columns_does_not_change_the_answer(model):
    values, names = random_catalogue(model, 4, seed=6, missing=0.0)
    perm = np.random.default_rng(0).permutation(values.shape[1])
    a = model.perceive(values, names).request(["teff"])
    b = model.perceive(values[:, perm], names[:, perm]).request(["teff"])
    np.testing.assert_allclose(a["teff"], b["teff"], rtol=1e-5)


def test_names_shared_or_per_star_and_integer_ids_for_many_stars(model):
    values = np.array([[4700.0, 2.5, -0.2], [5500.0, 4.2, 0.1], [6000.0, 4.0, 0.0]])
    by_name = model.perceive(values, ["teff", "logg", "m_h"]).request(["bp0", "jh"])
    ids = model.vocab.ids(["teff", "logg", "m_h"])
    by_id = model.perceive(values, np.tile(ids, (3, 1))).request(list(model.vocab.ids(["bp0", "jh"])))
    for col in ("bp0", "jh_error"):
        np.testing.assert_array_equal(by_name[col], by_id[col])
    one = model.perceive(values[0], ["teff", "logg", "m_h"]).request("bp0")
    assert len(one) == 1
    np.testing.assert_allclose(one["bp0"][0], by_name["bp0"][0], rtol=1e-6)


def test_dataframe_columns_are_token_names(model):
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"logg": [2.5, 4.2], "teff": [4700.0, 5500.0]})
    a = model.perceive(df).request(["m_h"])
    b = model.perceive(df[["teff", "logg"]].to_numpy(), ["teff", "logg"]).request(["m_h"])
    np.testing.assert_allclose(a["m_h"], b["m_h"], rtol=1e-5)


def test_result_structure_records_and_pandas(model):
    res = model.perceive([[4700.0, 2.5], [5500.0, 4.2]], ["teff", "logg"]).request(["m_h", "bp0"])
    assert res.keys() == ["m_h", "bp0", "m_h_error", "bp0_error", "prior_only", "n_out_of_range"]
    rec = res.to_records()
    assert rec.shape == (2,) and rec.dtype.names == tuple(res.keys())
    np.testing.assert_array_equal(rec["bp0_error"], res["bp0_error"])
    pd = pytest.importorskip("pandas")
    df = res.to_pandas()
    assert list(df.columns) == res.keys() and len(df) == 2
    assert np.all(res["m_h_error"] > 0)
    with pytest.raises(KeyError, match="columns"):
        res["logg"]


# ------------------------------------------------------------------------------------------ attention
def test_attention_for_many_stars_every_block_sums_to_one(model):
    values, names = random_catalogue(model, 5, seed=7)
    values[2] = np.nan  # an empty star still attends to the bias slot
    p = model.perceive(values, names)
    res = p.request(["teff", "logg", "bp2"], return_attention=True)
    att = res.attention
    n, t = values.shape[0], p.inputs.tokens.shape[1]
    assert len(att["encoder"]) == CONFIG.encoder_blocks and len(att["decoder"]) == CONFIG.decoder_blocks
    for k, (heads, _) in enumerate(CONFIG.encoder_block_shapes()):
        assert att["encoder"][k].shape == (n, heads, t, t + 1)
    for k, (heads, _) in enumerate(CONFIG.decoder_block_shapes()):
        assert att["decoder"][k].shape == (n, heads, 3, t + 1)
    real = p.inputs.tokens != 0
    for w in att["encoder"] + att["decoder"]:
        np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-5)  # with the bias slot
        assert np.all(w[..., :-1][~np.broadcast_to(real[:, None, None, :], w[..., :-1].shape)] == 0)  # padded keys
        wo = attention_without_bias(w)
        sums = wo.sum(-1)
        np.testing.assert_allclose(sums[real.any(1)], 1.0, atol=1e-5)  # without it, over real keys
        assert np.all(sums[~real.any(1)] == 0) and np.isfinite(wo).all()
    # The same predictions as without attention.
    plain = p.request(["teff", "logg", "bp2"])
    np.testing.assert_allclose(res["teff"], plain["teff"], rtol=1e-6)
    enc = p.attention()
    np.testing.assert_allclose(enc[1], att["encoder"][1], atol=1e-6)


# ------------------------------------------------------------------------------------------ bad input
def test_unknown_token_name_lists_closest_names(model):
    with pytest.raises(UnknownTokenError, match=r"closest valid names: \['teff'\]"):
        model.perceive([[4700.0]], ["tef"])
    with pytest.raises(UnknownTokenError, match="logg"):
        model.perceive([[4700.0]], ["teff"]).request(["log_g"])


@pytest.mark.parametrize(
    "values,names,errors,match",
    [
        ([[1.0, 2.0, 3.0]], ["teff", "logg"], None, "2 token names for 3 value columns"),
        (np.zeros((2, 2, 2)), ["teff", "logg"], None, "must be \\[N stars, n tokens\\]"),
        ([[1.0, 2.0]], [["teff", "logg"], ["teff", "m_h"]], None, "per-star names must have the values' shape"),
        ([[1.0, 2.0]], ["teff", "logg"], [[0.1]], "errors must have the values' shape"),
        ([[1.0, 2.0]], ["teff", "logg"], [[0.1, -1.0]], "errors must be >= 0"),
        ([[1.0, 2.0]], [1.5, 2.5], None, "strings or integer ids"),
        ([[1.0, 2.0]], [0, 99], None, "token ids must lie in"),
    ],
)
def test_wrong_shapes_are_refused(model, values, names, errors, match):
    with pytest.raises(ValueError, match=match):
        model.perceive(values, names, errors)


def test_non_numeric_and_infinite_values_are_refused(model):
    with pytest.raises(ValueError, match=r"values must be numeric.*entry \(1, 0\) is 'hot'"):
        model.perceive([[4700.0, 2.5], ["hot", 4.0]], ["teff", "logg"])
    with pytest.raises(ValueError, match="finite or NaN"):
        model.perceive([[np.inf, 2.5]], ["teff", "logg"])
    with pytest.raises(ValueError, match="request names must be a non-empty"):
        model.perceive([[4700.0]], ["teff"]).request([])


def test_too_many_tokens_error_and_keep_informative(model):
    n = CONFIG.context_length + 2
    names = NAMES[:n]
    rng = np.random.default_rng(0)
    values = rng.normal(size=(3, n)) * model.vocab.scale[:n] + model.vocab.centre[:n]
    with pytest.raises(ValueError, match=f"has {n} real .* context length is {CONFIG.context_length}.*keep_informative"):
        model.perceive(values, names)
    # Missing values do not count: two NaN per star fit the context.
    holes = values.copy()
    holes[:, :2] = np.nan
    assert model.perceive(holes, names).inputs.tokens.shape[1] == CONFIG.context_length
    # keep_informative keeps the smallest standardised errors: here the two largest errors are dropped.
    errors = np.tile(np.full(n, 0.01) * model.vocab.scale[:n], (3, 1))
    errors[:, 4] = 5 * model.vocab.scale[4]
    errors[:, 9] = 3 * model.vocab.scale[9]
    p = model.perceive(values, names, errors, overflow="keep_informative")
    assert p.inputs.dropped.tolist() == [2, 2, 2]
    kept = p.input_names()
    for row in kept:
        assert "bp4" not in row and "bp9" not in row and len(row) == CONFIG.context_length
    expected = model.perceive(np.delete(values, [4, 9], axis=1), [x for i, x in enumerate(names) if i not in (4, 9)])
    np.testing.assert_allclose(p.request(["teff"])["teff"], expected.request(["teff"])["teff"], rtol=1e-5)
    with pytest.raises(ValueError, match="overflow must be one of"):
        model.perceive(values, names, overflow="drop")


def test_all_missing_star_is_answered_from_the_prior_and_flagged(model):
    values = np.array([[4700.0, 2.5], [np.nan, np.nan], [5200.0, np.nan]])
    res = model.perceive(values, ["teff", "logg"]).request(["m_h", "bp0"])
    assert res["prior_only"].tolist() == [False, True, False]
    for col in res.keys():
        assert np.all(np.isfinite(res[col])), col
    # The prior answer is the answer to an empty context, whatever the star's position.
    empty = model.perceive([[np.nan]], ["teff"]).request(["m_h", "bp0"])
    np.testing.assert_allclose(res["m_h"][1], empty["m_h"][0], rtol=1e-6)


def test_out_of_range_values_are_flagged_per_star_and_token(model):
    vocab = model.vocab
    t, g = NAMES.index("teff"), NAMES.index("logg")
    far = vocab.centre[t] + (OUT_OF_RANGE_Z + 1) * vocab.scale[t]
    values = np.array([[5000.0, vocab.centre[g]], [far, vocab.centre[g]], [far, vocab.centre[g] - 20 * vocab.scale[g]]])
    p = model.perceive(values, ["teff", "logg"])
    res = p.request(["m_h"])
    assert res["n_out_of_range"].tolist() == [0, 1, 2]
    assert p.out_of_range_names() == [[], ["teff"], ["teff", "logg"]]
    assert np.all(np.isfinite(res["m_h"])) and np.all(np.isfinite(res["m_h_error"]))


def test_out_of_range_uses_stored_training_min_max(model):
    vocab = model.vocab
    lo = vocab.centre - 1.0 * vocab.scale
    hi = vocab.centre + 1.0 * vocab.scale
    ranged = StellarModel.from_params(model.params, CONFIG, vocab, {"token_range": {"min": lo.tolist(), "max": hi.tolist()}})
    t = NAMES.index("teff")
    p = ranged.perceive([[vocab.centre[t] + 0.5 * vocab.scale[t]], [vocab.centre[t] + 2 * vocab.scale[t]]], ["teff"])
    assert p.out_of_range[:, 0].tolist() == [False, True]


def test_no_nan_output_for_finite_extreme_inputs(model):
    values, names = random_catalogue(model, 20, seed=8, missing=0.0)
    values *= 1e4  # far outside any training range, still finite
    res = model.perceive(values, names).request(list(NAMES))
    for col in res.keys():
        assert np.all(np.isfinite(res[col])), col


def test_request_of_a_never_trained_output_is_refused_unless_allowed_then_flagged(model):
    vocab = model.vocab
    withheld = Vocabulary(vocab.names, vocab.centre, vocab.scale, tuple(n for n in NAMES if n not in ("jh", "bp9")),
                          vocab.groups)
    restricted = StellarModel.from_params(model.params, CONFIG, withheld)
    p = restricted.perceive([[4700.0, 2.5], [5200.0, 4.0]], ["teff", "logg"])
    with pytest.raises(UntrainedOutputError, match=r"jh: never trained as an output.*Trained outputs: spectrum: "
                       r"bp0 \.\. bp8 \(9 tokens\); label: teff, logg, m_h, logebv.*allow_untrained=True"):
        p.request(["m_h", "jh"])
    with pytest.raises(BadInputError, match="bp9, jh: never trained"):
        p.request(["bp9", "jh"])
    res = p.request(["m_h", "jh"], allow_untrained=True)
    assert res.untrained == ("jh",) and res.keys()[-1] == "jh_untrained"
    assert res["jh_untrained"].tolist() == [True, True] and "m_h_untrained" not in res
    # The answers themselves are the model's: the same as from a model that lists jh as an output.
    same = model.perceive([[4700.0, 2.5], [5200.0, 4.0]], ["teff", "logg"]).request(["m_h", "jh"])
    for col in same.keys():
        np.testing.assert_array_equal(res[col], same[col])
    assert same.untrained == () and "jh_untrained" not in same
    assert len(p.attention()) == CONFIG.encoder_blocks  # the encoder-only helper needs no opt-in


def test_values_beyond_max_abs_z_are_refused_naming_star_and_token_or_made_missing(model):
    vocab = model.vocab
    t = vocab.token_id("teff")
    far = vocab.centre_by_id[t] + 2 * MAX_ABS_Z * vocab.scale_by_id[t]
    values = np.array([[5000.0, 2.5], [1e30, 2.5], [far, np.nan]])
    with pytest.raises(BadInputError, match=r"star 1, column 0: teff = 1e\+30 lies .* robust standard deviations"
                                            r".*extreme='missing'"):
        model.perceive(values, ["teff", "logg"])
    with pytest.raises(BadInputError, match="star 7, column 0: teff"):
        model.perceive(values, ["teff", "logg"], star_offset=6)  # a caller's chunk offset
    with pytest.raises(BadInputError, match="star 1, column 0: teff = 1.2e"):
        model.perceive(values[[0, 2]], ["teff", "logg"])  # 2e6 sigma: still refused
    ok = vocab.centre_by_id[t] + 0.5 * MAX_ABS_Z * vocab.scale_by_id[t]
    res = model.perceive([[ok, 2.5]], ["teff", "logg"]).request(["m_h"])  # 5e5 sigma: flagged, answered
    assert res["n_out_of_range"].tolist() == [1] and np.isfinite(res["m_h"]).all()
    p = model.perceive(values, ["teff", "logg"], extreme="missing")
    assert p.inputs.extreme.tolist() == [0, 1, 1] and p.prior_only.tolist() == [False, False, True]
    res = p.request(["m_h", "jh"])
    assert res["n_out_of_range"].tolist() == [0, 1, 1]
    for col in res.keys():
        assert np.all(np.isfinite(res[col])), col
    alone = model.perceive([[np.nan, 2.5]], ["teff", "logg"]).request(["m_h"])  # the value was dropped
    np.testing.assert_allclose(res["m_h"][1], alone["m_h"][0], rtol=1e-5)
    with pytest.raises(ValueError, match="extreme must be one of"):
        model.perceive(values, ["teff", "logg"], extreme="clip")


def test_same_token_twice_in_a_star_is_refused(model):
    with pytest.raises(BadInputError, match=r"token 'teff' appears twice in names \(columns 0 and 2\)"):
        model.perceive([[4700.0, 2.5, 6000.0]], ["teff", "logg", "teff"])
    with pytest.raises(BadInputError, match=r"'logg' appears twice in the names of star 1 \(columns 0 and 1\)"):
        model.perceive([[4700.0, 2.5], [2.5, 3.0]], [["teff", "logg"], ["logg", "logg"]])
    ids = model.vocab.ids(["teff", "logg"])
    with pytest.raises(BadInputError, match="'teff' appears twice"):
        model.perceive([[4700.0, 4800.0]], [ids[0], ids[0]])
    # Padding ids (0) may repeat; a token may still appear once per star in per-star names.
    model.perceive([[4700.0, 1.0, 2.0]], [[ids[0], 0, 0]])
    model.perceive([[4700.0, 2.5], [2.5, 4700.0]], [["teff", "logg"], ["logg", "teff"]])


def test_keep_informative_ranks_nan_and_infinite_errors_last(model):
    n = CONFIG.context_length + 3
    names = NAMES[:n]
    scale = model.vocab.scale[:n]
    values = model.vocab.centre[:n][None, :] + 0.3 * scale[None, :]
    errors = (0.1 * scale)[None, :].copy()
    errors[0, 1] = np.nan  # unknown error: least informative, not perfectly measured
    errors[0, 5] = np.inf
    errors[0, 7] = 50 * scale[7]  # the largest finite error is dropped after them
    p = model.perceive(values, names, errors, overflow="keep_informative")
    assert p.inputs.dropped.tolist() == [3]
    kept = p.input_names()[0]
    assert {"bp1", "bp5", "bp7"}.isdisjoint(kept) and len(kept) == CONFIG.context_length
    expected = [x for i, x in enumerate(names) if i not in (1, 5, 7)]
    assert kept == expected  # the rest in column order (equal errors keep their order)


def test_boolean_values_and_empty_names_are_refused(model):
    with pytest.raises(BadInputError, match=r"entry \(0, 1\) is the boolean True"):
        model.perceive([[4700.0, True]], ["teff", "logg"])
    with pytest.raises(BadInputError, match="boolean array"):
        model.perceive(np.array([[True, False]]), ["teff", "logg"])
    with pytest.raises(BadInputError, match=r"entry \(0,\) is the boolean False"):
        model.perceive([[4700.0, 2.5]], ["teff", "logg"], errors=[False, 0.1])
    with pytest.raises(BadInputError, match="no token names given"):
        model.perceive([[]], [])
    with pytest.raises(BadInputError, match="no token names given"):
        model.perceive(np.zeros((2, 0)), np.zeros(0))
    with pytest.raises(BadInputError, match="strings or integer ids, got booleans"):
        model.perceive([[4700.0]], [True])
    # Integer and float numpy arrays, and lists of ints, stay accepted.
    a = model.perceive(np.array([[4700, 3]]), ["teff", "logg"]).request(["m_h"])
    b = model.perceive([[4700.0, 3.0]], ["teff", "logg"]).request(["m_h"])
    np.testing.assert_array_equal(a["m_h"], b["m_h"])


def test_predict_command_refuses_extreme_values_and_untrained_requests(model, tmp_path, capsys):
    from stellarfm_jax.predict import main

    withheld = Vocabulary(model.vocab.names, model.vocab.centre, model.vocab.scale,
                          tuple(n for n in NAMES if n != "jh"), model.vocab.groups)
    StellarModel.from_params(model.params, CONFIG, withheld).save(tmp_path / "model")
    path = tmp_path / "stars.csv"
    path.write_text("teff,logg\n4700,2.5\n5000,4.0\n1e30,4.4\n")
    args = ["--model", str(tmp_path / "model"), "--input", str(path), "--no-progress", "--read-rows", "2"]
    assert main(args + ["--request", "m_h", "--output", str(tmp_path / "a.csv")]) == 2
    err = capsys.readouterr().err
    assert "error: star 2, column 0: teff = 1e+30" in err and not (tmp_path / "a.csv").exists()
    assert main(args + ["--request", "m_h", "--output", str(tmp_path / "b.csv"), "--extreme", "missing"]) == 0
    rows = (tmp_path / "b.csv").read_text().splitlines()
    assert rows[0].split(",")[-1] == "n_out_of_range" and rows[3].endswith(",1") and len(rows) == 4
    assert main(args + ["--request", "m_h,jh", "--output", str(tmp_path / "c.csv"), "--extreme", "missing"]) == 2
    assert "jh: never trained as an output" in capsys.readouterr().err
    assert main(args + ["--request", "m_h,jh", "--output", str(tmp_path / "d.csv"), "--extreme", "missing",
                        "--allow-untrained"]) == 0
    header = (tmp_path / "d.csv").read_text().splitlines()[0].split(",")
    assert header[-1] == "jh_untrained"


def test_invert_goes_through_the_same_extreme_value_check(model):
    observed = np.array([[0.1, 0.2, 1e30]])
    with pytest.raises(BadInputError, match=r"star 0, column 2: bp2 = 1e\+30"):
        model.invert(observed, ["bp0", "bp1", "bp2"], steps=2, n_starts=1)


# ------------------------------------------------------------------------------------------ persistence
def test_saved_loaded_model_saves_again_with_identical_predictions(model, tmp_path):
    values, names = random_catalogue(model, 9, seed=9)
    before = model.perceive(values, names).request(["teff", "bp5"])
    model.save(tmp_path / "first")
    loaded = StellarModel.load(tmp_path / "first")
    loaded.save(tmp_path / "workdir" / "model")  # a loaded model saves again
    again = StellarModel.load(tmp_path / "workdir")  # a training workdir containing model/
    after = again.perceive(values, names).request(["teff", "bp5"])
    for col in before.keys():
        np.testing.assert_array_equal(before[col], after[col])
    assert again.metadata == {"note": "random init"} and again.vocab.equals(model.vocab)
    with pytest.raises(FileNotFoundError, match="no such directory, and no shipped model of that name"):
        StellarModel.load(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="neither a stellarfm_jax model directory"):
        StellarModel.load(tmp_path / "empty")
