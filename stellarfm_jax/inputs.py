"""Validation and standardisation of user inputs into the model's padded arrays (DESIGN §5).

Shared by the object shell (:mod:`stellarfm_jax.inference`), inversion and search. NumPy only: nothing here runs
the network.

* Padding: NaN values become padding; each star's real tokens are moved to the front (stable order), so only
  *real* tokens count against the context length.
* Too many real tokens for the context length: ``overflow="error"`` (default) raises naming the star;
  ``overflow="keep_informative"`` keeps, per star, the ``context_length`` tokens with the smallest
  standardised measurement error (error / token scale; a token with no given error counts as 0 error), ties
  kept in column order.
* Out-of-range inputs: a value is flagged when it lies outside the training range. When the model's
  metadata holds ``token_range = {"min": [V], "max": [V]}`` (per-token train min / max, physical units) that
  range is used; otherwise the range is ``|z| <= OUT_OF_RANGE_Z`` robust standard deviations from the
  training median (z = (x - median) / (1.4826 MAD), the vocabulary's standardisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .vocab import PAD_ID, Vocabulary

OUT_OF_RANGE_Z = 10.0  # robust standard deviations from the training median
OVERFLOW_MODES = ("error", "keep_informative")


def as_float_array(values, what: str) -> np.ndarray:
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


def token_ids(vocab: Vocabulary, names) -> np.ndarray:
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
    vals = as_float_array(values, "values")
    if vals.ndim == 1:
        vals = vals[None, :]
    if vals.ndim != 2:
        raise ValueError(f"values must be [N stars, n tokens] or [n tokens] for one star, got shape {vals.shape}")
    n_stars, n_cols = vals.shape
    ids = token_ids(vocab, names)
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
        errs = as_float_array(errors, "errors")
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
