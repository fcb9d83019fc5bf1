"""Per-star token sampling as pure functions (DESIGN §4; original_spec §5.2), vmapped over a batch.

For one star with V vocabulary columns:
  * context: its available tokens first, in random order (a random-key argsort), cropped to the context
    length T, then ``p ~ U{0..P-1}`` trailing slots replaced by padding, so the star shows
    ``min(n_available, T - p)`` real tokens;
  * outputs: R distinct tokens drawn with probability proportional to the per-token output weight among
    the star's available allowed outputs (Gumbel top-k), independently of the context as in the
    original unless ``exclude_targets`` asks for true masked modelling;
  * a request with no eligible token is marked invalid (weight 0), so it never enters the loss (the
    original silently trained such stars on label 0).
Everything has static shapes: masks, never data-dependent slicing.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


class StarData(NamedTuple):
    """Device-resident training data. values/errors: standardised, 0 where missing [N, V];
    available: bool [N, V]."""

    values: jax.Array
    errors: jax.Array
    available: jax.Array


class Batch(NamedTuple):
    """One sampled batch. Shapes: context [B, T], requests [B, R]."""

    values: jax.Array  # [B, T] float32 standardised, 0 in padding
    tokens: jax.Array  # [B, T] int32, 0 = padding
    requests: jax.Array  # [B, R] int32 token ids (a valid id even where weight = 0)
    targets: jax.Array  # [B, R] float32 standardised label
    target_errors: jax.Array  # [B, R] float32 standardised label error (0 if unknown)
    weights: jax.Array  # [B, R] float32, 1 for a valid request, 0 otherwise


def sample_star_tokens(key, available, output_weights, *, context_length: int, max_padding: int,
                       num_outputs: int, exclude_targets: bool = False, padding_stratum=None, num_strata: int = 1):
    """Choose the context slots and the requested tokens of one star.

    Args:
      key: PRNG key.
      available: bool [V], the star's non-missing tokens.
      output_weights: float [V], >= 0 sampling weight of each token as an output (0 = never requested).
      padding_stratum, num_strata: optional stratified padding (see :func:`stratified_padding`); by
        default the padding is drawn independently, ``p ~ U{0..max_padding-1}``.
    Returns:
      context_index [T] int32 (column index, meaningful where context_real), context_real [T] bool,
      output_index [R] int32, output_valid [R] bool.
    """
    num_tokens = available.shape[0]
    k_out, k_perm, k_pad = jax.random.split(key, 3)

    eligible = available & (output_weights > 0)
    gumbel = jax.random.gumbel(k_out, (num_tokens,))
    scores = jnp.where(eligible, jnp.log(jnp.where(eligible, output_weights, 1.0)) + gumbel, -jnp.inf)
    top_scores, output_index = jax.lax.top_k(scores, num_outputs)
    output_valid = jnp.isfinite(top_scores)

    in_context = available
    if exclude_targets:
        chosen = jnp.zeros(num_tokens, bool).at[output_index].set(output_valid)
        in_context = available & ~chosen
    # Available tokens first, in random order: sort uniform keys shifted by 2 for missing tokens.
    sort_key = jnp.where(in_context, 0.0, 2.0) + jax.random.uniform(k_perm, (num_tokens,))
    order = jnp.argsort(sort_key).astype(jnp.int32)
    if num_tokens < context_length:
        order = jnp.pad(order, (0, context_length - num_tokens))
    order = order[:context_length]
    if padding_stratum is None:
        padding = jax.random.randint(k_pad, (), 0, max_padding)
    else:
        padding = stratified_padding(k_pad, padding_stratum, num_strata, max_padding)
    n_real = jnp.minimum(in_context.sum(), context_length - padding)
    context_real = jnp.arange(context_length) < n_real
    return order, context_real, output_index.astype(jnp.int32), output_valid


def stratified_padding(key, stratum, num_strata: int, max_padding: int):
    """Padding ``p = floor(P * (stratum + u) / num_strata)``, ``u ~ U[0, 1)``.

    When the strata of a batch are a permutation of 0..num_strata-1 (and the batch rows are a random
    permutation of the stars), each star's padding is still exactly ``U{0..P-1}`` - the paper's
    marginal - but the batch's paddings are stratified instead of independent, so a star in stratum s
    is known in advance to have ``p >= floor(P * s / num_strata)``. The train step uses that static bound
    to drop context slots that can only hold padding (steps.length_buckets)."""
    u = (stratum + jax.random.uniform(key, ())) / num_strata
    return jnp.minimum(jnp.floor(max_padding * u).astype(jnp.int32), max_padding - 1)


def sample_star(key, values, errors, available, output_weights, *, context_length: int, max_padding: int,
                num_outputs: int, exclude_targets: bool = False, padding_stratum=None, num_strata: int = 1) -> Batch:
    """One star's training example (see module docstring); values/errors/available are [V]."""
    index, real, out_index, out_valid = sample_star_tokens(
        key, available, output_weights, context_length=context_length, max_padding=max_padding,
        num_outputs=num_outputs, exclude_targets=exclude_targets, padding_stratum=padding_stratum,
        num_strata=num_strata,
    )
    return Batch(
        values=jnp.where(real, values[index], 0.0),
        tokens=jnp.where(real, index + 1, 0),
        requests=out_index + 1,
        targets=jnp.where(out_valid, values[out_index], 0.0),
        target_errors=jnp.where(out_valid, errors[out_index], 0.0),
        weights=out_valid.astype(jnp.float32),
    )


def sample_batch(key, data: StarData, output_weights, padding_strata=None, **kwargs) -> Batch:
    """vmap of :func:`sample_star` over the rows of ``data`` (one key per star).

    ``padding_strata``: optional int [B], a permutation of 0..B-1 giving each row's padding stratum
    (:func:`stratified_padding`); None draws every star's padding independently (the original)."""
    keys = jax.random.split(key, data.values.shape[0])
    if padding_strata is None:
        return jax.vmap(lambda k, v, e, a: sample_star(k, v, e, a, output_weights, **kwargs))(
            keys, data.values, data.errors, data.available
        )
    num_strata = data.values.shape[0]
    return jax.vmap(lambda k, v, e, a, s: sample_star(k, v, e, a, output_weights, padding_stratum=s,
                                                      num_strata=num_strata, **kwargs))(
        keys, data.values, data.errors, data.available, padding_strata
    )


def output_weight_vector(vocab, extra_weights=()) -> jax.Array:
    """float32 [V]: 1 for allowed outputs (0 for withheld tokens), times the configured per-token weights."""
    import numpy as np

    weights = vocab.output_mask_by_id[1:].astype(np.float32)
    for name, w in extra_weights:
        i = vocab.token_id(name) - 1
        if not weights[i]:
            raise ValueError(f"train.output_weights names {name!r}, which is not an allowed output of this vocabulary")
        weights[i] = float(w)
    return jnp.asarray(weights)


def to_star_data(vocab, values, errors) -> StarData:
    """Standardise raw physical values/errors [N, V] (NaN = missing) into device-ready StarData."""
    import numpy as np

    ids = np.arange(1, vocab.size + 1, dtype=np.int32)
    z, tok, err = vocab.standardize(values, ids, errors)
    return StarData(jnp.asarray(z), jnp.asarray(err), jnp.asarray(tok != 0))
