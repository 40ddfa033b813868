"""How trials reach Ray: Optuna ask/tell over Ray tasks against Ray Tune with OptunaSearch.

Not collected by pytest. On one private local Ray instance (advertised on loopback 127.0.0.2, 2 CPUs,
no dashboard, a small object store, a private temp dir), in one run, side by side:

    asktell          the project's pattern (search/driver.py + search/executors.RayExecutor): one driver
                     holds the search's engine (search.engines.optuna_engine.OptunaEngine: an Optuna
                     study in sqlite RDBStorage, NSGA-II seed 0, population 50 as Optuna's default,
                     2 objectives), keeps up to --workers Ray tasks in flight, and tells each result as
                     it arrives (ray.wait num_returns=1), then asks for the next trial;
    tune-optuna      tune.Tuner + ray.tune.search.optuna.OptunaSearch (the same sampler, its own sqlite
                     RDBStorage, metric=[f1, f2], mode=[min, min]), max_concurrent_trials=--workers,
                     num_samples=--trials, a function trainable that sleeps and tune.report()s once;
    tune-optuna-reuse     the same with TuneConfig(reuse_actors=True) (Tune's default is False: a new
                     actor process per trial);
    tune-optuna-nolimit   the same without max_concurrent_trials (what users on Ray's tracker reported
                     as serialised: Tune keeps one pending trial for any searcher but its own);
    tune-random      Tune's default BasicVariantGenerator (random search), for Tune's own per-trial cost.

Every trial sleeps --trial-seconds and returns two numbers computed from four float params (a
ZDT1-like pair), with its start and end times. For each engine: wall seconds, trials/s, the ideal
wall (trials * trial_seconds / workers), the overhead share 1 - ideal / wall, the largest number
of trials seen running at once (max overlap of the [start, end] intervals), and what ended up in
the Optuna study. ``--features`` adds small checks of Tune features with the multi-objective study:
ASHA (one metric), Tuner.restore of an OptunaSearch experiment, and whether the dashboard can start.

    .venv/bin/python benchmarks/bench_ray_engines.py --features     # 15 min on 2 shared cores, mostly Tune
                                                                    # starting an actor per trial
    .venv/bin/python benchmarks/bench_ray_engines.py --trial-seconds 1 --trials 40 \\
        --out benchmarks/results/ray_engines-asktell-vs-tune-1s.json
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

# Before Ray is imported: no usage stats, no Tune CSV/JSON/TensorBoard loggers, the quiet output.
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS", "1")
os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # the legacy reporter: verbose=0 prints nothing
os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "1000")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")

ROOT = Path(__file__).resolve().parents[1]
ENGINES = ("asktell", "tune-optuna", "tune-optuna-reuse", "tune-optuna-nolimit", "tune-random")
PARAMS = ("x0", "x1", "x2", "x3")
METRICS = ("f1", "f2")


# -- the trial ------------------------------------------------------------------------------------

def objectives(p: dict) -> tuple[float, float]:
    """ZDT1-like: two conflicting objectives of four params in [0, 1], both minimised."""
    f1 = float(p["x0"])
    g = 1.0 + 9.0 * sum(float(p[k]) for k in PARAMS[1:]) / (len(PARAMS) - 1)
    return f1, g * (1.0 - math.sqrt(f1 / g))


def sleepy_trial(params: dict, seconds: float) -> dict:
    """The work of one trial: sleep, then two numbers, with when it ran (wall clock)."""
    start = time.time()
    time.sleep(seconds)
    f1, f2 = objectives(params)
    return {"f1": f1, "f2": f2, "t_start": start, "t_end": time.time(), "pid": os.getpid()}


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """Largest number of [start, end) intervals open at one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals], key=lambda x: (x[0], x[1]))
    best = cur = 0
    for _, d in events:
        cur += d
        best = max(best, cur)
    return best


def summarise(name: str, wall: float, runs: list[dict], args, extra: dict | None = None) -> dict:
    ideal = args.trials * args.trial_seconds / args.workers
    spans = [(r["t_start"], r["t_end"]) for r in runs if "t_start" in r]
    out = {
        "engine": name, "trials_finished": len(runs), "wall_s": round(wall, 3),
        "trials_per_s": round(len(runs) / wall, 3) if wall else None,
        "ideal_wall_s": round(ideal, 3), "overhead_share": round(1.0 - ideal / wall, 3) if wall else None,
        "max_concurrent": max_overlap(spans) if spans else 0,
        "worker_pids": len({r.get("pid") for r in runs}),
    }
    if spans:  # first trial start -> last trial end: the wall without the engine's start-up and shutdown
        span = max(e for _, e in spans) - min(s for s, _ in spans)
        out["trials_span_s"] = round(span, 3)
        out["overhead_share_in_span"] = round(1.0 - ideal / span, 3) if span else None
        out["mean_gap_between_trials_s"] = round(  # per worker slot: span * workers / trials - trial time
            span * args.workers / max(1, len(spans)) - args.trial_seconds, 3)
    out.update(extra or {})
    return out


def study_summary(study) -> dict:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name] = states.get(t.state.name, 0) + 1
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    return {"study_trials": len(trials), "study_states": states,
            "values_per_trial": sorted({len(t.values) for t in complete}),
            "pareto_size": len(study.best_trials) if complete else 0}


# -- engine 1: ask/tell over Ray tasks (search/driver.py's loop, through the search's engine) ---------

def run_asktell(args, tmp: Path) -> dict:
    import optuna
    import ray

    sys.path.insert(0, str(ROOT))
    from search.engines.optuna_engine import OptunaEngine

    db = f"sqlite:///{tmp / 'asktell.db'}"
    engine = OptunaEngine(storage=db, study_name="asktell", directions=["minimize", "minimize"], sampler="nsga2",
                          seed=0, population_size=50)  # Optuna's default, as the Tune engines' NSGAIISampler
    remote = ray.remote(num_cpus=1, max_retries=0)(sleepy_trial)
    # Warm-up outside the clock, as RayExecutor's first submit also starts worker processes lazily:
    ray.get([remote.remote({k: 0.5 for k in PARAMS}, 0.0) for _ in range(args.workers)])
    pending: dict = {}
    runs: list[dict] = []
    asked = 0
    t0 = time.perf_counter()
    while True:
        while len(pending) < args.workers and asked < args.trials:
            trial = engine.ask()
            params = {k: trial.suggest_float(k, 0.0, 1.0) for k in PARAMS}
            pending[remote.remote(params, args.trial_seconds)] = trial.number
            asked += 1
        if not pending:
            break
        done, _ = ray.wait(list(pending), num_returns=1)
        number = pending.pop(done[0])
        result = ray.get(done[0])
        engine.tell_complete(number, [result["f1"], result["f2"]])
        runs.append(result)
    wall = time.perf_counter() - t0
    study = optuna.load_study(study_name="asktell", storage=db)
    return summarise("asktell", wall, runs, args, {**study_summary(study), "storage": "sqlite RDBStorage"})


# -- engines 2-4: Ray Tune ------------------------------------------------------------------------

def make_trainable(seconds: float, steps: int = 1):
    from ray import tune

    def trainable(config: dict) -> None:
        params = {k: config[k] for k in PARAMS}
        if steps == 1:
            tune.report(sleepy_trial(params, seconds))
            return
        start = time.time()
        f1, f2 = objectives(params)
        for step in range(1, steps + 1):  # a fidelity curve: the objectives improve with the steps
            time.sleep(seconds / steps)
            tune.report({"f1": f1 + 1.0 / step, "f2": f2 + 1.0 / step, "t_start": start, "t_end": time.time(),
                         "pid": os.getpid(), "step": step})

    return trainable


def optuna_searcher(db: Path, study_name: str):
    import optuna
    from ray.tune.search.optuna import OptunaSearch

    return OptunaSearch(metric=list(METRICS), mode=["min", "min"], sampler=optuna.samplers.NSGAIISampler(seed=0),
                        storage=optuna.storages.RDBStorage(f"sqlite:///{db}"), study_name=study_name)


def space():
    from ray import tune

    return {k: tune.uniform(0.0, 1.0) for k in PARAMS}


def run_tune(args, tmp: Path, name: str) -> dict:
    import optuna
    from ray import tune

    searcher = None
    if name.startswith("tune-optuna"):
        searcher = optuna_searcher(tmp / f"{name}.db", name)
    limit = None if name == "tune-optuna-nolimit" else args.workers
    reuse = name == "tune-optuna-reuse"
    tuner = tune.Tuner(
        make_trainable(args.trial_seconds), param_space=space(),
        tune_config=tune.TuneConfig(search_alg=searcher, num_samples=args.trials, max_concurrent_trials=limit,
                                    reuse_actors=reuse),
        run_config=tune.RunConfig(name=name, storage_path=str(tmp / "tune"), verbose=0))
    t0 = time.perf_counter()
    grid = tuner.fit()
    wall = time.perf_counter() - t0
    runs = [r.metrics for r in grid if r.metrics and "t_start" in r.metrics]
    extra = {"errors": len(grid.errors), "max_concurrent_trials": limit, "reuse_actors": reuse}
    if searcher is not None:
        study = optuna.load_study(study_name=name, storage=f"sqlite:///{tmp / f'{name}.db'}")
        extra.update(study_summary(study), storage="sqlite RDBStorage")
    return summarise(name, wall, runs, args, extra)


# -- feature checks (--features) ------------------------------------------------------------------

def check_asha(args, tmp: Path) -> dict:
    """ASHA takes one metric: with the multi-objective OptunaSearch, how stopped trials land in Optuna."""
    import optuna
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    out: dict = {}
    try:  # a list of metrics, as the multi-objective study would need
        ASHAScheduler(metric=list(METRICS), mode=["min", "min"])
        out["metric_list"] = "accepted at construction"
    except Exception as exc:  # noqa: BLE001
        out["metric_list"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    n, steps = 12, 4
    tuner = tune.Tuner(
        make_trainable(0.2, steps=steps), param_space=space(),
        tune_config=tune.TuneConfig(search_alg=optuna_searcher(tmp / "asha.db", "asha"), num_samples=n,
                                    max_concurrent_trials=args.workers,
                                    scheduler=ASHAScheduler(metric="f1", mode="min", max_t=steps, grace_period=1,
                                                            reduction_factor=2)),
        run_config=tune.RunConfig(name="asha", storage_path=str(tmp / "tune"), verbose=0))
    try:
        grid = tuner.fit()
    except Exception as exc:  # noqa: BLE001
        out["single_metric_run"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
        return out
    stopped = sum(1 for r in grid if r.metrics and r.metrics.get("training_iteration", steps) < steps)
    study = optuna.load_study(study_name="asha", storage=f"sqlite:///{tmp / 'asha.db'}")
    out.update(single_metric_run="ran", trials=n, stopped_early_by_asha=stopped, **study_summary(study))
    out["note"] = ("ASHA ranks by f1 only; trials it stops are told to Optuna as COMPLETE with their "
                   "last (partial-fidelity) values, and OptunaSearch skips intermediate reports for "
                   "multi-objective studies, so Optuna's own pruners cannot act")
    return out


def check_restore(args, tmp: Path) -> dict:
    """Interrupt an OptunaSearch experiment (SIGINT, as Ctrl-C) after 3 trials, then Tuner.restore it."""
    import signal

    import optuna
    from ray import tune
    from ray.tune import Callback

    flag = tmp / "interrupt-flag"
    flag.write_text("1")

    class InterruptAfter(Callback):
        """Sends this process SIGINT (Tune's graceful stop) once k trials completed, while the flag exists."""

        def __init__(self, k: int, flag: str) -> None:
            self.k, self.flag, self.n = k, flag, 0

        def on_trial_complete(self, iteration, trials, trial, **info):
            self.n += 1
            if self.n >= self.k and os.path.exists(self.flag):
                os.unlink(self.flag)
                os.kill(os.getpid(), signal.SIGINT)

    n = 10
    path = tmp / "tune" / "restore"
    db = f"sqlite:///{tmp / 'restore.db'}"
    tuner = tune.Tuner(
        make_trainable(0.5), param_space=space(),
        tune_config=tune.TuneConfig(search_alg=optuna_searcher(tmp / "restore.db", "restore"), num_samples=n,
                                    max_concurrent_trials=args.workers),
        run_config=tune.RunConfig(name="restore", storage_path=str(tmp / "tune"), verbose=0,
                                  callbacks=[InterruptAfter(3, str(flag))]))
    out: dict = {"num_samples": n}
    grid = tuner.fit()
    out["first_fit_results"] = sum(1 for r in grid if r.metrics and "f1" in r.metrics)
    out["after_interrupt"] = study_summary(optuna.load_study(study_name="restore", storage=db))
    try:
        out["can_restore"] = tune.Tuner.can_restore(str(path))
        restored = tune.Tuner.restore(str(path), trainable=make_trainable(0.5), resume_unfinished=True,
                                      restart_errored=True)
        grid = restored.fit()
        out["after_restore_results"] = sum(1 for r in grid if r.metrics and "f1" in r.metrics)
        out["after_restore"] = study_summary(optuna.load_study(study_name="restore", storage=db))
    except Exception as exc:  # noqa: BLE001
        out["restore"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"
    return out


def check_dashboard() -> dict:
    import ray._private.utils as ru

    err = ru.get_dashboard_dependency_error()
    return {"dashboard_dependencies": "present" if err is None else f"missing ({err})",
            "note": "include_dashboard=True raises 'Cannot include dashboard with missing packages' without "
                    "ray[default]; `ray job submit` needs the dashboard's job server on the head"}


# -- main -------------------------------------------------------------------------------------------

def quiet() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in ("ray", "ray.tune", "ray.train", "ray.air", "ray.data"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    warnings.filterwarnings("ignore", module="optuna")
    warnings.filterwarnings("ignore", module="ray")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--trials", type=int, default=100, help="trials per engine (default 100)")
    ap.add_argument("--workers", type=int, default=2, help="trials in flight; also the instance's CPUs (default 2)")
    ap.add_argument("--trial-seconds", type=float, default=0.2, help="sleep per trial (default 0.2)")
    ap.add_argument("--engines", nargs="+", choices=ENGINES, default=list(ENGINES))
    ap.add_argument("--features", action="store_true", help="also check ASHA, Tuner.restore and the dashboard")
    ap.add_argument("--node-ip", default="127.0.0.2",
                    help="address Ray advertises (default 127.0.0.2: Ray 2.60 replaces 127.0.0.1 by the host's "
                         "interface address, any other loopback address is kept)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "ray_engines-asktell-vs-tune.json")
    ap.add_argument("--keep-tmp", action="store_true", help="keep the temp dir (studies, Tune's folders)")
    args = ap.parse_args(argv)

    quiet()
    import optuna
    import ray

    tmp = Path(tempfile.mkdtemp(prefix="rbe-", dir="/tmp"))  # short: Ray's socket paths live under it
    load_before = os.getloadavg()
    t_init = time.perf_counter()
    ray.init(num_cpus=args.workers, _node_ip_address=args.node_ip, include_dashboard=False,
             _temp_dir=str(tmp / "ray"), object_store_memory=100 * 1024**2, logging_level="ERROR",
             log_to_driver=False, configure_logging=True)
    init_s = time.perf_counter() - t_init
    quiet()
    results, features = [], {}
    try:
        for name in args.engines:
            print(f"[{name}] {args.trials} trials x {args.trial_seconds:g} s, {args.workers} workers ...",
                  file=sys.stderr, flush=True)
            res = run_asktell(args, tmp) if name == "asktell" else run_tune(args, tmp, name)
            results.append(res)
            print(f"[{name}] wall {res['wall_s']:.1f} s, overhead {res['overhead_share']:.0%}, "
                  f"max concurrent {res['max_concurrent']}", file=sys.stderr, flush=True)
        if args.features:
            for key, fn in (("asha", lambda: check_asha(args, tmp)), ("restore", lambda: check_restore(args, tmp)),
                            ("dashboard", check_dashboard)):
                print(f"[feature] {key} ...", file=sys.stderr, flush=True)
                try:
                    features[key] = fn()
                except Exception as exc:  # noqa: BLE001 - a feature that breaks is a finding
                    features[key] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
    finally:
        ray.shutdown()
        if not args.keep_tmp:
            shutil.rmtree(tmp, ignore_errors=True)

    report = {
        "args": {"trials": args.trials, "workers": args.workers, "trial_seconds": args.trial_seconds},
        "env": {"ray": ray.__version__, "optuna": optuna.__version__, "python": platform.python_version(),
                "cpus_on_machine": os.cpu_count(), "ray_num_cpus": args.workers, "node_ip": args.node_ip,
                "ray_init_s": round(init_s, 2),
                "loadavg_before": [round(x, 2) for x in load_before],
                "loadavg_after": [round(x, 2) for x in os.getloadavg()],
                "when": time.strftime("%Y-%m-%d %H:%M:%S")},
        "results": results,
    }
    if features:
        report["features"] = features
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    cols = ("engine", "wall_s", "trials_per_s", "ideal_wall_s", "overhead_share", "max_concurrent",
            "trials_span_s", "mean_gap_between_trials_s")
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in results:
        print("| " + " | ".join(str(r.get(c, "")) for c in cols) + " |")
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
