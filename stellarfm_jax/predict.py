"""Catalogue-scale prediction from the command line, streaming in chunks with bounded memory.

    python -m stellarfm_jax.predict --model DIR --input FILE --request teff,logg,m_h --output FILE

Inputs (``--format auto`` guesses from the file):
  * our HDF5 data set (``stellarfm_jax.data`` format; ``--split`` picks train / val / test / all), read a
    chunk of rows at a time;
  * a CSV file with named columns: token names as inputs, ``<token>_error`` columns as their errors, an
    optional ``source_id`` column carried to the output; empty cells are missing;
  * Gaia archive XP_CONTINUOUS rows (CSV / ECSV / VOTable / FITS with the coefficient array columns, plus
    ``phot_g_mean_mag``), converted to the model's schema by ``stellarfm_jax.data.archive``.
Output: CSV or HDF5 (by extension), one row per input star in input order: ``source_id`` (or ``row``),
each requested token and ``<token>_error`` (physical units), ``prior_only`` and ``n_out_of_range``.

By default a requested token is not used as an input (predicting teff from a file that holds teff would
just echo it); ``--inputs`` names the input tokens (or groups: spectrum, colour, label, other) explicitly.
Only one read chunk (``--read-rows``) and one device batch (``--batch-size``) of the encoder output exist
at any time.
"""

from __future__ import annotations

import argparse
import csv
import json
import pathlib
import sys
import time
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from .cli import USER_ERRORS, report
from .inference import CPU_CHUNK_SIZE, DEFAULT_CHUNK_SIZE, OVERFLOW_MODES, StellarModel

DEFAULT_READ_ROWS = 65536
ID_COLUMNS = ("source_id", "id")


@dataclass
class Block:
    """A chunk of input stars: names [k], values [n, k] float64 (NaN = missing), errors [n, k] or None,
    ids [n] int64 or None."""

    names: list[str]
    values: np.ndarray
    errors: np.ndarray | None
    ids: np.ndarray | None


# ------------------------------------------------------------------------------------------ readers
def detect_format(path: pathlib.Path) -> str:
    suffix = path.suffix.lower()
    if suffix in (".h5", ".hdf5"):
        return "h5"
    if suffix in (".fits", ".fit", ".vot", ".xml", ".ecsv"):
        return "archive"
    if suffix == ".csv":
        with open(path, newline="") as f:
            header = next(csv.reader(f), [])
        return "archive" if "bp_coefficients" in header or "rp_coefficients" in header else "csv"
    raise ValueError(f"cannot tell the format of {path} from its extension; pass --format h5, csv or archive")


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
        raise ValueError(f"{path}: not a stellarfm_jax data set (format attribute {f.attrs.get('format')!r})")
    wanted = list(SPLITS) if split == "all" else [split]
    missing = [s for s in wanted if s not in f]
    if missing:
        raise ValueError(f"{path}: no split {missing}; present: {[k for k in f.keys()]}")
    return wanted


def read_h5(path: pathlib.Path, split: str, rows: int) -> Iterator[Block]:
    """Our HDF5 data set, ``rows`` stars at a time (h5py reads only that slice)."""
    import h5py

    with h5py.File(path, "r") as f:
        names = [str(n) for n in f.attrs["token_names"]]
        for s in _h5_splits(f, split, path):
            group = f[s]
            n = group["values"].shape[0]
            for start in range(0, n, rows):
                sl = slice(start, min(n, start + rows))
                yield Block(names, group["values"][sl].astype(np.float64), group["errors"][sl].astype(np.float64),
                            group["source_id"][sl].astype(np.int64))


def _csv_chunks(path: pathlib.Path, rows: int) -> Iterator[tuple[list[str], list[list[str]], int]]:
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise ValueError(f"{path}: empty CSV file (expected a header of token names)")
        chunk, first = [], 0
        for row in reader:
            chunk.append(row)
            if len(chunk) == rows:
                yield header, chunk, first
                first += len(chunk)
                chunk = []
        if chunk:
            yield header, chunk, first


def _parse_column(cells: list[str], name: str, first_row: int) -> np.ndarray:
    out = np.empty(len(cells), dtype=np.float64)
    for i, cell in enumerate(cells):
        cell = cell.strip()
        if cell == "" or cell.lower() in ("nan", "null", "none", "--"):
            out[i] = np.nan
            continue
        try:
            out[i] = float(cell)
        except ValueError:
            raise ValueError(f"non-numeric value {cell!r} in column {name!r}, data row {first_row + i + 1}") from None
    return out


def read_csv(path: pathlib.Path, rows: int) -> Iterator[Block]:
    """A CSV with named token columns, ``<token>_error`` columns and an optional id column."""
    for header, chunk, first in _csv_chunks(path, rows):
        width = len(header)
        bad = next((i for i, r in enumerate(chunk) if len(r) != width), None)
        if bad is not None:
            raise ValueError(f"{path}: data row {first + bad + 1} has {len(chunk[bad])} fields, the header {width}")
        cols = list(zip(*chunk)) if chunk else [()] * width
        id_col = next((j for j, h in enumerate(header) if h.strip() in ID_COLUMNS), None)
        ids = None
        if id_col is not None:
            try:
                ids = np.array([int(c) for c in cols[id_col]], dtype=np.int64)
            except ValueError:
                raise ValueError(f"{path}: column {header[id_col]!r} must hold integers") from None
        error_cols = {h.strip()[: -len("_error")]: j for j, h in enumerate(header) if h.strip().endswith("_error")}
        names, values, errors = [], [], []
        for j, h in enumerate(header):
            h = h.strip()
            if j == id_col or h.endswith("_error"):
                continue
            names.append(h)
            values.append(_parse_column(cols[j], h, first))
            e = error_cols.get(h)
            errors.append(_parse_column(cols[e], f"{h}_error", first) if e is not None else np.full(len(chunk), np.nan))
        yield Block(names, np.stack(values, 1), np.stack(errors, 1), ids)


def read_archive(path: pathlib.Path, model: StellarModel, rows: int) -> Iterator[Block]:
    """Gaia archive XP_CONTINUOUS rows converted to the model's schema (the whole table is read, then
    predicted ``rows`` at a time)."""
    from .data.archive import archive_catalogue, read_xp_continuous

    grid = (model.metadata.get("provenance") or {}).get("grid_centres_nm")
    cat = archive_catalogue(read_xp_continuous(path), schema=model.vocab.schema, grid=grid, path=str(path))
    names = list(cat.vocab.names)
    for start in range(0, len(cat), rows):
        sl = slice(start, start + rows)
        yield Block(names, cat.values[sl].astype(np.float64), cat.errors[sl].astype(np.float64), cat.source_id[sl])


# ------------------------------------------------------------------------------------------ writers
class CSVWriter:
    def __init__(self, path: pathlib.Path):
        self.path = path
        self.file = open(path, "w", newline="")
        self.writer = csv.writer(self.file)
        self.header_written = False

    def write(self, columns: dict[str, np.ndarray]) -> None:
        if not self.header_written:
            self.writer.writerow(list(columns))
            self.header_written = True
        formatted = []
        for arr in columns.values():
            if arr.dtype.kind == "f":
                formatted.append([repr(float(x)) for x in arr])
            elif arr.dtype.kind == "b":
                formatted.append(["1" if x else "0" for x in arr])
            else:
                formatted.append([str(int(x)) for x in arr])
        self.writer.writerows(zip(*formatted))

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
            if name not in self.file:
                self.file.create_dataset(name, shape=(0,), maxshape=(None,), dtype=arr.dtype, chunks=(65536,))
            ds = self.file[name]
            ds.resize((self.n + m,))
            ds[self.n:] = arr
        self.n += m

    def close(self) -> None:
        self.file.close()


# ------------------------------------------------------------------------------------------ driver
def select_inputs(block: Block, model: StellarModel, requested: list[str], inputs: list[str] | None,
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
                    raise ValueError(f"--inputs {item!r} is not a column of the input; columns: {block.names[:20]}")
            wanted.update(group or [item])
        keep = [j for j, n in enumerate(block.names) if n in wanted]
    else:
        keep = [j for j, n in enumerate(block.names) if keep_requested or n not in requested]
    errors = None if block.errors is None else block.errors[:, keep]
    return Block([block.names[j] for j in keep], block.values[:, keep], errors, block.ids)


def run(model_path, input_path, request: list[str], output_path, fmt: str = "auto", split: str = "test",
        inputs: list[str] | None = None, keep_requested: bool = False, read_rows: int = DEFAULT_READ_ROWS,
        batch_size: int | None = None, overflow: str = "error", progress: bool = True, log=print) -> dict:
    """Predict ``request`` for every star of ``input_path`` and write ``output_path``; returns a summary."""
    t0 = time.perf_counter()
    model = StellarModel.load(model_path)
    input_path, output_path = pathlib.Path(input_path), pathlib.Path(output_path)
    if not input_path.is_file():
        raise FileNotFoundError(f"input file not found: {input_path}")
    model.vocab.ids(request)  # unknown requested names fail before any work, listing the closest names
    fmt = detect_format(input_path) if fmt == "auto" else fmt
    if fmt == "h5":
        blocks = read_h5(input_path, split, read_rows)
    elif fmt == "csv":
        blocks = read_csv(input_path, read_rows)
    elif fmt == "archive":
        blocks = read_archive(input_path, model, read_rows)
    else:
        raise ValueError(f"unknown --format {fmt!r}; expected auto, h5, csv or archive")
    out_suffix = output_path.suffix.lower()
    if out_suffix not in (".csv", ".h5", ".hdf5"):
        raise ValueError(f"--output must end in .csv, .h5 or .hdf5, got {output_path.name}")
    output_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = output_path.with_name(f".{output_path.name}.partial")
    attrs = {"model": str(model_path), "input": str(input_path), "request": json.dumps(request)}
    writer = CSVWriter(tmp) if out_suffix == ".csv" else HDF5Writer(tmp, attrs)

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=count_rows(input_path, fmt, split), unit="star", desc="predict", dynamic_ncols=True,
                   file=sys.stderr)
    n_stars = n_prior = n_flagged = 0
    try:
        for block in blocks:
            block = select_inputs(block, model, request, inputs, keep_requested)
            perception = model.perceive(block.values, block.names, block.errors, overflow=overflow, chunk_size=batch_size)
            result = perception.request(request)
            m = len(result)
            columns = {"source_id": block.ids} if block.ids is not None else {"row": np.arange(n_stars, n_stars + m)}
            columns.update(result.to_dict())
            writer.write(columns)
            n_stars += m
            n_prior += int(result["prior_only"].sum())
            n_flagged += int((result["n_out_of_range"] > 0).sum())
            if bar is not None:
                bar.update(m)
        writer.close()
        tmp.replace(output_path)
    except BaseException:
        writer.close()
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    seconds = time.perf_counter() - t0
    summary = {"stars": n_stars, "prior_only": n_prior, "out_of_range": n_flagged, "seconds": seconds,
               "stars_per_s": n_stars / seconds if seconds > 0 else float("nan"), "output": str(output_path)}
    log(f"predicted {', '.join(request)} for {n_stars:,} stars -> {output_path} in {seconds:.1f} s "
        f"({summary['stars_per_s']:,.0f} stars/s); {n_prior:,} answered from the prior (no input), "
        f"{n_flagged:,} with inputs outside the training range")
    return summary


def _split_list(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stellarfm_jax.predict", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="saved model directory or training workdir")
    parser.add_argument("--input", required=True, help="our HDF5 data set, a CSV with token columns, or Gaia XP rows")
    parser.add_argument("--request", required=True, help="comma-separated token names to predict")
    parser.add_argument("--output", required=True, help="output file (.csv or .h5)")
    parser.add_argument("--format", default="auto", choices=["auto", "h5", "csv", "archive"])
    parser.add_argument("--split", default="test", choices=["train", "val", "test", "all"], help="HDF5 split")
    parser.add_argument("--inputs", default=None, help="comma-separated input tokens or groups (default: all "
                        "columns but the requested tokens)")
    parser.add_argument("--keep-requested-inputs", action="store_true", help="also use requested tokens as inputs")
    parser.add_argument("--read-rows", type=int, default=DEFAULT_READ_ROWS, help="stars read per chunk")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"stars per device call (default {CPU_CHUNK_SIZE} on a CPU, {DEFAULT_CHUNK_SIZE} on an accelerator)")
    parser.add_argument("--overflow", default="error", choices=OVERFLOW_MODES,
                        help="more real tokens than the context length: error, or keep the most informative")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        run(args.model, args.input, _split_list(args.request), args.output, args.format, args.split,
            _split_list(args.inputs), args.keep_requested_inputs, args.read_rows, args.batch_size, args.overflow,
            progress=not args.no_progress)
    except USER_ERRORS as err:
        return report(err)
    return 0


if __name__ == "__main__":
    sys.exit(main())
