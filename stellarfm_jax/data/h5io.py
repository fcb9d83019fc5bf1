"""Our HDF5 data-set format (DESIGN §3), read and written with h5py.

Layout of one file:
  attrs: format = "stellarfm_jax.dataset", format_version, data_code_version (from format version 2), schema,
         token_names (list of str), vocabulary (JSON: `Vocabulary.to_dict`, with the train-split standardisation),
         provenance (JSON)
  /train, /val, /test: groups, each with
         values    float32 [N, V]  physical units, vocabulary order, NaN = missing
         errors    float32 [N, V]  NaN = unknown
         source_id int64   [N]
Writing is atomic: a temporary file in the same folder, renamed into place only when complete.

Versions: ``FORMAT_VERSION`` 2 adds ``data_code_version`` (the version of the conversion code, part of the cache key
of the embedded data set) and the ``xp_coarse`` schema. Format-1 files are still read, with their schema
(``xp_sampled``, ``paper`` or a user's); a format-1 file claiming a schema that format 1 could not hold, or a file
from a newer format, is refused.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import h5py
import numpy as np

from .. import schemas
from ..errors import BadFileError
from ..vocab import Vocabulary
from .dataset import SPLITS, Dataset, Split

FORMAT = "stellarfm_jax.dataset"
FORMAT_VERSION = 2
# Bump when a change alters prepared files: part of the cached embedded data set's name and stored in every file, so
# an old cached file is never reused silently. 2: the xp_coarse schema (default), G from XP, format version 2.
DATA_CODE_VERSION = 2


class DatasetFormatError(BadFileError):
    """A file that is not a valid stellarfm_jax data set (the message says what is wrong)."""


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path, write) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file to ``path``; on any error remove it, so nothing
    half-written is left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_dataset(path, ds: Dataset) -> Path:
    """Write ``ds`` to ``path`` (atomic). Returns the path."""

    def write(tmp):
        with h5py.File(tmp, "w") as f:
            f.attrs["format"] = FORMAT
            f.attrs["format_version"] = FORMAT_VERSION
            f.attrs["data_code_version"] = DATA_CODE_VERSION
            f.attrs["schema"] = ds.vocab.schema
            f.attrs["token_names"] = np.array(ds.vocab.names, dtype=h5py.string_dtype())
            f.attrs["vocabulary"] = json.dumps(ds.vocab.to_dict())
            f.attrs["provenance"] = json.dumps(ds.provenance)
            for name in SPLITS:
                split = ds.split(name)
                group = f.create_group(name)
                group.create_dataset("values", data=split.values, compression="gzip", compression_opts=1)
                group.create_dataset("errors", data=split.errors, compression="gzip", compression_opts=1)
                group.create_dataset("source_id", data=split.source_id)

    return atomic_write(path, write)


def validate_names(schema: str, names) -> None:
    """Raise DatasetFormatError when a registered schema (`stellarfm_jax.schemas.schema_names`) holds names it does
    not have. Other schema names (a user's, "synthetic") are taken as they are."""
    if not schemas.is_registered(schema):
        return
    try:
        schemas.get_schema(schema).validate_names(list(names))
    except ValueError as err:
        raise DatasetFormatError(str(err)) from None


def file_versions(path) -> tuple[int, int | None]:
    """(format_version, data_code_version or None for format-1 files) of a data set file, without reading it."""
    with h5py.File(path, "r") as f:
        code = f.attrs.get("data_code_version")
        return int(f.attrs.get("format_version", -1)), None if code is None else int(code)


def read_dataset(path) -> Dataset:
    """Read and validate a data set: format tag, known schema and token names, shapes, and no token column that is
    all NaN in the train split (it could be neither standardised nor learned)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"data set file not found: {path}")
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise DatasetFormatError(f"{path}: not a readable HDF5 file ({err})") from None
    with f:
        if f.attrs.get("format") != FORMAT:
            raise DatasetFormatError(f"{path}: not a {FORMAT} file (format attribute {f.attrs.get('format')!r})")
        version = int(f.attrs.get("format_version", -1))
        if version > FORMAT_VERSION:
            raise DatasetFormatError(f"{path}: format version {version} is newer than this code's {FORMAT_VERSION}; "
                                     f"update stellarfm_jax or prepare the file again")
        vocab = Vocabulary.from_dict(json.loads(f.attrs["vocabulary"]))
        if schemas.is_registered(vocab.schema) and version < schemas.get_schema(vocab.schema).first_format_version:
            raise DatasetFormatError(
                f"{path}: format version {version} cannot hold the {vocab.schema!r} schema (it starts at format "
                f"version {schemas.get_schema(vocab.schema).first_format_version}); prepare the file again")
        names = [str(n) for n in f.attrs["token_names"]]
        if tuple(names) != vocab.names or str(f.attrs["schema"]) != vocab.schema:
            raise DatasetFormatError(f"{path}: token_names / schema attributes disagree with the stored vocabulary")
        validate_names(vocab.schema, names)
        splits = {}
        for name in SPLITS:
            if name not in f:
                raise DatasetFormatError(f"{path}: missing split group '/{name}'")
            group = f[name]
            missing = [k for k in ("values", "errors", "source_id") if k not in group]
            if missing:
                raise DatasetFormatError(f"{path}: split '/{name}' lacks datasets {missing}")
            values, errors, source_id = group["values"][...], group["errors"][...], group["source_id"][...]
            if values.ndim != 2 or values.shape[1] != vocab.size or errors.shape != values.shape \
                    or source_id.shape != (values.shape[0],):
                raise DatasetFormatError(
                    f"{path}: split '/{name}' has values {values.shape}, errors {errors.shape}, source_id "
                    f"{source_id.shape}; expected [N, {vocab.size}], [N, {vocab.size}], [N]"
                )
            splits[name] = Split(values, errors, source_id)
        provenance = json.loads(f.attrs.get("provenance", "{}"))
    empty = [n for n, any_value in zip(vocab.names, np.isfinite(splits["train"].values).any(axis=0)) if not any_value]
    if empty:
        raise DatasetFormatError(f"{path}: token columns with no value in the train split: {empty}")
    return Dataset(vocab, splits["train"], splits["val"], splits["test"], provenance)
