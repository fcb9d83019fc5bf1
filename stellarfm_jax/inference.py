"""Inference: a functional core of jitted pure functions and a thin object shell (DESIGN §5).

Functional core (everything takes and returns arrays / pytrees; ``spec`` is static):

* :func:`encode` ``(params, values [B,T], tokens [B,T]) -> perception [B,T,D]``
* :func:`decode` ``(params, perception [B,T,D], key_mask [B,T], requests [B,R]) -> (mean, logvar) [B,R]``
* :func:`predict` ``(params, values, tokens, requests [R] or [B,R]) -> (mean, logvar [B,R], embedding [B,D])``,
  encoder and decoder fused in one jit, so a chunk's perception never leaves the device call.
* :func:`predict_with_attention`: the same plus the attention probabilities of every block and head.
* :func:`map_chunks`: runs any of them over a catalogue of any size in fixed-size chunks.

All values are standardised (``Vocabulary.standardize``); outputs are float32 in standardised units.

Object shell: :class:`StellarModel` (``load`` / ``save`` / ``perceive`` / ``invert``), :class:`Perception`
(validated, standardised inputs; stateless and cheap: the encoder runs again, chunk by chunk, at every
``request``, so memory stays bounded for catalogues of millions) and :class:`Prediction` (structured result
in physical units with per-star flags).

Decisions worth knowing:

* Batch-position independence: every chunk is padded to a fixed row count (a power of two up to
  ``chunk_size``) with all-padding rows, and every star goes through the same float32 program whatever its
  position (the original's precision depended on the position, original_spec §9.8).
* Requests: all R requested tokens decode in one call (requests do not attend to each other, so this is
  exactly R single calls, and faster).
* Padding: NaN values become padding; each star's real tokens are moved to the front (stable order), so only
  *real* tokens count against the context length.
* Too many real tokens for the context length: ``overflow="error"`` (default) raises naming the star;
  ``overflow="keep_informative"`` keeps, per star, the ``context_length`` tokens with the smallest
  standardised measurement error (error / token scale; a token with no given error counts as 0 error), ties
  kept in column order.
* All-missing stars are answered from the model's prior (the bias_kv slot is always attendable) and flagged
  ``prior_only``; their embedding is NaN (a mean over no tokens).
* Out-of-range inputs: a value is flagged when it lies outside the training range. When the model's
  metadata holds ``token_range = {"min": [V], "max": [V]}`` (per-token train min / max, physical units) that
  range is used; otherwise the range is ``|z| <= OUT_OF_RANGE_Z`` robust standard deviations from the
  training median (z = (x - median) / (1.4826 MAD), the vocabulary's standardisation).
"""

from __future__ import annotations

import functools
import math
import pathlib
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np

from .config import ModelConfig
from .nn.model import StellarPerceptron
from .saved_model import is_model_dir, load_model, save_model
from .vocab import PAD_ID, Vocabulary

OUT_OF_RANGE_Z = 10.0  # robust standard deviations from the training median
DEFAULT_CHUNK_SIZE = 1024  # stars per device call on an accelerator
CPU_CHUNK_SIZE = 32  # on a CPU small chunks keep the attention tensors in cache: ~2x faster (docs/performance.md)


def default_chunk_size() -> int:
    """Stars per device call when none is given: CPU_CHUNK_SIZE on a CPU, DEFAULT_CHUNK_SIZE elsewhere.
    Resolved at call time, so importing this module does not initialise a JAX backend."""
    return CPU_CHUNK_SIZE if jax.default_backend() == "cpu" else DEFAULT_CHUNK_SIZE
OVERFLOW_MODES = ("error", "keep_informative")


# ====================================================================================== functional core
@dataclass(frozen=True)
class ModelSpec:
    """Static description of a model (hashable, so jit can close over it)."""

    config: ModelConfig
    vocab_size: int


@functools.lru_cache(maxsize=None)
def _module(spec: ModelSpec) -> StellarPerceptron:
    return StellarPerceptron(spec.config, spec.vocab_size)


def masked_mean_embedding(perception, key_mask):
    """Per-star embedding: the mean of the encoder output over real tokens.

    perception [B, T, D], key_mask [B, T] bool -> [B, D] float32; NaN for a star with no real token.
    """
    weights = key_mask.astype(jnp.float32)[..., None]  # [B, T, 1]
    total = jnp.sum(perception.astype(jnp.float32) * weights, axis=1)
    count = jnp.sum(weights, axis=1)
    return jnp.where(count > 0, total / jnp.maximum(count, 1.0), jnp.nan)


@functools.partial(jax.jit, static_argnames="spec")
def encode(params, values, tokens, *, spec: ModelSpec):
    """values [B, T] float (standardised), tokens [B, T] int (0 = padding) -> perception [B, T, D]."""
    return _module(spec).apply({"params": params}, values, tokens, method=StellarPerceptron.encode)


@functools.partial(jax.jit, static_argnames="spec")
def decode(params, perception, key_mask, requests, *, spec: ModelSpec):
    """perception [B, T, D], key_mask [B, T] bool, requests [B, R] int -> (mean, logvar) [B, R] float32."""
    return _module(spec).apply({"params": params}, perception, key_mask, requests, method=StellarPerceptron.decode)


def _attention(state, prefix: str, blocks: int) -> tuple:
    inter = state["intermediates"]
    return tuple(inter[f"{prefix}_{k}"]["attention"]["attention_weights"][0] for k in range(blocks))


def _forward(params, values, tokens, requests, spec: ModelSpec, with_attention: bool):
    """Encoder once, then the decoder once per request with ``lax.map``.

    Requests do not attend to each other, so one request at a time is the same computation as R separate
    calls, and in float32 it is bit for bit the same (a batched [B, R] decode lets XLA pick other reduction
    orders, ~1e-6 apart); the encoder, the larger cost, still runs once for all R.
    """
    module = _module(spec)
    variables = {"params": params}
    key_mask = tokens != PAD_ID
    if requests.ndim == 1:  # the same R requests for every star
        requests = jnp.broadcast_to(requests, (tokens.shape[0], requests.shape[0]))
    chex.assert_rank([values, tokens, requests], 2)
    mutable = ["intermediates"] if with_attention else False
    perception = module.apply(variables, values, tokens, method=StellarPerceptron.encode, mutable=mutable)
    if with_attention:
        perception, state = perception
        encoder_weights = _attention(state, "encoder_blocks", spec.config.encoder_blocks)

    def decode_one(request):  # [B] -> mean [B], logvar [B] (+ weights [B, h, 1, T+1] per block)
        out = module.apply(variables, perception, key_mask, request[:, None], method=StellarPerceptron.decode,
                           mutable=mutable)
        if with_attention:
            (mean, logvar), state = out
            return mean[:, 0], logvar[:, 0], _attention(state, "decoder_blocks", spec.config.decoder_blocks)
        return out[0][:, 0], out[1][:, 0]

    outs = jax.lax.map(decode_one, requests.T)  # leading axis R
    mean, logvar = outs[0].T, outs[1].T  # [B, R]
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


def _bucket_rows(n: int, chunk_size: int) -> int:
    """Row count a chunk of n stars is padded to: the next power of two (>= 8), at most chunk_size."""
    return min(chunk_size, max(8, 1 << max(0, math.ceil(math.log2(max(n, 1))))))


def map_chunks(fn: Callable, arrays: Sequence[np.ndarray], chunk_size: int | None = None, progress: bool = False,
               desc: str = "stars") -> Any:
    """Apply ``fn(*chunk_arrays)`` to consecutive row chunks and concatenate the outputs (a pytree of arrays
    with a leading star axis) on the host.

    Each chunk is padded with zero rows (all-padding stars) to a fixed row count so that at most
    log2(chunk_size) programs are compiled and a star's result does not depend on its position.
    """
    n = int(arrays[0].shape[0])
    chunk_size = default_chunk_size() if chunk_size is None else chunk_size
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    bar = _progress_bar(n, desc) if progress else None
    outputs = []
    for start in range(0, max(n, 1), chunk_size):
        part = [np.asarray(a[start:start + chunk_size]) for a in arrays]
        m = part[0].shape[0]
        rows = _bucket_rows(m, chunk_size)
        if rows > m:
            part = [np.concatenate([p, np.zeros((rows - m,) + p.shape[1:], p.dtype)]) for p in part]
        out = jax.tree_util.tree_map(lambda x: np.asarray(x)[:m], fn(*part))
        outputs.append(out)
        if bar is not None:
            bar.update(m)
    if bar is not None:
        bar.close()
    return jax.tree_util.tree_map(lambda *xs: np.concatenate(xs, axis=0), *outputs)


def _progress_bar(total: int, desc: str):
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="star", desc=desc, dynamic_ncols=True)


# ====================================================================================== input validation
def _as_float_array(values, what: str) -> np.ndarray:
    """Convert to float64, naming the first non-numeric entry if that fails."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        obj = np.asarray(values, dtype=object)
        for index in np.ndindex(obj.shape):
            try:
                float(obj[index])
            except (TypeError, ValueError):
                raise ValueError(
                    f"{what} must be numeric (use NaN for missing); entry {index} is {obj[index]!r}"
                ) from None
        raise
    if arr.dtype == object:  # pragma: no cover - numpy returns float64 or raises
        raise ValueError(f"{what} must be numeric")
    return arr


def _token_ids(vocab: Vocabulary, names) -> np.ndarray:
    """Names (str) or ids (int), 1-D or 2-D -> int32 ids of the same shape (unknown names list the closest)."""
    arr = np.asarray(names)
    if arr.dtype.kind in "iu":
        if arr.size and (arr.min() < 0 or arr.max() > vocab.size):
            raise ValueError(f"token ids must lie in [0, {vocab.size}] (0 = padding), got range [{arr.min()}, {arr.max()}]")
        return arr.astype(np.int32)
    if arr.dtype.kind in "f":
        raise ValueError("token names must be strings or integer ids, got floats")
    return vocab.ids(arr)


@dataclass(frozen=True)
class PreparedInputs:
    """Standardised model inputs of N stars (real tokens first, trailing padding).

    values [N, T] float32, tokens [N, T] int32, errors [N, T] float32 (standardised; 0 = unknown),
    raw [N, T] float64 physical values (NaN at padding), prior_only [N] bool (no real token),
    out_of_range [N, T] bool, dropped [N] int (tokens dropped by ``keep_informative``).
    """

    values: np.ndarray
    tokens: np.ndarray
    errors: np.ndarray
    raw: np.ndarray
    prior_only: np.ndarray
    out_of_range: np.ndarray
    dropped: np.ndarray


def prepare_inputs(vocab: Vocabulary, values, names, errors=None, *, context_length: int, overflow: str = "error",
                   token_range: tuple[np.ndarray, np.ndarray] | None = None) -> PreparedInputs:
    """Validate and standardise user inputs.

    values: [N, n] or [n] (one star) numbers, NaN = missing. names: [n] names/ids for every star or [N, n]
    per star. errors: None or the values' shape (physical units, NaN = unknown).
    """
    if overflow not in OVERFLOW_MODES:
        raise ValueError(f"overflow must be one of {OVERFLOW_MODES}, got {overflow!r}")
    vals = _as_float_array(values, "values")
    if vals.ndim == 1:
        vals = vals[None, :]
    if vals.ndim != 2:
        raise ValueError(f"values must be [N stars, n tokens] or [n tokens] for one star, got shape {vals.shape}")
    n_stars, n_cols = vals.shape
    ids = _token_ids(vocab, names)
    if ids.ndim == 1:
        if ids.shape[0] != n_cols:
            raise ValueError(f"{ids.shape[0]} token names for {n_cols} value columns; they must match")
        ids = np.broadcast_to(ids, vals.shape)
    elif ids.ndim == 2:
        if ids.shape != vals.shape:
            raise ValueError(f"per-star names must have the values' shape {vals.shape}, got {ids.shape}")
    else:
        raise ValueError(f"names must be [n] or [N, n], got shape {ids.shape}")
    if np.isinf(vals).any():
        star, col = np.argwhere(np.isinf(vals))[0]
        raise ValueError(f"values must be finite or NaN (missing); star {star}, column {col} is {vals[star, col]}")
    if errors is not None:
        errs = _as_float_array(errors, "errors")
        if errs.ndim == 1:
            errs = errs[None, :]
        if errs.shape != vals.shape:
            raise ValueError(f"errors must have the values' shape {vals.shape}, got {errs.shape}")
        if (errs < 0).any():
            raise ValueError("errors must be >= 0 (NaN = unknown)")
    else:
        errs = None

    z, tok, err = vocab.standardize(vals, ids, errs)
    real = tok != PAD_ID
    raw = np.where(real, vals, np.nan)
    # Move real tokens to the front of each star (stable), so that only real tokens count.
    if overflow == "keep_informative":
        rank = np.where(real, err.astype(np.float64), np.inf)  # smallest standardised error first
        order = np.argsort(rank, axis=1, kind="stable")
    else:
        order = np.argsort(~real, axis=1, kind="stable")
    take = lambda a: np.take_along_axis(a, order, axis=1)  # noqa: E731
    z, tok, err, raw = take(z), take(tok), take(err), take(raw)
    n_real = real.sum(axis=1)
    width = int(n_real.max()) if n_stars else 0
    dropped = np.zeros(n_stars, dtype=np.int64)
    if width > context_length:
        if overflow == "error":
            star = int(np.argmax(n_real))
            raise ValueError(
                f"star {star} has {n_real[star]} real (non-missing) tokens but the model's context length is "
                f"{context_length}; drop columns, or pass overflow='keep_informative' to keep the "
                f"{context_length} tokens with the smallest standardised errors"
            )
        dropped = np.maximum(n_real - context_length, 0)
        width = context_length
    # Round the context up to a multiple of 8 (fewer compiled shapes); padded slots are masked out exactly.
    width = min(max(8, -(-max(width, 1) // 8) * 8), max(context_length, width))
    if width > n_cols:
        pad = ((0, 0), (0, width - n_cols))
        z, tok, err = np.pad(z, pad), np.pad(tok, pad), np.pad(err, pad)
        raw = np.pad(raw, pad, constant_values=np.nan)
    z, tok, err, raw = z[:, :width], tok[:, :width], err[:, :width], raw[:, :width]

    if token_range is None:
        out_of_range = np.abs(z) > OUT_OF_RANGE_Z
    else:
        lo = np.concatenate([[-np.inf], token_range[0]])[tok]
        hi = np.concatenate([[np.inf], token_range[1]])[tok]
        out_of_range = (raw < lo) | (raw > hi)
    out_of_range &= tok != PAD_ID
    return PreparedInputs(
        values=np.ascontiguousarray(z, np.float32), tokens=np.ascontiguousarray(tok, np.int32),
        errors=np.ascontiguousarray(err, np.float32), raw=raw, prior_only=n_real == 0,
        out_of_range=out_of_range, dropped=dropped,
    )


# ====================================================================================== results
class Prediction:
    """Requested tokens of N stars in physical units, with per-star flags.

    ``res["teff"]`` / ``res["teff_error"]`` are float64 [N] (error = sqrt(exp(logvar)) x token scale);
    ``res["prior_only"]`` bool [N] (no real input token: answered from the model's prior),
    ``res["n_out_of_range"]`` int [N] (inputs outside the training range). ``attention`` holds the encoder and
    decoder attention (see :func:`predict_with_attention`) when requested.
    """

    def __init__(self, names: Sequence[str], mean: np.ndarray, error: np.ndarray, prior_only: np.ndarray,
                 n_out_of_range: np.ndarray, attention: dict | None = None):
        self.names = tuple(names)
        self._columns: dict[str, np.ndarray] = {}
        for j, name in enumerate(self.names):
            self._columns[name] = np.asarray(mean[:, j], dtype=np.float64)
        for j, name in enumerate(self.names):
            self._columns[f"{name}_error"] = np.asarray(error[:, j], dtype=np.float64)
        self._columns["prior_only"] = np.asarray(prior_only, dtype=bool)
        self._columns["n_out_of_range"] = np.asarray(n_out_of_range, dtype=np.int64)
        self.attention = attention

    def __getitem__(self, key: str) -> np.ndarray:
        try:
            return self._columns[key]
        except KeyError:
            raise KeyError(f"{key!r} is not in this result; columns: {list(self._columns)}") from None

    def __contains__(self, key) -> bool:
        return key in self._columns

    def __len__(self) -> int:
        return len(self._columns["prior_only"])

    def keys(self) -> list[str]:
        return list(self._columns)

    def to_dict(self) -> dict[str, np.ndarray]:
        return dict(self._columns)

    def to_records(self) -> np.recarray:
        """A NumPy record array, one record per star."""
        return np.rec.fromarrays(list(self._columns.values()), names=list(self._columns))

    def to_pandas(self):
        try:
            import pandas as pd
        except ImportError as exc:  # pragma: no cover - pandas is optional
            raise ImportError("Prediction.to_pandas() needs pandas; use to_dict() or to_records() without it") from exc
        return pd.DataFrame(self._columns)

    def __repr__(self) -> str:
        return f"Prediction({len(self)} stars, requests={list(self.names)})"


# ====================================================================================== object shell
class Perception:
    """Validated, standardised inputs of N stars for one model. Stateless: each :meth:`request` runs the
    encoder again chunk by chunk, so memory is bounded whatever N (request every token you need in one call)."""

    def __init__(self, model: "StellarModel", inputs: PreparedInputs, chunk_size: int | None = None):
        self.model = model
        self.inputs = inputs
        self.chunk_size = chunk_size

    def __len__(self) -> int:
        return self.inputs.values.shape[0]

    @property
    def prior_only(self) -> np.ndarray:
        """bool [N]: stars with no real input token (answered from the prior)."""
        return self.inputs.prior_only

    @property
    def out_of_range(self) -> np.ndarray:
        """bool [N, T]: inputs outside the training range, aligned with :meth:`input_names`."""
        return self.inputs.out_of_range

    def input_names(self) -> list[list[str]]:
        """Per star, the names of its context slots ('[pad]' for padding), in model order."""
        return self.model.vocab.names_of(self.inputs.tokens)

    def out_of_range_names(self) -> list[list[str]]:
        """Per star, the names of its inputs outside the training range."""
        names = self.model.vocab.names_of(np.where(self.inputs.out_of_range, self.inputs.tokens, 0))
        return [[n for n in row if n != "[pad]"] for row in names]

    def _request_ids(self, names) -> np.ndarray:
        if isinstance(names, (str, int, np.integer)):
            names = [names]
        names = list(names)
        ids = _token_ids(self.model.vocab, names) if names else np.zeros(0, np.int32)
        if ids.ndim != 1 or ids.size == 0:
            raise ValueError(f"request names must be a non-empty list of token names or ids, got {names!r}")
        if (ids == PAD_ID).any():
            raise ValueError("cannot request the padding token (id 0)")
        return ids

    def request(self, names, return_attention: bool = False, progress: bool = False) -> Prediction:
        """Predict tokens ``names`` (one name, or a list of names or ids; all decoded in one call).

        Returns a :class:`Prediction` in physical units; with ``return_attention`` its ``attention`` holds
        ``{"encoder": [block k: [N, h_k, T, T+1]], "decoder": [block k: [N, h_k, R, T+1]], "input_names",
        "request_names"}`` (bias slot last; see :func:`attention_without_bias`).
        """
        ids = self._request_ids(names)
        model = self.model
        requests = jnp.asarray(ids)
        inp = self.inputs
        fn = lambda v, t: model.predict_standardized(v, t, requests, return_attention)  # noqa: E731
        out = map_chunks(fn, (inp.values, inp.tokens), self.chunk_size, progress=progress)
        mean_z, logvar = out[0], out[1]
        mean = model.vocab.destandardize(mean_z, ids[None, :])
        error = model.vocab.destandardize_error(np.sqrt(np.exp(logvar.astype(np.float64))), ids[None, :])
        attention = None
        if return_attention:
            attention = {
                "encoder": list(out[3]), "decoder": list(out[4]),
                "input_names": self.input_names(), "request_names": model.vocab.names_of(ids),
            }
        return Prediction(model.vocab.names_of(ids), mean, error, inp.prior_only, inp.out_of_range.sum(axis=1), attention)

    def embedding(self, progress: bool = False) -> np.ndarray:
        """float32 [N, D]: masked mean of the encoder output over each star's real tokens (NaN if none)."""
        model = self.model
        requests = jnp.ones((1,), jnp.int32)  # the decoder output is not used
        out = map_chunks(lambda v, t: model.predict_standardized(v, t, requests)[2],
                         (self.inputs.values, self.inputs.tokens), self.chunk_size, progress=progress)
        return out

    def perception(self) -> np.ndarray:
        """float32 [N, T, D]: the encoder output (N x T x D x 4 bytes; prefer :meth:`embedding` for big N)."""
        model = self.model
        return map_chunks(lambda v, t: encode(model.params, v, t, spec=model.spec),
                          (self.inputs.values, self.inputs.tokens), self.chunk_size)

    def attention(self) -> list[np.ndarray]:
        """Encoder attention, one [N, h_k, T, T+1] array per block (bias slot last)."""
        return self.request([self.model.vocab.names[0]], return_attention=True).attention["encoder"]


class StellarModel:
    """A trained model: params, architecture, vocabulary and metadata.

    >>> model = StellarModel.load("run/model")
    >>> p = model.perceive([[4700.0, 2.5], [5500.0, 4.2]], ["teff", "logg"])
    >>> res = p.request(["m_h", "bp0"])
    >>> res["m_h"], res["m_h_error"]
    """

    def __init__(self, params, model_config: ModelConfig, vocab: Vocabulary, metadata: dict | None = None):
        model_config.validate()
        self.model_config = model_config
        self.vocab = vocab
        self.metadata = dict(metadata or {})
        self.spec = ModelSpec(model_config, vocab.size)
        self.params = jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), params)
        table = self.params["embedding"]["embeddings"]
        chex.assert_shape(table, (vocab.size + 1, model_config.embedding_dim))
        self.token_range = _token_range(self.metadata, vocab.size)

    @classmethod
    def from_params(cls, params, model_config: ModelConfig, vocab: Vocabulary, metadata: dict | None = None):
        return cls(params, model_config, vocab, metadata)

    @classmethod
    def load(cls, path, compute_dtype: str | None = None) -> "StellarModel":
        """Load a saved-model directory, or a training workdir holding one at ``model/``.

        ``compute_dtype`` overrides the stored one (e.g. "float32" on a CPU for a model trained in bfloat16).
        """
        path = pathlib.Path(path)
        if not is_model_dir(path) and is_model_dir(path / "model"):
            path = path / "model"
        if not is_model_dir(path):
            raise FileNotFoundError(
                f"{path} is neither a stellarfm_jax model directory (model.json, vocab.json, params.npz) nor a "
                f"training workdir containing one at model/"
            )
        params, config, vocab, metadata = load_model(path)
        if compute_dtype is not None:
            import dataclasses

            config = dataclasses.replace(config, compute_dtype=compute_dtype)
        return cls(params, config, vocab, metadata)

    def save(self, path) -> pathlib.Path:
        """Write a model directory (a loaded model saves again; atomic)."""
        return save_model(path, jax.device_get(self.params), self.model_config, self.vocab, self.metadata)

    @property
    def context_length(self) -> int:
        return self.model_config.context_length

    def predict_standardized(self, values, tokens, requests, return_attention: bool = False):
        """One device call on standardised arrays: :func:`predict` (or :func:`predict_with_attention`) with this
        model's parameters. The hook that :class:`Perception` calls, so a subclass (an adapted model) can
        change how requests are answered."""
        fn = predict_with_attention if return_attention else predict
        return fn(self.params, values, tokens, requests, spec=self.spec)

    def perceive(self, values, names=None, errors=None, *, overflow: str = "error",
                 chunk_size: int | None = None) -> Perception:
        """Validate and standardise the inputs of N stars.

        values: [N, n] or [n] numbers (NaN = missing), or a pandas DataFrame (its column names are the
        token names when ``names`` is None). names: n names or ids for every star, or [N, n] per star.
        errors: optional measurement errors of the values' shape (physical units), used by the ranking of
        ``overflow="keep_informative"``.
        """
        if names is None:
            if hasattr(values, "columns"):
                names = [str(c) for c in values.columns]
            else:
                raise ValueError("names are required unless values is a DataFrame with token-name columns")
        if hasattr(values, "to_numpy"):
            values = values.to_numpy()
        inputs = prepare_inputs(self.vocab, values, names, errors, context_length=self.context_length,
                                overflow=overflow, token_range=self.token_range)
        return Perception(self, inputs, chunk_size)

    def invert(self, observed, observed_names, observed_errors=None, **kwargs):
        """Fit free input tokens to an observed spectrum; see :func:`stellarfm_jax.inversion.invert`."""
        from .inversion import invert

        return invert(self, observed, observed_names, observed_errors, **kwargs)

    def __repr__(self) -> str:
        c = self.model_config
        return (f"StellarModel(schema={self.vocab.schema!r}, tokens={self.vocab.size}, D={c.embedding_dim}, "
                f"context={c.context_length}, dtype={c.compute_dtype})")


def _token_range(metadata: dict, vocab_size: int):
    spec = metadata.get("token_range")
    if not spec:
        return None
    lo = np.asarray(spec["min"], dtype=np.float64)
    hi = np.asarray(spec["max"], dtype=np.float64)
    if lo.shape != (vocab_size,) or hi.shape != (vocab_size,):
        raise ValueError(f"metadata token_range needs min and max of length {vocab_size}, got {lo.shape}, {hi.shape}")
    # A token never seen in training has NaN bounds: fall back to no bound rather than flag everything.
    return np.where(np.isfinite(lo), lo, -np.inf), np.where(np.isfinite(hi), hi, np.inf)
