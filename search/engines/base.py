"""The engine seam: what the search needs from whoever proposes plans and keeps the study's state.

The search talks to an :class:`Engine` and reads :class:`TrialRecord` s; the engine's own objects (Optuna's
``Study``, ``FrozenTrial``, ``TrialState``, user attributes) stay inside its module, as Optuna keeps its
storages apart from its samplers behind ``BaseStorage``. One exception, by design: the trial
:meth:`Engine.ask` returns is the object the search *suggests on*. The spaces
(:meth:`search.space.JointSpace.suggest`, :func:`search.aims.trial_target`) call
``suggest_float``/``suggest_int``/``suggest_categorical`` on it - Optuna's ``Trial`` API, which is also how
their tests drive them with ``optuna.trial.FixedTrial`` - so it stays an Optuna ``Trial`` (the driver reads
its ``number`` and hands it to the spaces, nothing else). Everything after the ask goes through the
engine by trial number.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

__all__ = ["Engine", "TrialRecord", "RECORD_ATTRS", "STATES"]

#: a trial's state, as the engine keeps it (Optuna's ``TrialState`` names, lower case)
STATES = ("running", "waiting", "complete", "pruned", "fail")


@dataclass(frozen=True, kw_only=True)
class TrialRecord:
    """One trial as the study holds it - the project's ``FrozenTrial``: every layer of the search reads this.

    Attributes:
        number: the trial's number in its study (0, 1, ...).
        state: one of :data:`STATES`.
        values: the objective values of a complete trial (accuracy first, then the costs), else None.
        params: the sampled parameters (``space/param`` -> value).
        outcome: how the search recorded it - complete, infeasible, pruned, failed or lost
            (:class:`search.state.Outcome`); None for trials stored before it was kept.
        method: the method combination (``prune+quant``).
        plan: the plan as compressed (base + steps with records).
        costs: every measured cost of a complete trial.
        feasible: inside the measured budgets (True where never checked).
        above_floor: at or above the accuracy floor; None without ``--min-accuracy``.
        val_history: validation OA after each fine-tune epoch.
        val_oa: the OA a pruned trial was stopped at (a complete one's is ``values[0]``).
        zero_shot_oa: the adaptive-BN score before fine-tuning (``--zero-shot``).
        screened: pruned by the zero-shot screen, before any fine-tuning.
        mlflow_run_id: the trial's MLflow child run.
        target: the ceilings it aimed at (``{cost key: value}``).
        seconds: wall time by stage.
        epochs_run: the fine-tune epochs it trained (stopped trials: until they stopped; screened: 0).
        worker: where it ran on Ray.
        error: why it failed. lost: why its worker was lost on every attempt.
        interrupted: failed by Ctrl-C or a dead driver (does not count towards ``--trials``).
    """

    number: int
    state: str
    values: tuple[float, ...] | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    outcome: str | None = None
    method: str = ""
    plan: Mapping[str, Any] | None = None
    costs: Mapping[str, float] = field(default_factory=dict)
    feasible: bool = True
    above_floor: bool | None = None
    val_history: tuple[float | None, ...] = ()
    val_oa: float | None = None
    zero_shot_oa: float | None = None
    screened: bool = False
    mlflow_run_id: str = ""
    target: Mapping[str, float] = field(default_factory=dict)
    seconds: Mapping[str, float] = field(default_factory=dict)
    epochs_run: int | None = None
    worker: Mapping[str, Any] | None = None
    error: str = ""
    lost: str = ""
    interrupted: bool = False

    @property
    def eligible(self) -> bool:
        """Complete, inside the measured budgets and at or above the accuracy floor: may sit on the front."""
        return self.state == "complete" and self.feasible and self.above_floor is not False


#: the attributes a search keeps per trial: a record's fields but those the engine itself owns
RECORD_ATTRS = frozenset(f.name for f in dataclasses.fields(TrialRecord)) - {"number", "state", "values", "params"}


@runtime_checkable
class Engine(Protocol):
    """Who proposes the next trial and keeps every trial's state (:class:`search.engines.optuna_engine.OptunaEngine`).

    ``attrs`` are :class:`TrialRecord` fields (:data:`RECORD_ATTRS`); an engine stores them with the trial and
    gives them back on its records. A trial is addressed by its number from the ask on.
    """

    directions: list[str]

    def ask(self, fixed: Mapping[str, Any] | None = None) -> Any:
        """A new trial to suggest on (Optuna's ``Trial`` API; see the module docstring); ``fixed`` parameters set."""

    def annotate(self, number: int, attrs: Mapping[str, Any]) -> None:
        """Keep ``attrs`` with the running trial ``number``."""

    def tell_complete(self, number: int, values: Sequence[float], constraints: Sequence[float] = (), *,
                      attrs: Mapping[str, Any] | None = None) -> None:
        """Trial ``number`` finished with these objective values (constraints: <= 0 is satisfied)."""

    def tell_pruned(self, number: int, *, attrs: Mapping[str, Any] | None = None) -> None:
        """Trial ``number`` was stopped early or could not reach the budget."""

    def tell_failed(self, number: int, *, interrupted: bool = False, lost: str | None = None,
                    attrs: Mapping[str, Any] | None = None) -> None:
        """Trial ``number`` failed; ``interrupted`` (Ctrl-C) and ``lost`` (why its worker died) ones do not
        count towards ``--trials``."""

    def trials(self) -> list[TrialRecord]:
        """Every trial the study holds, in any state, by number."""

    def finished(self) -> list[TrialRecord]:
        """Trials that count towards ``--trials``: complete, pruned, or failed by the trial itself."""

    def complete(self) -> list[TrialRecord]:
        """Complete trials."""

    def trial_count(self) -> int:
        """Trials the study holds in any state."""

    def recover(self) -> list[int]:
        """Fail the trials a dead process left running (``interrupted``); returns their numbers."""

    def get_attr(self, key: str, default: Any = None) -> Any:
        """A study-level attribute."""

    def set_attr(self, key: str, value: Any) -> None:
        """Set a study-level attribute."""
