"""The model's functional core: jitted pure functions over parameter pytrees (DESIGN §5, §8).

Everything that runs the network goes through this module: training (:func:`apply`), inference
(:func:`encode`, :func:`decode`, :func:`predict`, :func:`predict_with_attention`), inversion, search and the
adapters (:func:`decode_requests`). ``spec`` (a hashable :class:`ModelSpec`) is static under jit.

* :func:`apply` ``(params, values [B,T], tokens [B,T], requests [B,R]) -> (mean, logvar) [B,R]``: the training
  forward pass (dropout on when a ``dropout_key`` is given).
* :func:`encode` ``(params, values [B,T], tokens [B,T]) -> perception [B,T,D]``
* :func:`decode` ``(params, perception [B,T,D], key_mask [B,T], requests [B,R]) -> (mean, logvar) [B,R]``
* :func:`predict` ``(params, values, tokens, requests [R] or [B,R]) -> (mean, logvar [B,R], embedding [B,D])``,
  encoder and decoder fused in one jit, so a chunk's perception never leaves the device call.
* :func:`map_chunks`: runs any of them over a catalogue of any size in fixed-size chunks (host loop).

All values are standardised (``Vocabulary.standardize``); outputs are float32 in standardised units.

Batch-position independence: :func:`map_chunks` pads every chunk to a fixed row count (``chunk_size``; a
catalogue smaller than one chunk to a power of two) with all-padding rows, so a star goes through the same
float32 program whatever its position within and across chunks (the original's precision depended on the
position, original_spec §9.8). Different chunk sizes compile different programs and may differ by float32
rounding (~1e-6).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from .config import ModelConfig
from .nn.model import StellarPerceptron
from .vocab import PAD_ID

DEFAULT_CHUNK_SIZE = 1024  # stars per device call on an accelerator
CPU_CHUNK_SIZE = 32  # on a CPU small chunks keep the attention tensors in cache: ~2x faster (docs/performance.md)


def default_chunk_size() -> int:
    """Stars per device call when none is given: CPU_CHUNK_SIZE on a CPU, DEFAULT_CHUNK_SIZE elsewhere.
    Resolved at call time, so importing this module does not initialise a JAX backend."""
    return CPU_CHUNK_SIZE if jax.default_backend() == "cpu" else DEFAULT_CHUNK_SIZE


@dataclass(frozen=True)
class ModelSpec:
    """Static description of a model (hashable, so jit can close over it)."""

    config: ModelConfig
    vocab_size: int


@functools.lru_cache(maxsize=None)
def module_for(spec: ModelSpec) -> StellarPerceptron:
    """The (stateless) Flax module of ``spec``; cached so every jit sees the same object."""
    return StellarPerceptron(spec.config, spec.vocab_size)


def apply(params, values, tokens, requests, *, spec: ModelSpec, dropout_key=None):
    """The training forward pass: values [B, T], tokens [B, T], requests [B, R] -> (mean, logvar) [B, R].

    Dropout is on when ``dropout_key`` is given (training), off otherwise. Not jitted: it is traced inside
    the caller's jitted step."""
    deterministic = dropout_key is None
    rngs = None if deterministic else {"dropout": dropout_key}
    return module_for(spec).apply({"params": params}, values, tokens, requests, deterministic=deterministic, rngs=rngs)


def encode_fn(params, values, tokens, *, spec: ModelSpec, dropout_key=None, mutable=False):
    """Unjitted encoder (for use inside other traced functions): -> perception [B, T, D]."""
    rngs = None if dropout_key is None else {"dropout": dropout_key}
    return module_for(spec).apply({"params": params}, values, tokens, deterministic=dropout_key is None, rngs=rngs,
                                  method=StellarPerceptron.encode, mutable=mutable)


def decode_fn(params, perception, key_mask, requests, *, spec: ModelSpec, dropout_key=None, mutable=False):
    """Unjitted decoder (for use inside other traced functions): -> (mean, logvar) [B, R]."""
    rngs = None if dropout_key is None else {"dropout": dropout_key}
    return module_for(spec).apply({"params": params}, perception, key_mask, requests, deterministic=dropout_key is None,
                                  rngs=rngs, method=StellarPerceptron.decode, mutable=mutable)


@functools.partial(jax.jit, static_argnames="spec")
def encode(params, values, tokens, *, spec: ModelSpec):
    """values [B, T] float (standardised), tokens [B, T] int (0 = padding) -> perception [B, T, D]."""
    return encode_fn(params, values, tokens, spec=spec)


@functools.partial(jax.jit, static_argnames="spec")
def decode(params, perception, key_mask, requests, *, spec: ModelSpec):
    """perception [B, T, D], key_mask [B, T] bool, requests [B, R] int -> (mean, logvar) [B, R] float32."""
    return decode_fn(params, perception, key_mask, requests, spec=spec)


def masked_mean_embedding(perception, key_mask):
    """Per-star embedding: the mean of the encoder output over real tokens.

    perception [B, T, D], key_mask [B, T] bool -> [B, D] float32; NaN for a star with no real token.
    """
    weights = key_mask.astype(jnp.float32)[..., None]  # [B, T, 1]
    total = jnp.sum(perception.astype(jnp.float32) * weights, axis=1)
    count = jnp.sum(weights, axis=1)
    return jnp.where(count > 0, total / jnp.maximum(count, 1.0), jnp.nan)


def broadcast_requests(requests, batch: int):
    """requests [R] (the same for every star) or [B, R] -> int [B, R]."""
    if requests.ndim == 1:
        requests = jnp.broadcast_to(requests, (batch, requests.shape[0]))
    chex.assert_rank(requests, 2)
    return requests


def decode_requests(decode_one: Callable, requests):
    """Decode R requests one at a time with ``lax.map``: ``decode_one(request [B, 1]) -> (mean, logvar, *extra)``
    each [B, 1] (extra: any pytree with a leading B axis) -> (mean [B, R], logvar [B, R], extra stacked on a
    leading R axis).

    Requests do not attend to each other, so one request at a time is the same computation as R separate calls,
    and in float32 it is bit for bit the same (a batched [B, R] decode lets XLA pick other reduction orders,
    ~1e-6 apart); the encoder, the larger cost, still runs once for all R."""

    def one(request):  # [B]
        mean, logvar, *extra = decode_one(request[:, None])
        return (mean[:, 0], logvar[:, 0], *extra)

    outs = jax.lax.map(one, requests.T)  # leading axis R
    return (outs[0].T, outs[1].T, *outs[2:])


def _attention(state, prefix: str, blocks: int) -> tuple:
    inter = state["intermediates"]
    return tuple(inter[f"{prefix}_{k}"]["attention"]["attention_weights"][0] for k in range(blocks))


def _forward(params, values, tokens, requests, spec: ModelSpec, with_attention: bool):
    """Encoder once, then the decoder once per request (:func:`decode_requests`)."""
    key_mask = tokens != PAD_ID
    requests = broadcast_requests(requests, tokens.shape[0])
    chex.assert_rank([values, tokens], 2)
    mutable = ["intermediates"] if with_attention else False
    perception = encode_fn(params, values, tokens, spec=spec, mutable=mutable)
    if with_attention:
        perception, state = perception
        encoder_weights = _attention(state, "encoder_blocks", spec.config.encoder_blocks)

    def decode_one(request):  # [B, 1] -> mean [B, 1], logvar [B, 1] (+ weights [B, h, 1, T+1] per block)
        out = decode_fn(params, perception, key_mask, request, spec=spec, mutable=mutable)
        if with_attention:
            (mean, logvar), state = out
            return mean, logvar, _attention(state, "decoder_blocks", spec.config.decoder_blocks)
        return out

    outs = decode_requests(decode_one, requests)
    mean, logvar = outs[0], outs[1]  # [B, R]
    embedding = masked_mean_embedding(perception, key_mask)
    if not with_attention:
        return mean, logvar, embedding
    # [R, B, h, 1, S+1] -> [B, h, R, S+1]
    decoder_weights = tuple(jnp.transpose(w[:, :, :, 0, :], (1, 2, 0, 3)) for w in outs[2])
    return mean, logvar, embedding, encoder_weights, decoder_weights


@functools.partial(jax.jit, static_argnames="spec")
def predict(params, values, tokens, requests, *, spec: ModelSpec):
    """Encoder + decoder in one call.

    values [B, T] float, tokens [B, T] int, requests [R] (shared) or [B, R] int
    -> (mean [B, R], logvar [B, R], embedding [B, D]), float32, standardised units.
    """
    return _forward(params, values, tokens, requests, spec, with_attention=False)


@functools.partial(jax.jit, static_argnames="spec")
def predict_with_attention(params, values, tokens, requests, *, spec: ModelSpec):
    """As :func:`predict`, plus attention probabilities of every block and head.

    Returns (mean, logvar, embedding, encoder_weights, decoder_weights) where encoder_weights is a tuple
    (one per encoder block) of [B, h_k, T, T+1] and decoder_weights a tuple of [B, h_k, R, T+1] float32
    arrays; the last key slot is the learned bias slot (sums over keys, bias slot included, are 1).
    """
    return _forward(params, values, tokens, requests, spec, with_attention=True)


def attention_without_bias(weights):
    """Drop the bias slot (last key) and renormalise over the real keys.

    weights [..., S+1] -> [..., S]; rows with no real key (an all-padding star) become 0, not NaN.
    """
    real = np.asarray(weights)[..., :-1]
    total = real.sum(axis=-1, keepdims=True)
    return np.divide(real, total, out=np.zeros_like(real), where=total > 0)


def bucket_rows(n: int, chunk_size: int) -> int:
    """Row count a chunk of n stars is padded to: the next power of two (>= 8), at most chunk_size."""
    return min(chunk_size, max(8, 1 << max(0, math.ceil(math.log2(max(n, 1))))))


def map_chunks(fn: Callable, arrays: Sequence[np.ndarray], chunk_size: int | None = None, progress: bool = False,
               desc: str = "stars") -> Any:
    """Apply ``fn(*chunk_arrays)`` to consecutive row chunks and concatenate the outputs (a pytree of arrays
    with a leading star axis) on the host.

    Each chunk is padded with zero rows (all-padding stars) to a fixed row count so that at most
    log2(chunk_size) programs are compiled and a star's result does not depend on its position: a catalogue
    of more than ``chunk_size`` stars runs every chunk, the last one too, at ``chunk_size`` rows (one program,
    so bit-for-bit the same answer at any position); a smaller one at the next power of two (>= 8) rows.
    """
    n = int(arrays[0].shape[0])
    chunk_size = default_chunk_size() if chunk_size is None else chunk_size
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    bar = progress_bar(n, desc) if progress else None
    outputs = []
    for start in range(0, max(n, 1), chunk_size):
        part = [np.asarray(a[start:start + chunk_size]) for a in arrays]
        m = part[0].shape[0]
        rows = bucket_rows(m, chunk_size) if n <= chunk_size else chunk_size
        if rows > m:
            part = [np.concatenate([p, np.zeros((rows - m,) + p.shape[1:], p.dtype)]) for p in part]
        out = jax.tree_util.tree_map(lambda x: np.asarray(x)[:m], fn(*part))
        outputs.append(out)
        if bar is not None:
            bar.update(m)
    if bar is not None:
        bar.close()
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=0), *outputs)


def progress_bar(total: int, desc: str, unit: str = "star"):
    """A tqdm progress bar (the one progress display of the package)."""
    from tqdm.auto import tqdm

    return tqdm(total=total, unit=unit, desc=desc, dynamic_ncols=True)
