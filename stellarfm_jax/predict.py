"""Predict tokens for every star of a catalogue file, streaming in chunks with bounded memory.

    python -m stellarfm_jax.predict --model small --input stars.csv --request teff,logg,m_h --output pred.csv

The input is our HDF5 data set, a CSV file with token-name columns (``<token>_error`` columns for their errors,
an optional ``source_id`` column), or Gaia archive XP_CONTINUOUS rows (with ``phot_g_mean_mag``). The output
(.csv or .h5) has one row per input star in input order: the id, each requested token and its error, and the
flags ``prior_only`` and ``n_out_of_range``. Requested tokens are not used as inputs unless asked for.
The work is done by :func:`stellarfm_jax.tables.predict_catalogue`.
"""

from __future__ import annotations

import sys

from . import cli
from .inference import CPU_CHUNK_SIZE, DEFAULT_CHUNK_SIZE, EXTREME_MODES, OVERFLOW_MODES
from .tables import DEFAULT_READ_ROWS, FORMATS, predict_catalogue

DESCRIPTION = """Predict tokens for every star of a catalogue file (streamed in chunks, bounded memory).

Inputs: our HDF5 data set (--split picks the split), a CSV file with token-name columns (<token>_error columns
for their errors, an optional source_id column; empty cells are missing), or Gaia archive XP_CONTINUOUS rows
(CSV/ECSV/FITS/VOTable with the coefficient columns and phot_g_mean_mag). The output (.csv or .h5) has one row
per input star in input order: the id, each requested token and <token>_error, prior_only (no usable input)
and n_out_of_range (inputs outside the training range). Requested tokens are not used as inputs unless
--keep-requested-inputs is given."""


def build_parser():
    p = cli.parser("predict", DESCRIPTION)
    cli.add_model_arg(p)
    p.add_argument("--input", required=True, metavar="FILE", help="input catalogue (.h5, .csv, or Gaia XP rows)")
    p.add_argument("--request", required=True, metavar="NAMES", help="comma-separated token names to predict")
    cli.add_out_arg(p, "output file (.csv or .h5); must not be the input", flag="--output", metavar="FILE")
    p.add_argument("--format", default="auto", choices=FORMATS, help="input format (auto: from the file)")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"],
                   help="which split of an HDF5 data set")
    p.add_argument("--inputs", default=None, metavar="NAMES",
                   help="comma-separated input tokens or groups (spectrum, colour, label, other); default: every "
                        "column but the requested tokens")
    p.add_argument("--keep-requested-inputs", action="store_true", help="also use the requested tokens as inputs")
    p.add_argument("--read-rows", type=int, default=DEFAULT_READ_ROWS, metavar="N", help="stars read per chunk")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help=f"stars per device call (default: {CPU_CHUNK_SIZE} on a CPU, {DEFAULT_CHUNK_SIZE} on an "
                        f"accelerator)")
    p.add_argument("--overflow", default="error", choices=OVERFLOW_MODES,
                   help="what to do with a star that has more usable tokens than the model's context: refuse it, "
                        "or keep the most informative ones")
    p.add_argument("--extreme", default="error", choices=EXTREME_MODES,
                   help="what to do with a value more than 1e6 robust standard deviations from the training median "
                        "(no measurement; it would overflow the network): refuse the file naming the star, or treat "
                        "it as missing (counted in n_out_of_range)")
    p.add_argument("--allow-untrained", action="store_true",
                   help="allow requesting tokens the model was never trained to output (e.g. bprp, jk): their "
                        "error bars are not calibrated; each gets a <token>_untrained column")
    cli.add_progress_arg(p)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def work():
        from . import resolve_model

        model = resolve_model(args.model)
        s = predict_catalogue(model, args.input, cli.split_list(args.request), args.output, args.format, args.split,
                              cli.split_list(args.inputs), args.keep_requested_inputs, args.read_rows,
                              args.batch_size, args.overflow, progress=not args.no_progress, model_name=args.model,
                              allow_untrained=args.allow_untrained, extreme=args.extreme)
        print(f"predicted {', '.join(s['request'])} for {s['stars']:,} stars -> {s['output']} in {s['seconds']:.1f} s "
              f"({s['stars_per_s']:,.0f} stars/s); {s['prior_only']:,} answered from the prior (no input), "
              f"{s['out_of_range']:,} with inputs outside the training range")

    return cli.run_command(work)


if __name__ == "__main__":
    sys.exit(main())
