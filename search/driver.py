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

from search.config import SearchConfig
from search.executors import TrialFn
from search.report import Reporter, SearchResult
from search.request import trial_seed
from search.state import Outcome, Pending

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
    template = s.request  # the trials' requests (final stage: s.request, read by path in this process)
    if config.backend != "local":
        rep.message(f"trials run on {executor.describe()}")
        if config.ray_data == "object-store" or (config.ray_data == "auto" and executor.ships):
            template = ship_inputs(executor, s)
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
    ledger = trials_ledger(engine.trials(), device=_device_name(trial_device), base_epochs=_base_epochs(s))
    try:
        if not interrupted:
            final_stage(s, result, front_trials, trial_fn=trial_fn, say=rep.message, stage=rep.stage, eligible=done,
                        ledger=ledger)
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


def _base_epochs(s: object) -> int:
    """The epochs the search's base model was trained for (its checkpoint's recipe; 0 when not recorded)."""
    from rsc.checkpoint import load_checkpoint

    try:
        return int((load_checkpoint(s.ckpt).get("config") or {}).get("epochs") or 0)  # type: ignore[attr-defined]
    except Exception:  # noqa: BLE001 - a figure for the report, never a reason to fail
        return 0


def _device_name(device: str) -> str:
    """Where trials trained, for the compute ledger: ``cpu (AMD EPYC ...)``, ``cuda``."""
    from costs.machine import cpu_name

    return f"{device} ({cpu_name()})" if device == "cpu" else device
