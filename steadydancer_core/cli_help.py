"""The help formatter of every command line: each option's default is shown.

A default is appended as ``(default: X)`` unless the help text already says what the default is (options
whose default is computed, e.g. "default: cuda if available"); flags (``store_true``) and required
options have none. The description keeps its line breaks, so usage examples stay readable.
"""
from __future__ import annotations

import argparse


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        no_value = action.default is None or action.default is False or action.default == argparse.SUPPRESS
        if "default" in text.lower() or no_value or action.required:  # `is`: a default of 0 is a value
            return text
        if not action.option_strings:
            return text
        return f"{text} (default: %(default)s)" if text else "(default: %(default)s)"
