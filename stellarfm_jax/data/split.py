"""Deterministic train / val / test split from the Gaia source_id (DESIGN §3).

``bucket = splitmix64(source_id) % 10``: bucket 0 -> test, 1 -> val, 2..9 -> train (10 / 10 / 80 %). splitmix64 is
Steele, Lea & Flood's 64-bit finaliser (the one behind Java's SplittableRandom): a fixed integer hash, so a star
lands in the same split on every machine, whatever else is in the catalogue, and duplicates of a star share it.
"""

from __future__ import annotations

import numpy as np

from ..errors import BadFileError

TEST_BUCKET = 0
VAL_BUCKET = 1
N_BUCKETS = 10


def splitmix64(x) -> np.ndarray:
    """splitmix64 finaliser of int64/uint64 values, as uint64 (wrapping arithmetic)."""
    z = np.asarray(x).astype(np.uint64)
    with np.errstate(over="ignore"):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def split_of(source_id) -> np.ndarray:
    """Split name per star ("train", "val" or "test"), [N] array of str."""
    bucket = splitmix64(source_id) % np.uint64(N_BUCKETS)
    return np.where(bucket == TEST_BUCKET, "test", np.where(bucket == VAL_BUCKET, "val", "train"))


def read_id_list(path) -> np.ndarray:
    """Source ids from a text file: one integer per line (or separated by commas / white space); '#' starts a
    comment. Returns int64 [M]."""
    ids = []
    with open(path) as f:
        for line_number, line in enumerate(f, 1):
            for word in line.split("#", 1)[0].replace(",", " ").split():
                try:
                    ids.append(int(word))
                except ValueError:
                    raise BadFileError(f"{path}:{line_number}: expected an integer source id, got {word!r}") from None
    return np.asarray(ids, dtype=np.int64)
