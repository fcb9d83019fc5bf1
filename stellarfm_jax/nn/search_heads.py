"""Search heads for contrastive similarity search (issue #7): a small trainable head on top of the frozen
encoder that turns a star's perception into one L2-normalised embedding.

Unlike the original (original_spec §6.5, §9.23), which flattened the padded ``[T, D]`` perception into one
``T * D`` vector (so the embedding depended on the order of the tokens and on the padded slots), the head
pools over the real tokens only, with operations that do not see the slot order:

* a masked mean over the real tokens, and
* a masked multi-head attention pooling: ``num_queries`` learned query vectors attend over the real tokens
  (padding keys get a -inf logit), one pooled ``D``-vector per query,

concatenated, projected to ``projection_dim`` and passed through the paper's three residual units
``h = LayerNorm(h + Dropout(Dense(GELU(h))))``, then L2-normalised.

Shapes: B stars, T context slots, D encoder width, P projection dims, K learned queries.
A star with no real token has nothing to pool: its embedding is NaN on purpose (never silently a number);
callers flag or refuse such stars (``stellarfm_jax.search``).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from .model import LAYERNORM_EPS, gelu


def masked_mean(x, key_mask):
    """x [B, T, D], key_mask [B, T] bool -> ([B, D] mean over the real slots (0 where none), count [B, 1])."""
    w = key_mask.astype(jnp.float32)[..., None]  # [B, T, 1]
    count = jnp.sum(w, axis=1)  # [B, 1]
    return jnp.sum(x * w, axis=1) / jnp.maximum(count, 1.0), count


class AttentionPooling(nn.Module):
    """``num_queries`` learned queries attend over the real slots of each star (multi-head, no positions).

    x [B, T, D], key_mask [B, T] bool -> [B, K * D]. A star with no real slot pools to zeros.
    """

    num_queries: int = 4
    num_heads: int = 4

    @nn.compact
    def __call__(self, x, key_mask):
        features = x.shape[-1]
        h, k = self.num_heads, self.num_queries
        if features % h:
            raise ValueError(f"attention pooling: num_heads={h} must divide the encoder width {features}")
        d = features // h
        init = nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
        queries = self.param("queries", nn.initializers.normal(1.0), (k, h, d))
        wk = self.param("key_kernel", init, (features, h, d))
        wv = self.param("value_kernel", init, (features, h, d))
        bk = self.param("key_bias", nn.initializers.zeros_init(), (h, d))
        bv = self.param("value_bias", nn.initializers.zeros_init(), (h, d))
        keys = jnp.einsum("btd,dhe->bthe", x, wk) + bk  # [B, T, h, d]
        values = jnp.einsum("btd,dhe->bthe", x, wv) + bv  # [B, T, h, d]
        logits = jnp.einsum("khe,bthe->bhkt", queries, keys) / math.sqrt(d)  # [B, h, K, T]
        real = key_mask[:, None, None, :]  # [B, 1, 1, T]
        any_real = jnp.any(key_mask, axis=1)[:, None, None, None]  # [B, 1, 1, 1]
        # Padding keys get -inf; a star with no real key gets finite logits (then zero weights), never NaN.
        logits = jnp.where(real, logits, -jnp.inf)
        logits = jnp.where(any_real, logits, 0.0)
        weights = jax.nn.softmax(logits, axis=-1) * real  # [B, h, K, T]
        pooled = jnp.einsum("bhkt,bthe->bkhe", weights, values)  # [B, K, h, d]
        return pooled.reshape(x.shape[0], k * features)  # [B, K * D]


class SearchHead(nn.Module):
    """Perception [B, T, D] + key_mask [B, T] -> L2-normalised embedding [B, P] (NaN for a star with no
    real token). Permutation-invariant over the real slots and blind to padding slots."""

    projection_dim: int = 64
    num_queries: int = 4
    num_heads: int = 4
    residual_units: int = 3
    dropout: float = 0.0

    @nn.compact
    def __call__(self, perception, key_mask, deterministic: bool = True):
        x = perception.astype(jnp.float32)
        mean, count = masked_mean(x, key_mask)  # [B, D], [B, 1]
        pooled = AttentionPooling(self.num_queries, self.num_heads, name="pooling")(x, key_mask)  # [B, K*D]
        h = nn.Dense(self.projection_dim, name="dense_base")(jnp.concatenate([mean, pooled], axis=-1))  # [B, P]
        for i in range(self.residual_units):
            f = nn.Dense(self.projection_dim, name=f"dense_{i + 1}")(gelu(h))
            f = nn.Dropout(self.dropout)(f, deterministic=deterministic)
            h = nn.LayerNorm(epsilon=LAYERNORM_EPS, name=f"layernorm_{i + 1}")(h + f)
        norm = jnp.sqrt(jnp.sum(jnp.square(h), axis=-1, keepdims=True))
        emb = h / jnp.maximum(norm, 1e-12)
        return jnp.where(count > 0, emb, jnp.nan)  # [B, P]
