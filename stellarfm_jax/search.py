"""Contrastive similarity search (issue #7; the paper's "top-k search", original_spec §6.5).

Two expert encoders share the frozen pretrained encoder and add a small trainable head each
(:class:`stellarfm_jax.nn.SearchHead`): the *spectra* view (a fixed set of at most ``context_length`` flux tokens)
and the *query* view (any subset of the stellar parameters and colours, e.g. ``teff, logg, m_h, alpha_m, logebv,
jh, jk``). Both map a star to a unit vector in the same ``P``-dimensional space; a query is answered by the cosine
similarity between its embedding and the spectra embeddings of a database.

Unlike the original, the heads pool the encoder output over the real tokens only, with order-blind operations
(masked mean + masked attention pooling), so an embedding does not depend on the order of the input columns or on
padding (the original flattened the padded, order-dependent ``[64, D]`` perception).

Functional core (pure, jitted, pytrees in and out; ``spec`` / ``head`` static):

* :func:`contrastive_loss` ``(s [B,P], p [B,P], temperature) -> scalar``: the paper's soft-target loss (C1-C6).
* :func:`embed_perception` ``(head_params, perception [B,T,D], key_mask [B,T]) -> [B,P]``.
* :func:`embed_inputs` ``(base_params, head_params, values [B,T], tokens [B,T]) -> [B,P]`` (encoder + head).
* :func:`search_loss` -> ``loss_fn(params, batch: SearchData, key) -> (loss, aux)`` over
  ``params = {"heads": ..., "base": ...}``, trained by the package's one training seam (:mod:`stellarfm_jax.steps`)
  with the base encoder frozen by the optimiser (``optim.freeze``; no gradient reaches it either).
* :func:`recovery_at_k`: the fraction of queries whose own star is among the top-k matches.

Object shell: :class:`SearchModel` (``fit`` / ``embed_spectra`` / ``embed_query`` / ``save`` / ``load`` /
``build_database``) and :class:`SearchDatabase` (embeddings + source_id + optional true labels, HDF5 via h5py,
``query(...)`` -> top-k indices, source ids and cosine scores).

Decisions worth knowing:

* Training (:func:`fit_search`): the spectra-view perceptions of the train split are computed once with the frozen
  encoder and reused every epoch ([N, T, D] float32 in memory, 0.5 GB for 32k stars with the small model). The
  query view (at most a handful of tokens) runs the frozen encoder inside the jitted step, on a random subset of each
  star's available query tokens per step (the full set with probability ``full_query_fraction``, otherwise a subset
  of uniformly drawn size, at least one token), so that partial queries such as ``jh=0.6`` alone work.
* Train stars without any query token (or without any spectrum token) cannot be paired and are left out of
  training; the last incomplete batch of each (shuffled) epoch is dropped, so every step sees ``batch_size`` pairs.
* The heads kept are those of the epoch with the best validation recovery@k (k = ``eval_k``).
* A star with no real token has a NaN embedding: :meth:`SearchModel.embed_query` refuses an empty query, spectra
  without any view token are flagged in the database (``valid``) and never returned by a query.
* Loss, C1-C6 as in the paper: ``logits = s p^T / tau``, ``targets = softmax_rows((s s^T + p p^T) / (2 tau))``,
  loss = (mean over rows of CE(logits, targets) + mean over rows of CE(logits^T, targets^T)) / 2, with
  CE(l, t)_i = -sum_j t_ij log_softmax(l_i)_j and s, p L2-normalised. ``targets^T`` is used as written (its rows
  are the columns of the row-softmaxed targets, not renormalised).
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import json
import math
import os
import pathlib
import time
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Sequence

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax

from . import forward
from .errors import BadInputError
from .forward import ModelSpec, encode, map_chunks, progress_bar
from .inference import StellarModel
from .inputs import prepare_inputs
from .optim import ADAMW_B1, ADAMW_B2, ADAMW_EPS, freeze
from .steps import make_train_epoch, make_train_step
from .train_state import TrainState
from .nn.search_heads import SearchHead
from .saved_model import atomic_directory, flatten_params, is_model_dir, params_sha256, unflatten_params
from .vocab import PAD_ID, UnknownTokenError, Vocabulary, evenly_spaced

DEFAULT_QUERY_NAMES = ("teff", "logg", "m_h", "alpha_m", "logebv", "jh", "jk")
MODEL_FORMAT = "stellarfm_jax.search_model"
DATABASE_FORMAT = "stellarfm_jax.search_database"
FORMAT_VERSION = 1
VIEWS = ("spectra", "query")


# ====================================================================================== configuration
@dataclass(frozen=True)
class HeadConfig:
    """Architecture of one search head (both views use the same)."""

    projection_dim: int = 64  # P, the paper's projection_dims
    num_queries: int = 4  # learned queries of the attention pooling
    num_heads: int = 4  # heads of the attention pooling (must divide the encoder width D)
    residual_units: int = 3  # the paper's h = LayerNorm(h + Dense(GELU(h))) units
    dropout: float = 0.1  # in the residual units, training only (the paper: 0.1)

    def module(self) -> SearchHead:
        return _head_module(self)


@dataclass(frozen=True)
class SearchTrainConfig:
    """How :func:`fit_search` trains the heads (AdamW, cosine-decayed learning rate over all steps)."""

    epochs: int = 20
    batch_size: int = 512
    learning_rate: float = 1e-3
    min_learning_rate: float = 1e-5
    weight_decay: float = 0.01
    temperature: float = 0.05  # the paper's tau
    full_query_fraction: float = 0.5  # probability that a training query shows all of a star's query tokens
    eval_k: int = 100  # validation recovery@k picks the epoch kept
    seed: int = 0

    def validate(self) -> None:
        if self.epochs < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (a contrastive batch needs negatives), got {self.batch_size}")
        if not self.learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {self.learning_rate}")
        if not self.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.full_query_fraction <= 1.0:
            raise ValueError(f"full_query_fraction must lie in [0, 1], got {self.full_query_fraction}")
        if self.eval_k < 1:
            raise ValueError(f"eval_k must be >= 1, got {self.eval_k}")


@dataclass(frozen=True)
class SearchSpec:
    """Static description for jit: the base model's spec and the head architecture."""

    base: ModelSpec
    head: HeadConfig


@functools.lru_cache(maxsize=None)
def _head_module(head: HeadConfig) -> SearchHead:
    return SearchHead(head.projection_dim, head.num_queries, head.num_heads, head.residual_units, head.dropout)


# ====================================================================================== functional core
def contrastive_loss(s, p, temperature: float = 0.05):
    """The paper's soft-target symmetric contrastive loss (C1-C6).

    s [B, P], p [B, P]: L2-normalised embeddings of the same B stars in the two views (row i of both is star i).
    Returns a float32 scalar.
    """
    chex.assert_rank([s, p], 2)
    chex.assert_equal_shape([s, p])
    s = s.astype(jnp.float32)
    p = p.astype(jnp.float32)
    hp = jax.lax.Precision.HIGHEST
    logits = jnp.matmul(s, p.T, precision=hp) / temperature  # [B, B]
    self_sim = (jnp.matmul(s, s.T, precision=hp) + jnp.matmul(p, p.T, precision=hp)) / (2.0 * temperature)
    targets = jax.nn.softmax(self_sim, axis=-1)  # [B, B], rows sum to 1
    ce_rows = -jnp.sum(targets * jax.nn.log_softmax(logits, axis=-1), axis=-1)  # CE(logits, targets) [B]
    ce_cols = -jnp.sum(targets.T * jax.nn.log_softmax(logits.T, axis=-1), axis=-1)  # CE(logits^T, targets^T) [B]
    return 0.5 * (jnp.mean(ce_rows) + jnp.mean(ce_cols))


@functools.partial(jax.jit, static_argnames="head")
def embed_perception(head_params, perception, key_mask, *, head: HeadConfig):
    """perception [B, T, D], key_mask [B, T] bool -> unit embeddings [B, P] float32 (NaN rows: no real token)."""
    return head.module().apply({"params": head_params}, perception, key_mask, deterministic=True)


@functools.partial(jax.jit, static_argnames="spec")
def embed_inputs(base_params, head_params, values, tokens, *, spec: SearchSpec):
    """values [B, T] standardised, tokens [B, T] int (0 = padding) -> unit embeddings [B, P] (frozen encoder +
    head, fused so the perception never leaves the call)."""
    perception = forward.encode_fn(base_params, values, tokens, spec=spec.base)
    return spec.head.module().apply({"params": head_params}, perception, tokens != PAD_ID, deterministic=True)


def init_head_params(head: HeadConfig, width: int, key) -> dict:
    """Float32 parameters of one head for an encoder of width ``width`` (D)."""
    perception = jnp.zeros((1, 2, width), jnp.float32)
    mask = jnp.ones((1, 2), bool)
    return jax.jit(lambda k: head.module().init({"params": k}, perception, mask)["params"])(key)


class SearchData(NamedTuple):
    """Training pairs of N stars (arrays live on the device).

    perception [N, T, D] float32: frozen-encoder output of the spectra view; key_mask [N, T] bool;
    query_values [N, Q] float32 standardised (0 where missing); query_available [N, Q] bool.
    """

    perception: jax.Array
    key_mask: jax.Array
    query_values: jax.Array
    query_available: jax.Array


def sample_query_mask(key, available, full_fraction: float):
    """For one star: which of its Q query tokens a training query shows.

    available [Q] bool -> [Q] bool, a subset of ``available`` with at least one token when any is available: all
    of them with probability ``full_fraction``, otherwise ``k ~ U{1..n}`` of them chosen uniformly (random-key
    sort, static shapes).
    """
    k_full, k_size, k_order = jax.random.split(key, 3)
    n = jnp.sum(available.astype(jnp.int32))
    size = jax.random.randint(k_size, (), 1, jnp.maximum(n, 1) + 1)
    size = jnp.where(jax.random.uniform(k_full) < full_fraction, n, size)
    score = jnp.where(available, jax.random.uniform(k_order, available.shape), 2.0)  # unavailable last
    rank = jnp.argsort(jnp.argsort(score))
    return available & (rank < size)


def make_optimizer(config: SearchTrainConfig, total_steps: int) -> optax.GradientTransformation:
    """AdamW (torch defaults, weight decay ``config.weight_decay``) with a cosine decay over all steps."""
    schedule = optax.cosine_decay_schedule(config.learning_rate, max(total_steps, 1),
                                           alpha=config.min_learning_rate / config.learning_rate)
    return optax.adamw(schedule, b1=ADAMW_B1, b2=ADAMW_B2, eps=ADAMW_EPS, weight_decay=config.weight_decay)


def search_loss(spec: SearchSpec, query_tokens: np.ndarray, temperature: float, full_query_fraction: float):
    """``loss_fn(params, batch: SearchData, key) -> (contrastive loss, {"count": 1})`` for the training seam
    (:func:`stellarfm_jax.steps.make_train_step`; the loss is already a batch mean, so the count is 1).

    ``params = {"heads": {"spectra": ..., "query": ...}, "base": base encoder params}``. The spectra head sees the
    precomputed perceptions of the batch; the query head sees the frozen encoder's perception of a random subset of
    each star's query tokens, computed in the step. Dropout is on in the heads, the frozen encoder is
    deterministic and behind ``stop_gradient``."""
    head = spec.head.module()
    query_tokens = jnp.asarray(query_tokens, jnp.int32)  # [Q]

    def loss_fn(params, batch: SearchData, key):
        heads = params["heads"]
        k_spec, k_query, k_subset = jax.random.split(key, 3)
        s = head.apply({"params": heads["spectra"]}, batch.perception, batch.key_mask, deterministic=False,
                       rngs={"dropout": k_spec})  # [B, P]
        keys = jax.random.split(k_subset, batch.query_values.shape[0])
        shown = jax.vmap(sample_query_mask, in_axes=(0, 0, None))(keys, batch.query_available,
                                                                  full_query_fraction)  # [B, Q]
        tokens = jnp.where(shown, query_tokens[None, :], PAD_ID)
        values = jnp.where(shown, batch.query_values, 0.0)
        perception = forward.encode_fn(jax.lax.stop_gradient(params["base"]), values, tokens, spec=spec.base)
        p = head.apply({"params": heads["query"]}, perception, shown, deterministic=False,
                       rngs={"dropout": k_query})  # [B, P]
        return contrastive_loss(s, p, temperature), {"count": jnp.ones(())}

    return loss_fn


def recovery_at_k(query_embeddings, database_embeddings, k: int = 100, truth=None, chunk: int = 1024) -> float:
    """Fraction of queries whose own star is among the top-k matches of the database.

    query_embeddings [Q, P], database_embeddings [N, P] (unit vectors; NaN rows in the database never match);
    truth [Q] int: the database row of each query's star (default: row i for query i). A star's rank counts the
    database rows with a strictly higher cosine score. Queries with a NaN embedding are not allowed.
    """
    q = np.asarray(query_embeddings, np.float32)
    db = np.asarray(database_embeddings, np.float32)
    if q.ndim != 2 or db.ndim != 2 or q.shape[1] != db.shape[1]:
        raise ValueError(f"embeddings must be [Q, P] and [N, P], got {q.shape} and {db.shape}")
    if not np.isfinite(q).all():
        raise ValueError("query embeddings must be finite (drop empty queries first)")
    truth = np.arange(q.shape[0]) if truth is None else np.asarray(truth, np.int64)
    if truth.shape != (q.shape[0],) or (truth.size and (truth.min() < 0 or truth.max() >= db.shape[0])):
        raise ValueError(f"truth must be [Q] database rows in [0, {db.shape[0]}), got shape {truth.shape}")
    if q.shape[0] == 0:
        raise ValueError("no queries")
    db_valid = np.isfinite(db).all(axis=1)
    db = np.where(db_valid[:, None], db, 0.0)
    hits = 0
    for start in range(0, q.shape[0], chunk):
        scores = q[start:start + chunk] @ db.T  # [c, N]
        scores[:, ~db_valid] = -np.inf
        own = scores[np.arange(scores.shape[0]), truth[start:start + chunk]]
        rank = np.sum(scores > own[:, None], axis=1)
        hits += int(np.sum((rank < k) & np.isfinite(own)))
    return hits / q.shape[0]


# ====================================================================================== helpers
def default_spectra_names(vocab: Vocabulary, context_length: int) -> list[str]:
    """At most ``context_length`` spectrum tokens, evenly spaced over the spectrum (group "spectrum" only)."""
    spectrum = vocab.group_names("spectrum")
    if not spectrum:
        raise ValueError(f"the vocabulary (schema {vocab.schema!r}) has no spectrum tokens for the spectra view")
    return evenly_spaced(spectrum, context_length)


def default_query_names(vocab: Vocabulary) -> list[str]:
    """The paper's query tokens present in the vocabulary: teff, logg, m_h, alpha_m, logebv, jh, jk."""
    names = [n for n in DEFAULT_QUERY_NAMES if n in vocab.names]
    if not names:
        raise ValueError(f"none of the query tokens {DEFAULT_QUERY_NAMES} is in the vocabulary")
    return names


def _column_names(names, n_cols: int) -> list[str]:
    if isinstance(names, str):
        names = [names]
    names = [str(n) for n in np.asarray(names, dtype=object).reshape(-1)]
    if len(names) != n_cols:
        raise ValueError(f"{len(names)} names for {n_cols} value columns; give one name per column")
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
        raise ValueError(f"duplicate column names: {dup}")
    return names


def _as_matrix(values, what: str) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be numeric (NaN = missing)") from None
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise ValueError(f"{what} must be [N, n columns] or [n columns], got shape {arr.shape}")
    if np.isinf(arr).any():
        raise ValueError(f"{what} must be finite or NaN (missing)")
    return arr


# ====================================================================================== object shell
class SearchModel:
    """The frozen base model, the two heads and the token sets of the two views.

    >>> sm = SearchModel.load("runs/search/search_model")
    >>> s = sm.embed_spectra(split.values, dataset.vocab.names)   # [N, P]
    >>> q = sm.embed_query({"teff": 4700.0, "logg": 2.5, "m_h": 0.0})  # [1, P]
    """

    def __init__(self, base: StellarModel, head_params: dict, head_config: HeadConfig, spectra_names: Sequence[str],
                 query_names: Sequence[str], metadata: dict | None = None):
        self.base = base
        self.head_config = head_config
        self.spec = SearchSpec(base.spec, head_config)
        if set(head_params) != set(VIEWS):
            raise ValueError(f"head_params must hold {VIEWS}, got {sorted(head_params)}")
        self.head_params = {v: jax.tree_util.tree_map(lambda x: jnp.asarray(x, jnp.float32), head_params[v])
                            for v in VIEWS}
        self.spectra_names = list(spectra_names)
        self.query_names = list(query_names)
        for what, names in (("spectra", self.spectra_names), ("query", self.query_names)):
            if not names:
                raise ValueError(f"the {what} view needs at least one token")
            if len(names) > base.context_length:
                raise ValueError(f"the {what} view has {len(names)} tokens, more than the context length "
                                 f"{base.context_length}")
            base.vocab.ids(names)  # unknown names raise, listing the closest
        self.metadata = dict(metadata or {})

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, base: StellarModel, head_config: HeadConfig = HeadConfig(), spectra_names=None, query_names=None,
               seed: int = 0, metadata: dict | None = None) -> "SearchModel":
        """Randomly initialised heads on ``base`` (keys from ``seed``)."""
        width = base.model_config.embedding_dim
        k_spec, k_query = jax.random.split(jax.random.PRNGKey(seed))
        params = {"spectra": init_head_params(head_config, width, k_spec),
                  "query": init_head_params(head_config, width, k_query)}
        spectra_names = default_spectra_names(base.vocab, base.context_length) if spectra_names is None else spectra_names
        query_names = default_query_names(base.vocab) if query_names is None else query_names
        return cls(base, params, head_config, spectra_names, query_names, metadata)

    @property
    def projection_dim(self) -> int:
        return self.head_config.projection_dim

    # ------------------------------------------------------------------ inputs
    def _view_inputs(self, view: str, values, names, *, strict: bool):
        """Pick the view's columns out of (values [N, n], names [n]) -> PreparedInputs on the view's tokens.

        strict (query view): every name must be a view token. Otherwise (spectra view) names outside the view are
        ignored, but unknown names still raise.
        """
        allowed = self.spectra_names if view == "spectra" else self.query_names
        vals = _as_matrix(values, "values")
        cols = _column_names(names, vals.shape[1])
        vocab = self.base.vocab
        for n in cols:
            if n not in vocab.names:
                raise UnknownTokenError(_unknown_message(n, allowed, vocab))
            if strict and n not in allowed:
                close = difflib.get_close_matches(n, allowed, n=5, cutoff=0.3)
                raise ValueError(f"{n!r} is not a {view} token of this search model; {view} tokens: {allowed}"
                                 + (f" (closest: {close})" if close else ""))
        index = {n: j for j, n in enumerate(cols)}
        matrix = np.full((vals.shape[0], len(allowed)), np.nan)
        present = [i for i, n in enumerate(allowed) if n in index]
        if not present:
            raise ValueError(f"none of the {view} tokens is among the given columns; {view} tokens: {allowed}")
        for i in present:
            matrix[:, i] = vals[:, index[allowed[i]]]
        return prepare_inputs(vocab, matrix, allowed, context_length=self.base.context_length,
                              token_range=self.base.token_range)

    def _embed(self, view: str, inputs, chunk_size=None, progress=False) -> np.ndarray:
        base_params, head_params, spec = self.base.params, self.head_params[view], self.spec
        fn = lambda v, t: embed_inputs(base_params, head_params, v, t, spec=spec)  # noqa: E731
        return map_chunks(fn, (inputs.values, inputs.tokens), chunk_size, progress=progress, desc=f"{view} embeddings")

    def embed_spectra(self, values, names, chunk_size: int | None = None, progress: bool = False) -> np.ndarray:
        """Spectra-view embeddings: float32 [N, P], unit rows; NaN rows for stars with none of the view's tokens.

        values [N, n] physical units (NaN = missing); names [n], one per column. Only the view's tokens
        (``spectra_names``) are used; other known columns (e.g. labels of a data-set split) are ignored.
        """
        return self._embed("spectra", self._view_inputs("spectra", values, names, strict=False), chunk_size, progress)

    def embed_query(self, query, names=None, chunk_size: int | None = None) -> np.ndarray:
        """Query-view embeddings: float32 [Q, P] unit rows.

        query: a dict ``{name: value}`` (scalars, or equal-length arrays for several queries), or values [Q, n] /
        [n] with ``names`` [n]; NaN = not given. Every name must be a query token (``query_names``); a query with
        no given value raises.
        """
        values, names = _query_matrix(query, names)
        inputs = self._view_inputs("query", values, names, strict=True)
        if inputs.prior_only.any():
            rows = np.flatnonzero(inputs.prior_only)
            raise ValueError(f"empty query (no finite value) in row(s) {rows[:10].tolist()}; give at least one of "
                             f"{self.query_names}")
        return self._embed("query", inputs, chunk_size)

    def spectra_perception(self, values, names, chunk_size: int | None = None, progress: bool = False):
        """Frozen-encoder output of the spectra view: (perception [N, T, D] float32, key_mask [N, T] bool)."""
        inputs = self._view_inputs("spectra", values, names, strict=False)
        base = self.base
        perception = map_chunks(lambda v, t: encode(base.params, v, t, spec=base.spec), (inputs.values, inputs.tokens),
                                chunk_size, progress=progress, desc="spectra perception")
        return perception, inputs.tokens != PAD_ID

    # ------------------------------------------------------------------ database
    def build_database(self, values, names, source_id=None, labels: dict | None = None, chunk_size: int | None = None,
                       progress: bool = False, metadata: dict | None = None) -> "SearchDatabase":
        """Embed the spectra of N stars into a :class:`SearchDatabase` (``labels``: optional {name: [N]} truths
        kept for inspection)."""
        emb = self.embed_spectra(values, names, chunk_size, progress)
        n = emb.shape[0]
        source_id = np.arange(n, dtype=np.int64) if source_id is None else np.asarray(source_id, np.int64)
        return SearchDatabase(emb, source_id, labels, model=self, metadata=metadata)

    def search(self, database: "SearchDatabase", query, k: int = 10, names=None) -> "SearchResult":
        """Top-k stars of ``database`` for ``query`` (see :meth:`embed_query`)."""
        return database.query(query, k, names=names, model=self)

    # ------------------------------------------------------------------ persistence
    def save(self, path) -> pathlib.Path:
        """Write a self-contained directory (atomic): ``search.json``, ``heads.npz`` and the base model in
        ``base/`` (its identity, the sha256 of its parameters, is recorded and checked on load)."""
        with atomic_directory(path) as tmp:
            flat = {f"{view}/{k}": np.asarray(v, np.float32)
                    for view in VIEWS for k, v in flatten_params(jax.device_get(self.head_params[view])).items()}
            np.savez(tmp / "heads.npz", **flat)
            self.base.save(tmp / "base")
            doc = {
                "format": MODEL_FORMAT, "version": FORMAT_VERSION, "head": dataclasses.asdict(self.head_config),
                "spectra_names": self.spectra_names, "query_names": self.query_names,
                "base_model": {"params_sha256": params_sha256(self.base.params),
                               "source": self.metadata.get("base_source", ""), "schema": self.base.vocab.schema},
                "metadata": self.metadata,
            }
            (tmp / "search.json").write_text(json.dumps(doc, indent=2))
        return pathlib.Path(path)

    @classmethod
    def load(cls, path) -> "SearchModel":
        """Load a directory written by :meth:`save`, or a ``finetune_search`` output folder holding one at
        ``search_model/``."""
        path = pathlib.Path(path)
        if not (path / "search.json").is_file() and (path / "search_model" / "search.json").is_file():
            path = path / "search_model"
        if not (path / "search.json").is_file():
            raise FileNotFoundError(f"{path} is not a search model directory (search.json, heads.npz, base/) nor a "
                                    f"finetune_search output holding one at search_model/")
        doc = json.loads((path / "search.json").read_text())
        if doc.get("format") != MODEL_FORMAT:
            raise ValueError(f"{path / 'search.json'}: unknown format {doc.get('format')!r}, expected {MODEL_FORMAT!r}")
        if doc.get("version", 0) > FORMAT_VERSION:
            raise ValueError(f"{path}: search model format version {doc['version']} is newer than this code")
        if not is_model_dir(path / "base"):
            raise FileNotFoundError(f"{path / 'base'}: the base model is missing")
        base = StellarModel.load(path / "base")
        want = doc["base_model"]["params_sha256"]
        got = params_sha256(base.params)
        if want != got:
            raise ValueError(f"{path / 'base'}: base model parameters do not match the ones the heads were trained on "
                             f"(sha256 {got[:12]} != {want[:12]})")
        with np.load(path / "heads.npz") as npz:
            flat = {k: npz[k] for k in npz.files}
        heads = {view: unflatten_params({k[len(view) + 1:]: v for k, v in flat.items() if k.startswith(view + "/")})
                 for view in VIEWS}
        return cls(base, heads, HeadConfig(**doc["head"]), doc["spectra_names"], doc["query_names"],
                   doc.get("metadata", {}))

    def __repr__(self) -> str:
        return (f"SearchModel(P={self.projection_dim}, spectra view: {len(self.spectra_names)} tokens, "
                f"query view: {self.query_names}, base={self.base!r})")


def _unknown_message(name: str, allowed: Sequence[str], vocab: Vocabulary) -> str:
    close = difflib.get_close_matches(str(name), list(dict.fromkeys(list(allowed) + list(vocab.names))), n=5, cutoff=0.4)
    hint = f"; closest valid names: {close}" if close else ""
    return f"unknown token name {name!r} (schema {vocab.schema!r}){hint}"


def _query_matrix(query, names):
    """dict or (values, names) -> (values [Q, n] float64, names [n])."""
    if isinstance(query, dict):
        if names is not None:
            raise ValueError("give names only with an array query, not with a dict")
        if not query:
            raise ValueError("empty query: give at least one token, e.g. {'teff': 4700.0}")
        cols = [str(n) for n in query]
        try:
            arrays = [np.atleast_1d(np.asarray(query[n], dtype=np.float64)) for n in query]
        except (TypeError, ValueError):
            raise ValueError("query values must be numeric (NaN = not given)") from None
        lengths = {a.shape for a in arrays}
        if len(lengths) != 1 or arrays[0].ndim != 1:
            raise ValueError(f"query values must be scalars or 1-D arrays of one length, got shapes {sorted(lengths)}")
        return np.stack(arrays, axis=1), cols
    if names is None:
        raise ValueError("names are required with an array query (or pass a dict {name: value})")
    values = _as_matrix(query, "query values")
    if values.shape[1] == 0:
        raise ValueError("empty query: no columns")
    return values, names


@dataclass
class SearchResult:
    """Top-k matches. ``indices`` (database rows), ``source_id`` and ``score`` (cosine similarity, best first) are
    [k] for a single query (a dict of scalars, or 1-D values) and [Q, k] otherwise; ``labels`` {name: array of the
    same shape} holds the database's true labels of the matches, when it has them. Unpacks as
    ``indices, source_id, score = result``."""

    indices: np.ndarray
    source_id: np.ndarray
    score: np.ndarray
    labels: dict = field(default_factory=dict)

    def __iter__(self):
        return iter((self.indices, self.source_id, self.score))


class SearchDatabase:
    """Spectra embeddings of N stars: embeddings [N, P] float32 (NaN rows = no spectrum, never returned),
    source_id [N] int64, optional labels {name: [N] float64} (truths for inspection), and the search model that
    made them (needed to embed queries)."""

    def __init__(self, embeddings, source_id, labels: dict | None = None, model: SearchModel | None = None,
                 metadata: dict | None = None):
        emb = np.asarray(embeddings, np.float32)
        if emb.ndim != 2:
            raise ValueError(f"embeddings must be [N, P], got shape {emb.shape}")
        sid = np.asarray(source_id, np.int64)
        if sid.shape != (emb.shape[0],):
            raise ValueError(f"source_id must be [{emb.shape[0]}], got shape {sid.shape}")
        self.embeddings = emb
        self.source_id = sid
        self.labels = {str(k): np.asarray(v, np.float64) for k, v in (labels or {}).items()}
        for k, v in self.labels.items():
            if v.shape != (emb.shape[0],):
                raise ValueError(f"label {k!r} must be [{emb.shape[0]}], got shape {v.shape}")
        self.valid = np.isfinite(emb).all(axis=1)
        self.model = model
        self.metadata = dict(metadata or {})
        self._filled = np.where(self.valid[:, None], emb, 0.0).astype(np.float32)

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def top_k(self, query_embeddings, k: int = 10, chunk: int = 1024) -> tuple[np.ndarray, np.ndarray]:
        """query_embeddings [Q, P] unit rows -> (indices [Q, k] int64, scores [Q, k] float32), best first.
        Rows without a spectrum never match; k is capped at the number of valid rows."""
        q = np.asarray(query_embeddings, np.float32)
        if q.ndim != 2 or q.shape[1] != self.embeddings.shape[1]:
            raise ValueError(f"query embeddings must be [Q, {self.embeddings.shape[1]}], got {q.shape}")
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        k = int(min(k, int(self.valid.sum())))
        if k == 0:
            raise ValueError("the database holds no star with a spectrum embedding")
        out_i, out_s = [], []
        for start in range(0, q.shape[0], chunk):
            scores = q[start:start + chunk] @ self._filled.T  # [c, N]
            scores[:, ~self.valid] = -np.inf
            part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            part_scores = np.take_along_axis(scores, part, axis=1)
            order = np.argsort(-part_scores, axis=1, kind="stable")
            out_i.append(np.take_along_axis(part, order, axis=1))
            out_s.append(np.take_along_axis(part_scores, order, axis=1))
        return np.concatenate(out_i).astype(np.int64), np.concatenate(out_s).astype(np.float32)

    def query(self, query, k: int = 10, names=None, model: SearchModel | None = None) -> SearchResult:
        """Top-k stars for a query of any subset of the query tokens, e.g. ``db.query({"teff": 4700, "logg": 2.5})``
        or ``db.query({"jh": 0.6}, k=10)``; or values [Q, n] / [n] with ``names``. See :class:`SearchResult`."""
        model = model or self.model
        if model is None:
            raise ValueError("this database has no search model attached; pass model=SearchModel.load(...)")
        single = (isinstance(query, dict) and all(np.ndim(v) == 0 for v in query.values())) or (
            not isinstance(query, dict) and np.ndim(query) == 1)
        emb = model.embed_query(query, names)
        idx, score = self.top_k(emb, k)
        result = SearchResult(idx, self.source_id[idx], score, {n: v[idx] for n, v in self.labels.items()})
        if single:
            result = SearchResult(result.indices[0], result.source_id[0], result.score[0],
                                  {n: v[0] for n, v in result.labels.items()})
        return result

    def recovery_at_k(self, query_embeddings, k: int = 100, truth=None) -> float:
        """:func:`recovery_at_k` against this database."""
        return recovery_at_k(query_embeddings, self.embeddings, k, truth)

    # ------------------------------------------------------------------ persistence (h5py)
    def save(self, path, model_path=None) -> pathlib.Path:
        """Write an HDF5 file: embeddings, source_id, labels/<name>; ``model_path`` (a search model directory,
        stored relative to the file when possible) lets :meth:`load` re-attach the model."""
        import h5py

        path = pathlib.Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = DATABASE_FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["metadata"] = json.dumps(self.metadata)
            if model_path is not None:
                mp = pathlib.Path(model_path).resolve()
                try:
                    f.attrs["search_model"] = os.path.relpath(mp, path.resolve().parent)
                except ValueError:  # pragma: no cover - other drive on Windows
                    f.attrs["search_model"] = str(mp)
            f.create_dataset("embeddings", data=self.embeddings)
            f.create_dataset("source_id", data=self.source_id)
            g = f.create_group("labels")
            for name, v in self.labels.items():
                g.create_dataset(name, data=v)
        os.replace(tmp, path)
        return path

    @classmethod
    def load(cls, path, model: SearchModel | str | os.PathLike | None = None) -> "SearchDatabase":
        """Read a file written by :meth:`save`. ``model``: a SearchModel, a directory, or None to load the model
        recorded in the file (if any)."""
        import h5py

        path = pathlib.Path(path)
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != DATABASE_FORMAT:
                raise ValueError(f"{path}: not a search database (format {f.attrs.get('format')!r})")
            emb = f["embeddings"][...]
            sid = f["source_id"][...]
            labels = {k: f["labels"][k][...] for k in f["labels"]}
            metadata = json.loads(f.attrs.get("metadata", "{}"))
            recorded = f.attrs.get("search_model")
        if model is None and recorded:
            model = path.resolve().parent / str(recorded)
        if model is not None and not isinstance(model, SearchModel):
            model = SearchModel.load(model)
        return cls(emb, sid, labels, model=model, metadata=metadata)

    def __repr__(self) -> str:
        return (f"SearchDatabase({len(self)} stars, {int(self.valid.sum())} with a spectrum, "
                f"P={self.embeddings.shape[1]}, labels={list(self.labels)})")


# ====================================================================================== training
def query_arrays(vocab: Vocabulary, values: np.ndarray, query_names: Sequence[str]):
    """Raw split values [N, V] -> (standardised query values [N, Q] float32 (0 where missing), available [N, Q])."""
    ids = vocab.ids(query_names)
    z, tokens, _ = vocab.standardize(np.asarray(values, np.float64)[:, ids - 1], ids)  # NaN -> 0, padding id
    return z, tokens != PAD_ID


def full_query_embeddings(model: SearchModel, values: np.ndarray, vocab_names: Sequence[str], chunk_size=None,
                          query_names: Sequence[str] | None = None):
    """Query embeddings of N stars from all their available query tokens (or those among ``query_names``):
    (embeddings [M, P], rows [M]) for the M stars with at least one such token."""
    names = list(model.query_names if query_names is None else query_names)
    cols = [list(vocab_names).index(n) for n in names]
    q = np.asarray(values, np.float64)[:, cols]
    rows = np.flatnonzero(np.isfinite(q).any(axis=1))
    if len(rows) == 0:
        raise ValueError(f"no star has any of the query tokens {names}")
    return model.embed_query(q[rows], names, chunk_size=chunk_size), rows


def _check_vocab(model: SearchModel, dataset_vocab: Vocabulary) -> None:
    if tuple(dataset_vocab.names) != tuple(model.base.vocab.names):
        raise BadInputError(f"the data set's tokens ({dataset_vocab.schema!r}, {dataset_vocab.size} tokens) differ "
                            f"from the model's ({model.base.vocab.schema!r}, {model.base.vocab.size} tokens)")


@dataclass
class SearchFitResult:
    model: SearchModel
    history: list
    best_epoch: int
    train_seconds: float
    n_train_pairs: int


def fit_search(base: StellarModel, dataset, config: SearchTrainConfig = SearchTrainConfig(),
               head_config: HeadConfig = HeadConfig(), spectra_names=None, query_names=None, progress: bool = False,
               log=print, chunk_size: int | None = None, base_source: str = "") -> SearchFitResult:
    """Train the two heads on ``dataset.train`` with the frozen ``base`` encoder; keep the epoch with the best
    validation recovery@k (``config.eval_k``) on ``dataset.val`` (query: all of a star's query tokens; database: all
    val spectra)."""
    config.validate()
    model = SearchModel.create(base, head_config, spectra_names, query_names, seed=config.seed)
    _check_vocab(model, dataset.vocab)
    vocab_names = dataset.vocab.names
    t0 = time.perf_counter()

    train = dataset.train
    q_vals, q_avail = query_arrays(base.vocab, train.values, model.query_names)
    perception, key_mask = model.spectra_perception(train.values, vocab_names, chunk_size, progress)
    usable = q_avail.any(axis=1) & key_mask.any(axis=1)
    if usable.sum() < config.batch_size:
        raise ValueError(f"only {int(usable.sum())} train stars have both spectra and query tokens; need at least "
                         f"batch_size={config.batch_size}")
    rows = np.flatnonzero(usable)
    data = SearchData(jnp.asarray(perception[rows]), jnp.asarray(key_mask[rows]), jnp.asarray(q_vals[rows]),
                      jnp.asarray(q_avail[rows]))
    del perception
    n = len(rows)
    log(f"search heads: {n} train pairs ({train.values.shape[0] - n} train stars without spectra or query tokens "
        f"left out); spectra view {len(model.spectra_names)} tokens, query view {model.query_names}")

    val_perception, val_mask = model.spectra_perception(dataset.val.values, vocab_names, chunk_size)
    val_q, val_avail = query_arrays(base.vocab, dataset.val.values, model.query_names)
    val_rows = np.flatnonzero(val_avail.any(axis=1))
    val_ids = base.vocab.ids(model.query_names)
    val_tokens = np.where(val_avail[val_rows], val_ids[None, :], PAD_ID).astype(np.int32)
    val_values = np.where(val_avail[val_rows], val_q[val_rows], 0.0).astype(np.float32)

    def evaluate(params) -> float:
        if len(val_rows) == 0 or len(dataset.val) == 0:
            return float("nan")
        db = map_chunks(lambda p, m: embed_perception(params["spectra"], p, m, head=head_config),
                        (val_perception, val_mask), 1024)
        q = map_chunks(lambda v, t: embed_inputs(base.params, params["query"], v, t, spec=model.spec),
                       (val_values, val_tokens), 1024)
        return recovery_at_k(q, db, config.eval_k, truth=val_rows)

    steps_per_epoch = n // config.batch_size
    optimizer = freeze(make_optimizer(config, steps_per_epoch * config.epochs), {"heads": True, "base": False})
    # A copy of the base parameters: the epoch function donates (deletes) its state's buffers.
    state = TrainState.create({"heads": model.head_params, "base": jax.tree.map(jnp.copy, base.params)}, optimizer)
    loss_fn = search_loss(model.spec, base.vocab.ids(model.query_names), config.temperature, config.full_query_fraction)
    train_epoch = make_train_epoch(make_train_step(loss_fn, optimizer), lambda key, batch: batch,
                                   batch_size=config.batch_size, steps_per_epoch=steps_per_epoch, seed=config.seed)
    history = []
    best = (-1.0, 0, jax.device_get(model.head_params))
    bar = progress_bar(config.epochs, "search heads", unit="epoch") if progress else None
    for epoch in range(1, config.epochs + 1):
        te = time.perf_counter()
        state, metrics = train_epoch(state, data, epoch)
        loss = float(metrics["loss"])
        params = jax.device_get(state.params["heads"])
        rec = evaluate(params)
        record = {"epoch": epoch, "loss": loss, f"val_recovery_at_{config.eval_k}": rec,
                  "epoch_seconds": time.perf_counter() - te}
        history.append(record)
        if not math.isfinite(rec) or rec > best[0]:
            best = (rec, epoch, params)
        if bar is not None:
            bar.set_postfix(loss=f"{loss:.3f}", val_rec=f"{rec:.3f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    train_seconds = time.perf_counter() - t0
    model = SearchModel(base, best[2], head_config, model.spectra_names, model.query_names,
                        {"train_config": dataclasses.asdict(config), "best_epoch": best[1],
                         f"best_val_recovery_at_{config.eval_k}": best[0], "n_train_pairs": n,
                         "train_seconds": train_seconds, "base_source": base_source})
    return SearchFitResult(model, history, best[1], train_seconds, n)
