"""Fit teff, logg, m_h, logebv (or other free tokens) to every star of a catalogue by differentiable inversion.

    python -m stellarfm_jax.invert --model small --input stars.h5 --output fits.csv

The inputs are those the predict command reads (our HDF5 data set, a CSV with token-name and ``<token>_error``
columns, Gaia archive XP_CONTINUOUS rows). The observed tokens (default: the spectrum) are fitted with
:func:`stellarfm_jax.inversion.invert`; the output (.csv or .h5) has one row per input star in input order: the id,
each free token and its ``_error``, ``corr_<a>_<b>`` for every pair, ``nll``, ``objective``, the flags
(``converged``, ``at_edge``, ``hessian_regularised``, ``grad_finite``, ``laplace_ok``, ``flagged``) and ``reason``
('' when the fit is not flagged). A star with no observed value gets NaN values and the reason "no observed value".
"""

from __future__ import annotations

import pathlib
import sys
import time

import numpy as np

from . import cli
from .tables import DEFAULT_READ_ROWS, FORMATS, check_paths, count_rows, detect_format, read_blocks, write_table

DESCRIPTION = """Fit free tokens (default teff, logg, m_h, logebv) to every star of a catalogue by differentiable
inversion of the model (candidates from its own forward prediction, a prior fitted on the training split, the
model's residual covariance measured on training stars, Adam then damped Newton, Laplace errors with a calibrated
systematic floor).

Inputs: those of the predict command (our HDF5 data set with --split, a CSV with token-name and <token>_error
columns and an optional source_id column, Gaia archive XP_CONTINUOUS rows). Output (.csv or .h5): one row per input
star in input order with the fitted values, <token>_error, corr_<a>_<b>, nll, objective, the flags converged,
at_edge, hessian_regularised, grad_finite, laplace_ok, flagged, and reason (why a fit is flagged)."""


def build_parser():
    p = cli.parser("invert", DESCRIPTION)
    cli.add_model_arg(p)
    p.add_argument("--input", required=True, metavar="FILE", help="input catalogue (.h5, .csv, or Gaia XP rows)")
    cli.add_out_arg(p, "output file (.csv or .h5); must not be the input", flag="--output", metavar="FILE")
    p.add_argument("--format", default="auto", choices=FORMATS, help="input format (auto: from the file)")
    p.add_argument("--split", default="test", choices=["train", "val", "test", "all"],
                   help="which split of an HDF5 data set")
    p.add_argument("--free", default=None, metavar="NAMES",
                   help="comma-separated free tokens (default: teff, logg, m_h, logebv, those in the model)")
    p.add_argument("--observe", default="spectrum", metavar="NAMES",
                   help="comma-separated observed tokens or groups (spectrum, colour, ...) fitted by the model; "
                        "add jh when the catalogue has it (spectrum,jh): it breaks the temperature-extinction "
                        "degeneracy of the spectrum alone")
    p.add_argument("--fixed", default=None, metavar="NAMES", help="comma-separated input columns held fixed")
    p.add_argument("--prior", default="auto", metavar="auto|none|FILE.json",
                   help="prior over the free tokens: auto (the model's, else fitted on the train split of the "
                        "embedded data set), none (flat), or an InversionPrior JSON file")
    p.add_argument("--model-error", default="auto", metavar="auto|none|FILE.json",
                   help="the model's error as a generator: auto (the model's stored residual covariance and "
                        "systematic floor, when it covers the observed tokens), none (independent tokens, no floor), "
                        "or a ModelError JSON file")
    p.add_argument("--steps", type=int, default=30, metavar="N", help="Adam iterations at most per start")
    p.add_argument("--starts", type=int, default=2, metavar="N", help="starting points kept per star")
    p.add_argument("--newton-steps", type=int, default=None, metavar="N",
                   help="damped Newton iterations at most (default: stellarfm_jax.inversion.DEFAULT_NEWTON_STEPS)")
    p.add_argument("--curvature", default="fisher", choices=["fisher", "hessian"],
                   help="Newton's and the errors' curvature: the Fisher information (fast) or the exact Hessian")
    p.add_argument("--model-variance", default="fixed", choices=["fixed", "predicted"],
                   help="the model's variance in the fit: held at its forward prediction's (a chi2 fit with the "
                        "model's error as a floor) or predicted at the fitted values (the Gaussian likelihood)")
    p.add_argument("--read-rows", type=int, default=DEFAULT_READ_ROWS, metavar="N", help="stars read per chunk")
    p.add_argument("--batch-size", type=int, default=None, metavar="N",
                   help="stars per device call (default: 32 on a CPU, 1024 on an accelerator)")
    cli.add_progress_arg(p)
    return p


def _columns(block_names: list[str], wanted: list[str], vocab, option: str) -> list[int]:
    """Column indices of the block for token or group names (unknown names fail listing the closest)."""
    names = []
    for item in wanted:
        group = vocab.group_names(item)
        if not group:
            vocab.token_id(item)
            if item not in block_names:
                raise cli.BadInputError(f"{option} {item!r} is not a column of the input; columns: {block_names[:20]}")
        names.extend(group or [item])
    cols = [j for j, n in enumerate(block_names) if n in set(names)]
    if not cols:
        raise cli.BadInputError(f"{option} {','.join(wanted)}: none of these tokens is a column of the input "
                                f"(columns: {block_names[:20]})")
    return cols


def invert_catalogue(model, input_path, output_path, fmt: str = "auto", split: str = "test", free=None,
                     observe=("spectrum",), fixed=None, prior="auto", read_rows: int = DEFAULT_READ_ROWS,
                     batch_size: int | None = None, progress: bool = True, steps: int = 30,
                     n_starts: int = 2, newton_steps: int | None = None, curvature: str = "fisher",
                     model_variance: str = "fixed", model_error="auto") -> dict:
    """Invert every star of ``input_path`` and write ``output_path`` atomically (one row per star, input order).
    Returns a summary: stars, fitted, flagged, no_data, seconds, stars_per_s, output, prior, model_error."""
    from .inversion import DEFAULT_NEWTON_STEPS, default_free_names, invert, resolve_prior

    newton_steps = DEFAULT_NEWTON_STEPS if newton_steps is None else newton_steps
    t0 = time.perf_counter()
    input_path, output_path = pathlib.Path(input_path), pathlib.Path(output_path)
    check_paths(input_path, output_path)
    for option, value, least in (("--read-rows", read_rows, 1), ("--steps", steps, 1), ("--starts", n_starts, 1),
                                 ("--newton-steps", newton_steps, 0)):
        if value < least:
            raise cli.BadInputError(f"{option} must be >= {least}, got {value}")
    vocab = model.vocab
    try:
        free = default_free_names(vocab) if not free else list(vocab.names_of(vocab.ids(list(free))))
        prior_spec = None if prior in (None, "none") else prior
        _, prior_obj, prior_text = resolve_prior(model, free, prior_spec)
    except cli.UserError:
        raise
    except ValueError as err:
        raise cli.BadInputError(str(err)) from err
    fmt = detect_format(input_path) if fmt == "auto" else fmt
    counts = dict(flagged=0, fitted=0, no_data=0)
    model_error = None if model_error in (None, "none") else model_error
    used = set()

    def answer(block, first_row):
        obs_cols = _columns(block.names, list(observe), vocab, "--observe")
        clash = [n for n in free if n in [block.names[j] for j in obs_cols]]
        if clash:
            raise cli.BadInputError(f"free tokens {clash} are also observed; drop them from --observe")
        fix_cols = _columns(block.names, list(fixed), vocab, "--fixed") if fixed else []
        n = block.values.shape[0]
        obs = block.values[:, obs_cols]
        err = None if block.errors is None else block.errors[:, obs_cols]
        columns = _empty_columns(free, n)
        rows = np.flatnonzero(np.isfinite(obs).any(axis=1))
        if len(rows):
            try:
                res = invert(model, obs[rows], [block.names[j] for j in obs_cols], None if err is None else err[rows],
                             free=free, fixed=block.values[rows][:, fix_cols] if fix_cols else None,
                             fixed_names=[block.names[j] for j in fix_cols], prior=prior_obj, chunk_size=batch_size,
                             steps=steps, n_starts=n_starts, newton_steps=newton_steps, curvature=curvature,
                             model_variance=model_variance, model_error=model_error)
                used.add(res.model_error)
            except cli.UserError:
                raise
            except ValueError as e:
                raise cli.BadInputError(str(e)) from e
            for key, value in res.to_dict().items():
                columns[key][rows] = value
        ids = {"source_id": block.ids} if block.ids is not None else {
            "row": np.arange(first_row, first_row + n, dtype=np.int64)}
        columns = {**ids, **columns}
        columns["reason"] = columns["reason"].astype(str)
        counts["fitted"] += len(rows)
        counts["no_data"] += n - len(rows)
        counts["flagged"] += int(columns["flagged"].sum())
        return columns

    n_stars = write_table(output_path, read_blocks(input_path, fmt, model, split, read_rows), answer,
                          total=count_rows(input_path, fmt, split), progress=progress, desc="invert",
                          attrs={"input": str(input_path), "prior": prior_text})
    seconds = time.perf_counter() - t0
    return {"stars": n_stars, **counts, "seconds": seconds,
            "stars_per_s": n_stars / seconds if seconds > 0 else float("nan"), "output": str(output_path),
            "prior": prior_text, "model_error": "; ".join(sorted(used)) or "none"}


def _empty_columns(free: list[str], n: int) -> dict:
    """Output columns of n stars before their fit: NaN values, False flags, 'no observed value' as the reason."""
    cols = {name: np.full(n, np.nan) for name in free}
    cols.update({f"{name}_error": np.full(n, np.nan) for name in free})
    cols.update({f"corr_{free[a]}_{free[b]}": np.full(n, np.nan) for a in range(len(free)) for b in range(a + 1, len(free))})
    cols.update(nll=np.full(n, np.nan), objective=np.full(n, np.nan))
    cols.update({k: np.zeros(n, bool) for k in ("converged", "at_edge", "hessian_regularised", "grad_finite",
                                                  "laplace_ok")})
    cols["flagged"] = np.ones(n, bool)
    cols["reason"] = np.full(n, "no observed value", dtype=object)
    return cols


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)

    def work():
        from . import resolve_model

        model = resolve_model(args.model)
        s = invert_catalogue(model, args.input, args.output, args.format, args.split, cli.split_list(args.free),
                             cli.split_list(args.observe) or ["spectrum"], cli.split_list(args.fixed), args.prior,
                             args.read_rows, args.batch_size, progress=not args.no_progress, steps=args.steps,
                             n_starts=args.starts, newton_steps=args.newton_steps, curvature=args.curvature,
                             model_variance=args.model_variance, model_error=args.model_error)
        print(f"inverted {s['stars']:,} stars -> {s['output']} in {s['seconds']:.1f} s ({s['stars_per_s']:,.2f} "
              f"stars/s; prior {s['prior']}; model error {s['model_error']}); {s['flagged']:,} flagged (see the reason column), {s['no_data']:,} "
              f"without an observed value")

    return cli.run_command(work)


if __name__ == "__main__":
    sys.exit(main())
