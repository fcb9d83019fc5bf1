"""The model of Leung & Bovy (2023) in Flax Linen, numerically identical to the original
(original_spec §1; DESIGN §2).

Shapes: B stars, T context slots, R requests, D embedding width, h heads, d = D / h.
Masks: True means "may attend" (a real token); padding is token id 0.
"""

from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ..config import ModelConfig

Dtype = Any
LAYERNORM_EPS = 1e-5  # torch default; Flax's is 1e-6


def gelu(x):
    """Exact (erf) GELU, as torch's F.gelu; jax.nn.gelu defaults to the tanh approximation."""
    return jax.nn.gelu(x, approximate=False)


def _uniform(bound: float):
    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _torch_dense(features: int, fan_in: int, dtype: Dtype, name: str | None = None) -> nn.Dense:
    """Dense with the original's re-initialisation: kaiming_uniform weight (bound sqrt(6/fan_in)),
    bias U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    return nn.Dense(
        features,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=_uniform(math.sqrt(6.0 / fan_in)),
        bias_init=_uniform(1.0 / math.sqrt(fan_in)),
        name=name,
    )


class NonLinearEmbedding(nn.Module):
    """Input token (t, v) -> gelu(W[t] * v + B[t]); request token t -> W[t] (no bias, no activation)."""

    num_embeddings: int  # V + 1 (row 0 = padding)
    features: int

    def setup(self):
        bound = math.sqrt(6.0 / (self.num_embeddings + self.features))  # xavier_uniform

        def init(key, shape, dtype=jnp.float32):
            return jax.random.uniform(key, shape, dtype, -bound, bound).at[0].set(0.0)

        self.embeddings = self.param("embeddings", init, (self.num_embeddings, self.features))
        self.bias = self.param("bias", init, (self.num_embeddings, self.features))

    def embed_inputs(self, values, tokens):
        """values [B, T] float, tokens [B, T] int -> [B, T, D] float32."""
        return gelu(self.embeddings[tokens] * values[..., None].astype(self.embeddings.dtype) + self.bias[tokens])

    def embed_requests(self, tokens):
        """tokens [B, R] int -> [B, R, D] (raw rows of W)."""
        return self.embeddings[tokens]


class BiasKVAttention(nn.Module):
    """Multi-head attention with torch's ``add_bias_kv=True``: a learned key and value (in projected
    space) appended as an extra slot that is never masked, so an all-padding star still attends."""

    num_heads: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, query, kv, key_mask, deterministic: bool = True):
        """query [B, L, D], kv [B, S, D], key_mask [B, S] bool -> [B, L, D]."""
        features = query.shape[-1]
        h = self.num_heads
        d = features // h
        # torch stacks Q, K, V in one (3D, D) in_proj_weight initialised xavier_uniform over that shape.
        in_init = _uniform(math.sqrt(6.0 / (features + 3 * features)))
        zeros = nn.initializers.zeros_init()
        wq = self.param("query_kernel", in_init, (features, h, d))
        wk = self.param("key_kernel", in_init, (features, h, d))
        wv = self.param("value_kernel", in_init, (features, h, d))
        bq = self.param("query_bias", zeros, (h, d))
        bk = self.param("key_bias", zeros, (h, d))
        bv = self.param("value_bias", zeros, (h, d))
        bias_kv_std = math.sqrt(2.0 / (2 * features))  # xavier_normal on torch's (1, 1, D) tensor
        bias_k = self.param("bias_k", nn.initializers.normal(bias_kv_std), (h, d))
        bias_v = self.param("bias_v", nn.initializers.normal(bias_kv_std), (h, d))
        wo = self.param("out_kernel", _uniform(1.0 / math.sqrt(features)), (h, d, features))
        bo = self.param("out_bias", zeros, (features,))

        dt = self.dtype
        query, kv = query.astype(dt), kv.astype(dt)
        q = jnp.einsum("bld,dhk->blhk", query, wq.astype(dt)) + bq.astype(dt)
        k = jnp.einsum("bsd,dhk->bshk", kv, wk.astype(dt)) + bk.astype(dt)
        v = jnp.einsum("bsd,dhk->bshk", kv, wv.astype(dt)) + bv.astype(dt)
        batch = kv.shape[0]
        k = jnp.concatenate([k, jnp.broadcast_to(bias_k.astype(dt), (batch, 1, h, d))], axis=1)  # [B, S+1, h, d]
        v = jnp.concatenate([v, jnp.broadcast_to(bias_v.astype(dt), (batch, 1, h, d))], axis=1)
        mask = jnp.concatenate([key_mask, jnp.ones((batch, 1), bool)], axis=1)  # bias slot always attendable

        # Softmax in at least float32 whatever the compute dtype.
        logits = jnp.einsum("blhk,bshk->bhls", q * (1.0 / math.sqrt(d)), k)
        logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
        logits = jnp.where(mask[:, None, None, :], logits, -jnp.inf)
        weights = jax.nn.softmax(logits, axis=-1)  # [B, h, L, S+1], float32
        self.sow("intermediates", "attention_weights", weights)
        weights = nn.Dropout(self.dropout)(weights, deterministic=deterministic)
        out = jnp.einsum("bhls,bshk->blhk", weights.astype(dt), v)
        return jnp.einsum("blhk,hkd->bld", out, wo.astype(dt)) + bo.astype(dt)


class TransformerBlock(nn.Module):
    """Post-LN block: x = LN1(q + Drop(MHA(q, kv))); out = LN2(x + Drop(Dense2(gelu(Dense1(x)))))."""

    num_heads: int
    dense: int
    dropout: float = 0.0
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, query, kv, key_mask, deterministic: bool = True):
        features = query.shape[-1]
        a = BiasKVAttention(self.num_heads, self.dropout, self.dtype, name="attention")(query, kv, key_mask, deterministic)
        drop = nn.Dropout(self.dropout)
        ln = dict(epsilon=LAYERNORM_EPS, dtype=self.dtype, param_dtype=jnp.float32)
        x = nn.LayerNorm(**ln, name="layernorm_1")(query.astype(self.dtype) + drop(a, deterministic=deterministic))
        f = _torch_dense(self.dense, features, self.dtype, name="dense_1")(x)
        f = _torch_dense(features, self.dense, self.dtype, name="dense_2")(gelu(f))
        return nn.LayerNorm(**ln, name="layernorm_2")(x + drop(f, deterministic=deterministic))


class StellarPerceptron(nn.Module):
    """Encoder (self-attention over input tokens) + decoder (cross-attention from requests).

    Methods (use with ``model.apply(params, ..., method=...)``):
      ``encode(values [B,T], tokens [B,T]) -> perception [B,T,D]``
      ``decode(perception [B,T,D], key_mask [B,T], requests [B,R]) -> (mean [B,R], logvar [B,R])``
      ``__call__(values, tokens, requests) -> (mean, logvar)``
    Outputs are in standardised units and float32 whatever the compute dtype.
    """

    config: ModelConfig
    vocab_size: int  # V real tokens; tables have V + 1 rows

    def setup(self):
        cfg = self.config
        dt = jnp.dtype(cfg.compute_dtype)
        self.embedding = NonLinearEmbedding(self.vocab_size + 1, cfg.embedding_dim)
        self.encoder_blocks = [
            TransformerBlock(h, f, cfg.dropout, dt) for h, f in cfg.encoder_block_shapes()
        ]
        self.decoder_blocks = [
            TransformerBlock(h, f, cfg.dropout, dt) for h, f in cfg.decoder_block_shapes()
        ]
        widths = cfg.head_widths()
        fan_ins = [cfg.embedding_dim] + widths[:-1]
        self.head = [_torch_dense(w, fi, dt) for w, fi in zip(widths, fan_ins)]
        self.head_dropout = nn.Dropout(cfg.dropout)
        self.mean_out = _torch_dense(1, widths[-1], dt)
        self.logvar_out = _torch_dense(1, widths[-1], dt)

    def encode(self, values, tokens, deterministic: bool = True):
        """values [B, T] standardised, tokens [B, T] int (0 = padding) -> perception [B, T, D]."""
        key_mask = tokens != 0
        x = self.embedding.embed_inputs(values, tokens).astype(jnp.dtype(self.config.compute_dtype))
        for block in self.encoder_blocks:
            x = block(x, x, key_mask, deterministic)
        return x

    def decode(self, perception, key_mask, requests, deterministic: bool = True):
        """perception [B, T, D], key_mask [B, T] bool, requests [B, R] int -> (mean, logvar) [B, R] float32."""
        x = self.embedding.embed_requests(requests)
        for block in self.decoder_blocks:
            x = block(x, perception, key_mask, deterministic)
        for dense in self.head:
            x = self.head_dropout(gelu(dense(x)), deterministic=deterministic)
        out_dtype = jnp.promote_types(x.dtype, jnp.float32)
        mean = self.mean_out(x)[..., 0].astype(out_dtype)
        logvar = self.logvar_out(x)[..., 0].astype(out_dtype)
        return mean, logvar

    def __call__(self, values, tokens, requests, deterministic: bool = True):
        perception = self.encode(values, tokens, deterministic)
        return self.decode(perception, tokens != 0, requests, deterministic)


def _init(model: StellarPerceptron, key) -> dict:
    values = jnp.zeros((1, 2), jnp.float32)
    tokens = jnp.ones((1, 2), jnp.int32)
    return model.init({"params": key}, values, tokens, tokens[:, :1])["params"]


# Jitted: eager initialisation runs op by op (about 30 s for the paper config on a CPU). The program (dozens of
# threefry draws, run once) takes XLA's CPU backend ~3x longer to optimise than to run unoptimised, so skip that.
# The module is a static argument (flax modules hash by their fields): one trace per architecture per process.
_init_jitted = jax.jit(_init, static_argnums=0, compiler_options={"xla_backend_optimization_level": 0})


def init_params(model: StellarPerceptron, key) -> dict:
    """Float32 parameters for ``model`` (shapes do not depend on T or R)."""
    if isinstance(key, jax.core.Tracer):  # inside the caller's trace (eval_shape, jit): compiled with it
        return _init(model, key)
    return _init_jitted(model, key)


def count_params(params) -> int:
    return int(sum(x.size for x in jax.tree_util.tree_leaves(params)))
