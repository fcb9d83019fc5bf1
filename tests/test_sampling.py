"""Token sampling properties (DESIGN §4; original_spec §5.2) on random stars with random missingness."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from stellarfm_jax.sampling import StarData, sample_batch, sample_star

V, T, P = 100, 64, 60


def _random_data(seed, n=256, vocab=V, min_frac=0.0):
    rng = np.random.default_rng(seed)
    frac = rng.uniform(min_frac, 1.0, (n, 1))
    available = rng.random((n, vocab)) < frac
    values = np.where(available, rng.normal(size=(n, vocab)), 0.0).astype(np.float32)
    errors = np.where(available, rng.uniform(0, 0.1, (n, vocab)), 0.0).astype(np.float32)
    weights = (rng.random(vocab) < 0.9).astype(np.float32)  # some tokens never requested
    return StarData(jnp.asarray(values), jnp.asarray(errors), jnp.asarray(available)), jnp.asarray(weights)


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("num_outputs,exclude", [(1, False), (4, False), (3, True)])
def test_sampling_properties(seed, num_outputs, exclude):
    data, weights = _random_data(seed)
    kw = dict(context_length=T, max_padding=P, num_outputs=num_outputs, exclude_targets=exclude)
    batch = jax.jit(lambda k: sample_batch(k, data, weights, **kw))(jax.random.key(seed))
    available = np.asarray(data.available)
    tokens, values = np.asarray(batch.tokens), np.asarray(batch.values)
    for i in range(tokens.shape[0]):
        real = tokens[i] > 0
        n_avail = available[i].sum()
        # Real tokens are contiguous at the front, distinct and available, with their own values.
        assert not np.any(real[1:] & ~real[:-1])
        ids = tokens[i][real]
        assert len(set(ids)) == len(ids)
        assert available[i, ids - 1].all()
        np.testing.assert_array_equal(values[i][real], np.asarray(data.values)[i, ids - 1])
        assert np.all(values[i][~real] == 0)
        # The real-token count is min(n_available, T - p) with p in [0, P).
        eligible_ctx = n_avail - (np.asarray(batch.weights[i]).sum() if exclude else 0)
        assert min(eligible_ctx, T - P + 1) <= real.sum() <= min(eligible_ctx, T)
        # Requests: distinct, available and allowed when valid; invalid only when too few are eligible.
        eligible = available[i] & (np.asarray(weights) > 0)
        valid = np.asarray(batch.weights[i]) > 0
        req = np.asarray(batch.requests[i])
        assert valid.sum() == min(num_outputs, eligible.sum())
        assert eligible[req[valid] - 1].all()
        assert len(set(req[valid])) == valid.sum()
        np.testing.assert_array_equal(np.asarray(batch.targets[i])[valid], np.asarray(data.values)[i, req[valid] - 1])
        if exclude:
            assert not set(req[valid]) & set(ids)


def test_real_token_count_distribution_for_complete_stars():
    """Stars with >= 64 available tokens show 5..64 real tokens, uniformly (p ~ U{0..59})."""
    data, weights = _random_data(0, n=4000, min_frac=1.0)
    batch = sample_batch(jax.random.key(0), data, weights, context_length=T, max_padding=P, num_outputs=1)
    counts = np.asarray((batch.tokens > 0).sum(1))
    assert counts.min() == 5 and counts.max() == 64
    hist = np.bincount(counts - 5, minlength=60)
    assert hist.min() > 0.5 * 4000 / 60 and hist.max() < 1.5 * 4000 / 60


def test_star_without_eligible_output_is_excluded():
    values = jnp.zeros(10)
    available = jnp.zeros(10, bool).at[3].set(True)
    weights = jnp.ones(10).at[3].set(0.0)  # the only available token is not an allowed output
    ex = sample_star(jax.random.key(0), values, values, available, weights, context_length=8, max_padding=2,
                     num_outputs=2)
    np.testing.assert_array_equal(ex.weights, 0.0)


def test_output_weights_shape_the_request_distribution():
    data, _ = _random_data(1, n=3000, min_frac=1.0, vocab=20)
    data = StarData(data.values, data.errors, jnp.ones_like(data.available))
    weights = jnp.ones(20).at[0].set(10.0)
    batch = sample_batch(jax.random.key(3), data, weights, context_length=16, max_padding=4, num_outputs=1)
    freq = np.mean(np.asarray(batch.requests[:, 0]) == 1)
    assert abs(freq - 10 / 29) < 0.03


def test_deterministic_for_a_key_jit_equals_eager_and_no_retrace():
    data, weights = _random_data(2, n=64)
    kw = dict(context_length=T, max_padding=P, num_outputs=2)
    eager = sample_batch(jax.random.key(7), data, weights, **kw)
    again = sample_batch(jax.random.key(7), data, weights, **kw)
    other = sample_batch(jax.random.key(8), data, weights, **kw)

    @jax.jit
    @chex.assert_max_traces(n=1)
    def jitted(key, data):
        return sample_batch(key, data, weights, **kw)

    for step in range(3):
        jitted(jax.random.key(step), data)
    jit_out = jitted(jax.random.key(7), data)
    for a, b, c in zip(eager, again, jit_out):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    assert not np.array_equal(eager.tokens, other.tokens)


def test_small_vocabulary_shorter_than_context():
    data, weights = _random_data(3, n=32, vocab=10)
    batch = sample_batch(jax.random.key(0), data, weights, context_length=16, max_padding=3, num_outputs=1)
    assert batch.tokens.shape == (32, 16)
    assert int((batch.tokens > 0).sum(1).max()) <= 10
