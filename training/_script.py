"""What the training scripts share as command-line programs.

Importing it makes a script runnable by path (``python training/run_stage.py``) from any folder:
Python puts the script's own folder (``training/``, which holds the ``steadydancer_train`` package)
first on ``sys.path``, so ``import _script`` works, and this adds the repository root (for
``steadydancer_core``). :func:`run` turns the expected user errors into a one-line message.
"""
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
for entry in (str(ROOT), str(ROOT / "training")):
    if entry not in sys.path:
        sys.path.insert(0, entry)


def run(main: Callable[[], int]) -> None:
    """Exit with ``main()``'s code; config, data and checkpoint problems print their message only (exit 2)."""
    try:
        sys.exit(main())
    except (ValueError, FileNotFoundError, KeyError) as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
