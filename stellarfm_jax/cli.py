"""What every command line entry point shares: which exceptions are the user's to fix, and how they are reported.

A command catches :data:`USER_ERRORS` around its work and returns :func:`report` (exit status 2 with a one-line
``error: ...`` on stderr, no traceback); anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys

# Bad paths, bad values, unknown token names (UnknownTokenError is a KeyError and a ValueError), files that are
# not what they claim, optional dependencies that are missing, training that diverged.
USER_ERRORS = (ValueError, KeyError, FileNotFoundError, FileExistsError, ImportError, RuntimeError, OSError,
               FloatingPointError)

EXIT_USER_ERROR = 2


def report(err: BaseException) -> int:
    """Print ``error: <message>`` to stderr and return the exit status for a user error."""
    print(f"error: {err}", file=sys.stderr)
    return EXIT_USER_ERROR
