"""In-memory data set: a vocabulary plus train / val / test splits of raw (physical-unit) values."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..vocab import Vocabulary

SPLITS = ("train", "val", "test")


@dataclass(frozen=True, eq=False)
class Split:
    """One split. values/errors: float32 [N, V] in physical units, vocabulary order, NaN = missing
    (value) or unknown (error); source_id: int64 [N]."""

    values: np.ndarray
    errors: np.ndarray
    source_id: np.ndarray

    def __post_init__(self):
        values = np.asarray(self.values, dtype=np.float32)
        errors = np.asarray(self.errors, dtype=np.float32)
        source_id = np.asarray(self.source_id, dtype=np.int64)
        if values.ndim != 2:
            raise ValueError(f"split values must be 2-D [N, V], got shape {values.shape}")
        if errors.shape != values.shape:
            raise ValueError(f"split errors must have the values' shape {values.shape}, got {errors.shape}")
        if source_id.shape != (values.shape[0],):
            raise ValueError(f"split source_id must have shape ({values.shape[0]},), got {source_id.shape}")
        object.__setattr__(self, "values", values)
        object.__setattr__(self, "errors", errors)
        object.__setattr__(self, "source_id", source_id)

    def __len__(self) -> int:
        return self.values.shape[0]

    def subset(self, index) -> "Split":
        return Split(self.values[index], self.errors[index], self.source_id[index])


@dataclass(frozen=True, eq=False)
class Dataset:
    """A vocabulary (standardisation fitted on the train split) and its three splits."""

    vocab: Vocabulary
    train: Split
    val: Split
    test: Split
    provenance: dict = field(default_factory=dict)

    def __post_init__(self):
        for name in SPLITS:
            split = getattr(self, name)
            if split.values.shape[1] != self.vocab.size:
                raise ValueError(
                    f"{name} split has {split.values.shape[1]} token columns but the vocabulary has {self.vocab.size} "
                    f"({self.vocab.schema!r} schema)"
                )

    def without_tokens(self, names) -> "Dataset":
        """The same data set with the tokens ``names`` removed from the vocabulary and every split (the other
        tokens keep their standardisation). Unknown names raise, listing the closest valid ones."""
        names = list(names)
        if not names:
            return self
        drop = {self.vocab.token_id(n) - 1 for n in names}
        keep = [j for j in range(self.vocab.size) if j not in drop]
        if not keep:
            raise ValueError("cannot drop every token of the vocabulary")
        v = self.vocab
        vocab = Vocabulary(tuple(v.names[j] for j in keep), v.centre[keep], v.scale[keep],
                           tuple(n for n in v.outputs if n not in names), tuple(v.groups[j] for j in keep), v.schema)
        splits = {s: Split(getattr(self, s).values[:, keep], getattr(self, s).errors[:, keep], getattr(self, s).source_id)
                  for s in SPLITS}
        provenance = dict(self.provenance, dropped_tokens=sorted(names))
        return Dataset(vocab, **splits, provenance=provenance)

    def split(self, name: str) -> Split:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        return getattr(self, name)
