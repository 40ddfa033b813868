"""What a study runs: the cells its methods expand into.

A *cell* is one measured number of the study: one method, on one network, at one training ratio, one
split (repeat), one target compression rate, with or without distillation, under one augmentation.
Cells that several experiments share (the ResNet-18 baseline is a row of the baseline table, the
reference of every compression table and the "default augmentation" row of the ablation) are
planned once. Every cell names its base model (network, ratio, repeat, augmentation); bases are
trained once and cached like a search's (:mod:`search.base_model`). The methods are
:mod:`search.study.methods`'s, the settings :mod:`search.study.config`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

from search.study.config import AUGMENTS, DEFAULT_EXPERIMENTS, EXPERIMENTS, QUALITY_METHODS, StudyConfig

__all__ = ["StudyConfig", "Cell", "EXPERIMENTS", "DEFAULT_EXPERIMENTS", "AUGMENTS", "QUALITY_METHODS", "plan_cells",
           "cell_epochs", "augment_config", "finite"]

#: What a baseline cell's method is called (the network itself, trained from scratch).
BASELINE = "baseline"


def augment_config(name: str) -> Any:
    """The :class:`rsc.augment.AugmentConfig` of a variant name (None: no augmentation at all)."""
    from rsc.augment import AugmentConfig

    if name == "none":
        return None
    return AugmentConfig(**AUGMENTS[name])


@dataclass(frozen=True)
class Cell:
    """One measured number; ``id`` is its file name and its MLflow run name."""

    method: str            # "baseline" or a study method (search.study.methods.study_methods)
    network: str           # the network trained (baseline) or compressed
    train_ratio: float
    repeat: int
    rate: float | None = None    # target compression rate; None for baselines and fixed-rate methods
    kd: bool = False
    augment: str = "default"
    experiments: tuple[str, ...] = ()

    @property
    def id(self) -> str:
        rate = "" if self.rate is None else f"-x{self.rate:g}"
        return (f"{self.method}-{self.network}-r{self.train_ratio:g}{rate}{'-kd' if self.kd else ''}"
                f"-aug-{self.augment.replace('+', '_')}-s{self.repeat}")

    @property
    def base_key(self) -> tuple[str, float, int, str]:
        """The base model a cell starts from (teacher cells: the teacher's, set by the runner)."""
        return (self.network, self.train_ratio, self.repeat, self.augment)

    def describe(self, methods: dict[str, Any] | None = None) -> dict[str, Any]:
        """The cell's coordinates as its row starts them (``methods``: the study's, else read afresh)."""
        if methods is None and self.method != BASELINE:
            from search.study.methods import study_methods

            methods = study_methods()
        return {"id": self.id, "method": self.method, "network": self.network, "train_ratio": self.train_ratio,
                "repeat": self.repeat, "target_rate": self.rate, "kd": self.kd, "augment": self.augment,
                "experiments": list(self.experiments),
                "family": BASELINE if self.method == BASELINE else methods[self.method].family}


def plan_cells(config: StudyConfig, ratios: tuple[float, ...]) -> list[Cell]:
    """Every cell of the study, baselines first (they train the bases the others start from), each once."""
    from search.study.methods import study_methods

    table = study_methods()
    cells: dict[str, Cell] = {}

    def add(cell: Cell, experiment: str) -> None:
        old = cells.get(cell.id)
        tags = (old.experiments if old else ()) + ((experiment,) if not old or experiment not in old.experiments else ())
        cells[cell.id] = replace(cell, experiments=tags)

    for ratio in ratios:
        for repeat in range(config.repeats):
            if "baselines" in config.experiments:
                for net in config.networks:
                    add(Cell(BASELINE, net, ratio, repeat), "baselines")
            for exp, kds in (("families", None), ("pruning", config.kd),
                             # the same fine-tune for every method: KD in all or in none
                             ("quality", (config.search.finetune_kd,))):
                if exp not in config.experiments:
                    continue
                add(Cell(BASELINE, config.model, ratio, repeat), exp)  # the reference row
                for name in config.methods_of(exp):
                    m = table[name]
                    for kd in (kds if kds is not None else (m.kd_default,)):
                        if m.kind == "teacher" and not config.teacher:
                            continue
                        for rate in ((None,) if m.fixed_rate else config.rates):
                            add(Cell(name, config.model, ratio, repeat, rate, kd or m.kd_default), exp)
            if "augment" in config.experiments:
                for aug in config.augments:
                    add(Cell(BASELINE, config.model, ratio, repeat, augment=aug), "augment")
                    add(Cell(config.augment_method, config.model, ratio, repeat, config.middle_rate(),
                             augment=aug), "augment")
    # split by split, so that a study cut short has every method on its first splits rather than
    # all the baselines and nothing else; on each split the bases are trained first
    return sorted(cells.values(), key=lambda c: (c.repeat, c.train_ratio, c.method != BASELINE,
                                                 c.network != config.model))


def cell_epochs(cell: Cell, config: StudyConfig, methods: dict[str, Any] | None = None) -> float:
    """Training epochs a cell costs (in passes of its network over the training part), base excluded
    (``methods``: the study's, else read afresh)."""
    if cell.method == BASELINE:
        return 0.0
    if methods is None:
        from search.study.methods import study_methods

        methods = study_methods()
    m = methods[cell.method]
    if m.kind == "teacher":
        return config.epochs * 1.3          # student steps plus the teacher's forward passes
    s = config.search
    if m.kind == "search":
        finalists = s.final_max or s.trials
        final, left = 0.0, finalists
        for i in range(s.final_rungs):  # successive halving: the better half goes on, twice the epochs
            final += left * (config.finetune_epochs / 2 ** (s.final_rungs - 1 - i))
            left = math.ceil(left / 2)
        folds = s.final_folds  # K more fine-tunes per final model, and K bases on (K-1)/K of the data
        cv = folds * (finalists + s.rank_sample) * config.finetune_epochs
        bases = config.epochs * (folds - 1) if folds else 0
        searched = s.trials * s.fidelity_epochs + final
        if s.compute:  # a budget in epochs is the search's (search.spending); a wall-time one: as the trials say
            from search.spending import ComputeBudget

            searched = ComputeBudget.parse(s.compute).epochs or searched
        baseline = (0.0 if not s.baseline else searched if s.baseline_compute == "matched" else config.finetune_epochs)
        return ((searched + baseline + s.rank_sample * config.finetune_epochs + cv)
                * (1.3 if cell.kd or s.finetune_kd else 1.0) + bases)
    return config.finetune_epochs * (1.3 if cell.kd else 1.0)


def finite(x: float | None) -> bool:
    return x is not None and math.isfinite(x)
