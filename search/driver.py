"""The search itself: check the input, ask the engine for plans, run them, record every outcome.

``run(config)`` neither parses arguments nor prints: it reports through a
:class:`search.report.Reporter` and returns a :class:`search.report.SearchResult`. Its loop is
ask -> submit to an executor -> :meth:`search.state.Search.record`, the one place where a finished trial
is written to the engine, to MLflow and to the report row together. Every trial's request is the
search's template (:attr:`search.setup.PreparedSearch.request`) with its plan, target and seed
(:mod:`search.request`). Heavy libraries are imported inside functions so that ``--help`` answers at once.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

from search.config import SearchConfig
from search.executors import TrialFn
from search.report import Reporter, SearchResult
from search.request import trial_seed
from search.state import Outcome, Pending

if TYPE_CHECKING:
    from search.compute import Ledger
    from search.engines.base import TrialRecord
    from search.setup import PreparedSearch
    from search.spending import ComputeBudget

__all__ = ["run"]


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
    from search.aims import spread_target, trial_target
    from search.compute import trials_ledger
    from search.spending import ComputeBudget, describe, exploring_done, plan_config

    rep = reporter or Reporter()
    t_start = time.perf_counter()
    config = plan_config(config)  # --compute: the trials its exploring share pays for, one finalist
    budget = ComputeBudget.parse(config.compute) if config.compute else None
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
    template = s.request  # the trials' requests (final stage: s.request, read by path in this process)
    if config.backend != "local":
        rep.message(f"trials run on {executor.describe()}")
        if config.ray_data == "object-store" or (config.ray_data == "auto" and executor.ships):
            template = ship_inputs(executor, s)
            rep.message("trials get the data set and the base model through Ray's object store "
                        "(written once to each node's cache); no shared disk needed")
    trial_device = s.device if config.backend == "local" else ("cuda" if config.trial_gpus > 0 else "cpu")
    device_name, base_epochs = _device_name(trial_device), _base_epochs(s)
    if budget:
        from spaces.registry import uniform_baseline

        found = uniform_baseline(config.space_methods()[0])
        rep.message(describe(budget, config, f"uniform {found[1].name}" if found and s.request.limits else None))
    candidate = _uniform_candidate(s, trial_fn, rep.message) if budget else None

    def spent() -> Ledger:  # the trials' ledger so far (the uniform candidate among them)
        ledger = trials_ledger(engine.trials(), device=device_name, base_epochs=base_epochs)
        if candidate is not None:
            ledger.add("trials", epochs=candidate.epochs_run or 0, seconds=candidate.seconds.get("total", 0.0))
        return ledger

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
                   and len(lost) < config.trials  # as many lost as asked for: the cluster is broken
                   and not (budget and finished + len(in_flight) and exploring_done(budget, config, spent()))):
                fixed = None
                if s.target_key and config.aims == "spread":
                    fixed = {"target": spread_target(engine.trial_count(), min_target=config.min_target,
                                                     seed=config.seed)}
                trial = engine.ask(fixed)  # suggested on by the spaces, then addressed by its number
                number = trial.number
                combo, steps = joint.suggest(trial, s.skeleton, s.context)
                aim = {}
                if s.target_key:
                    aim = {s.target_key: trial_target(trial, combo, key=s.target_key, ceiling=s.target_ceiling,
                                                      floors=s.floors, min_target=config.min_target)}
                    engine.annotate(number, {"target": aim})
                run_id = tracker.start_trial(search.parent_id, number, tags={
                    "method": combo, "study": config.study_name, "hardware": s.hardware.spec})
                engine.annotate(number, {"mlflow_run_id": run_id, "method": combo})
                plan = {"base": s.arch, "steps": [st.to_dict() for st in steps]}
                request = template.replace(plan=plan, target=aim, device=trial_device,
                                           seed=trial_seed(config.seed, number), early_stop=search.early_stop(combo))
                in_flight[number] = Pending(number, run_id, combo, plan, aim)
                executor.submit(number, request.to_dict())
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
    ledger = spent()
    eligible, baseline_epochs = list(done), None
    if candidate is not None and candidate.state == "complete":
        result.notes.append(f"the uniform candidate ({candidate.method}) was explored beside the trials: "
                            f"val OA {candidate.values[0]:.4f} after {candidate.epochs_run} epoch(s)")
        if candidate.eligible:
            eligible.append(candidate)
    if budget and not interrupted:
        s, baseline_epochs = _spend_the_rest(s, budget, ledger, front_trials, eligible, candidate, rep.message)
    try:
        if not interrupted:
            final_stage(s, result, front_trials, trial_fn=trial_fn, say=rep.message, stage=rep.stage,
                        eligible=eligible, ledger=ledger, baseline_epochs=baseline_epochs)
        result.compute = ledger.to_dict()
        tracker.log_metrics(search.parent_id, ledger.metrics())
        write_artifacts(s, result)
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


def _uniform_candidate(s: PreparedSearch, trial_fn: TrialFn, say: Callable[[str], None]) -> TrialRecord | None:
    """The uniform configuration explored as a candidate (:func:`search.baseline.uniform_candidate`), once per
    study: a resumed search reads it back from the engine's study attributes."""
    import dataclasses

    from search.baseline import uniform_candidate
    from search.engines.base import TrialRecord

    engine, config = s.engine, s.config
    stored = engine.get_attr("uniform_candidate")
    if stored:
        return TrialRecord(**{k: (tuple(v) if k in ("values", "val_history") and v is not None else v)
                              for k, v in stored.items()})
    found = uniform_candidate(s, trial_fn, epochs=config.fidelity_epochs, objectives=s.search.objectives)
    if found is None:
        say("note: no uniform candidate: no searched method has a uniform configuration, or the budget has no "
            "counted cost to project it onto")
        return None
    record, _ = found
    if record.state == "complete":
        say(f"uniform candidate ({record.method}): val OA {record.values[0]:.4f} after {record.epochs_run} "
            "epoch(s), explored beside the trials")
    else:
        say(f"uniform candidate ({record.method}) failed: {record.error}")
    engine.set_attr("uniform_candidate", dataclasses.asdict(record))
    return record


def _spend_the_rest(s: PreparedSearch, budget: ComputeBudget, ledger: Ledger, front: list[TrialRecord],
                    eligible: list[TrialRecord], candidate: TrialRecord | None,
                    say: Callable[[str], None]) -> tuple[PreparedSearch, int | None]:
    """``--compute``: the finalist's epochs (what is left of the budget) set on the prepared search's config, and
    the compute-matched baseline's epochs where they are not the search's (a wall-time budget: the budget at the
    uniform candidate's pace)."""
    import dataclasses

    from search.compute import Ledger
    from search.final import final_candidates
    from search.spending import final_epochs, seconds_per_epoch

    config = s.config
    chosen, _ = final_candidates(config, front, eligible)
    pace = {"seconds": chosen[0].seconds, "epochs_run": chosen[0].epochs_run} if chosen else None
    epochs = final_epochs(budget, ledger, pace)
    baseline = None
    if budget.seconds is not None and candidate is not None:  # the whole budget at the uniform candidate's pace
        own = {"seconds": candidate.seconds, "epochs_run": candidate.epochs_run}
        if seconds_per_epoch(own)[0] > 0:
            baseline = final_epochs(budget, Ledger(), own)
    explored = ledger.epochs.get("trials", 0.0)
    say(f"compute budget {budget}: {explored:.0f} epoch-equivalents explored"
        + (f" in {ledger.seconds.get('trials', 0.0) / 60:.1f} min" if budget.seconds is not None else "")
        + (f"; the finalist fine-tunes {epochs} epoch(s)" if chosen else "; no candidate inside the budget"))
    return dataclasses.replace(s, config=config.replace(final_epochs=epochs)), baseline


def _base_epochs(s: PreparedSearch) -> int:
    """The epochs the search's base model was trained for (its checkpoint's recipe; 0 when not recorded)."""
    from rsc.checkpoint import load_checkpoint

    try:
        return int((load_checkpoint(s.ckpt).get("config") or {}).get("epochs") or 0)
    except Exception:  # noqa: BLE001 - a figure for the report, never a reason to fail
        return 0


def _device_name(device: str) -> str:
    """Where trials trained, for the compute ledger: ``cpu (AMD EPYC ...)``, ``cuda``."""
    from costs.machine import cpu_name

    return f"{device} ({cpu_name()})" if device == "cpu" else device
