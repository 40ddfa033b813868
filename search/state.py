"""One search's state between the steps of the trial loop, and the one place a finished trial is recorded.

:meth:`Search.record` writes an :class:`Outcome` everywhere it goes together - the engine (state, values,
the trial's attributes), its MLflow child run, the report row - as Optuna's loop records a trial through
its storage alone. Everything here reads the engine's :class:`search.engines.base.TrialRecord` s, never
the engine's own objects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from rsc.errors import BudgetInfeasible
from search.config import SearchConfig
from search.engines.base import Engine, TrialRecord
from search.executors import TrialLost
from search.report import stored_rows
from search.request import EarlyStop, TrialResult

__all__ = ["Search", "Outcome", "Pending", "epoch_fronts"]


@dataclass(frozen=True)
class Outcome:
    """How a trial ended, as the engine, MLflow and the report row all need to know it.

    ``state``: complete, pruned (stopped early), infeasible, failed, or lost (its worker or node died
    on every attempt: not the trial's fault, so it does not count towards ``--trials``).
    """

    state: str
    result: TrialResult | None = None
    values: list[float] | None = None
    error: str = ""

    @classmethod
    def of(cls, result: Mapping[str, Any] | None, error: BaseException | None,
           objectives: Sequence[tuple[str, str, str]]) -> "Outcome":
        """The outcome of a trial function's JSON ``result`` (or the ``error`` it raised)."""
        if isinstance(error, BudgetInfeasible):
            return cls("infeasible", error=str(error))
        if isinstance(error, TrialLost):
            return cls("lost", error=str(error))
        if error is not None or result is None:
            return cls("failed", error=f"{type(error).__name__}: {error}")
        try:
            typed = TrialResult.from_dict(result)
        except (TypeError, ValueError) as exc:  # a trial function that answers something else is broken
            return cls("failed", error=f"{type(exc).__name__}: {exc}")
        if typed.status == "pruned":
            return cls("pruned", typed)
        oa = math.nan if typed.val_oa is None else float(typed.val_oa)
        values = [oa if k == "val_oa" else float(typed.costs.get(k, math.nan)) for _, k, _ in objectives]
        if not all(math.isfinite(v) for v in values):
            return cls("failed", typed, error=f"non-finite result {values}")
        return cls("complete", typed, values)


@dataclass(frozen=True)
class Pending:
    """A trial in flight: its number, its MLflow run, its method and plan, its target."""

    number: int
    run_id: str
    combo: str
    plan: dict[str, Any]
    aim: dict[str, float]


def epoch_fronts(done: Sequence[TrialRecord], epochs: int, directions: Sequence[str], *,
                 zero_shot: bool = False) -> dict[str, list[list[float]]]:
    """Per-epoch fronts for early stopping: epoch (as a string) -> non-dominated [val OA then, costs...].

    A trial half-way through its fine-tune is compared only with what finished trials scored after
    the same number of epochs of the same schedule: their final OA is higher by construction (a
    one-cycle schedule ends low), so comparing with it stopped most trials of a 2-epoch search after
    its first epoch. Trials without a per-epoch history (an older study) take no part; the last
    epoch needs no front, as nothing is stopped there. With ``zero_shot``, epoch "0" holds the
    finished trials' adaptive-BN scores before fine-tuning (``zero_shot_oa``), for the screen.
    """
    from tracking.pareto import pareto_mask

    out: dict[str, list[list[float]]] = {}
    for epoch in range(0 if zero_shot else 1, epochs):
        points = []
        for t in done:
            history = [t.zero_shot_oa, *(t.val_history or ())]
            oa = history[epoch] if len(history) > epoch else None
            if oa is not None and math.isfinite(oa):
                points.append([float(oa), *[float(v) for v in t.values[1:]]])
        if points:
            out[str(epoch)] = [p for p, m in zip(points, pareto_mask(points, directions)) if m]
    return out


class Search:
    """One search's state between the steps of :func:`search.driver.run`: engine, tracker, space, budgets, rows."""

    def __init__(self, config: SearchConfig, engine: Engine, tracker: Any, parent_id: str, joint: Any, budgets: Any,
                 objectives: Sequence[tuple[str, str, str]], base_costs: Mapping[str, float]) -> None:
        self.config, self.engine, self.tracker, self.parent_id = config, engine, tracker, parent_id
        self.joint, self.budgets, self.objectives, self.base_costs = joint, budgets, list(objectives), base_costs
        self.directions = [d for _, _, d in objectives]
        self.cost_keys = [k for _, k, d in objectives if d == "minimize"]
        self.rows: list[dict[str, Any]] = stored_rows(engine.trials())  # a resumed study's trials, then this run's

    # -- the front ----------------------------------------------------------------------------

    def eligible(self) -> list[TrialRecord]:
        """Completed trials that may sit on the front: inside measured budgets and above the floor."""
        return [t for t in self.engine.complete() if t.eligible]

    def front_state(self) -> tuple[list[TrialRecord], list[bool], float]:
        """Eligible trials, their Pareto mask, and the hypervolume (costs relative to the base model)."""
        from tracking.pareto import hypervolume, pareto_mask

        done = self.eligible()
        if not done:
            return done, [], 0.0
        vals = [list(t.values) for t in done]
        mask = pareto_mask(vals, self.directions)
        norm = [[v[0]] + [x / self.base_costs[k] if self.base_costs.get(k) else x for x, k in zip(v[1:], self.cost_keys)]
                for v in vals]
        hv = hypervolume(norm, self.directions, [0.0] + [1.0] * len(self.cost_keys))
        return done, [bool(m) for m in mask], hv

    def early_stop(self, combo: str | None = None) -> EarlyStop | None:
        """What a trial of method combination ``combo`` needs to stop itself when clearly dominated: after
        an epoch of its fine-tune, or before it (the ``zero_shot`` screen, against finished trials of the
        same combination only: before any fine-tuning, Tucker-2 at 10x keeps about 0.5 OA on UC Merced and
        channel pruning about 0.1, yet pruning ends as accurate) (None: neither)."""
        c = self.config
        stop = c.early_stop_margin is not None and c.fidelity_epochs > 1
        screen = bool(c.zero_shot) and c.zero_shot_margin >= 0
        if not (stop or screen) or c.fidelity_epochs < 1:
            return None
        done = self.eligible()
        fronts = epoch_fronts(done, c.fidelity_epochs, self.directions) if stop else {}
        if screen:
            fronts.update(epoch_fronts([t for t in done if t.method == combo], 1, self.directions, zero_shot=True))
        if not fronts:
            return None
        return EarlyStop(fronts=fronts, directions=tuple(self.directions), cost_keys=tuple(self.cost_keys),
                         margin=c.early_stop_margin if stop else None,
                         zero_shot_margin=c.zero_shot_margin if screen else None)

    def counted(self) -> int:
        """Finished trials that count towards ``--trials``: screened ones (a second each, no fine-tune) do
        not, up to ``--trials`` of them, so the screen buys more candidates rather than fewer trials."""
        done = self.engine.finished()
        screened = sum(1 for t in done if t.screened)
        return len(done) - min(screened, int(self.config.trials))

    # -- one outcome, written everywhere -------------------------------------------------------

    def record(self, p: Pending, outcome: Outcome) -> dict[str, Any]:
        """Tell the engine, finish the trial's MLflow run and add the report row, for any outcome."""
        result, tracker, engine = outcome.result or TrialResult(), self.tracker, self.engine
        curve = result.curve  # val OA after each epoch
        plan = result.plan or p.plan
        row: dict[str, Any] = {"number": p.number, "method": p.combo, "state": outcome.state}
        attrs: dict[str, Any] = {"outcome": outcome.state}  # read back by search.report.stored_rows on --resume
        if result.epochs_run is not None:  # what it cost (search.compute)
            attrs["epochs_run"] = int(result.epochs_run)
        if outcome.state == "infeasible":
            engine.tell_pruned(p.number, attrs=attrs)
            tracker.finish_trial(p.run_id, plan=plan, tags={"state": "PRUNED", "feasible": "false",
                                                            "reason": outcome.error[:5000]}, status="FINISHED")
        elif outcome.state == "failed":
            engine.tell_failed(p.number, attrs={**attrs, "error": outcome.error[:2000]})
            tracker.finish_trial(p.run_id, plan=plan, tags={"state": "FAIL", "feasible": "false",
                                                            "error": outcome.error[:5000]}, status="FAILED")
            row["error"] = outcome.error
        elif outcome.state == "lost":
            engine.tell_failed(p.number, lost=outcome.error, attrs=attrs)
            tracker.finish_trial(p.run_id, plan=plan, tags={"state": "LOST", "feasible": "unknown",
                                                            "reason": outcome.error[:5000]}, status="KILLED")
            row["error"] = outcome.error
        elif outcome.state == "pruned":
            if result.zero_shot_oa is not None:
                attrs["zero_shot_oa"] = result.zero_shot_oa
            if result.screened:
                attrs["screened"] = True
            attrs["val_oa"] = result.val_oa
            attrs["seconds"] = dict(result.seconds)
            engine.tell_pruned(p.number, attrs=attrs)
            tracker.finish_trial(p.run_id, plan=plan,
                                 metrics={"val_oa": result.val_oa, "epochs_run": result.epochs_run,
                                          "zero_shot_oa": result.zero_shot_oa},
                                 tags={"state": "PRUNED", "feasible": "unknown", "reason": result.reason,
                                       **({"screened": "true"} if result.screened else {})},
                                 series={"val_oa_epoch": curve})
            row["val_oa"] = result.val_oa
            if result.screened:
                row["screened"] = True
        else:
            self._complete(p, outcome, attrs, plan, curve, row)
        done, mask, hv = self.front_state()
        tracker.update_pareto({t.mlflow_run_id: m for t, m in zip(done, mask) if t.mlflow_run_id})
        tracker.log_metrics(self.parent_id, {"hypervolume": hv, "front_size": sum(mask)}, step=len(engine.finished()))
        row.update(hypervolume=hv, front=sum(mask))
        self.rows.append(row)
        return row

    def _complete(self, p: Pending, outcome: Outcome, attrs: dict[str, Any], plan: Mapping[str, Any], curve: list,
                  row: dict) -> None:
        result, c = outcome.result, self.config
        costs = dict(result.costs)
        feasible = self.budgets.check(costs)
        attrs.update(feasible=feasible, plan=result.plan, costs=costs, seconds=dict(result.seconds), val_history=curve)
        if result.zero_shot_oa is not None:
            attrs["zero_shot_oa"] = result.zero_shot_oa
        tags = {"state": "COMPLETE", "feasible": str(feasible).lower()}
        if result.worker:
            attrs["worker"] = result.worker
            tags["worker"] = f"{result.worker.get('host')}:{result.worker.get('pid')}"
            if result.worker.get("node_id"):
                tags["ray_node"] = str(result.worker["node_id"])
        constraints = list(self.budgets.violations(costs)) if self.budgets.constraints else []
        if c.min_accuracy is not None:  # an OA floor: infeasible below it, off the front
            above = result.val_oa >= c.min_accuracy
            attrs["above_floor"] = above
            constraints.append(c.min_accuracy - result.val_oa)
            tags["above_accuracy_floor"] = str(above).lower()
        self.engine.tell_complete(p.number, outcome.values, constraints, attrs=attrs)
        metrics = {"val_oa": result.val_oa, **costs, "compression_rate": result.compression_rate,
                   "speedup": result.speedup, "projection": result.projection,
                   "epochs_run": result.epochs_run, "seconds": result.seconds.get("total"),
                   "zero_shot_oa": result.zero_shot_oa,
                   **{f"target_{k}": v for k, v in p.aim.items()}}
        self.tracker.finish_trial(p.run_id, plan=plan, metrics=metrics, tags=tags, series={"val_oa_epoch": curve})
        row.update(feasible=feasible, val_oa=result.val_oa, costs=costs, values=outcome.values)

    def interrupted(self, pending: Mapping[int, Pending]) -> None:
        """Ctrl-C: the trials in flight are failed as interrupted (``--resume`` does not count them)."""
        for p in pending.values():
            self.engine.tell_failed(p.number, interrupted=True)
            self.tracker.finish_trial(p.run_id, tags={"state": "INTERRUPTED"}, status="KILLED")

    def counts(self) -> dict[str, int]:
        """Trials by state (interrupted, lost and screened apart), inside the budget and above the floor."""
        counts = {"finished": len(self.engine.finished())}
        for t in self.engine.trials():
            key = t.state
            if t.state == "fail" and t.interrupted:
                key = "interrupted"
            elif t.state == "fail" and t.lost:
                key = "lost"
            elif t.state == "pruned" and t.screened:
                key = "screened"
            counts[key] = counts.get(key, 0) + 1
        complete = self.engine.complete()
        counts["inside_budget"] = sum(1 for t in complete if t.feasible)
        if any(t.above_floor is not None for t in complete):
            counts["above_floor"] = sum(1 for t in complete if t.eligible)
        return counts
