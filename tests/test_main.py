"""``python -m steadydancer_core``: the sub-command dispatcher."""
import subprocess
import sys

from conftest import REPO_ROOT


def run_module(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "steadydancer_core", *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)


def test_help_lists_every_command() -> None:
    result = run_module("--help")
    assert result.returncode == 0
    assert "poses" in result.stdout and "animate" in result.stdout


def test_poses_imports_only_its_own_module() -> None:
    # The pose command must not pay for diffusers/transformers (the animate command's imports).
    probe = ("import sys; from steadydancer_core.__main__ import main\n"
             "try:\n    main(['poses', '--help'])\nexcept SystemExit as exit:\n    assert exit.code == 0\n"
             "print('animate-loaded' if 'steadydancer_core.cli_animate' in sys.modules else 'animate-not-loaded')")
    result = subprocess.run([sys.executable, "-c", probe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "--driving" in result.stdout and "animate-not-loaded" in result.stdout


def test_unknown_command_is_a_usage_error() -> None:
    result = run_module("dance")
    assert result.returncode == 2
    assert "invalid choice: 'dance'" in result.stderr
