"""Weight import from / export to the original PyTorch release (issue #5, DESIGN §6).

Parity reference: ``tests/torch_reference.py``, a PyTorch replica of the original written from
original_spec §1-§2 with the original's key names. Seeded random weights (every tensor perturbed,
so biases, LayerNorm affines, bias_k/bias_v and padding rows all matter) -> convert -> compare
mean and log-variance in float32 to 1e-5 absolute (standardised units), in eval mode.

Run with ``-s`` to see the largest difference of each parity case.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
import sys

import jax
import numpy as np
import pytest

from stellarfm_jax import convert
from stellarfm_jax.config import ModelConfig
from stellarfm_jax.convert import (
    ConversionError,
    convert_release,
    convert_state_dict,
    export_release,
    export_state_dict,
    import_table,
    model_config_from_original,
    original_config,
    vocabulary_from_original_config,
)
from stellarfm_jax.nn import StellarPerceptron, count_params, init_params
from stellarfm_jax.saved_model import flatten_params, load_model
from stellarfm_jax.schemas import paper_names

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))

TOLERANCE = 1e-5  # absolute, standardised units, float32 (issue #5)
PAPER = ModelConfig()  # D=128, h=16, F=1024, G=3096: the released model
PAPER_V = 118
# A small, non-default architecture: other width, head counts, FFN widths, head MLP and dropout.
SMALL = ModelConfig(embedding_dim=32, encoder_heads=4, encoder_dense=96, decoder_heads=8, decoder_dense=200,
                    dropout=0.2, context_length=20)
SMALL_V = 23
N_STARS = 5  # one batch shape for all parity cases: fewer compilations on a small CPU
# Block counts other than the original's 2 + 3 (the table is generic; the original code is not).
DEEP = dataclasses.replace(SMALL, encoder_blocks=3, decoder_blocks=4)

# Key statistics of the released config.json (original_spec §3): name -> (token id, median, mad_std).
RELEASE_STATS = {
    "bp0": (1, 0.0572480403728933, 0.01116624003463132),
    "rp0": (56, 0.08116727574098412, 0.018443786419819135),
    "bprp": (111, 1.356400489807129, 0.5497475158494775),
    "jh": (112, 0.574000358581543, 0.20015163883897402),
    "jk": (113, 0.7059993743896484, 0.26835205350573893),
    "teff": (114, 4746.274658203125, 487.8011053651685),
    "logg": (115, 2.5654913187026978, 1.308691691325223),
    "m_h": (116, -0.17336000502109528, 0.31526053925662156),
    "logebv": (117, -2.407945651699672, 1.833627090001157),
    "g_fakemag": (118, 243.66816774136987, 214.27665164792717),
}


def shared_dir() -> pathlib.Path:
    return pathlib.Path(os.environ.get("STELLARFM_SHARED", pathlib.Path(__file__).resolve().parents[2] / "shared"))


def release_config(names=None, seed: int = 0, model_config: ModelConfig = PAPER) -> dict:
    """An original-format config.json dict built from the spec: the paper's 118 names with the release's
    statistics for the tokens listed in original_spec §3, plausible XP statistics elsewhere."""
    names = list(paper_names() if names is None else names)
    rng = np.random.default_rng(seed)
    mean = [0.0] + [float(x) for x in rng.normal(0.0, 1e-3, len(names))]
    std = [1.0] + [float(x) for x in 10.0 ** rng.uniform(-5.5, -2.0, len(names))]
    for name, (token, m, s) in RELEASE_STATS.items():
        if name in names:
            assert names.index(name) + 1 == token
            mean[token], std[token] = m, s
    c = model_config
    return {
        "nn_config": {
            "backend_framewoark": "torch-2.1.0",
            "context_length": c.context_length,
            "embedding_dim": c.embedding_dim,
            "embedding_activation": "gelu",
            "encoder_head_num": c.encoder_heads,
            "encoder_dense_num": c.encoder_dense,
            "encoder_dropout_rate": c.dropout,
            "encoder_activation": "gelu",
            "decoder_head_num": c.decoder_heads,
            "decoder_dense_num": c.decoder_dense,
            "decoder_dropout_rate": c.dropout,
            "decoder_activation": "gelu",
        },
        "tokenizer_config": {"vocabs": names, "vocab_tokens": list(range(1, len(names) + 1))},
        "norm_config": {"_input_mean": mean, "_input_std": std, "_input_standardized": [False] + [True] * len(names)},
    }


# ---------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch")


@pytest.fixture(scope="module")
def ref(torch):
    import torch_reference

    return torch_reference


class Pair:
    """A seeded replica in eval mode and its converted Flax twin."""

    def __init__(self, ref, torch, model_config: ModelConfig, vocab_size: int, seed: int):
        torch.manual_seed(seed)
        self.torch = torch
        self.config, self.vocab_size = model_config, vocab_size
        self.replica = ref.StellarPerceptronTorchModel.from_model_config(model_config, vocab_size)
        ref.randomize_parameters(self.replica, seed=seed).eval()
        self.params = jax.tree_util.tree_map(np.asarray, convert_state_dict(self.replica.state_dict(), model_config, vocab_size))
        module = StellarPerceptron(model_config, vocab_size)
        self.flax_forward = jax.jit(lambda p, x, t, r: module.apply({"params": p}, x, t, r))

    def run_torch(self, values, tokens, requests):
        t = self.torch
        with t.no_grad():
            mean, logvar = self.replica(t.from_numpy(values)[..., None], t.from_numpy(tokens), t.from_numpy(requests))
        assert mean.shape == (*requests.shape, 1) and logvar.shape == (*requests.shape, 1)
        return mean[..., 0].numpy(), logvar[..., 0].numpy()

    def run_flax(self, values, tokens, requests):
        with jax.default_matmul_precision("float32"):  # no TF32 on GPUs: parity is a float32 claim
            mean, logvar = self.flax_forward(self.params, values, tokens.astype(np.int32), requests.astype(np.int32))
        return np.asarray(mean), np.asarray(logvar)

    def check(self, label, values, tokens, requests, flax_inputs=None):
        """Compare torch on (values, tokens, requests) with Flax on ``flax_inputs`` (default: the same)."""
        tm, tl = self.run_torch(values, tokens, requests)
        fm, fl = self.run_flax(*(flax_inputs or (values, tokens, requests)))
        assert np.all(np.isfinite(tm)) and np.all(np.isfinite(tl))
        assert np.all(np.isfinite(fm)) and np.all(np.isfinite(fl))
        dm, dl = float(np.max(np.abs(fm - tm))), float(np.max(np.abs(fl - tl)))
        print(f"\nparity[{label}] max|d mean| = {dm:.2e}, max|d logvar| = {dl:.2e} (|mean| <= {np.abs(tm).max():.2f})")
        np.testing.assert_allclose(fm, tm, rtol=0, atol=TOLERANCE, err_msg=f"{label}: mean")
        np.testing.assert_allclose(fl, tl, rtol=0, atol=TOLERANCE, err_msg=f"{label}: logvar")
        return fm, fl


CONFIGS = {"paper": (PAPER, PAPER_V, 11), "small": (SMALL, SMALL_V, 12), "deep": (DEEP, SMALL_V, 13)}


@pytest.fixture(scope="module")
def pairs(ref, torch):
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = Pair(ref, torch, *CONFIGS[name])
        return cache[name]

    return get


def random_stars(rng, n_stars: int, length: int, vocab_size: int, n_real=None):
    """values [N, L] standardised, tokens [N, L] (distinct tokens per star when L <= V; padding where
    a star has fewer than L real tokens, at random positions, with junk values that must not matter)."""
    tokens = np.stack([rng.permutation(vocab_size)[:length] + 1 if length <= vocab_size
                       else rng.integers(1, vocab_size + 1, length) for _ in range(n_stars)])
    values = rng.normal(0.0, 1.5, (n_stars, length)).astype(np.float32)
    if n_real is not None:
        for i, k in enumerate(n_real):
            pad = rng.permutation(length)[: length - k]
            tokens[i, pad] = 0
            values[i, pad] = rng.normal(0.0, 100.0, pad.size)  # must be ignored
    return values, tokens.astype(np.int64)


# ---------------------------------------------------------------------------------------------- parity
@pytest.mark.parametrize("name", ["paper", "small"])
@pytest.mark.parametrize("n_requests", [1, 3, 10])
def test_parity_full_contexts(pairs, name, n_requests):
    pair = pairs(name)
    rng = np.random.default_rng(100 + n_requests)
    length = min(64, pair.vocab_size)
    values, tokens = random_stars(rng, N_STARS, length, pair.vocab_size)
    requests = rng.integers(1, pair.vocab_size + 1, (N_STARS, n_requests))
    pair.check(f"{name} full L={length} R={n_requests}", values, tokens, requests)


@pytest.mark.parametrize("name", ["paper", "small"])
def test_parity_padding_and_all_padding_star(pairs, name):
    pair = pairs(name)
    rng = np.random.default_rng(7)
    length = min(64, pair.vocab_size)
    # Star 0 full, 1-3 partly padded (padding scattered, junk values in padded slots), 4 all padding.
    values, tokens = random_stars(rng, N_STARS, length, pair.vocab_size, n_real=[length, length // 2, 5, 1, 0])
    requests = rng.integers(1, pair.vocab_size + 1, (N_STARS, 3))
    fm, fl = pair.check(f"{name} padding + all-padding star", values, tokens, requests)
    # Junk in padded slots changes nothing (both sides), and the all-padding star is finite (prior).
    clean = np.where(tokens == 0, 0.0, values).astype(np.float32)
    cm, cl = pair.run_flax(clean, tokens, requests)
    np.testing.assert_array_equal(cm, fm)
    np.testing.assert_array_equal(cl, fl)


@pytest.mark.parametrize("name", ["paper", "small"])
def test_parity_permuted_token_order(pairs, name):
    """No positional encoding: Flax on a permuted context equals torch on the original order."""
    pair = pairs(name)
    rng = np.random.default_rng(8)
    length = min(64, pair.vocab_size)
    values, tokens = random_stars(rng, N_STARS, length, pair.vocab_size, n_real=[length, length - 4, 6, 2, length])
    requests = rng.integers(1, pair.vocab_size + 1, (N_STARS, 3))
    perm = np.stack([rng.permutation(length) for _ in range(N_STARS)])
    permuted = (np.take_along_axis(values, perm, 1), np.take_along_axis(tokens, perm, 1), requests)
    pair.check(f"{name} permuted order", values, tokens, requests, flax_inputs=permuted)


def test_parity_request_batching_equals_single_requests(pairs):
    """R requests in one call == R single-request calls (no attention among requests), against torch."""
    pair = pairs("small")
    rng = np.random.default_rng(9)
    values, tokens = random_stars(rng, N_STARS, SMALL_V, pair.vocab_size, n_real=[SMALL_V, 9, 2, 1, 0])
    requests = rng.integers(1, pair.vocab_size + 1, (N_STARS, 10))
    fm, fl = pair.check("small R=10 batched", values, tokens, requests)
    for j in range(requests.shape[1]):
        tm, tl = pair.run_torch(values, tokens, requests[:, j : j + 1])
        np.testing.assert_allclose(fm[:, j : j + 1], tm, rtol=0, atol=TOLERANCE)
        np.testing.assert_allclose(fl[:, j : j + 1], tl, rtol=0, atol=TOLERANCE)


def test_parity_other_block_counts(pairs):
    """The table follows ModelConfig's block counts (3 encoder, 4 decoder blocks here)."""
    pair = pairs("deep")
    rng = np.random.default_rng(10)
    values, tokens = random_stars(rng, N_STARS, 12, pair.vocab_size, n_real=[12, 7, 1, 0, 12])
    requests = rng.integers(1, pair.vocab_size + 1, (N_STARS, 3))
    pair.check("deep (3+4 blocks)", values, tokens, requests)


# ---------------------------------------------------------------------------------------------- the table
@pytest.mark.parametrize("name", ["paper", "small", "deep"])
def test_table_fills_exactly_the_flax_params(name):
    """Every Flax parameter is filled once with the shape init gives it; the paper table has 84 rows."""
    model_config, vocab_size, _ = CONFIGS[name]
    table = import_table(model_config, vocab_size)
    assert len({row.torch_key for row in table}) == len(table)
    if name == "paper":
        assert len(table) == 84
        assert sum(int(np.prod(row.torch_shape)) for row in table) == 8_845_529
    abstract = jax.eval_shape(lambda k: init_params(StellarPerceptron(model_config, vocab_size), k), jax.random.key(0))
    expected = {"/".join(p.key for p in path): leaf.shape for path, leaf in jax.tree_util.tree_flatten_with_path(abstract)[0]}
    fake = {row.torch_key: np.zeros(row.torch_shape, np.float32) for row in table}
    got = {k: v.shape for k, v in flatten_params(convert_state_dict(fake, model_config, vocab_size)).items()}
    assert got == expected


def test_paper_replica_matches_spec_keys(ref):
    replica = ref.StellarPerceptronTorchModel()
    state = replica.state_dict()
    assert len(state) == 84 and sum(v.numel() for v in state.values()) == 8_845_529
    assert [row.torch_key for row in import_table(PAPER, PAPER_V)] == list(state)
    assert tuple(state["torch_decoder.decoder_dense_4.weight"].shape) == (1548, 3096)
    assert tuple(state["torch_encoder.encoder_transformer_block_2.attention.bias_k"].shape) == (1, 1, 128)


def test_layout_of_attention_import():
    """in_proj rows [0:D] are Q, split head-major; out_proj acts on concatenated heads; bias_k -> (h, d)."""
    D, h = 8, 2
    cfg = ModelConfig(embedding_dim=D, encoder_heads=h, encoder_dense=4, decoder_heads=4, decoder_dense=8)
    table = import_table(cfg, 3)
    state = {row.torch_key: np.arange(np.prod(row.torch_shape), dtype=np.float32).reshape(row.torch_shape)
             for row in table}
    att = convert_state_dict(state, cfg, 3)["encoder_blocks_0"]["attention"]
    w = state["torch_encoder.encoder_transformer_block_1.attention.in_proj_weight"]
    # query_kernel[i, head, j] = W_q[head * d + j, i]; key_kernel uses rows D..2D.
    assert att["query_kernel"][5, 1, 2] == w[1 * 4 + 2, 5]
    assert att["key_kernel"][3, 0, 1] == w[D + 0 * 4 + 1, 3]
    b = state["torch_encoder.encoder_transformer_block_1.attention.in_proj_bias"]
    assert att["value_bias"][1, 3] == b[2 * D + 1 * 4 + 3]
    wo = state["torch_encoder.encoder_transformer_block_1.attention.out_proj.weight"]
    assert att["out_kernel"][1, 2, 6] == wo[6, 1 * 4 + 2]
    bk = state["torch_encoder.encoder_transformer_block_1.attention.bias_k"]
    assert att["bias_k"][1, 0] == bk[0, 0, 4]


# ---------------------------------------------------------------------------------------------- errors
def small_state(seed=0):
    rng = np.random.default_rng(seed)
    return {row.torch_key: rng.normal(size=row.torch_shape).astype(np.float32) for row in import_table(SMALL, SMALL_V)}


def test_missing_key_is_named_with_its_shape():
    state = small_state()
    del state["torch_decoder.decoder_transformer_block_2.dense_1.weight"]
    with pytest.raises(ConversionError, match=r"missing keys: torch_decoder\.decoder_transformer_block_2\.dense_1\.weight "
                       r"\(expected shape \(100, 32\)\)"):
        convert_state_dict(state, SMALL, SMALL_V)


def test_extra_key_is_named():
    state = small_state()
    state["torch_decoder.decoder_dense_7.weight"] = np.zeros((3, 3), np.float32)
    with pytest.raises(ConversionError, match=r"unexpected keys: torch_decoder\.decoder_dense_7\.weight \(shape \(3, 3\)\)"):
        convert_state_dict(state, SMALL, SMALL_V)


def test_wrong_shape_is_named_with_expected_shape():
    state = small_state()
    state["torch_encoder.encoder_transformer_block_1.attention.in_proj_weight"] = np.zeros((96, 16), np.float32)
    with pytest.raises(ConversionError, match=r"encoder_transformer_block_1\.attention\.in_proj_weight'?: "
                       r"expected shape \(96, 32\), got \(96, 16\)"):
        convert_state_dict(state, SMALL, SMALL_V)


def test_non_finite_and_integer_tensors_are_refused():
    state = small_state()
    state["torch_decoder.decoder_out.bias"] = np.array([np.nan], np.float32)
    with pytest.raises(ConversionError, match="decoder_out.bias.*non-finite"):
        convert_state_dict(state, SMALL, SMALL_V)
    state = small_state()
    state["torch_decoder.decoder_out.bias"] = np.array([1], np.int64)
    with pytest.raises(ConversionError, match="decoder_out.bias.*floating-point"):
        convert_state_dict(state, SMALL, SMALL_V)


def test_wrong_head_layout_is_a_shape_error_not_silent():
    """A state_dict of another width cannot be read as this architecture."""
    with pytest.raises(ConversionError, match=r"embedding_layer\.embeddings'?: expected shape \(24, 32\), got"):
        convert_state_dict({**small_state(), "embedding_layer.embeddings": np.zeros((24, 16), np.float32)}, SMALL, SMALL_V)


def test_vocabulary_size_must_match_embedding_rows():
    cfg = release_config()
    with pytest.raises(ConversionError, match=r"118 tokens.*119 rows.*has 120 rows"):
        vocabulary_from_original_config(cfg, embedding_rows=120)
    bad = json.loads(json.dumps(cfg))
    bad["norm_config"]["_input_std"] = bad["norm_config"]["_input_std"][:-1]
    with pytest.raises(ConversionError, match=r"_input_std must have 119 entries"):
        vocabulary_from_original_config(bad)
    bad = json.loads(json.dumps(cfg))
    bad["tokenizer_config"]["vocab_tokens"] = list(range(118))
    with pytest.raises(ConversionError, match="vocab_tokens must be 1..118"):
        vocabulary_from_original_config(bad)
    bad = json.loads(json.dumps(cfg))
    bad["norm_config"]["_input_standardized"][114] = False
    with pytest.raises(ConversionError, match=r"statistics for tokens \['teff'\]"):
        vocabulary_from_original_config(bad)


def test_release_with_vocab_disagreeing_with_weights_is_refused(torch, ref, tmp_path):
    replica = ref.StellarPerceptronTorchModel.from_model_config(SMALL, SMALL_V)
    torch.save({"model_state_dict": replica.state_dict()}, tmp_path / "weights.pt")
    cfg = release_config([f"t{i}" for i in range(SMALL_V + 2)], model_config=SMALL)
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ConversionError, match=r"25 tokens.*26 rows.*has 24 rows"):
        convert_release(tmp_path, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unsupported_activation_is_refused():
    cfg = release_config()
    cfg["nn_config"]["encoder_activation"] = None
    with pytest.raises(ConversionError, match="encoder_activation.*None.*ReLU"):
        model_config_from_original(cfg)


# ---------------------------------------------------------------------------------------------- config.json
def test_vocabulary_and_model_config_from_original_config():
    cfg = release_config()
    vocab = vocabulary_from_original_config(cfg, embedding_rows=119)
    assert vocab.names == tuple(paper_names()) and vocab.schema == "paper"
    for name, (token, m, s) in RELEASE_STATS.items():
        assert vocab.token_id(name) == token
        assert vocab.centre_by_id[token] == m and vocab.scale_by_id[token] == s
    assert "bprp" not in vocab.outputs and "jk" not in vocab.outputs and len(vocab.outputs) == 116
    assert vocab.groups[vocab.token_id("teff") - 1] == "label" and vocab.groups[0] == "spectrum"
    assert model_config_from_original(cfg) == PAPER
    # The inverse reproduces the original's document exactly (modulo the backend string).
    back = original_config(PAPER, vocab, backend="torch-2.1.0")
    assert back == cfg


def test_real_original_config_when_present():
    path = shared_dir() / "reference" / "original_config.json"
    if not path.is_file():
        pytest.skip(f"{path} not available (set STELLARFM_SHARED)")
    cfg = json.loads(path.read_text())
    vocab = vocabulary_from_original_config(cfg, embedding_rows=119)
    assert vocab.size == 118 and vocab.schema == "paper"
    for name, (token, m, s) in RELEASE_STATS.items():
        assert vocab.token_id(name) == token
        assert vocab.centre_by_id[token] == m and vocab.scale_by_id[token] == s
    model_config = model_config_from_original(cfg)
    assert model_config == PAPER
    params = jax.eval_shape(lambda k: init_params(StellarPerceptron(model_config, vocab.size), k), jax.random.key(0))
    assert count_params(params) == 8_845_529


# ---------------------------------------------------------------------------------------------- export
@pytest.mark.parametrize("name", ["paper", "small"])
def test_export_round_trip_and_strict_load(pairs, ref, torch, name):
    pair = pairs(name)
    exported = export_state_dict(pair.params, pair.config)
    # The replica loads it strictly, in the original's key order, with the original tensors exactly.
    original = pair.replica.state_dict()
    assert list(exported) == list(original)
    fresh = ref.StellarPerceptronTorchModel.from_model_config(pair.config, pair.vocab_size)
    fresh.load_state_dict(exported, strict=True)
    for key, tensor in original.items():
        assert torch.equal(exported[key], tensor), key
    # ours -> torch -> ours is the identity.
    again = convert_state_dict(exported, pair.config, pair.vocab_size)
    flat, flat_again = flatten_params(pair.params), flatten_params(again)
    assert flat.keys() == flat_again.keys()
    for path in flat:
        np.testing.assert_array_equal(flat_again[path], flat[path], err_msg=path)


def test_export_of_trained_flax_params_round_trips(pairs, ref, torch):
    """Starting from our own init (not from torch): ours -> torch -> ours exactly, and the original
    architecture computes the same predictions from the exported weights."""
    abstract = jax.eval_shape(lambda k: init_params(StellarPerceptron(SMALL, SMALL_V), k), jax.random.key(0))
    rng = np.random.default_rng(3)
    params = jax.tree_util.tree_map(lambda a: rng.normal(0.0, 0.2, a.shape).astype(np.float32), abstract)
    exported = export_state_dict(params, SMALL)
    back = convert_state_dict(exported, SMALL, SMALL_V)
    for path, value in flatten_params(params).items():
        np.testing.assert_array_equal(flatten_params(back)[path], value, err_msg=path)
    replica = ref.StellarPerceptronTorchModel.from_model_config(SMALL, SMALL_V).eval()
    replica.load_state_dict(exported, strict=True)
    rng = np.random.default_rng(4)
    values, tokens = random_stars(rng, N_STARS, SMALL_V, SMALL_V, n_real=[SMALL_V, 10, 3, 1, 0])
    requests = rng.integers(1, SMALL_V + 1, (N_STARS, 3))
    with torch.no_grad():
        tm, tl = replica(torch.from_numpy(values)[..., None], torch.from_numpy(tokens), torch.from_numpy(requests))
    with jax.default_matmul_precision("float32"):
        fm, fl = pairs("small").flax_forward(params, values, tokens.astype(np.int32), requests.astype(np.int32))
    np.testing.assert_allclose(np.asarray(fm), tm[..., 0].numpy(), rtol=0, atol=TOLERANCE)
    np.testing.assert_allclose(np.asarray(fl), tl[..., 0].numpy(), rtol=0, atol=TOLERANCE)


def test_export_refuses_mismatched_params():
    params = convert_state_dict(small_state(), SMALL, SMALL_V)
    del params["head_2"]["bias"]
    pytest.importorskip("torch")
    with pytest.raises(ConversionError, match=r"missing \[\('head_2/bias', \(50,\)\)\]"):
        export_state_dict(params, SMALL)


# ---------------------------------------------------------------------------------------------- files + CLI
def write_release(torch, replica, cfg: dict, folder: pathlib.Path, bare: bool = False) -> pathlib.Path:
    """A release folder in the original's container format (weights.pt + config.json)."""
    folder.mkdir(parents=True, exist_ok=True)
    state = replica.state_dict()
    if bare:
        torch.save(state, folder / "weights.pt")
    else:
        optimizer = torch.optim.AdamW(replica.parameters(), lr=1e-4)
        torch.save({"model_state_dict": state, "optimizer_state_dict": optimizer.state_dict(),
                    "optimizer": "AdamW", "epoch": 5}, folder / "weights.pt")
    (folder / "config.json").write_text(json.dumps(cfg, indent=4))
    return folder


@pytest.mark.parametrize("bare", [False, True])
def test_convert_release_files(pairs, torch, tmp_path, bare):
    pair = pairs("small")
    cfg = release_config([f"tok{i}" for i in range(SMALL_V)], model_config=SMALL)
    release = write_release(torch, pair.replica, cfg, tmp_path / "model_torch", bare=bare)
    out = convert_release(release, tmp_path / "converted")
    params, model_config, vocab, metadata = load_model(out)
    assert model_config == SMALL and vocab.size == SMALL_V and vocab.schema == "original"
    for path, value in flatten_params(pair.params).items():
        np.testing.assert_array_equal(flatten_params(params)[path], value, err_msg=path)
    import hashlib

    assert metadata["source_sha256"] == hashlib.sha256((release / "weights.pt").read_bytes()).hexdigest()
    assert metadata["original_backend"] == "torch-2.1.0"
    assert metadata["original_epoch"] == (None if bare else 5)
    assert metadata["conversion_seconds"] >= 0


def test_cli_convert_and_export(pairs, torch, tmp_path, capsys):
    pair = pairs("small")
    cfg = release_config([f"tok{i}" for i in range(SMALL_V)], model_config=SMALL)
    release = write_release(torch, pair.replica, cfg, tmp_path / "model_torch")
    assert convert.main(["--torch-dir", str(release), "--out", str(tmp_path / "m")]) == 0
    assert "converted" in capsys.readouterr().out
    # Export back to the original's format: weights.pt loads strictly into the replica, config.json is the same.
    assert convert.main(["--export", str(tmp_path / "m"), "--out", str(tmp_path / "back")]) == 0
    container = torch.load(tmp_path / "back" / "weights.pt", weights_only=True)
    assert set(container) == {"model_state_dict", "optimizer_state_dict", "optimizer", "epoch"}
    pair.replica.load_state_dict(container["model_state_dict"], strict=True)
    back_cfg = json.loads((tmp_path / "back" / "config.json").read_text())
    assert back_cfg["tokenizer_config"] == cfg["tokenizer_config"]
    assert back_cfg["norm_config"] == cfg["norm_config"]
    assert "torch" in back_cfg["nn_config"]["backend_framewoark"]
    # Errors: a folder without weights.pt, and refusing to overwrite an export.
    assert convert.main(["--torch-dir", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")]) == 2
    assert "weights.pt" in capsys.readouterr().err
    assert convert.main(["--export", str(tmp_path / "m"), "--out", str(tmp_path / "back")]) == 2


def test_export_release_then_import_is_identity(pairs, torch, tmp_path):
    pair = pairs("small")
    cfg = release_config([f"tok{i}" for i in range(SMALL_V)], model_config=SMALL)
    first = convert_release(write_release(torch, pair.replica, cfg, tmp_path / "a"), tmp_path / "m1")
    export_release(first, tmp_path / "b")
    second = convert_release(tmp_path / "b", tmp_path / "m2")
    p1, c1, v1, _ = load_model(first)
    p2, c2, v2, _ = load_model(second)
    assert c1 == c2 and v1.equals(v2)
    for path, value in flatten_params(p1).items():
        np.testing.assert_array_equal(flatten_params(p2)[path], value, err_msg=path)


# ---------------------------------------------------------------------------------------------- public API
def test_converted_release_through_public_api(pairs, torch, tmp_path):
    """convert weights.pt (original container) -> StellarModel.load -> perceive -> request equals the
    replica's predictions de-standardised with the release's statistics."""
    inference = pytest.importorskip("stellarfm_jax.inference")
    pair = pairs("paper")
    cfg = release_config()
    release = write_release(torch, pair.replica, cfg, tmp_path / "model_torch")
    out = convert_release(release, tmp_path / "converted")

    names = ["bp0", "bp1", "bp2", "rp0", "rp1", "jh", "jk", "bprp", "teff", "logebv"]
    rng = np.random.default_rng(21)
    mean = np.asarray(cfg["norm_config"]["_input_mean"])
    std = np.asarray(cfg["norm_config"]["_input_std"])
    ids = np.array([paper_names().index(n) + 1 for n in names])
    physical = mean[ids] + std[ids] * rng.normal(0, 1, (4, len(names)))
    physical[1, [2, 5]] = np.nan  # missing measurements become padding
    physical[3, :] = np.nan  # a star with nothing measured: the prior

    model = inference.StellarModel.load(out)
    with jax.default_matmul_precision("float32"):
        result = model.perceive(physical, names).request(["teff", "logg", "m_h", "bp0"])

    # The expectation, computed independently: standardise with config.json, NaN -> token 0, run the replica.
    z = np.where(np.isnan(physical), 0.0, (physical - mean[ids]) / std[ids]).astype(np.float32)
    tokens = np.where(np.isnan(physical), 0, ids[None, :]).astype(np.int64)
    request_ids = np.array([paper_names().index(n) + 1 for n in ["teff", "logg", "m_h", "bp0"]])
    tm, tl = pair.run_torch(z, tokens, np.tile(request_ids, (4, 1)))
    for j, name in enumerate(["teff", "logg", "m_h", "bp0"]):
        token = request_ids[j]
        expected = tm[:, j] * std[token] + mean[token]
        expected_error = np.sqrt(np.exp(tl[:, j].astype(np.float64))) * std[token]
        got, got_error = np.asarray(result[name]), np.asarray(result[f"{name}_error"])
        print(f"\nparity[public API, {name}] max|d mean|/scale = {np.max(np.abs(got - expected)) / std[token]:.2e}, "
              f"max|d logvar| = {np.max(np.abs(2 * np.log(got_error / std[token]) - tl[:, j])):.2e}")
        assert got.shape == (4,) and got.dtype == np.float64
        # 1e-5 in standardised units, i.e. scaled by the token's std in physical units.
        np.testing.assert_allclose(got, expected, rtol=0, atol=TOLERANCE * std[token], err_msg=name)
        np.testing.assert_allclose(2 * np.log(got_error / std[token]), tl[:, j], rtol=0, atol=TOLERANCE,
                                   err_msg=f"{name}_error")
