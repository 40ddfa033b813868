"""``python -m search.run``: a budgeted multi-objective compression search, tracked in MLflow.

This module is the command line only: the parser is generated from :class:`search.config.SearchConfig`
(its fields' names, defaults and help are the flags'), ``main`` renders progress and the final
table and maps bad input to ``error: ...`` / exit 2 (``rsc.cli.run_cli``). The search itself is
:func:`search.driver.run`, re-exported here with its reporter and result types.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
from typing import Any, Iterator, Sequence

from search.config import SearchConfig
from search.driver import run
from search.report import Reporter, SearchResult, TerminalReporter, render

__all__ = ["main", "run", "build_parser", "config_from_args", "Reporter", "SearchResult", "render"]

SYNTHETIC_BASE_EPOCHS = 5  # the demo's quick base model when neither --data nor --base-epochs is given


def build_parser() -> argparse.ArgumentParser:
    """The parser, one flag per :class:`SearchConfig` field that has help (defaults stay in the config)."""
    from rsc.cli import ArgumentParser
    from rsc.options import add_options
    from search.budget import grammar

    p = ArgumentParser(
        prog="python -m search.run",
        description="Search compressed models under a cost budget; the Pareto front lands in MLflow.",
        epilog=grammar() + ". Example: python -m search.run --budget 'params<25%%' --data "
               "../shared/datasets/UCMerced_LandUse --methods prune,tucker,quant --trials 40")
    p.add_argument("--config", help="JSON file of settings (flags override it)")
    add_options(p, SearchConfig)
    return p


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    """The config of a parsed command line: defaults < ``--config`` file < flags."""
    from rsc.options import options_from_args

    over = options_from_args(args, SearchConfig)
    if "early_stop_margin" in over and over["early_stop_margin"] < 0:
        over["early_stop_margin"] = None
    if args.data is None and args.base_epochs is None and not args.config:
        over.setdefault("base_epochs", SYNTHETIC_BASE_EPOCHS)
    if args.config:
        return SearchConfig.from_file(args.config, **{k: list(v) if isinstance(v, tuple) else v for k, v in over.items()})
    return SearchConfig(**over)


@contextlib.contextmanager
def _terminate_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's kill) ends the search like Ctrl-C: what finished is kept, resumable."""

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    from rsc.cli import run_cli

    args = build_parser().parse_args(argv)

    def search() -> int:
        config = config_from_args(args)
        reporter = TerminalReporter(progress=config.progress)
        try:
            with _terminate_as_interrupt():
                result = run(config, reporter=reporter)
        except KeyboardInterrupt:
            print("interrupted before the search started; nothing to resume", file=sys.stderr)
            return 130
        finally:
            reporter.close()
        render(result)
        return 130 if result.interrupted else 0

    return run_cli(search)


if __name__ == "__main__":
    sys.exit(main())
