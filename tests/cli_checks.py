"""What the error-handling tests of the command-line entry points share: a byte-level picture of an output
folder (to prove a failed run changed nothing), the exit code of a ``main(argv)`` that may exit through
argparse or of a training script, and the skip for permission rows that root cannot test."""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import ModuleType
from typing import Callable

import pytest


def tree_digest(root: Path) -> dict[str, str]:
    """Every entry under ``root`` by relative path: sha256 of a file's bytes, ``"dir"`` for a folder (so an
    emptied, added or left-behind folder shows as a difference too)."""
    return {str(path.relative_to(root)): "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*"))}


def exit_code(main: Callable[[list[str]], int], argv: list[str]) -> int:
    """``main(argv)``'s return value, or the code of the ``SystemExit`` argparse raises for a bad option."""
    try:
        return main(argv)
    except SystemExit as stop:
        return int(stop.code)


def run_script(script: ModuleType, argv: list[str]) -> int:
    """A training script (``training/run_stage.py`` ...) run as its ``__main__`` block runs it,
    ``_script.run(main)``, in this process; returns the exit code."""
    try:
        script._script.run(lambda: script.main(argv))
    except SystemExit as stop:
        return int(stop.code)
    raise AssertionError("_script.run returned instead of exiting")


def skip_if_root_can_write_anywhere() -> None:
    """Permission bits do not stop root, so a 'folder without write permission' row cannot fail as root."""
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        reason = "running as root: chmod does not stop root from writing, so the no-permission case is untestable"
        print(reason)
        pytest.skip(reason)
