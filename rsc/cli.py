"""What every command-line entry point shares: error mapping and interrupt handling."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from rsc.errors import UserError


def run_cli(main: Callable[[], int]) -> int:
    """Run ``main``; bad input becomes one line on stderr and exit code 2, Ctrl-C exit code 130."""
    try:
        return main()
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


def positive_int(text: str) -> int:
    import argparse

    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def ratio(text: str) -> float:
    import argparse

    try:
        value = float(text.rstrip("%")) / (100 if text.endswith("%") else 1)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a ratio like 0.8 or 80%, got {text!r}") from None
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"ratio must be in (0, 1), got {text}")
    return value


def _help_formatter():
    import argparse

    class Formatter(argparse.ArgumentDefaultsHelpFormatter):
        """Show a default only where it says something (not None, not an on/off switch)."""

        def _get_help_string(self, action):
            if action.default is None or isinstance(action.default, bool):
                return action.help
            return super()._get_help_string(action)

    return Formatter


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad flag or value is one line (``error: ...``, exit code 2), not the usage block."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def parser(prog: str, doc: str | None):
    """An argparse parser whose description is the module docstring's first paragraph."""
    return ArgumentParser(prog=prog, description=(doc or "").split("\n\n")[0],
                          formatter_class=_help_formatter())
