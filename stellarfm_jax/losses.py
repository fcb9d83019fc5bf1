"""Training loss (original_spec §5.4), in float32 and standardised units."""

from __future__ import annotations

import jax.numpy as jnp


def gaussian_nll_sum(mean, logvar, target, target_error, weight):
    """Heteroscedastic Gaussian NLL without the constant, summed over the weighted requests.

    Per request: 0.5 * ((y - mu)^2 / V + ln V) with V = exp(logvar) + label_error^2. Requests with
    weight 0 (no eligible output token) do not count. All arguments are [B, R]; returns a scalar. Sums (not
    means) add up over the parts of a batch (micro-batches, length buckets), see steps.py."""
    var = jnp.exp(logvar.astype(jnp.float32)) + jnp.square(target_error.astype(jnp.float32))
    per_request = 0.5 * (jnp.square(target - mean) / var + jnp.log(var))
    return jnp.sum(per_request * weight)


def gaussian_nll(mean, logvar, target, target_error, weight):
    """:func:`gaussian_nll_sum` averaged over the weighted requests (0 when there are none)."""
    return gaussian_nll_sum(mean, logvar, target, target_error, weight) / jnp.maximum(jnp.sum(weight), 1.0)
