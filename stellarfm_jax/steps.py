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


def make_train_step(model, optimizer: optax.GradientTransformation) -> Callable:
    """(state, batch, dropout_key) -> (state, metrics): one AdamW step on the batch's NLL."""

    def loss_fn(params, batch: Batch, dropout_key):
        mean, logvar = model.apply(
            {"params": params}, batch.values, batch.tokens, batch.requests,
            deterministic=False, rngs={"dropout": dropout_key},
        )
        loss = gaussian_nll(mean, logvar, batch.targets, batch.target_errors, batch.weights)
        return loss, mean

    def train_step(state: TrainState, batch: Batch, dropout_key):
        (loss, mean), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, dropout_key)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        metrics = {
            "loss": loss,
            "mse": weighted_mse(mean, batch.targets, batch.weights),
            "count": jnp.sum(batch.weights),
        }
        return TrainState(state.step + 1, params, opt_state), metrics

    return train_step


def epoch_key(seed: int, epoch):
    return jax.random.fold_in(jax.random.key(seed), epoch)


def make_train_epoch(model, optimizer, *, batch_size: int, steps_per_epoch: int, output_weights, seed: int,
                     sample_kwargs: dict, batch_sharding=None) -> Callable:
    """Jitted ``(state, data: StarData, epoch) -> (state, metrics)`` with the state donated.

    Each epoch: a random permutation of the stars (remainder dropped, as the original), then for each
    step the batch's stars are sampled (sampling.py) and trained on. ``batch_sharding`` (a
    NamedSharding over the batch axis) makes the step data-parallel; XLA inserts the collectives.
    """
    train_step = make_train_step(model, optimizer)

    def train_epoch(state: TrainState, data: StarData, epoch):
        key = epoch_key(seed, epoch)
        num_stars = data.values.shape[0]
        order = jax.random.permutation(jax.random.fold_in(key, 0), num_stars)
        order = order[: steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)

        def body(state, xs):
            step_in_epoch, rows = xs
            sample_key, dropout_key = jax.random.split(jax.random.fold_in(key, step_in_epoch + 1))
            stars = jax.tree.map(lambda a: a[rows], data)
            batch = sample_batch(sample_key, stars, output_weights, **sample_kwargs)
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
