"""Catalogue tables in and out: streaming readers (our HDF5 data set, CSV, Gaia archive XP rows), CSV / HDF5
writers, and :func:`predict_catalogue`, which predicts tokens for every star of a file with bounded memory.

Inputs (``fmt="auto"`` guesses from the file):
  * our HDF5 data set (``stellarfm_jax.data`` format; ``split`` picks train / val / test / all), read a chunk of
    rows at a time;
  * a CSV file with named columns: token names as inputs, ``<token>_error`` columns as their errors, an optional
    ``source_id`` (or ``id``) column carried to the output; empty cells are missing; a UTF-8 byte-order mark is
    ignored;
  * Gaia archive XP_CONTINUOUS rows (CSV / ECSV / VOTable / FITS with the coefficient array columns, plus
    ``phot_g_mean_mag``), converted to the model's schema by ``stellarfm_jax.data.archive``.
Output: CSV or HDF5 (by extension), written atomically, one row per input star in input order: ``source_id``
(or ``row``), each requested token and ``<token>_error`` (physical units), ``prior_only`` and ``n_out_of_range``.
An input without stars gives an output with the header (CSV) or the empty columns (HDF5).
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
import sys
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .errors import BadFileError, BadInputError, MissingFileError
from .formats import atomic_file
from .inputs import request_ids

DEFAULT_READ_ROWS = 65536
ID_COLUMNS = ("source_id", "id")
FORMATS = ("auto", "h5", "csv", "archive")
CSV_ENCODING = "utf-8-sig"  # reads plain UTF-8 too; drops the byte-order mark some spreadsheet programs write


@dataclass
class Block:
    """A chunk of input stars: names [k], values [n, k] float64 (NaN = missing), errors [n, k] or None,
    ids [n] int64 or None."""

    names: list[str]
    values: np.ndarray
    errors: np.ndarray | None
    ids: np.ndarray | None


# ------------------------------------------------------------------------------------------ readers
def _csv_header(path: pathlib.Path) -> list[str]:
    with open(path, newline="", encoding=CSV_ENCODING) as f:
        return next(csv.reader(f), [])


def detect_format(path: pathlib.Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return "h5"
    if suffix in (".fits", ".fit", ".vot", ".xml", ".ecsv"):
        return "archive"
    if suffix == ".csv":
        header = [h.strip() for h in _csv_header(path)]
        return "archive" if "bp_coefficients" in header or "rp_coefficients" in header else "csv"
    raise BadInputError(f"cannot tell the format of {path} from its extension; pass --format h5, csv or archive")


def count_rows(path: pathlib.Path, fmt: str, split: str) -> int | None:
    if fmt == "h5":
        import h5py

        with h5py.File(path, "r") as f:
            return sum(f[s]["values"].shape[0] for s in _h5_splits(f, split, path))
    if fmt == "csv":
        with open(path, "rb") as f:
            return max(0, sum(1 for _ in f) - 1)
    return None


def _h5_splits(f, split: str, path) -> list[str]:
    from .data.dataset import SPLITS

    if f.attrs.get("format") != "stellarfm_jax.dataset":
        raise BadFileError(f"{path}: not a stellarfm_jax data set (format attribute {f.attrs.get('format')!r})")
    wanted = list(SPLITS) if split == "all" else [split]
    missing = [s for s in wanted if s not in f]
    if missing:
        raise BadFileError(f"{path}: no split {missing}; present: {[k for k in f.keys()]}")
    return wanted


def read_h5(path: pathlib.Path, split: str, rows: int) -> Iterator[Block]:
    """Our HDF5 data set, ``rows`` stars at a time (h5py reads only that slice)."""
    import h5py

    with h5py.File(path, "r") as f:
        names = [str(n) for n in f.attrs["token_names"]]
        for s in _h5_splits(f, split, path):
            group = f[s]
            n = group["values"].shape[0]
            if group["values"].ndim != 2 or group["values"].shape[1] != len(names):
                raise BadFileError(f"{path}: {s}/values has shape {group['values'].shape}, expected (N, {len(names)}) "
                                   f"for its {len(names)} token names")
            for start in range(0, n, rows) if n else [0]:  # an empty split still gives its (empty) block
                sl = slice(start, min(n, start + rows))
                yield Block(names, group["values"][sl].astype(np.float64), group["errors"][sl].astype(np.float64),
                            group["source_id"][sl].astype(np.int64))


def _csv_chunks(path: pathlib.Path, rows: int) -> Iterator[tuple[list[str], list[list[str]], int]]:
    """(header, rows of cells, index of the first row) a chunk at a time; a header-only file gives one empty
    chunk, so that readers still see its columns."""
    with open(path, newline="", encoding=CSV_ENCODING) as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise BadFileError(f"{path}: empty CSV file (expected a header of token names)")
        chunk, first = [], 0
        for row in reader:
            if not row:  # a blank line
                continue
            chunk.append(row)
            if len(chunk) == rows:
                yield header, chunk, first
                first += len(chunk)
                chunk = []
        if chunk or first == 0:
            yield header, chunk, first


def _parse_column(cells, name: str, first_row: int, path) -> np.ndarray:
    out = np.empty(len(cells), dtype=np.float64)
    for i, cell in enumerate(cells):
        cell = cell.strip()
        if cell == "" or cell.lower() in ("nan", "null", "none", "--"):
            out[i] = np.nan
            continue
        if cell.lower() in ("true", "false"):
            raise BadFileError(f"{path}: boolean value {cell!r} in column {name!r}, data row {first_row + i + 1}; "
                               f"expected a number")
        try:
            out[i] = float(cell)
        except ValueError:
            raise BadFileError(f"{path}: non-numeric value {cell!r} in column {name!r}, data row "
                               f"{first_row + i + 1}") from None
    return out


def check_csv_header(header: list[str], path) -> list[str]:
    """Stripped column names; an empty or repeated name is refused (naming it and its position)."""
    names = [h.strip() for h in header]
    for j, name in enumerate(names):
        if not name:
            raise BadFileError(f"{path}: column {j + 1} of the header has no name (expected token names)")
    seen = {}
    for j, name in enumerate(names):
        if name in seen:
            raise BadFileError(f"{path}: column {name!r} appears twice in the header (columns {seen[name] + 1} and "
                               f"{j + 1}); each token may be given once")
        seen[name] = j
    return names


def read_csv(path: pathlib.Path, rows: int) -> Iterator[Block]:
    """A CSV with named token columns, ``<token>_error`` columns and an optional id column."""
    for header, chunk, first in _csv_chunks(path, rows):
        header = check_csv_header(header, path)
        width = len(header)
        bad = next((i for i, r in enumerate(chunk) if len(r) != width), None)
        if bad is not None:
            raise BadFileError(f"{path}: data row {first + bad + 1} has {len(chunk[bad])} fields, the header {width}")
        cols = list(zip(*chunk)) if chunk else [()] * width
        id_col = next((j for j, h in enumerate(header) if h in ID_COLUMNS), None)
        ids = None
        if id_col is not None:
            try:
                ids = np.array([int(c) for c in cols[id_col]], dtype=np.int64)
            except ValueError:
                raise BadFileError(f"{path}: column {header[id_col]!r} must hold integers") from None
        error_cols = {h[: -len("_error")]: j for j, h in enumerate(header) if h.endswith("_error")}
        names, values, errors = [], [], []
        for j, h in enumerate(header):
            if j == id_col or h.endswith("_error"):
                continue
            names.append(h)
            values.append(_parse_column(cols[j], h, first, path))
            e = error_cols.get(h)
            errors.append(_parse_column(cols[e], f"{h}_error", first, path) if e is not None
                          else np.full(len(chunk), np.nan))
        if not names:
            raise BadFileError(f"{path}: no input column (only {header})")
        yield Block(names, np.stack(values, 1), np.stack(errors, 1), ids)


def read_archive(path: pathlib.Path, model, rows: int) -> Iterator[Block]:
    """Gaia archive XP_CONTINUOUS rows converted to ``model``'s schema (the whole table is read, then predicted
    ``rows`` at a time)."""
    from .data.archive import archive_catalogue, read_xp_continuous

    grid = (model.metadata.get("provenance") or {}).get("grid_centres_nm")
    cat = archive_catalogue(read_xp_continuous(path), schema=model.vocab.schema, grid=grid, path=str(path))
    names = list(cat.vocab.names)
    for start in range(0, len(cat), rows):
        sl = slice(start, start + rows)
        yield Block(names, cat.values[sl].astype(np.float64), cat.errors[sl].astype(np.float64), cat.source_id[sl])


def read_blocks(path: pathlib.Path, fmt: str, model, split: str = "test",
                rows: int = DEFAULT_READ_ROWS) -> Iterator[Block]:
    """The stars of ``path`` in ``fmt`` (h5, csv or archive) as blocks of at most ``rows``."""
    if fmt == "h5":
        return read_h5(path, split, rows)
    if fmt == "csv":
        return read_csv(path, rows)
    if fmt == "archive":
        return read_archive(path, model, rows)
    raise BadInputError(f"unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")


# ------------------------------------------------------------------------------------------ writers
def _csv_cells(arr: np.ndarray) -> list[str]:
    if arr.dtype.kind == "f":
        return [repr(float(x)) for x in arr]
    if arr.dtype.kind == "b":
        return ["1" if x else "0" for x in arr]
    if arr.dtype.kind in "USO":  # text (e.g. the inversion's flag reasons)
        return [x.decode() if isinstance(x, bytes) else str(x) for x in arr]
    return [str(int(x)) for x in arr]


class CSVWriter:
    def __init__(self, path: pathlib.Path):
        self.path = path
        self.file = open(path, "w", newline="", encoding="utf-8")
        self.writer = csv.writer(self.file)
        self.header_written = False

    def write(self, columns: dict[str, np.ndarray]) -> None:
        if not self.header_written:
            self.writer.writerow(list(columns))
            self.header_written = True
        self.writer.writerows(zip(*(_csv_cells(np.asarray(a)) for a in columns.values())))

    def close(self) -> None:
        self.file.close()


class HDF5Writer:
    """One resizable dataset per column (grown chunk by chunk)."""

    def __init__(self, path: pathlib.Path, attrs: dict):
        import h5py

        self.file = h5py.File(path, "w")
        for k, v in attrs.items():
            self.file.attrs[k] = v
        self.n = 0

    def write(self, columns: dict[str, np.ndarray]) -> None:
        m = len(next(iter(columns.values())))
        for name, arr in columns.items():
            arr = np.asarray(arr)
            if name not in self.file:
                import h5py

                dtype = h5py.string_dtype() if arr.dtype.kind in "USO" else arr.dtype  # text: variable-length UTF-8
                self.file.create_dataset(name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(65536,))
            if arr.dtype.kind in "US":
                arr = arr.astype(object)
            ds = self.file[name]
            ds.resize((self.n + m,))
            ds[self.n:] = arr
        self.n += m

    def close(self) -> None:
        self.file.close()


def write_table(output_path, blocks, answer, total: int | None = None, progress: bool = True, desc: str = "",
                attrs: dict | None = None) -> int:
    """Stream ``answer(block, first_row) -> {column: array [n]}`` over ``blocks`` into ``output_path`` (CSV or HDF5 by
    its extension), atomically: a reader never sees a partial file and an error leaves none. A progress bar over
    ``total`` stars goes to stderr. Returns the number of rows written."""
    output_path = pathlib.Path(output_path)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=total, unit="star", desc=desc, dynamic_ncols=True, file=sys.stderr)
    n_rows = 0
    try:
        with atomic_file(output_path) as tmp:
            writer = CSVWriter(tmp) if output_path.suffix.lower() == ".csv" else HDF5Writer(tmp, attrs or {})
            try:
                for block in blocks:
                    columns = answer(block, n_rows)
                    writer.write(columns)
                    n = len(next(iter(columns.values())))
                    n_rows += n
                    if bar is not None:
                        bar.update(n)
            finally:
                writer.close()
    finally:
        if bar is not None:
            bar.close()
    return n_rows


# ------------------------------------------------------------------------------------------ driver
def select_inputs(block: Block, model, requested: list[str], inputs: list[str] | None,
                  keep_requested: bool) -> Block:
    """Keep the input columns: ``inputs`` (token names or group names) if given, else every column except
    the requested tokens (unless ``keep_requested``)."""
    if inputs:
        wanted = set()
        for item in inputs:
            group = model.vocab.group_names(item)
            if not group:
                model.vocab.token_id(item)  # unknown names fail listing the closest valid ones
                if item not in block.names:
                    raise BadInputError(f"--inputs {item!r} is not a column of the input; columns: {block.names[:20]}")
            wanted.update(group or [item])
        keep = [j for j, n in enumerate(block.names) if n in wanted]
    else:
        keep = [j for j, n in enumerate(block.names) if keep_requested or n not in requested]
    errors = None if block.errors is None else block.errors[:, keep]
    return Block([block.names[j] for j in keep], block.values[:, keep], errors, block.ids)


def _same_file(a: pathlib.Path, b: pathlib.Path) -> bool:
    if a.resolve() == b.resolve():
        return True
    try:
        return os.path.samefile(a, b)  # hard links, bind mounts
    except OSError:
        return False


def check_paths(input_path: pathlib.Path, output_path: pathlib.Path) -> None:
    """The input must exist, the output must not be the input (by path or by inode) and must be .csv or .h5."""
    if not input_path.is_file():
        raise MissingFileError(f"input file not found: {input_path}")
    if _same_file(input_path, output_path):
        raise BadInputError(f"--output {output_path} is the input file: the predictions would replace it; choose "
                            f"another output path")
    if output_path.suffix.lower() not in (".csv", ".h5", ".hdf5"):
        raise BadInputError(f"--output must end in .csv, .h5 or .hdf5, got {output_path.name}")


def predict_catalogue(model, input_path, request: list[str], output_path, fmt: str = "auto", split: str = "test",
                      inputs: list[str] | None = None, keep_requested: bool = False,
                      read_rows: int = DEFAULT_READ_ROWS, batch_size: int | None = None, overflow: str = "error",
                      progress: bool = True, model_name: str | None = None, allow_untrained: bool = False,
                      extreme: str = "error") -> dict:
    """Predict ``request`` for every star of ``input_path`` with ``model`` (a StellarModel) and write
    ``output_path`` atomically; returns a summary (stars, prior_only, out_of_range, seconds, stars_per_s, output).

    By default a requested token is not used as an input (predicting teff from a file that holds teff would just
    echo it); ``inputs`` names the input tokens (or groups: spectrum, colour, label, other) explicitly. Only one read
    chunk (``read_rows``) and one device batch (``batch_size``) of the encoder output exist at any time."""
    t0 = time.perf_counter()
    input_path, output_path = pathlib.Path(input_path), pathlib.Path(output_path)
    check_paths(input_path, output_path)
    if not request:
        raise BadInputError("no token requested (expected comma-separated token names)")
    if read_rows < 1:
        raise BadInputError(f"--read-rows must be >= 1, got {read_rows}")
    # Unknown (listing the closest names) or never-trained requested names fail before any work.
    request_ids(model.vocab, request, allow_untrained)
    fmt = detect_format(input_path) if fmt == "auto" else fmt
    blocks = read_blocks(input_path, fmt, model, split, read_rows)
    attrs = {"model": str(model_name or ""), "input": str(input_path), "request": json.dumps(request)}
    counts = {"prior_only": 0, "out_of_range": 0}

    def answer(block: Block, first_row: int) -> dict[str, np.ndarray]:
        block = select_inputs(block, model, request, inputs, keep_requested)
        n = block.values.shape[0]
        if n == 0:  # no stars: answer one empty star and keep no row, so that the columns are still written
            block = Block(block.names, np.full((1, len(block.names)), np.nan), None, block.ids)
        result = model.perceive(block.values, block.names, block.errors, overflow=overflow, extreme=extreme,
                                chunk_size=batch_size, star_offset=first_row).request(
                                    request, allow_untrained=allow_untrained)
        ids = {"source_id": block.ids} if block.ids is not None else {
            "row": np.arange(first_row, first_row + len(result), dtype=np.int64)}
        columns = {k: np.asarray(v)[:n] for k, v in {**ids, **result.to_dict()}.items()}
        counts["prior_only"] += int(columns["prior_only"].sum())
        counts["out_of_range"] += int((columns["n_out_of_range"] > 0).sum())
        return columns

    n_stars = write_table(output_path, blocks, answer, total=count_rows(input_path, fmt, split) if progress else None,
                          progress=progress, desc="predict", attrs=attrs)
    n_prior, n_flagged = counts["prior_only"], counts["out_of_range"]
    seconds = time.perf_counter() - t0
    return {"stars": n_stars, "prior_only": n_prior, "out_of_range": n_flagged, "seconds": seconds,
            "stars_per_s": n_stars / seconds if seconds > 0 else float("nan"), "output": str(output_path),
            "request": list(request)}
