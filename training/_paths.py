"""Makes the training scripts runnable by path (``python training/run_stage.py``) from any folder.

Python puts the script's own folder (``training/``) first on ``sys.path``, so ``import _paths`` works
from each script; it then adds the repository root (for ``steadydancer_core``). ``training/`` itself
holds the ``steadydancer_train`` package.
"""
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
for entry in (str(ROOT), str(ROOT / "training")):
    if entry not in sys.path:
        sys.path.insert(0, entry)
