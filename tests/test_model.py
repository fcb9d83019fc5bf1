"""The Flax model: parameter counts, invariances and exact multi-request decoding (DESIGN §2)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stellarfm_jax.config import ModelConfig, load_config
from stellarfm_jax.nn import StellarPerceptron, count_params, init_params


def expected_param_count(cfg: ModelConfig, vocab_size: int) -> int:
    """Independent count from the architecture description (original_spec §1.7)."""
    d = cfg.embedding_dim
    block = lambda f: (3 * d * d + 3 * d) + (d * d + d) + 2 * d + (d * f + f) + (f * d + d) + 4 * d  # noqa: E731
    total = 2 * (vocab_size + 1) * d
    total += sum(block(f) for _, f in cfg.encoder_block_shapes())
    total += sum(block(f) for _, f in cfg.decoder_block_shapes())
    widths = [d] + cfg.head_widths()
    total += sum(a * b + b for a, b in zip(widths[:-1], widths[1:]))
    return total + 2 * (widths[-1] + 1)


@pytest.mark.parametrize("name,vocab_size,count", [("paper", 118, 8_845_529), ("small", 93, 468_482), ("tiny", 93, 18_138)])
def test_parameter_counts_are_pinned(name, vocab_size, count):
    cfg = load_config(name).model
    model = StellarPerceptron(cfg, vocab_size)
    params = jax.eval_shape(lambda key: init_params(model, key), jax.random.key(0))
    assert count_params(params) == count == expected_param_count(cfg, vocab_size)
    assert all(x.dtype == jnp.float32 for x in jax.tree_util.tree_leaves(params))


@pytest.fixture(scope="module")
def tiny():
    cfg = load_config("tiny").model
    model = StellarPerceptron(cfg, 20)
    params = init_params(model, jax.random.key(1))
    # Non-zero padding rows and biases so that the invariances below are not trivially satisfied.
    params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.key(2), x.shape), params)
    return model, params


def _inputs(rng, batch=4, length=12, n_real=8, vocab=20):
    tokens = np.zeros((batch, length), np.int32)
    values = np.zeros((batch, length), np.float32)
    for b in range(batch):
        tokens[b, :n_real] = rng.choice(np.arange(1, vocab + 1), n_real, replace=False)
        values[b, :n_real] = rng.normal(size=n_real)
    return jnp.asarray(values), jnp.asarray(tokens)


def test_padding_content_and_token_order_do_not_matter(tiny):
    model, params = tiny
    rng = np.random.default_rng(0)
    values, tokens = _inputs(rng)
    requests = jnp.asarray(rng.integers(1, 21, (4, 3)), jnp.int32)
    mean, logvar = jax.jit(model.apply)({"params": params}, values, tokens, requests)
    junk = jnp.where(tokens == 0, 123.0, values)
    m2, l2 = jax.jit(model.apply)({"params": params}, junk, tokens, requests)
    np.testing.assert_array_equal(mean, m2)
    np.testing.assert_array_equal(logvar, l2)
    perm = rng.permutation(tokens.shape[1])
    m3, l3 = jax.jit(model.apply)({"params": params}, values[:, perm], tokens[:, perm], requests)
    # float32 sums in another order: agreement to rounding (the float64 original agrees to 1e-14).
    np.testing.assert_allclose(m3, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(l3, logvar, rtol=1e-5, atol=1e-6)
    # Length-agnostic: dropping trailing padding changes nothing.
    m4, _ = jax.jit(model.apply)({"params": params}, values[:, :8], tokens[:, :8], requests)
    np.testing.assert_allclose(m4, mean, atol=1e-6)


def test_r_requests_in_one_call_equal_r_single_calls(tiny):
    """Exact in float64 (no self-attention among requests); in float32 equal to rounding."""
    model, params = tiny
    rng = np.random.default_rng(1)
    values, tokens = _inputs(rng)
    requests = jnp.asarray(rng.integers(1, 21, (4, 5)), jnp.int32)
    with jax.enable_x64(True):
        cfg64 = dataclasses.replace(load_config("tiny").model, compute_dtype="float64")
        model64 = StellarPerceptron(cfg64, 20)
        p64 = jax.tree.map(lambda x: jnp.asarray(x, jnp.float64), params)
        v64 = jnp.asarray(values, jnp.float64)
        mean, logvar = jax.jit(model64.apply)({"params": p64}, v64, tokens, requests)
        assert mean.dtype == jnp.float64
        for r in range(5):
            m, lv = jax.jit(model64.apply)({"params": p64}, v64, tokens, requests[:, r:r + 1])
            np.testing.assert_allclose(m[:, 0], mean[:, r], rtol=0, atol=1e-12)
            np.testing.assert_allclose(lv[:, 0], logvar[:, r], rtol=0, atol=1e-12)
    mean32, _ = jax.jit(model.apply)({"params": params}, values, tokens, requests)
    for r in range(5):
        m, _ = jax.jit(model.apply)({"params": params}, values, tokens, requests[:, r:r + 1])
        np.testing.assert_allclose(m[:, 0], mean32[:, r], rtol=2e-6, atol=1e-6)


def test_all_padding_star_gives_finite_prior(tiny):
    model, params = tiny
    values = jnp.zeros((2, 6))
    tokens = jnp.zeros((2, 6), jnp.int32)
    mean, logvar = jax.jit(model.apply)({"params": params}, values, tokens, jnp.array([[3], [7]]))
    assert np.all(np.isfinite(mean)) and np.all(np.isfinite(logvar))


def test_attention_weights_are_sown_for_every_block(tiny):
    model, params = tiny
    values, tokens = _inputs(np.random.default_rng(2))
    _, state = model.apply({"params": params}, values, tokens, jnp.ones((4, 2), jnp.int32), mutable=["intermediates"])
    inter = state["intermediates"]
    for name, heads in [("encoder_blocks_0", 4), ("encoder_blocks_1", 2), ("decoder_blocks_0", 4),
                        ("decoder_blocks_1", 2), ("decoder_blocks_2", 1)]:
        (w,) = inter[name]["attention"]["attention_weights"]
        assert w.shape[1] == heads and w.shape[-1] == 13  # 12 slots + the bias_kv slot
        np.testing.assert_allclose(w.sum(-1), 1.0, atol=1e-6)
        np.testing.assert_array_equal(np.asarray(w)[..., :-1][np.broadcast_to(np.asarray(tokens == 0)[:, None, None, :], w[..., :-1].shape)], 0.0)


def test_bfloat16_compute_keeps_float32_params_and_agrees(tiny):
    model, params = tiny
    cfg16 = dataclasses.replace(load_config("tiny").model, compute_dtype="bfloat16")
    model16 = StellarPerceptron(cfg16, 20)
    values, tokens = _inputs(np.random.default_rng(3))
    req = jnp.ones((4, 2), jnp.int32) * 5
    m32, l32 = jax.jit(model.apply)({"params": params}, values, tokens, req)
    m16, l16 = jax.jit(model16.apply)({"params": params}, values, tokens, req)
    assert m16.dtype == jnp.float32
    # bf16 has an 8-bit mantissa (relative precision 2^-8 ~ 0.4%); errors accumulate over ~10 layers.
    np.testing.assert_allclose(m16, m32, atol=0.05 * (1 + np.abs(m32).max()))
    np.testing.assert_allclose(l16, l32, atol=0.05 * (1 + np.abs(l32).max()))
