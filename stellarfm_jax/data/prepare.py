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

from ..errors import BadInputError
from .. import __version__, schemas
from .catalogue import Catalogue
from .dataset import Dataset, Split
from .h5io import DATA_CODE_VERSION, atomic_write, write_dataset
from .split import read_id_list, split_of
from .summary import format_summary, summarise, summary_json

SOURCES = ("apogee-xp-library", "original-h5", "gaia-archive")


def load_catalogue(schema: str, source: str, path=None, grid=None, cache_dir=None, g_from: str = "catalogue"
                   ) -> Catalogue:
    """Read ``source`` into ``schema`` tokens. ``path`` is required for original-h5 and gaia-archive; ``g_from``
    (gaia-archive only) says where the G magnitude comes from (`stellarfm_jax.data.archive.g_magnitudes`)."""
    schemas.get_schema(schema)  # unknown schema: an error listing the known ones, before any file is read
    if source == "apogee-xp-library":
        from .library import check_library_schema, library_catalogue, locate_library, read_library

        check_library_schema(schema)
        columns, digest = read_library(path or locate_library(cache_dir))
        return library_catalogue(columns, digest, grid=grid, schema=schema)
    if path is None:
        raise BadInputError(f"--source {source} needs a file path")
    from .library import sha256_of

    digest = sha256_of(path)
    if source == "original-h5":
        from .original_h5 import read_original_h5

        return read_original_h5(path, schema, grid=grid, sha256=digest)
    if source == "gaia-archive":
        from .archive import archive_catalogue, read_xp_continuous

        return archive_catalogue(read_xp_continuous(path), schema, grid=grid, path=str(path), sha256=digest,
                                 g_from=g_from)
    raise BadInputError(f"unknown source {source!r}; expected one of {SOURCES}")


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
                     provenance, catalogue.flags)


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
        raise BadInputError("the train split is empty: the source has too few stars (or all are excluded)")
    vocab = catalogue.vocab.with_statistics(splits["train"].values)
    provenance = {**catalogue.provenance, "code_version": f"stellarfm_jax {__version__} / data {DATA_CODE_VERSION}",
                  "split": "splitmix64(source_id) % 10: 0 test, 1 val, else train",
                  "excluded_from_train_val": int(excluded.sum())}
    return Dataset(vocab, splits["train"], splits["val"], splits["test"], provenance)


def output_path(out_dir, schema: str, source: str) -> Path:
    return Path(out_dir) / f"{schema}_{source}.h5"


def prepare(schema: str = schemas.DEFAULT_SCHEMA, source: str = "apogee-xp-library", path=None, out_dir=".",
            exclude_ids_file=None, grid=None, cache_dir=None, log=print, out_file=None, g_from: str = "catalogue"
            ) -> Path:
    """Prepare a data set file and its summary; returns the .h5 path. Nothing is left half-written on failure."""
    start = time.perf_counter()
    catalogue = drop_empty_tokens(load_catalogue(schema, source, path, grid=grid, cache_dir=cache_dir, g_from=g_from),
                                  log)
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
