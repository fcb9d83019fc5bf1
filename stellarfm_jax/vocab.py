"""Vocabulary and standardisation (DESIGN §3): the object every data set and saved model carries.

Token ids: 0 is padding, token ``names[i]`` has id ``i + 1``. Values are standardised per token as
``(x - centre) / scale`` with centre = median and scale = 1.4826 * MAD over the training split.
"""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from .errors import UserError

PAD_ID = 0
TOKEN_GROUPS = ("spectrum", "colour", "label", "other")


def robust_scale(x: np.ndarray, axis=0) -> np.ndarray:
    """1.4826 * median absolute deviation (astropy's mad_std), ignoring NaN."""
    med = np.nanmedian(x, axis=axis, keepdims=True)
    return 1.482602218505602 * np.nanmedian(np.abs(x - med), axis=axis)


def evenly_spaced(names, count: int) -> list[str]:
    """``count`` names evenly spaced over ``names`` (all of them if there are fewer), e.g. flux tokens that fill a
    context."""
    if count >= len(names):
        return list(names)
    keep = np.unique(np.round(np.linspace(0, len(names) - 1, count)).astype(int))
    return [names[i] for i in keep]


def align_columns(values: np.ndarray, names, target_names) -> np.ndarray:
    """values [N, n] with columns ``names`` -> [N, len(target_names)] in ``target_names`` order, NaN where a target
    name has no column."""
    index = {n: j for j, n in enumerate(names)}
    cols = np.asarray([index.get(n, -1) for n in target_names])
    values = np.asarray(values)
    return np.where(cols >= 0, values[:, np.maximum(cols, 0)], np.nan)


class UnknownTokenError(UserError, KeyError, ValueError):
    """A token name that is not in the vocabulary; the message lists the closest valid names."""

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


@dataclass(frozen=True, eq=False)
class Vocabulary:
    """Token names, their standardisation and their roles.

    Attributes:
      names: token names in id order (id = 1 + index).
      centre, scale: float64 arrays [V] for standardisation.
      outputs: names the training sampler may request (the paper withholds ``bprp`` and ``jk``).
      groups: per-token role, one of ``TOKEN_GROUPS`` (used to build input sets such as
        "spectra + colours").
      schema: the schema name (``paper``, ``xp_sampled`` or a user's).
    """

    names: tuple[str, ...]
    centre: np.ndarray
    scale: np.ndarray
    outputs: tuple[str, ...]
    groups: tuple[str, ...]
    schema: str = "custom"

    def __post_init__(self):
        names = tuple(str(n) for n in self.names)
        object.__setattr__(self, "names", names)
        object.__setattr__(self, "centre", np.asarray(self.centre, dtype=np.float64).reshape(-1))
        object.__setattr__(self, "scale", np.asarray(self.scale, dtype=np.float64).reshape(-1))
        object.__setattr__(self, "outputs", tuple(self.outputs))
        object.__setattr__(self, "groups", tuple(self.groups))
        v = len(names)
        if len(set(names)) != v:
            dup = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"duplicate token names in vocabulary: {dup}")
        if self.centre.shape != (v,) or self.scale.shape != (v,) or len(self.groups) != v:
            raise ValueError(
                f"vocabulary of {v} names needs centre, scale and groups of length {v}; got "
                f"{self.centre.shape}, {self.scale.shape}, {len(self.groups)}"
            )
        if not np.all(np.isfinite(self.centre)) or not np.all(np.isfinite(self.scale)) or np.any(self.scale <= 0):
            bad = [n for n, c, s in zip(names, self.centre, self.scale) if not (np.isfinite(c) and np.isfinite(s) and s > 0)]
            raise ValueError(f"standardisation must be finite with scale > 0; bad tokens: {bad}")
        unknown = [n for n in self.outputs if n not in names]
        if unknown:
            raise ValueError(f"output tokens not in the vocabulary: {unknown}")
        bad_groups = sorted(set(self.groups) - set(TOKEN_GROUPS))
        if bad_groups:
            raise ValueError(f"token groups must be among {TOKEN_GROUPS}, got {bad_groups}")
        object.__setattr__(self, "_index", {n: i + 1 for i, n in enumerate(names)})

    # ------------------------------------------------------------------ construction
    @classmethod
    def unit(cls, names: Sequence[str], outputs: Iterable[str] | None = None, groups=None, schema="custom"):
        """A vocabulary with identity standardisation (centre 0, scale 1)."""
        names = tuple(names)
        return cls(
            names=names,
            centre=np.zeros(len(names)),
            scale=np.ones(len(names)),
            outputs=tuple(names if outputs is None else outputs),
            groups=tuple(groups or ["other"] * len(names)),
            schema=schema,
        )

    def with_statistics(self, values: np.ndarray) -> "Vocabulary":
        """Centre = median, scale = 1.4826 MAD per token over ``values`` [N, V] (NaN ignored).

        Call it on the training split only. A token with no finite value, or zero spread,
        is refused: it would make standardised values infinite.
        """
        values = np.asarray(values, dtype=np.float64)
        if values.ndim != 2 or values.shape[1] != self.size:
            raise ValueError(f"statistics need values of shape [N, {self.size}], got {values.shape}")
        finite = np.isfinite(values).any(axis=0)
        if not finite.all():
            raise ValueError(f"tokens with no finite value in the training data: {[n for n, f in zip(self.names, finite) if not f]}")
        centre = np.nanmedian(values, axis=0)
        scale = robust_scale(values, axis=0)
        zero = ~(scale > 0)
        if zero.any():
            raise ValueError(f"tokens with zero spread in the training data: {[n for n, z in zip(self.names, zero) if z]}")
        return Vocabulary(self.names, centre, scale, self.outputs, self.groups, self.schema)

    # ------------------------------------------------------------------ lookup
    @property
    def size(self) -> int:
        """V, the number of real tokens (the embedding has V + 1 rows)."""
        return len(self.names)

    def token_id(self, name: str) -> int:
        try:
            return self._index[name]
        except (KeyError, TypeError):
            close = difflib.get_close_matches(str(name), self.names, n=5, cutoff=0.5)
            hint = f"; closest valid names: {close}" if close else f"; valid names include {list(self.names[:8])}..."
            raise UnknownTokenError(f"unknown token name {name!r} (schema {self.schema!r}){hint}") from None

    def ids(self, names) -> np.ndarray:
        """Token ids for a (nested) sequence of names; same shape, int32."""
        arr = np.asarray(names, dtype=object)
        return np.vectorize(self.token_id, otypes=[np.int32])(arr) if arr.size else arr.astype(np.int32)

    def names_of(self, ids) -> list:
        ids = np.asarray(ids)
        if np.any((ids < 0) | (ids > self.size)):
            raise ValueError(f"token ids must lie in [0, {self.size}], got range [{ids.min()}, {ids.max()}]")
        table = np.array(("[pad]",) + self.names, dtype=object)
        return table[ids].tolist()

    def group_names(self, *groups: str) -> list[str]:
        return [n for n, g in zip(self.names, self.groups) if g in groups]

    # Arrays indexed by token id (row 0 = padding: centre 0, scale 1, never an output).
    @property
    def centre_by_id(self) -> np.ndarray:
        return np.concatenate([[0.0], self.centre])

    @property
    def scale_by_id(self) -> np.ndarray:
        return np.concatenate([[1.0], self.scale])

    @property
    def output_mask_by_id(self) -> np.ndarray:
        mask = np.zeros(self.size + 1, dtype=bool)
        mask[[self._index[n] for n in self.outputs]] = True
        return mask

    # ------------------------------------------------------------------ standardisation
    def standardize(self, values, ids, errors=None):
        """Standardise ``values`` for token ``ids`` (broadcastable). NaN values (or padding ids)
        become padding: value 0, id 0, error 0. Returns (values f32, ids int32, errors f32)."""
        values = np.asarray(values, dtype=np.float64)
        ids = np.broadcast_to(np.asarray(ids, dtype=np.int32), values.shape)
        missing = ~np.isfinite(values) | (ids == PAD_ID)
        z = (values - self.centre_by_id[ids]) / self.scale_by_id[ids]
        z = np.where(missing, 0.0, z).astype(np.float32)
        out_ids = np.where(missing, PAD_ID, ids).astype(np.int32)
        if errors is None:
            err = np.zeros_like(z)
        else:
            errors = np.broadcast_to(np.asarray(errors, dtype=np.float64), values.shape)
            err = np.where(missing | ~np.isfinite(errors), 0.0, errors / self.scale_by_id[ids]).astype(np.float32)
        return z, out_ids, err

    def destandardize(self, z, ids) -> np.ndarray:
        ids = np.asarray(ids)
        return np.asarray(z, dtype=np.float64) * self.scale_by_id[ids] + self.centre_by_id[ids]

    def destandardize_error(self, sigma, ids) -> np.ndarray:
        return np.asarray(sigma, dtype=np.float64) * self.scale_by_id[np.asarray(ids)]

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict:
        return {
            "schema": self.schema,
            "names": list(self.names),
            "centre": [float(x) for x in self.centre],
            "scale": [float(x) for x in self.scale],
            "outputs": list(self.outputs),
            "groups": list(self.groups),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Vocabulary":
        missing = {"names", "centre", "scale", "outputs", "groups"} - set(d)
        if missing:
            raise ValueError(f"vocabulary dict is missing keys {sorted(missing)}")
        return cls(tuple(d["names"]), d["centre"], d["scale"], tuple(d["outputs"]), tuple(d["groups"]), d.get("schema", "custom"))

    def save(self, path) -> None:
        with open(path, "w") as f:
            json.dump(self.to_dict(), f, indent=1)

    @classmethod
    def load(cls, path) -> "Vocabulary":
        with open(path) as f:
            return cls.from_dict(json.load(f))

    def equals(self, other: "Vocabulary") -> bool:
        return (
            self.names == other.names
            and self.outputs == other.outputs
            and self.groups == other.groups
            and np.array_equal(self.centre, other.centre)
            and np.array_equal(self.scale, other.scale)
        )

    def __repr__(self) -> str:
        return f"Vocabulary(schema={self.schema!r}, size={self.size}, outputs={len(self.outputs)})"
