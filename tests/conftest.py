"""Shared test fixtures. Tests never download: they build tiny models and files themselves."""
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DIR = REPO_ROOT.parent / "shared"


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The read-only ``shared/`` folder beside the checkout (parity fixtures, official examples)."""
    if not SHARED_DIR.is_dir():
        pytest.fail(f"expected the shared data folder at {SHARED_DIR}")
    return SHARED_DIR
