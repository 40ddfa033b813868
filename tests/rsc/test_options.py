"""Settings dataclasses as command lines (rsc.options): one flag per field, defaults kept in the dataclass."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pytest

from rsc.options import add_options, opt, options_from_args


@dataclass(frozen=True, kw_only=True)
class Settings:
    epochs: int = opt(30, "training epochs (default {default})")
    lr: float = opt(0.05, "peak learning rate (default {default})")
    methods: tuple[str, ...] = opt(("a", "b"), "comma list (default {default})", list=True, choices=("a", "b", "c"))
    rates: tuple[float, ...] = opt((2.0,), "comma list", list=True, item=float)
    budget: tuple[str, ...] = opt((), "repeat to AND", flag="--budget", repeat=True)
    mode: str = opt("spread", "who aims (default {default})", choices=("spread", "sampler"), deprecated=("--targets",))
    progress: bool = opt(True, "no progress bars", flag="--no-progress")
    hidden: int = 3  # no help: not a flag


def _parse(argv):
    p = argparse.ArgumentParser()
    add_options(p, Settings)
    return Settings(**options_from_args(p.parse_args(argv), Settings)), p


def test_flags_left_out_keep_the_dataclass_defaults():
    s, p = _parse([])
    assert s == Settings()
    assert "(default 30)" in p.format_help() and "(default a,b)" in p.format_help()
    assert "--hidden" not in p.format_help()


def test_flags_parse_into_typed_fields():
    s, _ = _parse(["--epochs", "5", "--lr", "0.1", "--methods", "c, a", "--rates", "2,4.5", "--budget", "x<1",
                   "--budget", "y<2", "--no-progress", "--mode", "sampler"])
    assert (s.epochs, s.lr, s.methods, s.rates, s.budget, s.progress, s.mode) == (
        5, 0.1, ("c", "a"), (2.0, 4.5), ("x<1", "y<2"), False, "sampler")


@pytest.mark.parametrize("argv", [["--methods", "a,z"], ["--rates", "2,x"], ["--epochs", "many"], ["--mode", "own"]])
def test_bad_values_are_refused_by_the_parser(argv):
    with pytest.raises(SystemExit):
        _parse(argv)


def test_a_deprecated_flag_still_works_with_a_one_line_warning(capsys):
    s, p = _parse(["--targets", "sampler"])
    assert s.mode == "sampler"
    err = capsys.readouterr().err
    assert err.strip() == "warning: --targets is deprecated and will be removed in the next release; use --mode"
    assert "--targets" not in p.format_help()
