"""``python -m search.run``: a budgeted multi-objective compression search, tracked in MLflow.

``main(argv)`` parses flags, renders progress and maps bad input to ``error: ...`` / exit 2;
``run(config)`` does the work and prints nothing (it reports through a :class:`Reporter`).
Heavy libraries are imported inside functions so that ``--help`` answers at once.
"""

from __future__ import annotations

import argparse
import json
import math
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from rsc.errors import ConfigError, UserError
from search.budget import GRAMMAR, Budgets, BudgetInfeasible, get_metric, parse_budgets
from search.config import BACKENDS, QUALITY_OBJECTIVES, SAMPLERS, TARGETS, SearchConfig
from search.executors import TrialFn

__all__ = ["main", "run", "SearchResult", "Reporter", "build_parser"]


# --------------------------------------------------------------------------------- reporting

class Reporter:
    """What ``run`` tells the outside world; the default says nothing."""

    def message(self, text: str) -> None:
        """A line of progress worth showing (banner, base model, resume)."""

    def start(self, total: int, done: int) -> None:
        """The trial loop starts with ``done`` of ``total`` trials already finished."""

    def trial(self, row: Mapping[str, Any]) -> None:
        """A trial finished (any state)."""

    def close(self) -> None:
        """The trial loop ended."""


class TerminalReporter(Reporter):
    """A tqdm bar over trials (with ETA) and plain lines above it."""

    def __init__(self, *, progress: bool = True, stream: Any = None) -> None:
        self.progress = progress
        self.stream = stream or sys.stderr
        self.bar = None

    def message(self, text: str) -> None:
        if self.bar is not None:
            self.bar.write(text, file=self.stream)
        else:
            print(text, file=self.stream, flush=True)

    def start(self, total: int, done: int) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=done, desc="trials", unit="trial", file=self.stream,
                        disable=not self.progress, dynamic_ncols=True)

    def trial(self, row: Mapping[str, Any]) -> None:
        if self.bar is None:
            return
        self.bar.update(1)
        post = {"last": f"#{row['number']} {row['state']}"}
        if row.get("hypervolume") is not None:
            post["hv"] = f"{row['hypervolume']:.4f}"
        if row.get("front") is not None:
            post["front"] = row["front"]
        self.bar.set_postfix(post, refresh=True)
        if not self.progress:
            return

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


# --------------------------------------------------------------------------------- result

@dataclass
class SearchResult:
    """What a search leaves behind, and where."""

    study: str
    storage: str
    tracking_uri: str
    experiment_id: str
    parent_run_id: str
    out_dir: str
    artifact_uri: str
    objectives: list[tuple[str, str]]
    counts: dict[str, int] = field(default_factory=dict)
    front: list[dict[str, Any]] = field(default_factory=list)
    final: list[dict[str, Any]] = field(default_factory=list)
    base: dict[str, Any] = field(default_factory=dict)
    base_costs: dict[str, float] = field(default_factory=dict)
    hypervolume: float = 0.0
    interrupted: bool = False
    timing: dict[str, float] = field(default_factory=dict)
    trials: list[dict[str, Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    min_accuracy: float | None = None


# --------------------------------------------------------------------------------- helpers

def objective_specs(names: Sequence[str]) -> list[tuple[str, str, str]]:
    """``(objective name, result key, direction)`` for each objective name."""
    out = []
    for name in names:
        if name in QUALITY_OBJECTIVES:
            out.append((name, QUALITY_OBJECTIVES[name], "maximize"))
        else:
            try:
                spec = get_metric(name)
            except UserError:
                from search.budget import list_metrics

                raise ConfigError(f"unknown objective {name!r}; known: accuracy, {', '.join(list_metrics())}") from None
            out.append((name, spec.cost_key, "minimize"))
    return out


def _value(result: Mapping[str, Any], key: str) -> float:
    if key == "val_oa":
        return float(result.get("val_oa", math.nan))
    return float((result.get("costs") or {}).get(key, math.nan))


def _git_sha() -> str:
    import subprocess

    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def _check_reachable(joint: Any, budgets: Budgets, base_model: Any, context: Any, image_size: int,
                     say: Callable[[str], None], extra_keys: Sequence[str] = ()) -> dict[str, dict[str, float]]:
    """Drop method combinations that cannot reach the analytic budget; none left is an error.

    One structural build of each combination's strongest setting - seconds, before any training.
    Returns each kept combination's strongest costs (its floor) on the budgeted keys and
    ``extra_keys``, which the per-trial targets must not go below.
    """
    from rsc.cost import CostSettings, measure
    from search.objective import build_steps

    limits = budgets.limits()
    analytic = {b.spec.cost_key for b in budgets.analytic}
    limits = {k: v for k, v in limits.items() if k in analytic}
    keys = list(dict.fromkeys([*limits, *extra_keys]))
    if not keys:
        return {}
    settings = CostSettings(image_size=image_size)
    ok, best, floors = [], {k: math.inf for k in limits}, {}
    for combo in joint.combos:
        try:
            model, _ = build_steps(base_model, joint.strongest(combo, base_model, context), context, structure_only=True)
        except UserError as exc:
            say(f"note: {combo} cannot be built at full strength ({exc}); left out")
            continue
        costs = measure(model, keys, settings)
        floors[combo] = {k: float(costs[k]) for k in keys}
        for k in limits:
            best[k] = min(best[k], costs[k])
        if all(costs[k] <= limits[k] for k in limits):
            ok.append(combo)
    if not ok:
        reach = ", ".join(f"{k} {best[k]:.4g} (budget {limits[k]:.4g})" for k in limits)
        raise BudgetInfeasible(f"budget {budgets} is below what methods {', '.join(joint.methods)} can reach: "
                               f"the most compressed plans give {reach}")
    dropped = [c for c in joint.combos if c not in ok]
    if dropped:
        say(f"note: {', '.join(dropped)} cannot reach budget {budgets}; searching {', '.join(ok)}")
    joint.restrict(ok)
    return {c: floors[c] for c in ok}


def trial_target(trial: Any, combo: str, *, key: str, ceiling: float, floors: Mapping[str, Mapping[str, float]],
                 min_target: float, headroom: float = 1.1) -> float:
    """The ceiling this trial's plan is projected onto, on the cost ``key`` (AMC-style clipping).

    ``target`` is a trial parameter in ``[min_target, 1]`` (log scale; set by
    :func:`spread_target` under ``--targets spread``, else sampled), a fraction of the
    ``ceiling`` (the budget on ``key``, or the base model's cost without one), so trials spread
    along the front instead of all landing on the budget - the sampled per-layer (or per-stage)
    choices then say how to distribute the compression, ``target`` how much. The result never goes below ``headroom``
    times the combination's floor (its strongest plan), so no trial is infeasible because of it.
    """
    fraction = trial.suggest_float("target", min_target, 1.0, log=True)
    floor = float((floors.get(combo) or {}).get(key, 0.0))
    return min(ceiling, max(fraction * ceiling, headroom * floor))


def spread_target(index: int, *, min_target: float, seed: int) -> float:
    """The ``index``-th trial's target fraction under ``--targets spread``.

    A van der Corput sequence (base 2) shifted by a seed-dependent offset, mapped log-uniformly
    onto ``[min_target, 1]``: the first trials already cover the compression levels (the first 7
    fall in 7 different eighths of the log range), whatever the sampler does, and the sequence
    continues on ``--resume``. Measured why: TPE learned that cheap Tucker trials are
    non-dominated and put 0 of its 16 guided trials above 0.6 of the budget in two of three
    runs, leaving the accurate end of its front empty.
    """
    n, u, denom = index + 1, 0.0, 1.0
    while n:
        n, digit = divmod(n, 2)
        denom *= 2
        u += digit / denom
    u = (u + (seed * 0.6180339887498949) % 1.0) % 1.0
    return float(min_target ** (1.0 - u)) if min_target < 1.0 else 1.0


# --------------------------------------------------------------------------------- run

def run(config: SearchConfig, *, reporter: Reporter | None = None, trial_fn: TrialFn | None = None) -> SearchResult:
    """Run (or resume) the search described by ``config``; see the module docstring.

    Args:
        config: every setting.
        reporter: receives progress; silent by default.
        trial_fn: the trial function (default :func:`search.objective.evaluate_trial`); it gets a
            JSON request and returns a JSON result, so it may run anywhere.

    Raises:
        UserError: bad input, found before any training where possible.
    """
    import torch

    from rsc.cost import CostSettings, measure
    from rsc.data import load_scene_data, make_split
    from rsc.models import create_model
    from rsc.training import resolve_device
    from search.base_model import obtain_base_checkpoint
    from search.engines.optuna_engine import OptunaEngine
    from search.objective import evaluate_trial
    from search.space import JointSpace
    from spaces.base import Context
    from tracking.mlflow_log import Tracker, check_tracking_uri, default_tracking_uri

    rep = reporter or Reporter()
    say = rep.message
    trial_fn = trial_fn or evaluate_trial
    device = str(resolve_device(config.device))
    t_start = time.perf_counter()

    # 1. everything that can be wrong with the input, before any training
    budgets = parse_budgets(config.budgets)
    objectives = objective_specs(config.objectives)
    directions = [d for _, _, d in objectives]
    out_dir = config.study_dir
    uri = config.tracking_uri or default_tracking_uri(config.out)
    check_tracking_uri(uri)
    if config.backend == "ray" and config.ray_address:
        from search.executors import check_ray_address

        check_ray_address(config.ray_address)
    joint = JointSpace(config.methods, max_combo=config.max_combo, bins=config.depth_bins or None)
    torch.manual_seed(config.seed)

    if config.data is None:
        say(f"*** no --data: running on the built-in SYNTHETIC scene set ({config.image_size}px) - "
            "a demo, not a result ***")
    data = load_scene_data(config.data, dataset=config.dataset, image_size=config.image_size, progress=config.progress)
    split = make_split(data, train_ratio=config.train_ratio, val_ratio=config.val_ratio, seed=config.data_seed)
    say(f"data: {data.summary()}; split {split.digest}: train {len(split.train)}, val {len(split.val)}, "
        f"test {len(split.test)} (test untouched until the final stage)")
    arch = {"model": config.model, "num_classes": data.num_classes, "image_size": data.image_size}
    context = Context(num_classes=data.num_classes, image_size=data.image_size, device="cpu", seed=config.seed)
    skeleton = create_model(config.model, data.num_classes, image_size=data.image_size).eval()
    settings = CostSettings(image_size=data.image_size)
    base_costs = measure(skeleton, ["params", "nonzero_params", "macs", "size"], settings)
    if any(b.spec.kind == "measured" for b in budgets) or any(k == "latency_ms" for _, k, _ in objectives):
        base_costs["latency_ms"] = measure(skeleton, ["latency_ms"], settings)["latency_ms"]
    budgets = budgets.resolve(base_costs)
    limits = {k: v for k, v in budgets.limits().items() if k in {b.spec.cost_key for b in budgets.analytic}}
    # the first analytic cost objective: each trial aims at a searched fraction of its ceiling
    target_key = next((k for n, k, d in objectives if d == "minimize" and get_metric(n).kind == "analytic"), None)
    if config.min_target >= 1.0:
        target_key = None
    floors = _check_reachable(joint, budgets, skeleton, context, data.image_size, say,
                              extra_keys=[target_key] if target_key else [])
    target_ceiling = limits.get(target_key, base_costs.get(target_key)) if target_key else None
    if budgets:
        say(f"budget: {budgets} -> " + ", ".join(f"{k} <= {v:.4g}" for k, v in budgets.limits().items())
            + f" (base: {', '.join(f'{k} {base_costs[k]:.4g}' for k in budgets.limits())})")

    # 2. storage, tracking, base model
    out_dir.mkdir(parents=True, exist_ok=True)
    engine = OptunaEngine(storage=config.storage_url, study_name=config.study_name, directions=directions,
                          sampler=config.sampler, seed=config.seed, resume=config.resume,
                          population_size=config.population_size, startup_trials=config.startup_trials,
                          timeout=config.storage_timeout)
    tracker = Tracker(uri=uri, experiment=config.experiment,
                      artifact_location=None if uri.startswith("http") else (Path(config.out).resolve() / "mlartifacts").as_uri())
    ckpt, _ = obtain_base_checkpoint(model_name=config.model, weights=config.weights, data=data, split=split,
                                     epochs=config.base_epochs, lr=config.base_lr, batch_size=config.batch_size,
                                     seed=config.data_seed, device=device, progress=config.progress, say=say)

    parent_id = engine.get_attr("mlflow_parent_run_id")
    if parent_id and engine.get_attr("mlflow_tracking_uri") == uri:
        tracker.resume_parent(parent_id)
        stale = engine.recover()
        for t in engine.study.get_trials(deepcopy=False):
            if t.number in stale and t.user_attrs.get("mlflow_run_id"):
                tracker.finish_trial(t.user_attrs["mlflow_run_id"], tags={"state": "INTERRUPTED"}, status="KILLED")
        say(f"resuming study {config.study_name}: {len(engine.finished())} finished trial(s) kept"
            + (f", {len(stale)} interrupted trial(s) marked failed" if stale else ""))
    else:
        engine.recover()
        params = {"budget": str(budgets), "space": ",".join(joint.combos), "methods": ",".join(config.methods),
                  "dataset": data.name, "data_path": config.data or "synthetic", "split_hash": split.digest,
                  "sampler": config.sampler, "objectives": ",".join(config.objectives), "model": config.model,
                  "trials": config.trials, "seed": config.seed, "split_seed": config.data_seed,
                  "min_accuracy": config.min_accuracy, "fidelity_epochs": config.fidelity_epochs,
                  "bn_batches": config.bn_batches,
                  "final_epochs": config.final_epochs, "image_size": data.image_size, "device": device,
                  "min_target": config.min_target if target_key else 1.0, "target_key": target_key or "",
                  "base_checkpoint": str(ckpt), "study": config.study_name, "storage": config.storage_url}
        parent_id = tracker.start_parent(config.study_name, params=params,
                                         tags={"study": config.study_name, "git_sha": _git_sha(), "kind": "search"})
        tracker.log_text(parent_id, config.to_json(), "config.json")
        tracker.log_metrics(parent_id, {f"base_{k}": v for k, v in base_costs.items()})
        engine.set_attr("mlflow_parent_run_id", parent_id)
        engine.set_attr("mlflow_tracking_uri", uri)

    request_base = {
        "data": config.data_request(split.digest),
        "base_checkpoint": str(Path(ckpt).resolve()), "model": arch, "limits": limits, "base_costs": base_costs,
        "epochs": config.fidelity_epochs, "lr": config.finetune_lr, "batch_size": config.batch_size,
        "device": device, "calibration_batches": config.calibration_batches, "bn_batches": config.bn_batches,
        "latency": config.latency,
    }
    cost_objs = [(n, k) for n, k, d in objectives if d == "minimize"]
    reference = [0.0] + [1.0] * len(cost_objs)

    def normalised(values: Sequence[float]) -> list[float]:
        return [values[0]] + [v / base_costs[k] if base_costs.get(k) else v for v, (_, k) in zip(values[1:], cost_objs)]

    from tracking.pareto import hypervolume, pareto_mask

    def eligible() -> list[Any]:
        """Completed trials that may sit on the front: inside measured budgets and above the floor."""
        return [t for t in engine.complete()
                if t.user_attrs.get("feasible", True) and t.user_attrs.get("above_floor", True)]

    def front_state() -> tuple[list[Any], list[bool], float]:
        done = eligible()
        if not done:
            return done, [], 0.0
        vals = [list(t.values) for t in done]
        mask = pareto_mask(vals, directions)
        hv = hypervolume([normalised(v) for v in vals], directions, reference)
        return done, [bool(m) for m in mask], hv

    # 3. the trial loop: ask while the executor has room, record each trial as it finishes
    from search.executors import make_executor

    executor = make_executor(config.backend, trial_fn, **({} if config.backend == "local" else dict(
        address=config.ray_address, workers=config.workers, cpus=config.trial_cpus, gpus=config.trial_gpus)))
    if config.backend != "local":
        say(f"trials run on {executor.describe()}")
    trial_device = device if config.backend == "local" else ("cuda" if config.trial_gpus > 0 else "cpu")
    timing = {"trial_fn": 0.0, "wall": 0.0, "trials": 0, "driver": 0.0}
    rows: list[dict[str, Any]] = []
    interrupted = False
    finished = len(engine.finished())
    rep.start(config.trials, min(finished, config.trials))
    hv = front_state()[2]
    in_flight: dict[int, tuple] = {}  # trial number -> trial, run id, combo, sampled plan, limits
    from spaces.errors import BudgetInfeasible as SpaceInfeasible

    t_loop = time.perf_counter()
    try:
        while True:
            t_driver = time.perf_counter()
            while len(in_flight) < executor.capacity and finished + len(in_flight) < config.trials:
                fixed = None
                if target_key and config.targets == "spread" and config.min_target < 1.0:
                    index = engine.trial_count()
                    fixed = {"target": spread_target(index, min_target=config.min_target, seed=config.seed)}
                trial = engine.ask(fixed)
                combo, steps = joint.suggest(trial, skeleton, context)
                aim = {}
                if target_key:
                    aim = {target_key: trial_target(trial, combo, key=target_key, ceiling=target_ceiling,
                                                    floors=floors, min_target=config.min_target)}
                    trial.set_user_attr("target", aim)
                run_id = tracker.start_trial(parent_id, trial.number, tags={"method": combo, "study": config.study_name})
                trial.set_user_attr("mlflow_run_id", run_id)
                trial.set_user_attr("method", combo)
                early = None
                if config.early_stop_margin is not None and config.fidelity_epochs > 1:
                    fronts = epoch_fronts(eligible(), config.fidelity_epochs, directions)
                    if fronts:
                        early = {"fronts": fronts, "directions": directions,
                                 "cost_keys": [k for _, k in cost_objs], "margin": config.early_stop_margin}
                request = {**request_base, "steps": steps, "target": aim, "device": trial_device,
                           "seed": config.seed * 100003 + trial.number, "early_stop": early}
                in_flight[trial.number] = (trial, run_id, combo, {"base": arch, "steps": steps}, aim)
                executor.submit(trial.number, json.loads(json.dumps(request)))
            timing["driver"] += time.perf_counter() - t_driver
            if not in_flight:
                break
            t_fn = time.perf_counter()
            number, result, error = executor.next()
            timing["trial_fn"] += time.perf_counter() - t_fn
            t_driver = time.perf_counter()
            trial, run_id, combo, sampled_plan, aim = in_flight.pop(number)
            row: dict[str, Any] = {"number": trial.number, "method": combo}
            curve = [h.get("val_oa") for h in (result or {}).get("history") or []]  # val OA after each epoch
            if isinstance(error, (SpaceInfeasible, BudgetInfeasible)):
                engine.tell_pruned(trial)
                tracker.finish_trial(run_id, plan=sampled_plan, tags={"state": "PRUNED", "feasible": "false",
                                                                      "reason": str(error)[:5000]}, status="FINISHED")
                row.update(state="infeasible")
            elif error is not None or result is None:
                engine.tell_failed(trial)
                tracker.finish_trial(run_id, plan=sampled_plan, tags={"state": "FAIL", "feasible": "false",
                                     "error": f"{type(error).__name__}: {error}"[:5000]}, status="FAILED")
                row.update(state="failed", error=f"{type(error).__name__}: {error}")
            elif result.get("status") == "pruned":
                engine.tell_pruned(trial)
                tracker.finish_trial(run_id, plan=result.get("plan") or sampled_plan,
                                     metrics={"val_oa": result.get("val_oa"), "epochs_run": result.get("epochs_run")},
                                     tags={"state": "PRUNED", "feasible": "unknown", "reason": result.get("reason", "")},
                                     series={"val_oa_epoch": curve})
                row.update(state="pruned", val_oa=result.get("val_oa"))
            else:
                values = [_value(result, k) for _, k, _ in objectives]
                if not all(math.isfinite(v) for v in values):
                    engine.tell_failed(trial)
                    tracker.finish_trial(run_id, plan=result.get("plan") or sampled_plan,
                                         tags={"state": "FAIL", "feasible": "false", "error": f"non-finite result {values}"},
                                         status="FAILED")
                    row.update(state="failed", error=f"non-finite result {values}")
                else:
                    costs = dict(result.get("costs") or {})
                    feasible = budgets.check(costs)
                    trial.set_user_attr("feasible", feasible)
                    trial.set_user_attr("plan", result["plan"])
                    trial.set_user_attr("costs", costs)
                    trial.set_user_attr("seconds", result.get("seconds") or {})
                    trial.set_user_attr("val_history", curve)
                    if result.get("worker"):
                        trial.set_user_attr("worker", result["worker"])
                    constraints = list(budgets.violations(costs)) if budgets.constraints else []
                    tags = {"state": "COMPLETE", "feasible": str(feasible).lower()}
                    if result.get("worker"):
                        tags["worker"] = f"{result['worker'].get('host')}:{result['worker'].get('pid')}"
                    if config.min_accuracy is not None:  # an OA floor: infeasible below it, off the front
                        trial.set_user_attr("above_floor", result["val_oa"] >= config.min_accuracy)
                        constraints.append(config.min_accuracy - result["val_oa"])
                        tags["above_accuracy_floor"] = str(result["val_oa"] >= config.min_accuracy).lower()
                    engine.tell_complete(trial, values, constraints)
                    metrics = {"val_oa": result["val_oa"], **costs, "compression_rate": result.get("compression_rate"),
                               "speedup": result.get("speedup"), "projection": result.get("projection"),
                               "epochs_run": result.get("epochs_run"),
                               "seconds": (result.get("seconds") or {}).get("total"),
                               **{f"target_{k}": v for k, v in aim.items()}}
                    tracker.finish_trial(run_id, plan=result["plan"], metrics=metrics, tags=tags,
                                         series={"val_oa_epoch": curve})
                    row.update(state="complete", feasible=feasible, val_oa=result["val_oa"], costs=costs,
                               values=values)
            done, mask, hv = front_state()
            tracker.update_pareto({t.user_attrs["mlflow_run_id"]: m for t, m in zip(done, mask)
                                   if t.user_attrs.get("mlflow_run_id")})
            finished = len(engine.finished())
            tracker.log_metrics(parent_id, {"hypervolume": hv, "front_size": sum(mask)}, step=finished)
            row.update(hypervolume=hv, front=sum(mask))
            rows.append(row)
            timing["trials"] += 1
            timing["driver"] += time.perf_counter() - t_driver
            rep.trial(row)
    except KeyboardInterrupt:
        interrupted = True
        executor.cancel()
        for trial, run_id, *_ in in_flight.values():
            engine.tell_failed(trial, interrupted=True)
            tracker.finish_trial(run_id, tags={"state": "INTERRUPTED"}, status="KILLED")
    finally:
        timing["wall"] = time.perf_counter() - t_loop
        executor.close()
        rep.close()

    # 4. summary, final stage, artifacts
    done, mask, hv = front_state()
    result = SearchResult(study=config.study_name, storage=config.storage_url, tracking_uri=uri,
                          experiment_id=tracker.experiment_id, parent_run_id=parent_id, out_dir=str(out_dir.resolve()),
                          artifact_uri=tracker.artifact_uri(parent_id),
                          objectives=[(n, d) for n, _, d in objectives], hypervolume=hv, interrupted=interrupted,
                          trials=rows, base_costs=dict(base_costs))
    result.counts = _counts(engine)
    result.min_accuracy = config.min_accuracy
    front_trials = sorted([t for t, m in zip(done, mask) if m], key=lambda t: tuple(t.values[1:]))
    result.front = [_front_row(t, objectives, base_costs) for t in front_trials]
    if timing["wall"]:  # driver work (Optuna, MLflow, bookkeeping) as a share of the loop's wall time
        timing["overhead_share"] = min(1.0, timing["driver"] / timing["wall"])
    result.timing = timing
    try:
        if not interrupted:
            _final_stage(config, result, front_trials, request_base, trial_fn, tracker, ckpt, data, split, say)
        _write_artifacts(config, result, engine, objectives, base_costs, tracker, out_dir)
        tracker.log_metrics(parent_id, {"overhead_share": timing.get("overhead_share", 0.0),
                                        "trials_finished": result.counts.get("finished", 0)})
    except KeyboardInterrupt:
        result.interrupted = True
    tracker.end_parent(parent_id, status="KILLED" if result.interrupted else "FINISHED")
    result.timing["total"] = time.perf_counter() - t_start
    return result


def _counts(engine: Any) -> dict[str, int]:
    from optuna.trial import TrialState

    counts = {"finished": len(engine.finished())}
    for t in engine.study.get_trials(deepcopy=False):
        key = t.state.name.lower()
        if t.state == TrialState.FAIL and t.user_attrs.get("interrupted"):
            key = "interrupted"
        counts[key] = counts.get(key, 0) + 1
    counts["inside_budget"] = sum(1 for t in engine.complete() if t.user_attrs.get("feasible", True))
    if any("above_floor" in t.user_attrs for t in engine.complete()):
        counts["above_floor"] = sum(1 for t in engine.complete()
                                    if t.user_attrs.get("feasible", True) and t.user_attrs.get("above_floor", True))
    return counts


def epoch_fronts(done: Sequence[Any], epochs: int, directions: Sequence[str]) -> dict[str, list[list[float]]]:
    """Per-epoch fronts for early stopping: epoch (as a string) -> non-dominated [val OA then, costs...].

    A trial half-way through its fine-tune is compared only with what finished trials scored after
    the same number of epochs of the same schedule: their final OA is higher by construction (a
    one-cycle schedule ends low), so comparing with it stopped most trials of a 2-epoch search after
    its first epoch. Trials without a per-epoch history (an older study) take no part; the last
    epoch needs no front, as nothing is stopped there.
    """
    from tracking.pareto import pareto_mask

    out: dict[str, list[list[float]]] = {}
    for epoch in range(1, epochs):
        points = []
        for t in done:
            history = t.user_attrs.get("val_history") or []
            if len(history) >= epoch and history[epoch - 1] is not None and math.isfinite(history[epoch - 1]):
                points.append([float(history[epoch - 1]), *[float(v) for v in t.values[1:]]])
        if points:
            out[str(epoch)] = [p for p, m in zip(points, pareto_mask(points, directions)) if m]
    return out


def _front_row(t: Any, objectives: Sequence[tuple[str, str, str]], base_costs: Mapping[str, float]) -> dict[str, Any]:
    costs = dict(t.user_attrs.get("costs") or {})
    row = {"trial": t.number, "method": t.user_attrs.get("method", ""), "val_oa": t.values[0],
           "mlflow_run_id": t.user_attrs.get("mlflow_run_id", "")}
    for k in ("params", "macs", "size", "latency_ms"):
        if k in costs:
            row[k] = costs[k]
    if costs.get("params"):
        row["compression_rate"] = base_costs["params"] / costs["params"]
    return row


def spread_pick(front: Sequence[Any], k: int | None, accuracy: Callable[[Any], float] = lambda t: t.values[0]) -> list[Any]:
    """``k`` models of a front sorted by cost (cheapest first), spread evenly along it.

    The cheapest and the most accurate models are kept, the rest evenly spaced between, so a
    capped final stage still shows the whole trade-off and its best model.
    """
    n = len(front)
    if k is None or k >= n:
        return list(front)
    if k <= 0:
        return []
    best = max(range(n), key=lambda i: accuracy(front[i]))
    if k == 1:
        return [front[best]]
    picks = {round(i * (n - 1) / (k - 1)) for i in range(k)}
    if best not in picks:
        picks.remove(min(picks - {0}, key=lambda i: abs(i - best)))
        picks.add(best)
    return [front[i] for i in sorted(picks)]


def _final_stage(config: SearchConfig, result: SearchResult, front: list[Any], request_base: Mapping[str, Any],
                 trial_fn: TrialFn, tracker: Any, ckpt: Path, data: Any, split: Any, say: Callable[[str], None]) -> None:
    """Fine-tune the Pareto set longer and evaluate it - and the base model - on the test split."""
    from rsc.checkpoint import load_checkpoint, model_from_checkpoint
    from rsc.cost import CostSettings, measure
    from rsc.data import make_loaders
    from rsc.evaluation import evaluate

    base = model_from_checkpoint(load_checkpoint(ckpt)).eval()
    _, val, test = make_loaders(data, split, batch_size=config.batch_size, seed=config.seed)
    settings = CostSettings(image_size=data.image_size)
    result.base = {"trial": "base", "method": config.model,
                   "val_oa": evaluate(base, val, num_classes=data.num_classes).oa,
                   "test_oa": evaluate(base, test, num_classes=data.num_classes).oa,
                   **measure(base, ["params", "macs", "size", "latency_ms"], settings),
                   "compression_rate": 1.0, "speedup": 1.0}
    tracker.log_metrics(result.parent_run_id, {"base_val_oa": result.base["val_oa"], "base_test_oa": result.base["test_oa"]})
    chosen = spread_pick(front, config.final_max)
    if not chosen:
        return
    say(f"final stage: fine-tuning {len(chosen)} Pareto model(s) for {config.final_epochs} epochs, then the test split")
    for t in chosen:
        plan = t.user_attrs["plan"]
        request = {**request_base, "steps": plan["steps"], "limits": {}, "epochs": config.final_epochs,
                   "seed": config.seed * 100003 + t.number, "early_stop": None, "evaluate_test": True}
        try:
            out = (trial_fn(json.loads(json.dumps(request)), return_model=True)
                   if _accepts_return_model(trial_fn) else trial_fn(json.loads(json.dumps(request))))
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001
            say(f"final stage: trial {t.number} failed: {type(exc).__name__}: {exc}")
            continue
        model = out.pop("model", None)
        costs = out.get("costs") or {}
        row = {"trial": t.number, "method": t.user_attrs.get("method", ""), "val_oa": out.get("val_oa"),
               "test_oa": out.get("test_oa"), **{k: costs.get(k) for k in ("params", "macs", "size", "latency_ms")},
               "compression_rate": out.get("compression_rate"), "speedup": out.get("speedup"),
               "search_val_oa": t.values[0], "mlflow_run_id": t.user_attrs.get("mlflow_run_id", "")}
        result.final.append(row)
        run_id = t.user_attrs.get("mlflow_run_id")
        if run_id:
            tracker.log_metrics(run_id, {f"final_{k}": v for k, v in row.items()
                                         if isinstance(v, (int, float)) and k not in ("trial",)})
        if model is not None:
            _ship_model(config, tracker, result, row, model, out.get("plan"), t.number, data.image_size, say)


def _ship_model(config: SearchConfig, tracker: Any, result: SearchResult, row: dict[str, Any], model: Any,
                plan: Mapping[str, Any] | None, number: int, image_size: int, say: Callable[[str], None]) -> None:
    """Write a final model as files a user deploys, and log it to MLflow.

    ``<study>/models/trial-N.pt`` (base + plan + state dict; :func:`spaces.load_compressed`,
    ``weights_only``) always, ``trial-N.onnx`` where the exporter takes the model; both go to the
    parent run's ``models/`` artifacts. With ``log_models`` the model is also an MLflow model:
    the ``pytorch`` flavour where MLflow can serialise it, else a pyfunc over the plan file.
    """
    import torch

    from spaces import Plan, export_onnx, save_compressed

    folder = config.study_dir / "models"
    path = save_compressed(folder / f"trial-{number}.pt", model, Plan.from_dict(plan),
                           extra={k: v for k, v in row.items() if isinstance(v, (int, float, str))})
    row["file"] = str(path.resolve())
    why = export_onnx(model, path.with_suffix(".onnx"), image_size=image_size)
    if why is None:
        row["onnx"] = str(path.with_suffix(".onnx").resolve())
    else:
        result.notes.append(f"note: trial {number} has no ONNX file ({why}); its .pt file rebuilds it")
    for f in (path, path.with_suffix(".onnx")):
        if f.exists():
            tracker.log_artifact(result.parent_run_id, f, "models")
    if not config.log_models:
        return
    example = torch.zeros(1, 3, image_size, image_size).numpy()
    meta = {"trial": number, "plan": json.dumps(plan)}
    name = f"pareto-trial-{number}"
    from search.objective import is_post_training
    from spaces import get_space

    first = "int8 packed weights"
    if not any(is_post_training(get_space(s["space"], **(s.get("options") or {}))) for s in (plan or {}).get("steps", [])):
        try:
            row["model_uri"] = tracker.log_model(result.parent_run_id, model, name, input_example=example,
                                                 metadata=meta)
            return
        except Exception as exc:  # noqa: BLE001 - whatever MLflow cannot serialise: fall back to the plan file
            first = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    try:
        row["model_uri"] = tracker.log_compressed_model(result.parent_run_id, path, name, input_example=example,
                                                        metadata={**meta, "flavor_note": first})
    except Exception as exc:  # noqa: BLE001
        note = (f"note: could not log trial {number} as an MLflow model ({type(exc).__name__}: {exc}); "
                f"{path} rebuilds it")
        result.notes.append(note)
        say(note)


def _accepts_return_model(fn: Callable) -> bool:
    import inspect

    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return "return_model" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _write_artifacts(config: SearchConfig, result: SearchResult, engine: Any, objectives: Sequence[tuple[str, str, str]],
                     base_costs: Mapping[str, float], tracker: Any, out_dir: Path) -> None:
    """Pareto set as CSV/JSON, plots (PNG + HTML) and the summary: on disk and on the parent run."""
    import csv

    from tracking.plots import plot_front_html, plot_front_png

    folder = out_dir / "pareto"
    folder.mkdir(parents=True, exist_ok=True)
    front_ids = {r["trial"] for r in result.front}
    records = []
    for t in engine.complete():
        records.append({"number": t.number, "values": {n: v for (n, _, _), v in zip(objectives, t.values)},
                        "feasible": bool(t.user_attrs.get("feasible", True)), "pareto": t.number in front_ids,
                        "method": t.user_attrs.get("method", "")})
    rows = result.final or result.front
    with open(folder / "front.csv", "w", newline="") as fh:
        keys = list(dict.fromkeys(k for r in ([result.base] if result.base else []) + rows for k in r))
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        for r in ([result.base] if result.base else []) + rows:
            writer.writerow(r)
    summary = {"study": result.study, "objectives": result.objectives, "hypervolume": result.hypervolume,
               "counts": result.counts, "base": result.base, "front": result.front, "final": result.final,
               "timing": result.timing, "interrupted": result.interrupted}
    (folder / "front.json").write_text(json.dumps(summary, indent=1, default=str))
    base_point = {n: (result.base.get("val_oa") if k == "val_oa" else base_costs.get(k)) for n, k, _ in objectives}
    base_point = {k: v for k, v in base_point.items() if v is not None}
    obj = [(n, d) for n, _, d in objectives]
    title = f"{result.study}: {len(result.front)} Pareto model(s), HV {result.hypervolume:.4f}"
    plot_front_png(records, obj, folder / "front.png", base=base_point if len(base_point) == len(obj) else None, title=title)
    plot_front_html(records, obj, folder / "front.html", base=base_point if len(base_point) == len(obj) else None, title=title)
    tracker.log_artifacts(result.parent_run_id, folder, "pareto")


# --------------------------------------------------------------------------------- CLI

def build_parser() -> argparse.ArgumentParser:
    from rsc.cli import ArgumentParser

    d = SearchConfig()
    p = ArgumentParser(
        prog="python -m search.run",
        description="Search compressed models under a cost budget; the Pareto front lands in MLflow.",
        epilog=GRAMMAR + ". Example: python -m search.run --budget 'params<25%%' --data "
               "../shared/datasets/UCMerced_LandUse --methods prune,tucker,quant --trials 40")
    p.add_argument("--config", help="JSON file of settings (flags override it)")
    p.add_argument("--budget", action="append", dest="budgets", metavar="BUDGET",
                   help="e.g. 'params<5M', 'macs<50%%', 'size<2MB', 'latency<20ms'; repeat to AND")
    p.add_argument("--data", help="dataset folder (default: built-in synthetic set)")
    p.add_argument("--dataset", help="dataset name when the folder is ambiguous")
    p.add_argument("--image-size", type=int, help=f"input side in px (default {d.image_size})")
    p.add_argument("--model", help=f"torchvision architecture (default {d.model})")
    p.add_argument("--weights", help="base model checkpoint (default: train one and cache it)")
    p.add_argument("--base-epochs", type=int, help=f"epochs to train the base model (default {d.base_epochs})")
    p.add_argument("--methods", help=f"comma list (default {','.join(d.methods)})")
    p.add_argument("--max-combo", type=int, help=f"most methods chained in one plan (default {d.max_combo})")
    p.add_argument("--depth-bins", type=int, metavar="N",
                   help="search one pruning ratio, Tucker rank pair or sparsity per contiguous depth bin of the layers "
                        f"(4 = ResNet-18's stages) instead of one per layer; 0 = per layer (default {d.depth_bins})")
    p.add_argument("--trials", type=int, help=f"finished trials to reach (default {d.trials})")
    p.add_argument("--sampler", choices=SAMPLERS, help=f"default {d.sampler}")
    p.add_argument("--objectives", help=f"comma list, accuracy first (default {','.join(d.objectives)})")
    p.add_argument("--fidelity-epochs", type=int, help=f"fine-tune epochs per trial (default {d.fidelity_epochs})")
    p.add_argument("--final-epochs", type=int, help=f"fine-tune epochs of the Pareto set (default {d.final_epochs})")
    p.add_argument("--final-max", type=int, help="retrain at most this many Pareto models (default all)")
    p.add_argument("--min-accuracy", type=float, metavar="OA",
                   help="validation-OA floor in [0, 1): trials below it are infeasible and kept off the Pareto front")
    p.add_argument("--bn-batches", type=int,
                   help=f"re-estimate BatchNorm statistics on this many unaugmented training batches after every "
                        f"fine-tune epoch, so a short fine-tune is scored with statistics of its final weights "
                        f"(default {d.bn_batches}; 0: off)")
    p.add_argument("--early-stop-margin", type=float, help=f"OA margin for stopping dominated trials (default {d.early_stop_margin}; <0 disables)")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--seed", type=int, help=f"one seed for sampler, split, torch (default {d.seed})")
    p.add_argument("--split-seed", type=int, help="seed of the split and base model only (default: --seed); "
                   "fix it to compare sampler seeds on one split")
    p.add_argument("--study", help="study name (default derived from data, model, budget, sampler, seed)")
    p.add_argument("--resume", action="store_true", help="continue an interrupted study")
    p.add_argument("--out", help=f"folder for the default storage, database and artifacts (default {d.out})")
    p.add_argument("--storage", help="Optuna RDB URL (default sqlite:///<out>/<study>/optuna.db)")
    p.add_argument("--tracking-uri", help="MLflow URI (default sqlite:///<out>/mlflow.db; http://host:port for a server)")
    p.add_argument("--experiment", help=f"MLflow experiment (default {d.experiment})")
    p.add_argument("--min-target", type=float, metavar="F",
                   help=f"each trial aims at a searched fraction in [F, 1] of the ceiling on the first cost objective "
                        f"(the budget, else the base model), so the front spans compression levels; 1 puts every "
                        f"trial on the budget (default {d.min_target})")
    p.add_argument("--targets", choices=TARGETS,
                   help="who picks each trial's target: spread (a low-discrepancy sequence over [--min-target, 1], "
                        "the same for every sampler, so every front spans the compression levels) or sampler "
                        f"(a parameter the sampler learns) (default {d.targets})")
    p.add_argument("--device", help="training device: cpu, cuda, cuda:N (default: cuda when available); "
                                    "latency is always measured on this machine's CPU")
    p.add_argument("--backend", choices=BACKENDS,
                   help="where trials run: local (this process, one at a time; default) or ray (several at once "
                        "on a Ray cluster; data and checkpoints must be at the same paths on every node)")
    p.add_argument("--ray-address", help="Ray cluster to join: auto, host:port or ray://host:10001 "
                                         "(default: start a private local instance)")
    p.add_argument("--workers", type=int, help="trials in flight on Ray (default: cluster CPUs / --trial-cpus)")
    p.add_argument("--trial-cpus", type=float, help="CPUs reserved per Ray trial, also its torch threads (default 1)")
    p.add_argument("--trial-gpus", type=float, help="GPUs per Ray trial (default 0; >0 trains trials on CUDA)")
    p.add_argument("--no-latency", action="store_true", help="skip latency/speed-up measurement per trial")
    p.add_argument("--no-log-models", action="store_true", help="do not log final models as MLflow models")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def config_from_args(args: argparse.Namespace) -> SearchConfig:
    over: dict[str, Any] = {}
    simple = ("data", "dataset", "image_size", "model", "weights", "base_epochs", "max_combo", "depth_bins", "trials", "sampler",
              "fidelity_epochs", "final_epochs", "final_max", "batch_size", "bn_batches", "seed", "split_seed", "min_accuracy", "study", "out", "storage",
              "tracking_uri", "experiment", "min_target", "targets", "device", "backend", "ray_address", "workers",
              "trial_cpus", "trial_gpus")
    for name in simple:
        value = getattr(args, name)
        if value is not None:
            over[name] = value
    if args.budgets:
        over["budgets"] = tuple(args.budgets)
    for name in ("methods", "objectives"):
        value = getattr(args, name)
        if value is not None:
            over[name] = tuple(x.strip() for x in value.split(",") if x.strip())
    if args.early_stop_margin is not None:
        over["early_stop_margin"] = None if args.early_stop_margin < 0 else args.early_stop_margin
    if args.resume:
        over["resume"] = True
    if args.no_latency:
        over["latency"] = False
    if args.no_log_models:
        over["log_models"] = False
    if args.no_progress:
        over["progress"] = False
    if args.data is None and args.base_epochs is None and not args.config:
        over.setdefault("base_epochs", 5)  # the synthetic demo's quick base model
    if args.config:
        return SearchConfig.from_file(args.config, **{k: list(v) if isinstance(v, tuple) else v for k, v in over.items()})
    return SearchConfig(**over)


def _fmt(v: Any, key: str) -> str:
    if v is None or v == "":
        return "-"
    if isinstance(v, float):
        if key in ("val_oa", "test_oa", "search_val_oa"):
            return f"{v:.4f}"
        if key in ("compression_rate", "speedup"):
            return f"{v:.2f}x"
        if key == "latency_ms":
            return f"{v:.2f}"
        return _human(v) + ("B" if key == "size" else "")
    if isinstance(v, int) and key in ("params", "macs", "size"):
        return _human(v) + ("B" if key == "size" else "")
    return str(v)


def _human(v: float) -> str:
    for unit, f in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(v) >= f:
            return f"{v / f:.2f}{unit}"
    return f"{v:.4g}"


def render_table(rows: Sequence[Mapping[str, Any]], keys: Sequence[str]) -> str:
    cells = [[k for k in keys]] + [[_fmt(r.get(k), k) for k in keys] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(keys))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def render(result: SearchResult, stream: Any = None) -> None:
    stream = stream or sys.stdout
    c = result.counts
    print(f"\nstudy {result.study}: {c.get('finished', 0)} finished trial(s) "
          f"({c.get('complete', 0)} complete, {c.get('pruned', 0)} pruned/infeasible, {c.get('fail', 0)} failed"
          + (f", {c['interrupted']} interrupted" if c.get("interrupted") else "")
          + f"); {c.get('inside_budget', 0)} of {c.get('complete', 0)} complete inside the budget"
          + (f", {c['above_floor']} of them at or above the accuracy floor {result.min_accuracy:g}"
             if "above_floor" in c else "")
          + f"; hypervolume {result.hypervolume:.4f}", file=stream)
    if result.final:
        keys = ["trial", "method", "test_oa", "val_oa", "params", "compression_rate", "macs", "size", "latency_ms", "speedup"]
        print("\nPareto set after final fine-tuning (test split), beside the base model:", file=stream)
        print(render_table([result.base, *result.final], keys), file=stream)
    elif result.front:
        keys = ["trial", "method", "val_oa", "params", "compression_rate", "macs", "size", "latency_ms"]
        print("\nPareto set (validation split; no final stage run):", file=stream)
        print(render_table(result.front, keys), file=stream)
    elif c.get("inside_budget") and c.get("above_floor") == 0:
        best = max((t["val_oa"] for t in result.trials if t.get("state") == "complete"), default=float("nan"))
        print(f"no trial reached the accuracy floor (validation OA >= {result.min_accuracy:g}; best {best:.3f}): "
              "lower --min-accuracy, or raise --fidelity-epochs so trials train longer", file=stream)
    else:
        print("no complete trial inside the budget yet", file=stream)
    if "overhead_share" in result.timing:
        print(f"\nbookkeeping outside model compute: {100 * result.timing['overhead_share']:.1f}% of trial wall time",
              file=stream)
    for note in result.notes:
        print(note, file=stream)
    if result.interrupted:
        print("interrupted: completed trials are stored; rerun with --resume to continue", file=stream)
    print(f"MLflow: {result.tracking_uri}  experiment {result.experiment_id}  parent run {result.parent_run_id}", file=stream)
    print(f"artifacts: {result.artifact_uri}  (local copy: {result.out_dir}/pareto)", file=stream)
    if any(r.get("file") for r in result.final):
        print(f"models: {result.out_dir}/models  (trial-N.pt: spaces.load_compressed(path); trial-N.onnx where "
              "the exporter takes the model)", file=stream)
    print(f"Optuna storage: {result.storage}  study {result.study}", file=stream)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = config_from_args(args)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    reporter = TerminalReporter(progress=config.progress)
    previous = signal.getsignal(signal.SIGTERM)

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    try:
        signal.signal(signal.SIGTERM, on_term)
    except ValueError:  # not the main thread
        previous = None
    try:
        result = run(config, reporter=reporter)
    except UserError as exc:
        reporter.close()
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        reporter.close()
        print("interrupted before the search started; nothing to resume", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    render(result)
    return 130 if result.interrupted else 0


if __name__ == "__main__":
    sys.exit(main())
