"""User errors: the problems a user can fix, reported as one line with exit code 2 (DESIGN D10).

Entry points (the CLIs, the training scripts) catch :class:`UserError` and print its message; any other
exception is a bug and keeps its traceback. The library's own error types for bad files or values derive
from it (``VideoReadError``, ``CheckpointError``, ...), so callers need to know just this one base.
"""
from __future__ import annotations

import sys
from typing import Callable

#: Exit code of a run stopped by a user error (argparse uses 2 for bad arguments too).
USER_ERROR_EXIT = 2


class UserError(Exception):
    """An input, file, config value or output path cannot be used; the message names it and what was expected."""


class InputError(UserError, ValueError):
    """A command-line value or input file is not what the command expects."""


class OutputError(UserError):
    """An output path cannot be written (exists without --overwrite, is a file, not writable)."""


def report_user_errors(main: Callable[[], int]) -> int:
    """Run ``main`` and turn a :class:`UserError` into ``error: <message>`` on stderr and exit code 2."""
    try:
        return main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT
