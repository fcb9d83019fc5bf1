"""Evaluate a model on the paper's tasks (DESIGN §7) and write a report:

    python -m stellarfm_jax.evaluate --model DIR [--split test] --out REPORT_DIR [--quick] [--data FILE.h5]

``--model`` is a saved-model directory, a training workdir (its ``model/``) or the name of a shipped
model (``small``). The report folder receives ``report.md``, ``metrics.json`` and PNG figures; the headline
table (model against the per-set XGBoost experts) is printed. ``--quick`` evaluates a subset (for a smoke test
in about a minute): its numbers are not the report's. The tasks, the report and the summary are the library's
(:mod:`stellarfm_jax.evaluation`: its task registry, ``run_evaluation``, ``render_report``, ``summary_lines``).
"""

from __future__ import annotations

import dataclasses
import pathlib
import sys

from . import cli
from .evaluation.report import (EvalSettings, headline_table, render_report, run_evaluation,  # noqa: F401
                                summary_lines, task_names)


DESCRIPTION = """Evaluate a model on the paper's tasks and write a report.

The report folder (--out) receives report.md, metrics.json and PNG figures; the headline table (the model against
per-input-set XGBoost experts) is printed. --quick evaluates a subset of stars with smaller experts (a smoke test of
about a minute): its numbers are not the report's. Needs the 'eval' extra (xgboost, pandas, extinction)."""


def build_parser():
    p = cli.parser("evaluate", DESCRIPTION)
    cli.add_model_arg(p)
    cli.add_data_arg(p)
    p.add_argument("--split", default="test", choices=("train", "val", "test"), help="split to evaluate on")
    cli.add_out_arg(p, "report folder (created)")
    p.add_argument("--quick", action="store_true", help="a subset of stars and smaller experts (smoke test)")
    p.add_argument("--no-xgboost", action="store_true", help="skip the XGBoost experts")
    p.add_argument("--max-stars", type=int, default=None, metavar="N", help="evaluate the first N stars of the split")
    p.add_argument("--xgb-threads", type=int, default=None, metavar="N",
                   help="XGBoost threads (default 2; 1 is faster when another job holds a core)")
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def work():
        from . import data as data_lib
        from . import resolve_model

        model = resolve_model(args.model)
        dataset = data_lib.read_dataset(cli.data_path(args.data, model.vocab.schema))
        settings = EvalSettings.quick() if args.quick else EvalSettings()
        changes = {}
        if args.no_xgboost:
            changes["xgboost"] = False
        if args.max_stars is not None:
            if args.max_stars < 1:
                raise cli.BadInputError(f"--max-stars must be >= 1, got {args.max_stars}")
            changes["max_stars"] = args.max_stars
        if args.xgb_threads is not None:
            changes["xgb_params"] = settings.xgb_params + (("nthread", args.xgb_threads),)
        settings = dataclasses.replace(settings, **changes)
        if settings.xgboost:
            cli.require("xgboost", "the XGBoost experts (--no-xgboost skips them)")
        metrics = run_evaluation(model, dataset, args.split, args.out, settings)
        print("\n".join(summary_lines(metrics)))
        print(f"report: {pathlib.Path(args.out) / 'report.md'} ({metrics['seconds']['total']:.0f} s)")

    return cli.run_command(work)


if __name__ == "__main__":
    sys.exit(main())
