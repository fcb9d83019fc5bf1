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


def _micro_split(x, shards: int, n_micro: int):
    """[rows, ...] (shard-major) -> [n_micro, rows / n_micro, ...], every micro-batch spread over all shards."""
    x = x.reshape((shards, n_micro, -1) + x.shape[1:]).swapaxes(0, 1)
    return x.reshape((n_micro, -1) + x.shape[3:])


def _num_micro(rows: int, shards: int, micro_batch_size: int) -> int:
    """The most micro-batches of at least ``micro_batch_size`` rows that split every shard's rows evenly."""
    per_shard = rows // shards
    if micro_batch_size <= 0:
        return 1
    n = max(1, min(per_shard, rows // micro_batch_size))
    while per_shard % n:
        n -= 1
    return n


def make_train_step(model, optimizer: optax.GradientTransformation, buckets: tuple = (), shards: int = 1,
                    micro_batch_size: int = 0) -> Callable:
    """(state, batch, dropout_key) -> (state, metrics): one AdamW step on the batch's NLL.

    ``buckets`` (from :func:`length_buckets`, with stratified padding) runs the model once per bucket on
    that bucket's context slots only. ``micro_batch_size > 0`` accumulates the gradient over micro-batches
    of about that many stars in a ``lax.scan`` (the activations of a small micro-batch stay in a CPU's
    caches). Either way the loss is the same batch mean over all requests."""

    def forward(params, batch: Batch, dropout_key):
        """-> (NLL, MSE, weight count) of the batch, both means over its weighted requests."""
        mean, logvar = model.apply(
            {"params": params}, batch.values, batch.tokens, batch.requests,
            deterministic=False, rngs={"dropout": dropout_key},
        )
        return (gaussian_nll(mean, logvar, batch.targets, batch.target_errors, batch.weights),
                weighted_mse(mean, batch.targets, batch.weights), jnp.sum(batch.weights))

    def loss_fn(params, batch: Batch, dropout_key):
        nll, mse, count = forward(params, batch, dropout_key)
        return nll, (mse, count)

    def sums(params, batch: Batch, dropout_key):
        """Weighted sums (not means) of the NLL and squared error: they add up over parts of a batch."""
        nll, mse, count = forward(params, batch, dropout_key)
        scale = jnp.maximum(count, 1.0)  # a part without requests has mean 0
        return nll * scale, mse * scale

    def part_sums_and_grads(params, part: Batch, key, n_micro: int):
        if n_micro == 1:
            return jax.value_and_grad(sums, has_aux=True)(params, part, key)
        micro = jax.tree.map(lambda x: _micro_split(x, shards, n_micro), part)

        def body(carry, xs):
            i, mb = xs
            out = jax.value_and_grad(sums, has_aux=True)(params, Batch(*mb), jax.random.fold_in(key, i))
            return jax.tree.map(jnp.add, carry, out), None

        zero = ((jnp.zeros(()), jnp.zeros(())), jax.tree.map(jnp.zeros_like, params))
        total, _ = jax.lax.scan(body, zero, (jnp.arange(n_micro), tuple(micro)))
        return total

    def train_step(state: TrainState, batch: Batch, dropout_key):
        if not buckets and micro_batch_size <= 0:
            (loss, (mse, count)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, dropout_key)
        else:
            parts = [(batch, None)] if not buckets else buckets
            nll_sum = sq_sum = 0.0
            grads = None
            for b, bucket in enumerate(parts):
                if buckets:
                    start, stop, slots = bucket
                    part = Batch(*(_bucket(x, shards, start, stop, slots if i < 2 else None)
                                   for i, x in enumerate(batch)))
                else:
                    part = batch
                n_micro = _num_micro(part.values.shape[0], shards, micro_batch_size)
                (nll, sq), g = part_sums_and_grads(state.params, part, jax.random.fold_in(dropout_key, b), n_micro)
                nll_sum, sq_sum = nll_sum + nll, sq_sum + sq
                grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
            count = jnp.sum(batch.weights)  # known before the forward pass: the same normaliser for every part
            scale = jnp.maximum(count, 1.0)
            loss, mse = nll_sum / scale, sq_sum / scale
            grads = jax.tree.map(lambda g: g / scale, grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {"loss": loss, "mse": mse, "count": count}
        return TrainState(state.step + 1, params, opt_state), metrics

    return train_step


def epoch_key(seed: int, epoch):
    return jax.random.fold_in(jax.random.key(seed), epoch)


def make_train_epoch(model, optimizer, *, batch_size: int, steps_per_epoch: int, output_weights, seed: int,
                     sample_kwargs: dict, batch_sharding=None, num_buckets: int = 1,
                     micro_batch_size: int = 0) -> Callable:
    """Jitted ``(state, data: StarData, epoch) -> (state, metrics)`` with the state donated.

    Each epoch: a random permutation of the stars (remainder dropped, as the original), then for each
    step the batch's stars are sampled (sampling.py) and trained on. ``batch_sharding`` (a
    NamedSharding over the batch axis) makes the step data-parallel; XLA inserts the collectives.
    ``num_buckets > 1`` stratifies the padding over the batch (each star's padding keeps the paper's
    U{0..P-1} marginal) and skips the context slots that can only hold padding (:func:`length_buckets`);
    ``micro_batch_size > 0`` accumulates each step's gradient over micro-batches (:func:`make_train_step`).
    """
    shards = 1 if batch_sharding is None else batch_sharding.mesh.size
    buckets = ()
    strata = None
    if num_buckets > 1:
        buckets = length_buckets(batch_size, sample_kwargs["context_length"], sample_kwargs["max_padding"],
                                 num_buckets, shards)
        strata = padding_strata(batch_size, shards)
    train_step = make_train_step(model, optimizer, buckets, shards, micro_batch_size)

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
