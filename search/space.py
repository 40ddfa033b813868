"""The joint conditional search space: which methods to chain, then each method's own choices.

A trial first picks a *combination* of methods (one categorical choice, e.g. pruning then int8);
the plan holds the choices of that combination's methods only. Every method's parameters are
nevertheless *suggested* in every trial (those of methods outside the combination are inactive):
Optuna's NSGA-II, multivariate TPE and GP samplers evolve or model only the parameters that every
finished trial shares (their intersection search space) and sample the rest at random, so a
conditional space would turn them into random search (measured: ``benchmarks/README.md``, search).
Parameter names carry the space's prefix, so a method's choices are shared between the
combinations that contain it and the samplers learn across them.

The search gives the layer-wise spaces ``bins`` (``--depth-bins``, default 4): one ratio, rank
pair or sparsity per contiguous depth bin of the layers rather than per layer (15 parameters
instead of 48 for pruning, Tucker-2 and int8 on ResNet-18), which the samplers model better.

Methods chain in stage order: structural (pruning, decomposition) -> distillation (a fine-tuning
loss) -> post-training (int8 quantisation); at most one method per stage.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from spaces.errors import SpaceError

__all__ = ["SearchMethod", "JointSpace"]


def _stage(space: Any) -> int:
    """Where a method sits in a chain: structural (0), a distillation loss (1), post-training (2)."""
    return 2 if space.post_training else 1 if space.distill else 0


@dataclass(frozen=True)
class SearchMethod:
    """A method of the search: its command-line name, its space and that space's stage."""

    name: str
    space_name: str
    stage: int
    options: Mapping[str, Any]


class JointSpace:
    """Methods, their combinations, and the define-by-run suggestion of a whole plan.

    Args:
        methods: command-line method names (a space's ``aliases``) or space names.
        max_combo: most methods chained in one plan.
        options: per-method space options (``{"prune": {"max_ratio": 0.9}}``).
        bins: given to every space that is ``binnable`` (one value per contiguous depth bin of
            the layers instead of one per layer), unless ``options`` sets it.
    """

    def __init__(self, methods: Sequence[str], *, max_combo: int = 2,
                 options: Mapping[str, Mapping[str, Any]] | None = None, bins: int | None = None) -> None:
        from spaces.registry import get_space, resolve_space, space_class

        options = dict(options or {})
        self.methods: dict[str, SearchMethod] = {}
        self._spaces: dict[str, Any] = {}
        for m in methods:
            if m in self.methods:
                raise SpaceError(f"method {m!r} given twice")
            space_name = resolve_space(m)
            opts = dict(options.get(m, {}))
            if bins and space_class(space_name).binnable:
                opts.setdefault("bins", bins)
            space = get_space(space_name, **opts)
            self.methods[m] = SearchMethod(m, space_name, _stage(space), opts)
            self._spaces[m] = space
        self.combos: list[str] = []
        names = list(self.methods)
        for k in range(1, max_combo + 1):
            for combo in itertools.combinations(names, k):
                stages = [self.methods[c].stage for c in combo]
                if len(set(stages)) != len(stages):
                    continue
                ordered = sorted(combo, key=lambda c: (self.methods[c].stage, names.index(c)))
                self.combos.append("+".join(ordered))

    def space(self, method: str) -> Any:
        return self._spaces[method]

    def restrict(self, combos: Sequence[str]) -> None:
        """Keep only ``combos`` (e.g. those that can reach the budget)."""
        self.combos = [c for c in self.combos if c in set(combos)]

    def steps_of(self, combo: str, params: Sequence[Mapping[str, Any]]) -> tuple[Any, ...]:
        """The plan steps (:class:`spaces.Step`) of ``combo`` with the given params, in chain order."""
        from spaces.base import Step

        return tuple(Step(space=self.methods[m].space_name, params=dict(p), options=dict(self.methods[m].options))
                     for m, p in zip(combo.split("+"), params))

    def suggest(self, trial: Any, model: Any, context: Any) -> tuple[str, tuple[Any, ...]]:
        """The combination, then every method's choices (a static space); returns (combo, steps)."""
        combo = trial.suggest_categorical("method", list(self.combos)) if len(self.combos) > 1 else self.combos[0]
        suggested = {m: self._spaces[m].suggest(trial, model, context)
                     for m in self.methods if any(m in c.split("+") for c in self.combos)}
        return combo, self.steps_of(combo, [suggested[m] for m in combo.split("+")])

    def strongest(self, combo: str, model: Any, context: Any, *, factor: float = 1e6) -> tuple[Any, ...]:
        """The most compressed steps of ``combo``: mid-range choices scaled until they saturate."""
        trial = _MidTrial()
        params = [self._spaces[m].suggest(trial, model, context) for m in combo.split("+")]
        params = [self._spaces[m].scale(p, factor) for m, p in zip(combo.split("+"), params)]
        return self.steps_of(combo, params)


class _MidTrial:
    """A stand-in trial answering every suggestion with the middle of its range (first category).

    Mid-range rather than random so that no choice starts at zero, which no scaling could move.
    """

    def suggest_float(self, name: str, low: float, high: float, *, step: float | None = None, log: bool = False) -> float:
        mid = (low * high) ** 0.5 if log and low > 0 else (low + high) / 2
        if step:
            mid = low + round((mid - low) / step) * step
        return float(mid)

    def suggest_int(self, name: str, low: int, high: int, *, step: int = 1, log: bool = False) -> int:
        return int(low + ((high - low) // 2 // step) * step)

    def suggest_categorical(self, name: str, choices: Sequence[Any]) -> Any:
        return choices[0]
