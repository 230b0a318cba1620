"""User errors: the problems a user can fix, reported as one line with exit code 2 (DESIGN D10).

Entry points (the CLIs, the training scripts) catch :class:`UserError` and print its message; any other
exception is a bug and keeps its traceback. The library's own error types for bad files or values derive
from it (``VideoReadError``, ``CheckpointError``, ...), so callers need to know just this one base.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Callable, Iterator

#: Exit code of a run stopped by a user error (argparse uses 2 for bad arguments too).
USER_ERROR_EXIT = 2


class UserError(Exception):
    """An input, file, config value or output path cannot be used; the message names it and what was expected."""


class InputError(UserError, ValueError):
    """A command-line value or input file is not what the command expects."""


class OutputError(UserError):
    """An output path cannot be written (exists without --overwrite, is a file, not writable)."""


class Problems:
    """Collects every user error of a command's checks so they are reported together, in one message.

    ``with problems.check(): ...`` records a :class:`UserError` raised inside and carries on;
    :meth:`raise_if_any` raises one :class:`InputError` listing them all."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    def add(self, message: str) -> None:
        self.messages.append(message)

    @contextlib.contextmanager
    def check(self) -> Iterator[None]:
        try:
            yield
        except UserError as error:
            self.add(str(error))

    def __bool__(self) -> bool:
        return bool(self.messages)

    def raise_if_any(self) -> None:
        if len(self.messages) == 1:
            raise InputError(self.messages[0])
        if self.messages:
            items = "\n".join(f"  - {message}".replace("\n", "\n    ") for message in self.messages)
            raise InputError(f"{len(self.messages)} problems, nothing was run:\n{items}")


def report_user_errors(main: Callable[[], int]) -> int:
    """Run ``main`` and turn a :class:`UserError` into ``error: <message>`` on stderr and exit code 2."""
    try:
        return main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT
