"""Every command line shows every default and has help text for every flag (``cli_help.DefaultsHelpFormatter``)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest

from steadydancer_core.__main__ import COMMANDS, build_parser

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "training"))

import build_manifest as build_manifest_script  # noqa: E402
import precompute as precompute_script  # noqa: E402
import run_stage as run_stage_script  # noqa: E402

SCRIPTS = {"run_stage": run_stage_script, "precompute": precompute_script, "build_manifest": build_manifest_script}


def _actions_and_help(parser: argparse.ArgumentParser) -> tuple[list[argparse.Action], str]:
    actions = [a for a in parser._actions if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))]
    return actions, " ".join(parser.format_help().split())  # argparse wraps lines; compare on single spaces


def _check(actions: list[argparse.Action], text: str) -> None:
    """Each flag has help; each default that is a value (not None = "not given", not a flag's False) is
    shown, either as "(default: X)" or where the help itself words it (computed or long defaults)."""
    for action in actions:
        name = action.option_strings[0] if action.option_strings else action.dest
        assert action.help, f"{name} has no help text"
        if action.required or action.default is None or action.default is False or action.default == argparse.SUPPRESS:
            continue
        shown = f"{action.help} (default: {action.default})" if "default" not in action.help.lower() else action.help
        assert " ".join(shown.split()) in text, f"{name}: default {action.default!r} not shown"
        if "default" in action.help.lower():
            continue
        assert f"(default: {action.default})" in text, name


@pytest.mark.parametrize("command", list(COMMANDS))
def test_every_command_shows_every_default(command: str) -> None:
    parser = build_parser(command)
    sub = parser._subparsers._group_actions[0].choices[command]
    _check(*_actions_and_help(sub))


@pytest.mark.parametrize("script", list(SCRIPTS))
def test_every_training_script_shows_every_default_and_both_dry_run_spellings(
        script: str, monkeypatch: pytest.MonkeyPatch) -> None:
    captured = {}
    original = argparse.ArgumentParser.parse_args

    def capture(self, *args, **kwargs):
        captured["parser"] = self
        raise SystemExit(0)

    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", capture)
    with pytest.raises(SystemExit):
        SCRIPTS[script].main([])
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", original)
    parser = captured["parser"]
    _check(*_actions_and_help(parser))
    required = {"run_stage": ["--stage", "1", "--config", "c"], "precompute": ["--config", "c"],
                "build_manifest": ["--videos", "v", "--out", "o"]}[script]
    assert parser.parse_args(required + ["--dry-run"]).dry_run and parser.parse_args(required + ["--dry_run"]).dry_run


def test_poses_and_animate_state_the_same_pixel_budget() -> None:
    for command in ("poses", "animate"):
        assert "589824 = 1024x576" in " ".join(build_parser(command).format_help().split()) or \
            "589824 = 1024x576" in " ".join(
                build_parser(command)._subparsers._group_actions[0].choices[command].format_help().split())


def test_without_torch_the_cli_says_what_to_install() -> None:
    import subprocess

    # A fresh interpreter where importing torch fails as it does where torch is not installed.
    code = ("import sys; sys.modules['torch'] = None\n"
            "from steadydancer_core.__main__ import main\n"
            "sys.exit(main(['poses', '--ref', 'r.png', '--out', 'o']))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parents[1])
    assert done.returncode == 2, done.stderr
    assert "the 'poses' command needs PyTorch" in done.stderr and "pip install torch" in done.stderr
    assert "Traceback" not in done.stderr
