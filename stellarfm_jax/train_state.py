"""The training state: a small pytree, donated to the jitted epoch function."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class TrainState(NamedTuple):
    step: jax.Array  # int32 scalar, optimiser steps taken
    params: Any  # float32 Flax params
    opt_state: Any

    @classmethod
    def create(cls, params, optimizer):
        return cls(jnp.zeros((), jnp.int32), params, optimizer.init(params))
