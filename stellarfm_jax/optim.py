"""Optimiser: torch-default AdamW with a per-epoch SGDR staircase (DESIGN §4)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

# torch.optim.AdamW defaults (optax's adamw defaults to weight_decay=1e-4).
ADAMW_B1, ADAMW_B2, ADAMW_EPS = 0.9, 0.999, 1e-8


def sgdr_learning_rate(epoch, base_lr: float, min_lr: float, period_epochs: int):
    """torch CosineAnnealingWarmRestarts(T_0=period, T_mult=1, eta_min=min_lr) stepped once per epoch:
    lr(e) = min_lr + (base_lr - min_lr) * (1 + cos(pi * (e mod T_0) / T_0)) / 2. Valid for any epoch
    (restarts never run out, unlike optax.sgdr_schedule's finite list of cycles)."""
    # (1 + cos(pi m / T)) / 2 = sin^2(pi (T - m) / (2T)): no cancellation near the end of a cycle,
    # where float32 "1 + cos" would lose three digits of the (tiny) learning rate.
    remaining = period_epochs - jnp.mod(epoch, period_epochs)
    return min_lr + (base_lr - min_lr) * jnp.square(jnp.sin(jnp.pi * remaining / (2 * period_epochs)))


def sgdr_staircase(base_lr: float, min_lr: float, period_epochs: int, steps_per_epoch: int):
    """An optax schedule (step count -> lr) holding each epoch's SGDR value for all its steps."""

    def schedule(count):
        return sgdr_learning_rate(count // steps_per_epoch, base_lr, min_lr, period_epochs)

    return schedule


def make_optimizer(train_config, steps_per_epoch: int) -> optax.GradientTransformation:
    schedule = sgdr_staircase(
        train_config.learning_rate, train_config.min_learning_rate, train_config.sgdr_period_epochs, steps_per_epoch
    )
    return optax.adamw(schedule, b1=ADAMW_B1, b2=ADAMW_B2, eps=ADAMW_EPS, weight_decay=train_config.weight_decay)


def freeze(optimizer: optax.GradientTransformation, trainable: dict) -> optax.GradientTransformation:
    """``optimizer`` on the top-level parameter groups marked True in ``trainable`` (e.g. ``{"base": False,
    "adapter": True}``), zero updates (and no optimiser state) for the others: frozen parameters are the
    optimiser's business, so a loss function sees one ordinary parameter pytree."""

    def labels(params):
        unknown = set(params) ^ set(trainable)
        if unknown:
            raise ValueError(f"freeze: parameter groups {sorted(params)} and trainable {sorted(trainable)} differ")
        return {k: jax.tree.map(lambda _: "train" if trainable[k] else "frozen", v) for k, v in params.items()}

    return optax.multi_transform({"train": optimizer, "frozen": optax.set_to_zero()}, labels)
