"""What the training scripts share as command-line programs.

Importing it makes a script runnable by path (``python training/run_stage.py``) from any folder:
Python puts the script's own folder (``training/``, which holds the ``steadydancer_train`` package)
first on ``sys.path``, so ``import _script`` works, and this adds the repository root (for
``steadydancer_core``). :func:`run` reports user errors as one line.
"""
import sys
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[1]
for entry in (str(ROOT), str(ROOT / "training")):
    if entry not in sys.path:
        sys.path.insert(0, entry)

from steadydancer_core.errors import report_user_errors  # noqa: E402  (needs the path above)


def run(main: Callable[[], int]) -> None:
    """Exit with ``main()``'s code. A config, data, checkpoint or output problem (a ``UserError``) prints
    ``error: <message>`` and exits 2; anything else is a bug and keeps its traceback."""
    sys.exit(report_user_errors(main))
