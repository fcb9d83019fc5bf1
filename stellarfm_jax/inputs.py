"""Validation and standardisation of user inputs into the model's padded arrays (DESIGN §5).

Shared by the object shell (:mod:`stellarfm_jax.inference`), inversion and search. NumPy only: nothing here runs
the network.

* Padding: NaN values become padding; each star's real tokens are moved to the front (stable order), so only
  *real* tokens count against the context length.
* Too many real tokens for the context length: ``overflow="error"`` (default) raises naming the star;
  ``overflow="keep_informative"`` keeps, per star, the ``context_length`` tokens with the smallest
  standardised measurement error (error / token scale; ``errors=None`` counts every error as 0, so the first
  columns are kept); an error given as NaN or infinity ranks last (least informative), ties in column order.
* Refused (:class:`~stellarfm_jax.cli.BadInputError`, naming the star, column and token): non-numeric and
  boolean values (``True`` is not 1.0), infinite values, no token names, the same token twice in a star, and
  values more than ``MAX_ABS_Z = 1e6`` robust standard deviations from the training median (``extreme="error"``,
  the default; ``extreme="missing"`` treats them as missing and counts them as out of range). No measurement
  lies that far out, and far enough out the float32 network overflows into NaN answers (the shipped model at
  about 1e20 standard deviations, where the LayerNorm variance of the embedding overflows).
* Out-of-range inputs: a value is flagged when it lies outside the training range. When the model's
  metadata holds ``token_range = {"min": [V], "max": [V]}`` (per-token train min / max, physical units) that
  range is used; otherwise the range is ``|z| <= OUT_OF_RANGE_Z`` robust standard deviations from the
  training median (z = (x - median) / (1.4826 MAD), the vocabulary's standardisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .errors import BadInputError
from .vocab import PAD_ID, Vocabulary

OUT_OF_RANGE_Z = 10.0  # robust standard deviations from the training median: flagged
MAX_ABS_Z = 1e6  # robust standard deviations from the training median: refused (extreme="error") or missing
OVERFLOW_MODES = ("error", "keep_informative")
EXTREME_MODES = ("error", "missing")


class UntrainedOutputError(BadInputError):
    """A request for a token the model was never trained to output (its answer and error bar are not calibrated)."""


def _is_bool(x) -> bool:
    return isinstance(x, (bool, np.bool_))


def as_float_array(values, what: str) -> np.ndarray:
    """Convert to float64, naming the first non-numeric or boolean entry if that fails (booleans are refused:
    NumPy would silently read ``True`` as 1.0)."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "iuf":
        return values.astype(np.float64, copy=False)
    if isinstance(values, np.ndarray) and values.dtype.kind == "b":
        raise BadInputError(f"{what} must be numbers, got a boolean array (True/False are not measurements)")
    obj = np.asarray(values, dtype=object)
    first_bool = next((i for i, entry in enumerate(obj.flat) if _is_bool(entry)), None)
    if first_bool is not None:
        index = np.unravel_index(first_bool, obj.shape)
        raise BadInputError(f"{what} must be numbers (use NaN for missing); entry {tuple(map(int, index))} is the "
                            f"boolean {obj.flat[first_bool]!r}")
    try:
        return obj.astype(np.float64)
    except (TypeError, ValueError):
        for index in np.ndindex(obj.shape):
            try:
                float(obj[index])
            except (TypeError, ValueError):
                raise BadInputError(f"{what} must be numeric (use NaN for missing); entry {index} is "
                                    f"{obj[index]!r}") from None
        raise


def token_ids(vocab: Vocabulary, names) -> np.ndarray:
    """Names (str) or ids (int), 1-D or 2-D -> int32 ids of the same shape (unknown names list the closest)."""
    arr = np.asarray(names)
    if arr.size == 0 and (arr.ndim < 2 or arr.shape[-1] == 0):
        raise BadInputError(f"no token names given (got {names!r}); expected one name (or integer id) per value "
                            f"column, e.g. ['teff', 'logg']")
    if arr.dtype.kind == "b":
        raise BadInputError("token names must be strings or integer ids, got booleans")
    if arr.dtype.kind in "iu":
        if arr.size and (arr.min() < 0 or arr.max() > vocab.size):
            raise BadInputError(f"token ids must lie in [0, {vocab.size}] (0 = padding), got range [{arr.min()}, {arr.max()}]")
        return arr.astype(np.int32)
    if arr.dtype.kind in "f":
        raise BadInputError("token names must be strings or integer ids, got floats")
    return vocab.ids(arr)


def trained_outputs_text(vocab: Vocabulary) -> str:
    """The tokens ``vocab`` was trained to output, by group (long groups shortened to first .. last)."""
    parts = []
    for group in dict.fromkeys(vocab.groups):
        names = [n for n, g in zip(vocab.names, vocab.groups) if g == group and n in vocab.outputs]
        if names:
            shown = ", ".join(names) if len(names) <= 8 else f"{names[0]} .. {names[-1]} ({len(names)} tokens)"
            parts.append(f"{group}: {shown}")
    return "; ".join(parts) or "none"


def request_ids(vocab: Vocabulary, names, allow_untrained: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Requested names (one name, or a list of names or ids) -> (int32 ids [R], untrained bool [R]).

    A token outside ``vocab.outputs`` was never requested in training (the paper withholds ``bprp`` and ``jk``):
    the model answers it, but its value and error bar are not calibrated (10-45x too small error bars for the
    shipped model). Such a request raises :class:`UntrainedOutputError` listing the trained outputs, unless
    ``allow_untrained``; the caller then flags the answer."""
    if isinstance(names, (str, int, np.integer)):
        names = [names]
    names = list(names)
    if not names:
        raise BadInputError("request names must be a non-empty list of token names or ids, got []")
    ids = token_ids(vocab, names)
    if ids.ndim != 1:
        raise BadInputError(f"request names must be a non-empty list of token names or ids, got {names!r}")
    if (ids == PAD_ID).any():
        raise BadInputError("cannot request the padding token (id 0)")
    untrained = ~vocab.output_mask_by_id[ids]
    if untrained.any() and not allow_untrained:
        bad = vocab.names_of(ids[untrained])
        raise UntrainedOutputError(
            f"{', '.join(bad)}: never trained as an output of this model (training never requested "
            f"{'it' if len(bad) == 1 else 'them'}), so the answer and its error bar are not calibrated. "
            f"Trained outputs: {trained_outputs_text(vocab)}. Pass allow_untrained=True to answer anyway (the "
            f"result is flagged: res.untrained, res['<name>_untrained'])"
        )
    return ids, untrained


def duplicate_check(vocab: Vocabulary, ids: np.ndarray, star_offset: int = 0) -> None:
    """Refuse the same token twice: in shared names ``ids`` [n], or in one star of per-star ``ids`` [N, n]."""
    rows = ids[None, :] if ids.ndim == 1 else ids
    order = np.argsort(rows, axis=1, kind="stable")
    s = np.take_along_axis(rows, order, axis=1)
    dup = (s[:, 1:] == s[:, :-1]) & (s[:, 1:] != PAD_ID)
    if not dup.any():
        return
    star, k = np.argwhere(dup)[0]
    cols = sorted(order[star, k:k + 2].tolist())
    name = vocab.names_of([int(s[star, k])])[0]
    where = "names" if ids.ndim == 1 else f"the names of star {star + star_offset}"
    raise BadInputError(f"token {name!r} appears twice in {where} (columns {cols[0]} and {cols[1]}); each token may "
                        f"be given once per star")


def extreme_mask(vocab: Vocabulary, values: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """bool, the shape of ``values``: finite values of real tokens more than ``MAX_ABS_Z`` robust standard
    deviations from the training median (computed in float64, before the float32 cast)."""
    ids = np.broadcast_to(ids, values.shape)
    with np.errstate(over="ignore", invalid="ignore"):
        z = (values - vocab.centre_by_id[ids]) / vocab.scale_by_id[ids]
    return np.isfinite(values) & (ids != PAD_ID) & ~(np.abs(z) <= MAX_ABS_Z)


def refuse_extreme(vocab: Vocabulary, values: np.ndarray, ids: np.ndarray, what: str = "star",
                   star_offset: int = 0) -> None:
    """Raise :class:`BadInputError` naming the first value beyond ``MAX_ABS_Z`` (see :func:`extreme_mask`)."""
    bad = extreme_mask(vocab, values, ids)
    if not bad.any():
        return
    star, col = np.argwhere(bad)[0]
    tok = int(np.broadcast_to(ids, values.shape)[star, col])
    name, x = vocab.names_of([tok])[0], values[star, col]
    centre, scale = vocab.centre_by_id[tok], vocab.scale_by_id[tok]
    raise BadInputError(
        f"{what} {star + star_offset}, column {col}: {name} = {x:.6g} lies {abs(x - centre) / scale:.3g} robust "
        f"standard deviations from the training median {centre:.6g} (allowed: {MAX_ABS_Z:.0e}, i.e. {name} within "
        f"{centre - MAX_ABS_Z * scale:.6g} .. {centre + MAX_ABS_Z * scale:.6g}); such a value is no measurement and "
        f"overflows the float32 network into NaN. Fix it, set it to NaN (missing), or pass extreme='missing'"
    )


@dataclass(frozen=True)
class PreparedInputs:
    """Standardised model inputs of N stars (real tokens first, trailing padding).

    values [N, T] float32, tokens [N, T] int32, errors [N, T] float32 (standardised; 0 = unknown),
    raw [N, T] float64 physical values (NaN at padding), prior_only [N] bool (no real token),
    out_of_range [N, T] bool, dropped [N] int (tokens dropped by ``keep_informative``), extreme [N] int
    (values beyond ``MAX_ABS_Z`` treated as missing by ``extreme="missing"``).
    """

    values: np.ndarray
    tokens: np.ndarray
    errors: np.ndarray
    raw: np.ndarray
    prior_only: np.ndarray
    out_of_range: np.ndarray
    dropped: np.ndarray
    extreme: np.ndarray

    @property
    def n_out_of_range(self) -> np.ndarray:
        """int [N]: inputs outside the training range, counting the extreme values made missing."""
        return self.out_of_range.sum(axis=1) + self.extreme


def prepare_inputs(vocab: Vocabulary, values, names, errors=None, *, context_length: int, overflow: str = "error",
                   token_range: tuple[np.ndarray, np.ndarray] | None = None, extreme: str = "error",
                   star_offset: int = 0) -> PreparedInputs:
    """Validate and standardise user inputs.

    values: [N, n] or [n] (one star) numbers, NaN = missing. names: [n] names/ids for every star or [N, n]
    per star (a token at most once per star). errors: None or the values' shape (physical units, NaN =
    unknown). extreme: ``"error"`` refuses a value beyond ``MAX_ABS_Z`` robust standard deviations,
    ``"missing"`` treats it as missing (counted in ``extreme``). star_offset: added to the star numbers in
    error messages (a caller feeding a catalogue in chunks).
    """
    if overflow not in OVERFLOW_MODES:
        raise BadInputError(f"overflow must be one of {OVERFLOW_MODES}, got {overflow!r}")
    if extreme not in EXTREME_MODES:
        raise BadInputError(f"extreme must be one of {EXTREME_MODES}, got {extreme!r}")
    vals = as_float_array(values, "values")
    if vals.ndim == 1:
        vals = vals[None, :]
    if vals.ndim != 2:
        raise BadInputError(f"values must be [N stars, n tokens] or [n tokens] for one star, got shape {vals.shape}")
    n_stars, n_cols = vals.shape
    ids = token_ids(vocab, names)
    if ids.ndim == 1:
        if ids.shape[0] != n_cols:
            raise BadInputError(f"{ids.shape[0]} token names for {n_cols} value columns; they must match")
        duplicate_check(vocab, ids)
        ids = np.broadcast_to(ids, vals.shape)
    elif ids.ndim == 2:
        if ids.shape != vals.shape:
            raise BadInputError(f"per-star names must have the values' shape {vals.shape}, got {ids.shape}")
        duplicate_check(vocab, ids, star_offset)
    else:
        raise BadInputError(f"names must be [n] or [N, n], got shape {ids.shape}")
    if np.isinf(vals).any():
        star, col = np.argwhere(np.isinf(vals))[0]
        raise BadInputError(f"values must be finite or NaN (missing); star {star + star_offset}, column {col} "
                            f"({vocab.names_of([int(ids[star, col])])[0]}) is {vals[star, col]}")
    n_extreme = np.zeros(n_stars, dtype=np.int64)
    if extreme == "error":
        refuse_extreme(vocab, vals, ids, star_offset=star_offset)
    else:
        far = extreme_mask(vocab, vals, ids)
        if far.any():
            vals = np.where(far, np.nan, vals)
            n_extreme = far.sum(axis=1)
    if errors is not None:
        errs = as_float_array(errors, "errors")
        if errs.ndim == 1:
            errs = errs[None, :]
        if errs.shape != vals.shape:
            raise BadInputError(f"errors must have the values' shape {vals.shape}, got {errs.shape}")
        if (errs < 0).any():
            raise BadInputError("errors must be >= 0 (NaN = unknown)")
    else:
        errs = None

    z, tok, err = vocab.standardize(vals, ids, errs)
    real = tok != PAD_ID
    raw = np.where(real, vals, np.nan)
    # Move real tokens to the front of each star (stable), so that only real tokens count.
    if overflow == "keep_informative":
        # Smallest standardised error first; an error given as NaN / inf ranks after every finite one.
        rank = err.astype(np.float64)
        if errs is not None:
            rank = np.where(np.isfinite(errs), rank, np.finfo(np.float64).max)
        order = np.argsort(np.where(real, rank, np.inf), axis=1, kind="stable")
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
            raise BadInputError(
                f"star {star + star_offset} has {n_real[star]} real (non-missing) tokens but the model's context "
                f"length is {context_length}; drop columns, or pass overflow='keep_informative' to keep the "
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
        out_of_range=out_of_range, dropped=dropped, extreme=n_extreme,
    )
