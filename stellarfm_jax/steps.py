"""Jitted training and evaluation functions (DESIGN §4, §8.2).

The whole training set lives on the device; one call of the epoch function shuffles the stars,
samples every batch's tokens and runs every optimiser step of the epoch in a ``lax.scan``, so the
host does no per-step work. Keys derive from (seed, epoch, step), which makes a resumed run replay
exactly the batches of an uninterrupted one.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

from .losses import gaussian_nll, weighted_mse
from .sampling import Batch, StarData, sample_batch, sample_star
from .train_state import TrainState


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


def _bucket(x, shards: int, start: int, stop: int, slots: int | None):
    """Rows start:stop of every shard of x [B, ...] (and its first ``slots`` context slots)."""
    x = x.reshape((shards, -1) + x.shape[1:])[:, start:stop]
    if slots is not None:
        x = x[:, :, :slots]
    return x.reshape((-1,) + x.shape[2:])


def make_train_step(model, optimizer: optax.GradientTransformation, buckets: tuple = (), shards: int = 1) -> Callable:
    """(state, batch, dropout_key) -> (state, metrics): one AdamW step on the batch's NLL.

    ``buckets`` (from :func:`length_buckets`, with stratified padding) runs the model once per bucket on
    that bucket's context slots only; the loss is the same batch mean over all requests."""

    def forward(params, batch: Batch, dropout_key):
        """-> (NLL, MSE, weight count) of the batch, both means over its weighted requests."""
        mean, logvar = model.apply(
            {"params": params}, batch.values, batch.tokens, batch.requests,
            deterministic=False, rngs={"dropout": dropout_key},
        )
        return (gaussian_nll(mean, logvar, batch.targets, batch.target_errors, batch.weights),
                weighted_mse(mean, batch.targets, batch.weights), jnp.sum(batch.weights))

    def loss_fn(params, batch: Batch, dropout_key):
        if not buckets:
            nll, mse, count = forward(params, batch, dropout_key)
            return nll, (mse, count)
        nll_sum = sq_sum = count = 0.0
        for b, (start, stop, slots) in enumerate(buckets):
            part = Batch(*(_bucket(x, shards, start, stop, slots if i < 2 else None) for i, x in enumerate(batch)))
            nll, mse, c = forward(params, part, jax.random.fold_in(dropout_key, b))
            # Bucket means back to sums (a bucket without requests has mean 0), then one batch mean.
            nll_sum, sq_sum, count = nll_sum + nll * jnp.maximum(c, 1.0), sq_sum + mse * jnp.maximum(c, 1.0), count + c
        scale = jnp.maximum(count, 1.0)
        return nll_sum / scale, (sq_sum / scale, count)

    def train_step(state: TrainState, batch: Batch, dropout_key):
        (loss, (mse, count)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, dropout_key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "mse": mse, "count": count}
        return TrainState(state.step + 1, params, opt_state), metrics

    return train_step


def epoch_key(seed: int, epoch):
    return jax.random.fold_in(jax.random.key(seed), epoch)


def make_train_epoch(model, optimizer, *, batch_size: int, steps_per_epoch: int, output_weights, seed: int,
                     sample_kwargs: dict, batch_sharding=None, num_buckets: int = 1) -> Callable:
    """Jitted ``(state, data: StarData, epoch) -> (state, metrics)`` with the state donated.

    Each epoch: a random permutation of the stars (remainder dropped, as the original), then for each
    step the batch's stars are sampled (sampling.py) and trained on. ``batch_sharding`` (a
    NamedSharding over the batch axis) makes the step data-parallel; XLA inserts the collectives.
    ``num_buckets > 1`` stratifies the padding over the batch (each star's padding keeps the paper's
    U{0..P-1} marginal) and skips the context slots that can only hold padding (:func:`length_buckets`).
    """
    shards = 1 if batch_sharding is None else batch_sharding.mesh.size
    buckets = ()
    strata = None
    if num_buckets > 1:
        buckets = length_buckets(batch_size, sample_kwargs["context_length"], sample_kwargs["max_padding"],
                                 num_buckets, shards)
        strata = padding_strata(batch_size, shards)
    train_step = make_train_step(model, optimizer, buckets, shards)

    def train_epoch(state: TrainState, data: StarData, epoch):
        key = epoch_key(seed, epoch)
        num_stars = data.values.shape[0]
        order = jax.random.permutation(jax.random.fold_in(key, 0), num_stars)
        order = order[: steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)

        def body(state, xs):
            step_in_epoch, rows = xs
            sample_key, dropout_key = jax.random.split(jax.random.fold_in(key, step_in_epoch + 1))
            stars = jax.tree.map(lambda a: a[rows], data)
            batch = sample_batch(sample_key, stars, output_weights, padding_strata=strata, **sample_kwargs)
            if batch_sharding is not None:
                batch = jax.lax.with_sharding_constraint(batch, batch_sharding)
            return train_step(state, batch, dropout_key)

        state, metrics = jax.lax.scan(body, state, (jnp.arange(steps_per_epoch), order))
        count = jnp.maximum(metrics["count"].sum(), 1.0)
        return state, {
            "loss": jnp.sum(metrics["loss"] * metrics["count"]) / count,
            "mse": jnp.sum(metrics["mse"] * metrics["count"]) / count,
        }

    return jax.jit(train_epoch, donate_argnums=0)


def make_eval_loss(model, *, output_weights, sample_kwargs: dict, chunk_size: int) -> Callable:
    """Jitted ``(params, data, key) -> {"loss", "mse"}``: the training objective on held-out stars with
    a fixed key, so the validation loss is comparable from epoch to epoch (unlike the original's
    re-randomised validation sampling)."""

    def eval_loss(params, data: StarData, key):
        def per_star(args):
            star_key, values, errors, available = args
            ex = sample_star(star_key, values, errors, available, output_weights, **sample_kwargs)
            mean, logvar = model.apply({"params": params}, ex.values[None], ex.tokens[None], ex.requests[None])
            count = ex.weights.sum()
            nll = gaussian_nll(mean, logvar, ex.targets[None], ex.target_errors[None], ex.weights[None])
            return nll * count, weighted_mse(mean, ex.targets[None], ex.weights[None]) * count, count

        keys = jax.random.split(key, data.values.shape[0])
        nll, mse, count = jax.lax.map(per_star, (keys, data.values, data.errors, data.available), batch_size=chunk_size)
        total = jnp.maximum(count.sum(), 1.0)
        return {"loss": nll.sum() / total, "mse": mse.sum() / total}

    return jax.jit(eval_loss)


def make_predict(model, chunk_size: int) -> Callable:
    """Jitted ``(params, values [N,T], tokens [N,T], requests [N,R]) -> (mean, logvar) [N,R]``, in chunks."""

    def predict(params, values, tokens, requests):
        def per_star(args):
            v, t, r = args
            mean, logvar = model.apply({"params": params}, v[None], t[None], r[None])
            return mean[0], logvar[0]

        return jax.lax.map(per_star, (values, tokens, requests), batch_size=chunk_size)

    return jax.jit(predict)
