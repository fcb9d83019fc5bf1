"""``prepare``: a source catalogue -> split data set in our HDF5 format, plus its Table-1 summary.

Steps: read the source into a schema's tokens (`Catalogue`); drop token columns with no value at all (e.g. alpha_m
from the original release), saying so; split by source id (`stellarfm_jax.data.split`); remove ``--exclude-ids``
stars from train and val (they may stay in test); fit the standardisation on the train split only
(`Vocabulary.with_statistics`); write ``<out>/<schema>_<source>.h5`` and ``..._summary.{txt,json}`` atomically.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .. import __version__, schemas
from .catalogue import Catalogue
from .dataset import Dataset, Split
from .h5io import atomic_write, write_dataset
from .split import read_id_list, split_of
from .summary import format_summary, summarise, summary_json

# Bump when a change alters prepared files (part of the cache key).
DATA_CODE_VERSION = "1"
SOURCES = ("apogee-xp-library", "original-h5", "gaia-archive")


def load_catalogue(schema: str, source: str, path=None, grid=None, cache_dir=None) -> Catalogue:
    """Read ``source`` into ``schema`` tokens. ``path`` is required for original-h5 and gaia-archive."""
    if schema not in ("xp_sampled", "paper"):
        raise ValueError(f"unknown schema {schema!r}; expected 'xp_sampled' or 'paper'")
    if source == "apogee-xp-library":
        if schema == "paper":
            raise ValueError(
                "the APOGEE x Gaia XP library holds sampled spectra, not XP coefficients, so it cannot make the "
                "'paper' schema (sampled flux does not convert back to coefficients); use --schema xp_sampled, or "
                "--source gaia-archive / original-h5 for the paper schema"
            )
        from .library import library_catalogue, locate_library, read_library

        columns, digest = read_library(path or locate_library(cache_dir))
        return library_catalogue(columns, digest, grid=grid)
    if path is None:
        raise ValueError(f"--source {source} needs a file path")
    from .library import sha256_of

    digest = sha256_of(path)
    if source == "original-h5":
        from .original_h5 import read_original_h5

        return read_original_h5(path, schema, grid=grid, sha256=digest)
    if source == "gaia-archive":
        from .archive import archive_catalogue, read_xp_continuous

        return archive_catalogue(read_xp_continuous(path), schema, grid=grid, path=str(path), sha256=digest)
    raise ValueError(f"unknown source {source!r}; expected one of {SOURCES}")


def drop_empty_tokens(catalogue: Catalogue, log=print) -> Catalogue:
    """Remove token columns with no finite value (a source without, e.g., alpha_m)."""
    has_value = np.isfinite(catalogue.values).any(axis=0)
    if has_value.all():
        return catalogue
    dropped = [n for n, h in zip(catalogue.vocab.names, has_value) if not h]
    log(f"[stellarfm_jax.data] tokens with no value in this source, left out of the vocabulary: {dropped}")
    names = [n for n, h in zip(catalogue.vocab.names, has_value) if h]
    vocab = schemas.schema_vocabulary(catalogue.vocab.schema, names)
    provenance = {**catalogue.provenance, "tokens_without_values": dropped}
    return Catalogue(vocab, catalogue.values[:, has_value], catalogue.errors[:, has_value], catalogue.source_id,
                     provenance)


def build_dataset(catalogue: Catalogue, exclude_ids=None) -> Dataset:
    """Split a catalogue by source id, drop excluded ids from train/val, and fit statistics on train only."""
    which = split_of(catalogue.source_id)
    excluded = np.zeros(len(catalogue), dtype=bool)
    if exclude_ids is not None and len(exclude_ids):
        excluded = np.isin(catalogue.source_id, np.asarray(exclude_ids, dtype=np.int64))
    splits = {}
    for name in ("train", "val", "test"):
        keep = (which == name) & (~excluded if name != "test" else True)
        splits[name] = Split(catalogue.values[keep], catalogue.errors[keep], catalogue.source_id[keep])
    if len(splits["train"]) == 0:
        raise ValueError("the train split is empty: the source has too few stars (or all are excluded)")
    vocab = catalogue.vocab.with_statistics(splits["train"].values)
    provenance = {**catalogue.provenance, "code_version": f"stellarfm_jax {__version__} / data {DATA_CODE_VERSION}",
                  "split": "splitmix64(source_id) % 10: 0 test, 1 val, else train",
                  "excluded_from_train_val": int(excluded.sum())}
    return Dataset(vocab, splits["train"], splits["val"], splits["test"], provenance)


def output_path(out_dir, schema: str, source: str) -> Path:
    return Path(out_dir) / f"{schema}_{source}.h5"


def prepare(schema: str = "xp_sampled", source: str = "apogee-xp-library", path=None, out_dir=".",
            exclude_ids_file=None, grid=None, cache_dir=None, log=print, out_file=None) -> Path:
    """Prepare a data set file and its summary; returns the .h5 path. Nothing is left half-written on failure."""
    start = time.perf_counter()
    catalogue = drop_empty_tokens(load_catalogue(schema, source, path, grid=grid, cache_dir=cache_dir), log)
    exclude = read_id_list(exclude_ids_file) if exclude_ids_file else None
    ds = build_dataset(catalogue, exclude)
    target = Path(out_file) if out_file else output_path(out_dir, schema, source)
    table = summarise(ds)
    title = (f"{schema} data set from {source} ({ds.vocab.size} tokens, "
             f"{sum(g == 'spectrum' for g in ds.vocab.groups)} spectrum tokens)")
    text = format_summary(table, title)
    write_dataset(target, ds)
    stem = target.with_suffix("")
    atomic_write(f"{stem}_summary.txt", lambda tmp: Path(tmp).write_text(text + "\n"))
    atomic_write(f"{stem}_summary.json", lambda tmp: Path(tmp).write_text(
        summary_json(table, {"schema": schema, "source": source, "tokens": list(ds.vocab.names),
                             "provenance": ds.provenance})))
    log(text)
    log(f"[stellarfm_jax.data] wrote {target} in {time.perf_counter() - start:.1f} s")
    return target


def read_summary(path) -> dict:
    """The JSON summary written next to a prepared file."""
    return json.loads(Path(f"{Path(path).with_suffix('')}_summary.json").read_text())
