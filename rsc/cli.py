"""What every command-line entry point shares: error mapping, interrupt handling, quiet third parties."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from rsc.errors import UserError

# Known third-party noise a command-line run does not show (what, from where, why not fixed at source):
_QUIET_ENV = {
    # MLflow's INFO lines ("Creating initial MLflow database tables...", "Inferring model signature
    # from input example", ...); its warnings still show. Read when mlflow is imported, and inherited
    # by worker processes.
    "MLFLOW_LOGGING_LEVEL": "WARNING",
    # tqdm bars of artifact up/downloads ("Downloading artifacts: 100%|...") while a model is logged
    # (MLflow reloads it to check the input example); read at each transfer.
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}
_QUIET_WARNINGS = [
    # torch.load of int8 weights (spaces.load_compressed, e.g. when MLflow loads a logged model to
    # check its input example): torch's own _rebuild_qtensor reads ``storage.device`` of a
    # TypedStorage, and (once per process) rebuilding a quantised tensor repeats torch.ao's
    # deprecation, which spaces.quant already hides where it quantises. Nothing a caller changes.
    dict(message=r"TypedStorage is deprecated", category=UserWarning, module=r"torch\._utils"),
    dict(message=r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized tensor",
         category=UserWarning, module=r"torch\._utils"),
]


def quiet_third_party() -> None:
    """Silence known third-party noise for a command-line run: MLflow's INFO lines and artifact
    progress bars, torch's deprecations (TypedStorage, quantised tensors) on loading int8 weights.

    Narrow on purpose: our warnings and any other third-party warning still show, and a user's
    own ``MLFLOW_LOGGING_LEVEL`` / ``MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR`` win. Idempotent;
    :func:`run_cli` calls it, library callers (tests, notebooks) keep the libraries' defaults.
    """
    import logging
    import warnings

    for name, value in _QUIET_ENV.items():
        os.environ.setdefault(name, value)
    if "mlflow" in sys.modules:  # already configured its loggers on import: apply the level now
        logging.getLogger("mlflow").setLevel(os.environ["MLFLOW_LOGGING_LEVEL"].upper())
    for spec in _QUIET_WARNINGS:
        warnings.filterwarnings("ignore", **spec)  # an identical filter is replaced, not stacked


def run_cli(main: Callable[[], int]) -> int:
    """Run ``main``; bad input becomes one line on stderr and exit code 2, Ctrl-C exit code 130.

    Known third-party noise is silenced first (:func:`quiet_third_party`).
    """
    quiet_third_party()
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
