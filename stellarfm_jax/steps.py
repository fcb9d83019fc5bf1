"""The one training seam (DESIGN §4, §8.2): a loss function and an optimiser make a jitted step and epoch.

* A **loss function** ``loss_fn(params, batch, key) -> (total, aux)`` returns *sums* over the batch's weighted
  requests (``total`` the summed loss, ``aux`` a dict of summed metrics holding ``"count"``, the normaliser),
  so the parts of a batch add up exactly. :func:`nll_loss` makes the model's Gaussian NLL from any forward
  function; the adapters and the search heads bring their own.
* A **gradient function** ``grad_fn(params, batch, key) -> ((total, aux), grads)`` is
  ``jax.value_and_grad(loss_fn, has_aux=True)``, optionally wrapped: :func:`accumulate_micro_batches` splits
  the batch into micro-batches in a ``lax.scan`` (a CPU keeps a small micro-batch's activations in cache),
  :func:`over_length_buckets` runs the model per padding stratum on the context slots that can hold real
  tokens. Every wrapper returns the same sums as the whole-batch call.
* :func:`make_train_step` divides by the count, applies the optimiser (frozen parameters are the optimiser's
  business: ``optim.freeze``) and returns ``(state, metrics)``.
* :func:`make_train_epoch` runs every step of an epoch in one jitted ``lax.scan`` with the state donated; the
  whole training set lives on the device, a ``sample_fn`` draws each batch on the device, so the host does no
  per-step work. Keys derive from (seed, epoch, step), which makes a resumed run replay exactly the batches of
  an uninterrupted one.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from .losses import gaussian_nll_sum
from .sampling import Batch, StarData, SamplingConfig, sample_batch
from .train_state import TrainState


# ------------------------------------------------------------------------------------------------ losses
def nll_loss(forward_fn: Callable) -> Callable:
    """The model's training loss from ``forward_fn(params, values, tokens, requests, dropout_key) -> (mean,
    logvar)`` [B, R]: ``loss_fn(params, batch: Batch, key) -> (NLL sum, {"mse_sum", "count"})``, sums over the
    weighted requests (key None = deterministic, for evaluation)."""

    def loss_fn(params, batch: Batch, key):
        mean, logvar = forward_fn(params, batch.values, batch.tokens, batch.requests, key)
        total = gaussian_nll_sum(mean, logvar, batch.targets, batch.target_errors, batch.weights)
        sq_sum = jnp.sum(jnp.square(batch.targets - mean) * batch.weights)  # divided by the count: the MSE
        return total, {"mse_sum": sq_sum, "count": jnp.sum(batch.weights)}

    return loss_fn


# ------------------------------------------------------------------------------------------------ gradient wrappers
def length_buckets(batch_size: int, context_length: int, max_padding: int, buckets: int, shards: int = 1):
    """Static ``(start, stop, slots)`` per bucket of each shard's rows, for stratified padding.

    Rows are assigned padding strata by :func:`padding_strata`; a bucket's rows all have stratum
    >= s_min, hence padding p >= floor(P * s_min / B) and at most ``slots = T - that`` real tokens
    (real tokens are always at the front of the context), so the model runs on the first ``slots``
    context slots only: the dropped slots are padding, which no real token can attend to.
    """
    per_shard = batch_size // shards
    edges = [(b * per_shard) // buckets for b in range(buckets + 1)]
    out = []
    for start, stop in zip(edges[:-1], edges[1:]):
        if stop > start:
            min_padding = (max_padding * start * shards) // batch_size
            out.append((start, stop, max(1, context_length - min_padding)))
    return tuple(out)


def padding_strata(batch_size: int, shards: int = 1):
    """int32 [B]: a permutation of 0..B-1 in which every shard's k-th row has stratum k * shards + shard,
    so that each shard holds all strata evenly (the buckets cost the same on every device)."""
    row = jnp.arange(batch_size, dtype=jnp.int32)
    per_shard = batch_size // shards
    return (row % per_shard) * shards + row // per_shard


def _shard_rows(x, shards: int, start: int, stop: int):
    """Rows start:stop of every shard of x [B, ...] (shard-major), concatenated."""
    x = x.reshape((shards, -1) + x.shape[1:])[:, start:stop]
    return x.reshape((-1,) + x.shape[2:])


def _micro_split(x, shards: int, n_micro: int):
    """[rows, ...] (shard-major) -> [n_micro, rows / n_micro, ...], every micro-batch spread over all shards."""
    x = x.reshape((shards, n_micro, -1) + x.shape[1:]).swapaxes(0, 1)
    return x.reshape((n_micro, -1) + x.shape[3:])


def num_micro_batches(rows: int, shards: int, micro_batch_size: int) -> int:
    """The most micro-batches of at least ``micro_batch_size`` rows that split every shard's rows evenly."""
    per_shard = rows // shards
    if micro_batch_size <= 0:
        return 1
    n = max(1, min(per_shard, rows // micro_batch_size))
    while per_shard % n:
        n -= 1
    return n


def _add(a, b):
    return jax.tree.map(jnp.add, a, b)


def accumulate_micro_batches(grad_fn: Callable, micro_batch_size: int, shards: int = 1) -> Callable:
    """Wrap ``grad_fn`` to sum its outputs over micro-batches of about ``micro_batch_size`` rows in a
    ``lax.scan`` (each micro-batch spread over all shards; micro-batch i gets the key ``fold_in(key, i)``).
    The row count is static, so the split is decided at trace time; one micro-batch calls ``grad_fn`` as is."""

    def wrapped(params, batch, key):
        rows = jax.tree_util.tree_leaves(batch)[0].shape[0]
        n_micro = num_micro_batches(rows, shards, micro_batch_size)
        if n_micro == 1:
            return grad_fn(params, batch, key)
        micro = jax.tree.map(lambda x: _micro_split(x, shards, n_micro), batch)
        first = jax.tree.map(lambda x: x[0], micro)
        zero = jax.tree.map(jnp.zeros_like, jax.eval_shape(grad_fn, params, first, key))

        def body(carry, xs):
            i, mb = xs
            return _add(carry, grad_fn(params, mb, jax.random.fold_in(key, i))), None

        total, _ = jax.lax.scan(body, zero, (jnp.arange(n_micro), micro))
        return total

    return wrapped


def over_length_buckets(grad_fn: Callable, buckets: tuple, shards: int = 1) -> Callable:
    """Wrap ``grad_fn`` (over a :class:`Batch`) to run once per length bucket (:func:`length_buckets`) on that
    bucket's rows and context slots only, summing the outputs (bucket b gets the key ``fold_in(key, b)``)."""

    def wrapped(params, batch: Batch, key):
        total = None
        for b, (start, stop, slots) in enumerate(buckets):
            part = jax.tree.map(lambda x: _shard_rows(x, shards, start, stop), batch)
            part = part._replace(values=part.values[:, :slots], tokens=part.tokens[:, :slots])
            out = grad_fn(params, part, jax.random.fold_in(key, b))
            total = out if total is None else _add(total, out)
        return total

    return wrapped


def gradient_fn(loss_fn: Callable, *, buckets: tuple = (), shards: int = 1, micro_batch_size: int = 0) -> Callable:
    """``value_and_grad`` of a summing ``loss_fn``, with the optional micro-batch and length-bucket wrappers."""
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    if micro_batch_size > 0:
        grad_fn = accumulate_micro_batches(grad_fn, micro_batch_size, shards)
    if buckets:
        grad_fn = over_length_buckets(grad_fn, buckets, shards)
    return grad_fn


# ------------------------------------------------------------------------------------------------ step and epoch
def make_train_step(loss_fn: Callable, optimizer: optax.GradientTransformation, *, buckets: tuple = (),
                    shards: int = 1, micro_batch_size: int = 0) -> Callable:
    """``(state, batch, key) -> (state, metrics)``: one optimiser step on the batch mean of ``loss_fn``.

    metrics: ``loss`` (the mean), every aux sum ``x_sum`` as the mean ``x``, and ``count``."""
    grad_fn = gradient_fn(loss_fn, buckets=buckets, shards=shards, micro_batch_size=micro_batch_size)

    def train_step(state: TrainState, batch, key):
        (total, aux), grads = grad_fn(state.params, batch, key)
        count = aux["count"]
        scale = jnp.maximum(count, 1.0)  # a batch without requests has loss 0
        grads = jax.tree.map(lambda g: g / scale, grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": total / scale, "count": count}
        metrics.update({k.removesuffix("_sum"): v / scale for k, v in aux.items() if k != "count"})
        return TrainState(state.step + 1, params, opt_state), metrics

    return train_step


def epoch_key(seed: int, epoch):
    return jax.random.fold_in(jax.random.key(seed), epoch)


def make_train_epoch(train_step: Callable, sample_fn: Callable, *, batch_size: int, steps_per_epoch: int,
                     seed: int, batch_sharding=None, steps_per_call: int | None = None) -> Callable:
    """Jitted ``(state, data, epoch) -> (state, metrics)`` with the state donated.

    Each epoch: a random permutation of the rows of ``data`` (a pytree with a leading star axis; remainder
    dropped, as the original), then for each step ``sample_fn(key, rows_of_data) -> batch`` and
    ``train_step(state, batch, key)``. ``batch_sharding`` (a NamedSharding over the batch axis) makes the step
    data-parallel; XLA inserts the collectives. metrics: count-weighted means over the steps, and ``count``.

    ``steps_per_call`` (a divisor of ``steps_per_epoch``) splits the epoch over several calls: the function is
    then ``(state, data, epoch, first_step)`` and runs steps ``first_step .. first_step + steps_per_call - 1`` of
    the epoch, with the same batches and keys as the whole-epoch scan (the permutation is recomputed from the
    epoch key), so a loop can stop between two calls."""
    per_call = steps_per_epoch if steps_per_call is None else int(steps_per_call)
    if per_call < 1 or steps_per_epoch % per_call:
        raise ValueError(f"steps_per_call={per_call} must divide steps_per_epoch={steps_per_epoch}")

    def run_steps(state: TrainState, data, epoch, first_step):
        key = epoch_key(seed, epoch)
        num_stars = jax.tree_util.tree_leaves(data)[0].shape[0]
        order = jax.random.permutation(jax.random.fold_in(key, 0), num_stars)
        order = order[: steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)
        step_ids = first_step + jnp.arange(per_call)

        def body(state, step_in_epoch):
            sample_key, step_key = jax.random.split(jax.random.fold_in(key, step_in_epoch + 1))
            rows = order[step_in_epoch]
            batch = sample_fn(sample_key, jax.tree.map(lambda a: a[rows], data))
            if batch_sharding is not None:
                batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
            return train_step(state, batch, step_key)

        state, metrics = jax.lax.scan(body, state, step_ids)
        count = metrics.pop("count")
        total = jnp.maximum(count.sum(), 1.0)
        out = {k: jnp.sum(v * count) / total for k, v in metrics.items()}
        out["count"] = count.sum()
        return state, out

    if steps_per_call is None:
        return jax.jit(lambda state, data, epoch: run_steps(state, data, epoch, 0), donate_argnums=0)
    return jax.jit(run_steps, donate_argnums=0)


def token_sampler(output_weights, sampling: SamplingConfig, templates=None, padding_strata=None) -> Callable:
    """``sample_fn(key, stars: StarData) -> Batch`` for :func:`make_train_epoch`: the on-device token sampling
    of :mod:`stellarfm_jax.sampling` with fixed output weights, sampling config and task templates."""

    def sample_fn(key, stars: StarData) -> Batch:
        return sample_batch(key, stars, output_weights, sampling, templates=templates, padding_strata=padding_strata)

    return sample_fn


def make_eval_loss(loss_fn: Callable, sample_fn: Callable, *, chunk_size: int) -> Callable:
    """Jitted ``(params, data: StarData, key) -> {"loss", "mse"}``: the training objective (deterministic) on
    held-out stars with a fixed key, so the validation loss is comparable from epoch to epoch (unlike the
    original's re-randomised validation sampling). Stars go through ``sample_fn`` one at a time (each its own
    key) and ``lax.map`` batches ``chunk_size`` of them."""

    def eval_loss(params, data: StarData, key):
        def per_star(args):
            star_key, star = args
            batch = sample_fn(star_key, jax.tree.map(lambda a: a[None], star))
            total, aux = loss_fn(params, batch, None)
            return total, aux["mse_sum"], aux["count"]

        keys = jax.random.split(key, data.values.shape[0])
        nll, sq, count = jax.lax.map(per_star, (keys, data), batch_size=chunk_size)
        total = jnp.maximum(count.sum(), 1.0)
        return {"loss": nll.sum() / total, "mse": sq.sum() / total}

    return jax.jit(eval_loss)
