"""A total compute budget (``--compute``), split by the search between exploring and the final fine-tune.

Why a budget, and why this split. At equal compute a searched model must beat the uniform configuration
fine-tuned for the whole budget (:mod:`search.baseline`), and fine-tune length is what buys accuracy at a
high compression rate: on UC Merced at params <= 10% of ResNet-18, uniform L1 gained 5.9 pts from 30 to 133
fine-tune epochs, more than the search's layer allocation gained over it at equal length (+1.9 pts;
benchmarks/README.md). A search that fine-tunes three finalists 30 epochs each after 24 two-epoch trials
spends two thirds of its compute on models it does not ship. So under ``--compute`` the search:

1. explores with a share of the budget (``--explore-share``, 0.2): trials of ``--fidelity-epochs`` each, and
   the uniform configuration among them as one more candidate (:func:`search.baseline.uniform_candidate`),
   fine-tuned and scored exactly like a trial, so the search ends below uniform only when its own selection
   errs or by the epochs the exploring cost;
2. fine-tunes **one** finalist - the best trial score inside the budget, the uniform candidate included - for
   every epoch (or second) left.

A budget in epochs (``--compute 120``, ``120ep``) is epoch-equivalents of fine-tuning (:mod:`search.compute`);
one in wall time (``30min``, ``2h``, ``900s``) stops the trials once their wall time reaches the share and gives
the finalist the epochs the rest of the time buys at the finalist's own measured pace. The base model's
training is outside the budget (a given, shared with the baseline); so are the rank sample and
cross-validation, which only measure. The uniform baseline, compute-matched, gets the same budget.

    budget = ComputeBudget.parse("120")
    config = plan_config(config)            # trials, one finalist, no halving
    final_epochs(budget, ledger, config)   # epochs left for the finalist
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

from rsc.errors import ConfigError

if TYPE_CHECKING:
    from search.compute import Ledger

#: a :class:`search.config.SearchConfig` (which validates ``--compute`` with this module: not imported back)
SearchConfig = Any

__all__ = ["ComputeBudget", "plan_config", "explore_trials", "final_epochs", "exploring_done", "describe"]

_UNITS = {"": None, "ep": None, "epoch": None, "epochs": None,
          "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}
_PATTERN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*$")


@dataclass(frozen=True)
class ComputeBudget:
    """A search's total compute: ``epochs`` (epoch-equivalents of fine-tuning) or wall ``seconds``."""

    epochs: float | None = None
    seconds: float | None = None

    @classmethod
    def parse(cls, text: str) -> "ComputeBudget":
        """``120`` / ``120ep`` / ``120epochs`` (epochs) or ``900s``, ``30min``, ``2h`` (wall time)."""
        m = _PATTERN.match(str(text).lower())
        if not m or m.group(2) not in _UNITS:
            raise ConfigError(f"cannot read compute budget {text!r}: give epochs (120, 120ep) or a wall time "
                              "(900s, 30min, 2h)")
        value, unit = float(m.group(1)), _UNITS[m.group(2)]
        if value <= 0:
            raise ConfigError(f"compute budget must be > 0, got {text!r}")
        return cls(epochs=value) if unit is None else cls(seconds=value * unit)

    def __str__(self) -> str:
        if self.epochs is not None:
            return f"{self.epochs:g} epochs"
        s = float(self.seconds or 0.0)
        return f"{s / 3600:g} h" if s >= 3600 and s % 360 == 0 else f"{s / 60:g} min" if s >= 60 else f"{s:g} s"


def explore_trials(budget: ComputeBudget, config: "SearchConfig") -> int:
    """The searched trials an epoch budget's exploring share pays for: ``share x epochs / fidelity``, less one for
    the uniform candidate, at least 1; a wall-time budget keeps ``--trials`` as a cap (the clock stops it)."""
    if budget.epochs is None:
        return int(config.trials)
    per = max(int(config.fidelity_epochs), 1)
    return max(1, math.floor(config.explore_share * budget.epochs / per) - 1)


def plan_config(config: "SearchConfig") -> "SearchConfig":
    """``config`` as a compute-budgeted search runs it: the explored trials, one finalist chosen by trial score
    (``final_pick`` top, ``final_max`` 1, no halving rungs); ``final_epochs`` is set when the trials are done
    (:func:`final_epochs`). Unchanged without ``--compute``."""
    if not config.compute:
        return config
    budget = ComputeBudget.parse(config.compute)
    if budget.epochs is not None and budget.epochs < 2 * max(int(config.fidelity_epochs), 1) + 1:
        raise ConfigError(f"--compute {config.compute} is too small to explore and fine-tune: give at least "
                          f"{2 * max(int(config.fidelity_epochs), 1) + 1} epochs (two trials of --fidelity-epochs "
                          "and one final epoch)")
    return config.replace(trials=explore_trials(budget, config), final_max=1, final_pick="top", final_rungs=1)


def exploring_done(budget: ComputeBudget, config: "SearchConfig", ledger: "Ledger") -> bool:
    """Whether the trials have spent the exploring share (a wall-time budget; an epoch budget counts trials)."""
    if budget.seconds is None:
        return False
    return ledger.seconds.get("trials", 0.0) >= config.explore_share * budget.seconds


def final_epochs(budget: ComputeBudget, ledger: "Ledger", pace: Mapping[str, Any] | None = None) -> int:
    """The epochs left for the finalist: the budget less what the search spent (at least 1). For a wall-time
    budget, the seconds left at ``pace`` - the finalist's own trial seconds (``finetune`` per epoch run, the
    rest a fixed cost per fine-tune)."""
    if budget.epochs is not None:
        return max(1, math.floor(budget.epochs - ledger.search_epochs() + 1e-9))
    per_epoch, fixed = seconds_per_epoch(pace or {})
    left = float(budget.seconds or 0.0) - ledger.search_seconds() - fixed
    return max(1, math.floor(left / per_epoch)) if per_epoch > 0 else 1


def seconds_per_epoch(trial: Mapping[str, Any]) -> tuple[float, float]:
    """A trial's fine-tune seconds per epoch and its other seconds (projection, build, scoring), from its
    record's ``seconds`` and ``epochs_run``; ``(0, 0)`` when it did not train."""
    seconds = dict(trial.get("seconds") or {})
    epochs = int(trial.get("epochs_run") or 0)
    if epochs <= 0 or not seconds.get("finetune"):
        return 0.0, 0.0
    per = float(seconds["finetune"]) / epochs
    rest = float(seconds.get("total", 0.0)) - float(seconds["finetune"]) - float(seconds.get("project", 0.0))
    return per, max(rest, 0.0)


def describe(budget: ComputeBudget, config: "SearchConfig", label: str | None) -> str:
    """One line for a person: how the budget will be spent."""
    who = f"the uniform configuration ({label}) and " if label else ""
    if budget.epochs is not None:
        explore = (int(config.trials) + (1 if label else 0)) * int(config.fidelity_epochs)
        return (f"compute budget {budget}: about {explore} exploring ({who}{config.trials} searched trial(s) of "
                f"{config.fidelity_epochs} epoch(s)), the rest fine-tunes the best-scored one")
    return (f"compute budget {budget}: {100 * config.explore_share:.0f}% of it exploring ({who}trials of "
            f"{config.fidelity_epochs} epoch(s), at most {config.trials}), the rest fine-tunes the best-scored one")
