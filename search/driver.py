"""The search itself: check the input, ask the sampler for plans, run them, record every outcome.

``run(config)`` neither parses arguments nor prints: it reports through a
:class:`search.report.Reporter` and returns a :class:`search.report.SearchResult`. Its loop is
ask -> submit to an executor -> :meth:`Search.record`, the one place where a finished trial is
written to Optuna, to MLflow and to the report row together. Heavy libraries are imported
inside functions so that ``--help`` answers at once.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from rsc.errors import BudgetInfeasible
from search.config import SearchConfig
from search.executors import TrialFn, TrialLost
from search.report import Reporter, SearchResult, stored_rows

__all__ = ["run", "Search", "Outcome", "epoch_fronts"]


@dataclass
class Outcome:
    """How a trial ended, as Optuna, MLflow and the report row all need to know it.

    ``state``: complete, pruned (stopped early), infeasible, failed, or lost (its worker or node died
    on every attempt: not the trial's fault, so it does not count towards ``--trials``).
    """

    state: str
    result: Mapping[str, Any] | None = None
    values: list[float] | None = None
    error: str = ""

    @classmethod
    def of(cls, result: Mapping[str, Any] | None, error: BaseException | None,
           objectives: Sequence[tuple[str, str, str]]) -> "Outcome":
        if isinstance(error, BudgetInfeasible):
            return cls("infeasible", error=str(error))
        if isinstance(error, TrialLost):
            return cls("lost", error=str(error))
        if error is not None or result is None:
            return cls("failed", error=f"{type(error).__name__}: {error}")
        if result.get("status") == "pruned":
            return cls("pruned", result)
        values = [float(result.get("val_oa", math.nan)) if k == "val_oa"
                  else float((result.get("costs") or {}).get(k, math.nan)) for _, k, _ in objectives]
        if not all(math.isfinite(v) for v in values):
            return cls("failed", result, error=f"non-finite result {values}")
        return cls("complete", result, values)


@dataclass
class Pending:
    """A trial in flight: the Optuna trial, its MLflow run, its method and plan, its target."""

    trial: Any
    run_id: str
    combo: str
    plan: dict[str, Any]
    aim: dict[str, float]


def epoch_fronts(done: Sequence[Any], epochs: int, directions: Sequence[str], *,
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
            history = [t.user_attrs.get("zero_shot_oa"), *(t.user_attrs.get("val_history") or [])]
            oa = history[epoch] if len(history) > epoch else None
            if oa is not None and math.isfinite(oa):
                points.append([float(oa), *[float(v) for v in t.values[1:]]])
        if points:
            out[str(epoch)] = [p for p, m in zip(points, pareto_mask(points, directions)) if m]
    return out


class Search:
    """One search's state between the steps of :func:`run`: study, tracker, space, budgets, rows."""

    def __init__(self, config: SearchConfig, engine: Any, tracker: Any, parent_id: str, joint: Any, budgets: Any,
                 objectives: Sequence[tuple[str, str, str]], base_costs: Mapping[str, float]) -> None:
        self.config, self.engine, self.tracker, self.parent_id = config, engine, tracker, parent_id
        self.joint, self.budgets, self.objectives, self.base_costs = joint, budgets, list(objectives), base_costs
        self.directions = [d for _, _, d in objectives]
        self.cost_keys = [k for _, k, d in objectives if d == "minimize"]
        self.rows: list[dict[str, Any]] = stored_rows(engine.study)  # a resumed study's trials, then this run's

    # -- the front ----------------------------------------------------------------------------

    def eligible(self) -> list[Any]:
        """Completed trials that may sit on the front: inside measured budgets and above the floor."""
        return [t for t in self.engine.complete()
                if t.user_attrs.get("feasible", True) and t.user_attrs.get("above_floor", True)]

    def front_state(self) -> tuple[list[Any], list[bool], float]:
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

    def early_stop(self, combo: str | None = None) -> dict[str, Any] | None:
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
            fronts.update(epoch_fronts([t for t in done if t.user_attrs.get("method") == combo], 1, self.directions,
                                       zero_shot=True))
        return {"fronts": fronts, "directions": self.directions, "cost_keys": self.cost_keys,
                "margin": c.early_stop_margin if stop else None,
                "zero_shot_margin": c.zero_shot_margin if screen else None} if fronts else None

    def counted(self) -> int:
        """Finished trials that count towards ``--trials``: screened ones (a second each, no fine-tune) do
        not, up to ``--trials`` of them, so the screen buys more candidates rather than fewer trials."""
        done = self.engine.finished()
        screened = sum(1 for t in done if t.user_attrs.get("screened"))
        return len(done) - min(screened, int(self.config.trials))

    # -- one outcome, written everywhere -------------------------------------------------------

    def record(self, p: Pending, outcome: Outcome) -> dict[str, Any]:
        """Tell Optuna, finish the trial's MLflow run and add the report row, for any outcome."""
        trial, result, tracker = p.trial, outcome.result or {}, self.tracker
        curve = [h.get("val_oa") for h in result.get("history") or []]  # val OA after each epoch
        plan = result.get("plan") or p.plan
        row: dict[str, Any] = {"number": trial.number, "method": p.combo, "state": outcome.state}
        trial.set_user_attr("outcome", outcome.state)  # read back by search.report.stored_rows on --resume
        if outcome.state == "infeasible":
            self.engine.tell_pruned(trial)
            tracker.finish_trial(p.run_id, plan=plan, tags={"state": "PRUNED", "feasible": "false",
                                                            "reason": outcome.error[:5000]}, status="FINISHED")
        elif outcome.state == "failed":
            trial.set_user_attr("error", outcome.error[:2000])
            self.engine.tell_failed(trial)
            tracker.finish_trial(p.run_id, plan=plan, tags={"state": "FAIL", "feasible": "false",
                                                            "error": outcome.error[:5000]}, status="FAILED")
            row["error"] = outcome.error
        elif outcome.state == "lost":
            self.engine.tell_failed(trial, lost=outcome.error)
            tracker.finish_trial(p.run_id, plan=plan, tags={"state": "LOST", "feasible": "unknown",
                                                            "reason": outcome.error[:5000]}, status="KILLED")
            row["error"] = outcome.error
        elif outcome.state == "pruned":
            if result.get("zero_shot_oa") is not None:
                trial.set_user_attr("zero_shot_oa", result["zero_shot_oa"])
            if result.get("screened"):
                trial.set_user_attr("screened", True)
            trial.set_user_attr("val_oa", result.get("val_oa"))
            self.engine.tell_pruned(trial)
            tracker.finish_trial(p.run_id, plan=plan,
                                 metrics={"val_oa": result.get("val_oa"), "epochs_run": result.get("epochs_run"),
                                          "zero_shot_oa": result.get("zero_shot_oa")},
                                 tags={"state": "PRUNED", "feasible": "unknown", "reason": result.get("reason", ""),
                                       **({"screened": "true"} if result.get("screened") else {})},
                                 series={"val_oa_epoch": curve})
            row["val_oa"] = result.get("val_oa")
            if result.get("screened"):
                row["screened"] = True
        else:
            self._complete(p, outcome, plan, curve, row)
        done, mask, hv = self.front_state()
        tracker.update_pareto({t.user_attrs["mlflow_run_id"]: m for t, m in zip(done, mask)
                               if t.user_attrs.get("mlflow_run_id")})
        tracker.log_metrics(self.parent_id, {"hypervolume": hv, "front_size": sum(mask)}, step=len(self.engine.finished()))
        row.update(hypervolume=hv, front=sum(mask))
        self.rows.append(row)
        return row

    def _complete(self, p: Pending, outcome: Outcome, plan: Mapping[str, Any], curve: list, row: dict) -> None:
        trial, result, c = p.trial, outcome.result, self.config
        costs = dict(result.get("costs") or {})
        feasible = self.budgets.check(costs)
        for key, value in (("feasible", feasible), ("plan", result["plan"]), ("costs", costs),
                           ("seconds", result.get("seconds") or {}), ("val_history", curve)):
            trial.set_user_attr(key, value)
        if result.get("zero_shot_oa") is not None:
            trial.set_user_attr("zero_shot_oa", result["zero_shot_oa"])
        tags = {"state": "COMPLETE", "feasible": str(feasible).lower()}
        if result.get("worker"):
            trial.set_user_attr("worker", result["worker"])
            tags["worker"] = f"{result['worker'].get('host')}:{result['worker'].get('pid')}"
            if result["worker"].get("node_id"):
                tags["ray_node"] = str(result["worker"]["node_id"])
        constraints = list(self.budgets.violations(costs)) if self.budgets.constraints else []
        if c.min_accuracy is not None:  # an OA floor: infeasible below it, off the front
            above = result["val_oa"] >= c.min_accuracy
            trial.set_user_attr("above_floor", above)
            constraints.append(c.min_accuracy - result["val_oa"])
            tags["above_accuracy_floor"] = str(above).lower()
        self.engine.tell_complete(trial, outcome.values, constraints)
        metrics = {"val_oa": result["val_oa"], **costs, "compression_rate": result.get("compression_rate"),
                   "speedup": result.get("speedup"), "projection": result.get("projection"),
                   "epochs_run": result.get("epochs_run"), "seconds": (result.get("seconds") or {}).get("total"),
                   "zero_shot_oa": result.get("zero_shot_oa"),
                   **{f"target_{k}": v for k, v in p.aim.items()}}
        self.tracker.finish_trial(p.run_id, plan=plan, metrics=metrics, tags=tags, series={"val_oa_epoch": curve})
        row.update(feasible=feasible, val_oa=result["val_oa"], costs=costs, values=outcome.values)

    def interrupted(self, pending: Mapping[int, Pending]) -> None:
        """Ctrl-C: the trials in flight are failed as interrupted (``--resume`` does not count them)."""
        for p in pending.values():
            self.engine.tell_failed(p.trial, interrupted=True)
            self.tracker.finish_trial(p.run_id, tags={"state": "INTERRUPTED"}, status="KILLED")

    def counts(self) -> dict[str, int]:
        from optuna.trial import TrialState

        engine = self.engine
        counts = {"finished": len(engine.finished())}
        for t in engine.study.get_trials(deepcopy=False):
            key = t.state.name.lower()
            if t.state == TrialState.FAIL and t.user_attrs.get("interrupted"):
                key = "interrupted"
            elif t.state == TrialState.FAIL and t.user_attrs.get("lost"):
                key = "lost"
            elif t.state == TrialState.PRUNED and t.user_attrs.get("screened"):
                key = "screened"
            counts[key] = counts.get(key, 0) + 1
        complete = engine.complete()
        counts["inside_budget"] = sum(1 for t in complete if t.user_attrs.get("feasible", True))
        if any("above_floor" in t.user_attrs for t in complete):
            counts["above_floor"] = sum(1 for t in complete
                                        if t.user_attrs.get("feasible", True) and t.user_attrs.get("above_floor", True))
        return counts


def run(config: SearchConfig, *, reporter: Reporter | None = None, trial_fn: TrialFn | None = None) -> SearchResult:
    """Run (or resume) the search described by ``config``.

    Args:
        config: every setting.
        reporter: receives progress; silent by default.
        trial_fn: the trial function (default :func:`search.objective.evaluate_trial`); it gets a
            JSON request and returns a JSON result, so it may run anywhere.

    Raises:
        UserError: bad input, found before any training where possible.
    """
    from search.executors import make_executor, ship_inputs
    from search.final import final_stage, front_row, write_artifacts
    from search.objective import evaluate_trial
    from search.setup import prepare
    from search.targets import spread_target, trial_target

    rep = reporter or Reporter()
    t_start = time.perf_counter()
    s = prepare(config, rep.message)
    search, engine, tracker, joint = s.search, s.engine, s.tracker, s.joint
    trial_fn = trial_fn or evaluate_trial
    in_flight: dict[int, Pending] = {}

    def on_retry(number: int, attempt: int, reason: str) -> None:
        p = in_flight[number]
        tracker.set_tags(p.run_id, {"attempts": str(attempt + 1), f"lost_{attempt}": reason[:5000]})
        rep.message(f"trial {number}: its worker was lost ({reason[:200]}); running it again "
                    f"({attempt} of {config.trial_retries})")

    executor = make_executor(config.backend, trial_fn, **({} if config.backend == "local" else dict(
        address=config.ray_address, workers=config.workers, cpus=config.trial_cpus, gpus=config.trial_gpus,
        retries=config.trial_retries, timeout=config.ray_timeout, on_retry=on_retry, nodes=s.ray_nodes)))
    request_base = s.request_base
    if config.backend != "local":
        rep.message(f"trials run on {executor.describe()}")
        if config.ray_data == "object-store" or (config.ray_data == "auto" and executor.ships):
            request_base = ship_inputs(executor, s)
            rep.message("trials get the data set and the base model through Ray's object store "
                        "(written once to each node's cache); no shared disk needed")
    trial_device = s.device if config.backend == "local" else ("cuda" if config.trial_gpus > 0 else "cpu")
    timing = {"trial_fn": 0.0, "wall": 0.0, "trials": 0, "driver": 0.0}
    interrupted = False
    finished = search.counted()
    lost: list[str] = []
    rep.start(config.trials, min(finished, config.trials))
    t_loop = time.perf_counter()
    try:
        while True:
            t_driver = time.perf_counter()
            while (len(in_flight) < executor.capacity and finished + len(in_flight) < config.trials
                   and len(lost) < config.trials):  # as many lost as asked for: the cluster is broken
                fixed = None
                if s.target_key and config.targets == "spread":
                    fixed = {"target": spread_target(engine.trial_count(), min_target=config.min_target,
                                                     seed=config.seed)}
                trial = engine.ask(fixed)
                combo, steps = joint.suggest(trial, s.skeleton, s.context)
                aim = {}
                if s.target_key:
                    aim = {s.target_key: trial_target(trial, combo, key=s.target_key, ceiling=s.target_ceiling,
                                                      floors=s.floors, min_target=config.min_target)}
                    trial.set_user_attr("target", aim)
                run_id = tracker.start_trial(search.parent_id, trial.number, tags={
                    "method": combo, "study": config.study_name, "hardware": s.hardware.spec})
                trial.set_user_attr("mlflow_run_id", run_id)
                trial.set_user_attr("method", combo)
                plan = {"base": s.arch, "steps": [st.to_dict() for st in steps]}
                request = {**request_base, "plan": plan, "target": aim, "device": trial_device,
                           "seed": config.seed * 100003 + trial.number, "early_stop": search.early_stop(combo)}
                in_flight[trial.number] = Pending(trial, run_id, combo, plan, aim)
                executor.submit(trial.number, json.loads(json.dumps(request)))
            timing["driver"] += time.perf_counter() - t_driver
            if not in_flight:
                break
            t_fn = time.perf_counter()
            number, result, error = executor.next()
            timing["trial_fn"] += time.perf_counter() - t_fn
            t_driver = time.perf_counter()
            outcome = Outcome.of(result, error, search.objectives)
            row = search.record(in_flight.pop(number), outcome)
            if outcome.state == "lost":
                lost.append(f"trial {number}: {outcome.error}")
            finished = search.counted()
            timing["trials"] += 1
            timing["driver"] += time.perf_counter() - t_driver
            rep.trial(row)
    except KeyboardInterrupt:
        interrupted = True
        executor.cancel()
        search.interrupted(in_flight)
    finally:
        timing["wall"] = time.perf_counter() - t_loop
        executor.close()
        rep.close()

    done, mask, hv = search.front_state()
    result = SearchResult(study=config.study_name, storage=config.storage_url, tracking_uri=s.uri,
                          experiment_id=tracker.experiment_id, parent_run_id=search.parent_id,
                          out_dir=str(config.study_dir.resolve()), artifact_uri=tracker.artifact_uri(search.parent_id),
                          objectives=[(n, d) for n, _, d in search.objectives], hypervolume=hv,
                          interrupted=interrupted, trials=search.rows, base_costs=dict(s.base_costs),
                          hardware=s.hardware.spec, hardware_fingerprint=dict(s.hardware_fingerprint or {}),
                          hardware_note=s.hardware.describe())
    result.counts = search.counts()
    if lost:
        result.notes.append(f"{len(lost)} trial(s) lost with their workers, not counted towards --trials:\n  "
                            + "\n  ".join(lost))
    result.min_accuracy = config.min_accuracy
    result.searched = list(dict.fromkeys([*search.cost_keys, *s.budgets.limits()]))
    front_trials = sorted([t for t, m in zip(done, mask) if m], key=lambda t: tuple(t.values[1:]))
    result.front = [front_row(t, s.base_costs) for t in front_trials]
    if timing["wall"]:  # driver work (Optuna, MLflow, bookkeeping) as a share of the loop's wall time
        timing["overhead_share"] = min(1.0, timing["driver"] / timing["wall"])
    result.timing = timing
    try:
        if not interrupted:
            final_stage(config, result, front_trials, s.request_base, trial_fn, tracker, s.ckpt, s.data, s.split,
                        rep.message, eligible=done)
        write_artifacts(result, engine, search.objectives, s.base_costs, s.budgets.limits(), tracker,
                        config.study_dir)
        tracker.log_metrics(search.parent_id, {"overhead_share": timing.get("overhead_share", 0.0),
                                               "trials_finished": result.counts.get("finished", 0)})
    except KeyboardInterrupt:
        result.interrupted = True
    tracker.end_parent(search.parent_id, status="KILLED" if result.interrupted else "FINISHED")
    if s.ray_joined:  # connected for a ray: latency target (search.cluster.join_for_target)
        import ray

        ray.shutdown()
    result.timing["total"] = time.perf_counter() - t_start
    return result
