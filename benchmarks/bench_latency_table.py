"""How well a latency table predicts whole models: predicted vs measured on random candidates of the spaces.

For each model and batch: build a table with ``search.profile`` (seed 0), draw ``--candidates``
random plans of the search's space with another seed (none of them was in the table's profiling
or calibration), predict each from the table and measure it whole on the same target twice, in
two passes of interleaved runs. The table's calibration models are timed again beside the base
before and after the candidates: their drift against the table (a machine whose speed changes
between the table and its use) and the share within +-10% had the correction been refitted on the
models as they ran after the candidates (a table recalibrated at use time). Reports the share of candidates whose prediction is within
+-10% of the measured latency (the mean of the two passes), the median and 95th-percentile
errors, the measurement's own spread (pass 1 vs pass 2), the share within +-10% with each of the
table's whole-model corrections (the line ``alpha * sum + beta``, the calibration curve and the kernel
classes' weights, fitted on the same models; the table predicts with the one of smallest leave-one-out
error), and the time to predict a candidate against the time to measure it: as the
search predicts (``LatencyTable.predict``: one graph trace per model structure, then reads of the
modules, :mod:`costs.latency.templates`) and, for comparison, with a trace of every candidate. The same figures relative to the base
model timed beside each candidate (predicted model/base against measured model/base: what a
speed-up or a ``latency<40%`` budget reads) are free of the machine's load drift between calls,
which on a shared 2-core VM comes in streaks of 20-40%. Run on a quiet machine::

    python benchmarks/bench_latency_table.py --out benchmarks/results/latency_table-predicted-vs-measured.json
    python benchmarks/bench_latency_table.py --predict-only --out benchmarks/results/latency_table-prediction-time.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def target_spec(device: str, batch: int, runtime: str = "eager", threads: int = 1) -> str:
    """The ``--target`` string for ``device`` (cpu, cuda, cuda:N) at ``batch`` with ``runtime``."""
    options = ([f"runtime={runtime}"] * (runtime != "eager") + [f"batch={batch}"] * (batch != 1)
               + [f"threads={threads}"] * (threads != 1 and device == "cpu"))
    return device + ("," if ":" in device else ":") + ",".join(options) if options else device


def random_candidates(model: str, methods: list[str], image_size: int, num_classes: int, n: int,
                      seed: int) -> tuple[Any, dict[str, tuple[Any, str]]]:
    """A fresh base and ``n`` random structural candidates of the search's space over ``methods``, keyed by
    draw number, each with its methods (drawn with ``seed``; plans the space refuses are skipped)."""
    from rsc.models import create_model
    from search.profile import built_plans, sample_plans
    from search.space import JointSpace
    from spaces.base import Context

    base = create_model(model, num_classes, image_size=image_size).eval()
    arch = {"model": model, "num_classes": num_classes, "image_size": image_size}
    context = Context(num_classes=num_classes, image_size=image_size, seed=1)
    joint = JointSpace(methods, max_combo=2, bins=4)
    drawn = built_plans(base, sample_plans(joint, base, context, arch, n * 2, seed=seed), context)
    return base, {str(i): (built, "+".join(s.space for s in plan.steps) or "base")
                  for i, plan, built in itertools.islice(drawn, n)}


def calibration_models(model: str, methods: list[str], args: argparse.Namespace, table: Any) -> list[Any]:
    """The table's calibration models rebuilt (fresh weights, the same plans as ``search.profile`` drew with
    seed 0), checked against the kernel sums the table recorded for them."""
    from rsc.models import create_model
    from search.profile import built_plans, calibration_plans, strongest_plans
    from search.space import JointSpace
    from spaces.base import Context

    base = create_model(model, args.num_classes, image_size=args.image_size).eval()
    arch = {"model": model, "num_classes": args.num_classes, "image_size": args.image_size}
    context = Context(num_classes=args.num_classes, image_size=args.image_size, seed=0)
    joint = JointSpace(methods, max_combo=2, bins=4)
    strongest = strongest_plans(joint, base, context, arch, say=lambda m: None)
    plans = calibration_plans(joint, base, context, arch, strongest, args.calibration, seed=0)
    built = [m for _, _, m in built_plans(base, plans, context)]
    sums = [table.sum_ms(m) for m in built]
    recorded = [c["sum_ms"] for c in table.calibration]
    if len(sums) != len(recorded) or any(abs(a - b) > 1e-6 * b for a, b in zip(sums, recorded)):
        raise AssertionError("the rebuilt calibration models are not the table's")
    return built


def retime(target: Any, base: Any, models: list[Any], image_size: int) -> list[dict[str, float]]:
    """Each model timed beside ``base`` once, as the table's calibration timed it."""
    from costs.targets import compare_latency_on

    return [compare_latency_on(target, {"model": m, "base": base}, image_size) for m in models]


def calibration_drift(table: Any, retimed: dict[str, list[dict[str, float]]]) -> dict[str, float]:
    """How the calibration models ran relative to the base when retimed (``before`` and ``after`` the
    candidates) against when the table was fitted: the median over models of (model/base now) /
    (model/base then), the base plan itself left out; and the base's median time now against then."""
    then = table.calibration
    base_then = then[0]["measured_ms"]  # the base's median time over the calibration's pairs
    out = {}
    for when, now in retimed.items():
        out[f"calibration_drift_{when}"] = statistics.median(
            (n["model"] / n["base"]) / (c["measured_ms"] / base_then) for n, c in zip(now[1:], then[1:]))
        out[f"base_drift_{when}"] = statistics.median(n["base"] for n in now) / base_then
    return out


def run_case(model: str, batch: int, args: argparse.Namespace) -> dict:
    from costs.latency.kernels import class_sums, kernels_of
    from costs.targets import compare_latency_on, parse_target
    from search.profile import profile_table

    target = parse_target(target_spec(getattr(args, "device", "cpu"), batch, threads=args.threads)).check()
    methods = args.methods.split(",")
    t0 = time.perf_counter()
    table = profile_table(target=target, model=model, image_size=args.image_size, num_classes=args.num_classes,
                          methods=methods, plans=args.plans, points=args.points, calibration=args.calibration,
                          calibration_passes=args.calibration_passes,
                          seed=0, progress=False, say=lambda m: print(f"  {m}", file=sys.stderr))
    profile_s = time.perf_counter() - t0
    table.on_missing = "measure"
    base, models = random_candidates(model, methods, args.image_size, args.num_classes, args.candidates, seed=12345)
    predicted, sums, classes, predict_s, trace_s, whole_s = {}, {}, {}, [], [], []
    before = table.measured_on_the_fly
    for k, (m, _) in models.items():
        t = time.perf_counter()
        kernels = kernels_of(m, args.image_size)
        t1 = time.perf_counter()
        classes[k] = class_sums(kernels, table.kernels_ms(kernels))
        sums[k] = sum(classes[k].values())
        predicted[k] = table.combine_classes(classes[k])
        t2 = time.perf_counter()
        trace_s.append(t1 - t)
        predict_s.append(t2 - t1)
    misses = table.measured_on_the_fly - before
    table.clear_caches()  # then as the search predicts: one trace per structure, then reads
    for k, (m, _) in models.items():
        t = time.perf_counter()
        fast = table.predict(m)
        whole_s.append(time.perf_counter() - t)
        if abs(fast - predicted[k]) > 1e-9 * max(1.0, abs(fast)):
            raise AssertionError(f"candidate {k}: predicted {fast} through the templates, {predicted[k]} traced")
    traced = table.structures_traced
    timing = {"model": model, "batch": batch, "target": target.spec, "candidates": len(models),
              "predict_ms_median": 1000 * statistics.median(whole_s), "predict_ms_mean": 1000 * statistics.mean(whole_s),
              "predict_ms_p95": 1000 * sorted(whole_s)[int(0.95 * (len(whole_s) - 1))],
              "predict_structures_traced": traced, "predict_trace_ms": 1000 * statistics.median(trace_s),
              "predict_lookup_ms": 1000 * statistics.median(predict_s)}
    if args.predict_only:
        print(f"{model} batch {batch}: predict {timing['predict_ms_median']:.2f} ms median, "
              f"{timing['predict_ms_mean']:.2f} mean, {timing['predict_ms_p95']:.2f} p95 ({traced} of {len(models)} "
              f"traced); every candidate traced: {timing['predict_trace_ms']:.1f} ms trace + "
              f"{timing['predict_lookup_ms']:.2f} ms lookup", flush=True)
        return timing
    calibration = calibration_models(model, methods, args, table)
    retimed = {"before": retime(target, base, calibration, args.image_size)}
    passes = []
    t = time.perf_counter()
    for _ in range(2):  # each candidate beside the base, as a trial of the search times it
        passes.append({k: compare_latency_on(target, {"model": m, "base": base}, args.image_size)
                       for k, (m, _) in models.items()})
    measure_s = (time.perf_counter() - t) / (2 * len(models))  # a pair of models timed
    retimed["after"] = retime(target, base, calibration, args.image_size)
    predicted_base = table.predict(base)
    base_classes = table.class_sums(base)
    weights = table.weights  # the kernel classes' weights (None where they did not fit)

    def relative(t: Any, c: dict[str, float], correction: str | None = None) -> float:
        """Predicted model/base by ``t`` with ``correction`` (default: the one ``t`` chose)."""
        return t.combine_classes(c, correction) / t.combine_classes(base_classes, correction)

    rows = []
    for k, (m, what) in models.items():
        p1, p2 = passes[0][k], passes[1][k]
        meas = (p1["model"] + p2["model"]) / 2
        # relative to the base timed in the same call (what a speed-up or a "latency<40%" budget reads):
        # free of the machine's load drift between calls
        rel = (p1["model"] / p1["base"] + p2["model"] / p2["base"]) / 2
        rows.append({"candidate": int(k), "methods": what, "sum_ms": sums[k], "predicted_ms": predicted[k],
                     "measured_ms": meas,
                     "pass1_ms": p1["model"], "pass2_ms": p2["model"], "base1_ms": p1["base"], "base2_ms": p2["base"],
                     "error": predicted[k] / meas - 1, "relative_error": (predicted[k] / predicted_base) / rel - 1,
                     # every correction side by side, whichever the table chose (its leave-one-out pick)
                     "relative_error_line": relative(table, classes[k], "line") / rel - 1,
                     "relative_error_curve": relative(table, classes[k], "curve") / rel - 1,
                     **({"relative_error_classes": relative(table, classes[k], "classes") / rel - 1}
                        if weights else {}),
                     "classes_ms": classes[k],
                     "relative_spread": (p1["model"] / p1["base"]) / (p2["model"] / p2["base"]) - 1})
    drift = calibration_drift(table, retimed)
    # the correction refitted on the calibration models as they ran after the candidates: what a table
    # recalibrated at use time would predict
    import copy

    from costs.latency.fit import fit_correction
    from search.profile import calibration_times

    refit = fit_correction([c["sum_ms"] for c in table.calibration], calibration_times([retimed["after"]]),
                           reference=0, classes=[c["classes_ms"] for c in table.calibration])
    recalibrated = copy.copy(table)
    recalibrated.apply_fit(refit)
    for r in rows:
        rel = (r["pass1_ms"] / r["base1_ms"] + r["pass2_ms"] / r["base2_ms"]) / 2
        r["relative_error_recalibrated"] = relative(recalibrated, r["classes_ms"]) / rel - 1
    errs = sorted(abs(r["error"]) for r in rows)
    rel_errs = sorted(abs(r["relative_error"]) for r in rows)
    spread = sorted(abs(r["pass1_ms"] / r["pass2_ms"] - 1) for r in rows)
    rel_spread = sorted(abs(r["relative_spread"]) for r in rows)
    within = sum(e <= 0.10 for e in errs) / len(errs)

    def q(values: list[float], p: float) -> float:
        return values[int(p * (len(values) - 1))]

    out = {**timing, "candidates": len(rows), "within_10pct": within, "median_abs_error": statistics.median(errs),
           "p95_abs_error": q(errs, 0.95), "max_abs_error": errs[-1],
           "measurement_spread_median": statistics.median(spread), "measurement_spread_p95": q(spread, 0.95),
           "relative_within_10pct": sum(e <= 0.10 for e in rel_errs) / len(rel_errs),
           "relative_median_abs_error": statistics.median(rel_errs), "relative_p95_abs_error": q(rel_errs, 0.95),
           "relative_spread_median": statistics.median(rel_spread), "relative_spread_p95": q(rel_spread, 0.95),
           "relative_within_10pct_line": sum(abs(r["relative_error_line"]) <= 0.10 for r in rows) / len(rows),
           "relative_median_abs_error_line": statistics.median(abs(r["relative_error_line"]) for r in rows),
           "relative_within_10pct_curve": sum(abs(r["relative_error_curve"]) <= 0.10 for r in rows) / len(rows),
           "relative_within_10pct_classes": (sum(abs(r["relative_error_classes"]) <= 0.10 for r in rows) / len(rows)
                                             if weights else None), "weights": weights,
           "correction": table.correction, "correction_loo": table.meta.get("correction_loo"),
           **drift, "relative_within_10pct_recalibrated":
               sum(abs(r["relative_error_recalibrated"]) <= 0.10 for r in rows) / len(rows),
           "recalibrated_correction": refit["correction"], "retimed_calibration": retimed,
           "measure_ms_per_candidate": 1000 * measure_s, "kernels_measured_on_the_fly": misses,
           "profile_seconds": profile_s, "table": table.summary(), "alpha": table.alpha, "beta": table.beta,
           "curve": table.curve,
           "predicted_base_ms": predicted_base, "calibration": table.calibration, "rows": rows}
    print(f"{model} batch {batch}: {100 * within:.0f}% within +-10% of {len(rows)} candidates; median error "
          f"{100 * out['median_abs_error']:.1f}%, p95 {100 * out['p95_abs_error']:.1f}%; measurement spread median "
          f"{100 * out['measurement_spread_median']:.1f}%; relative to the base beside it: "
          f"{100 * out['relative_within_10pct']:.0f}% within +-10%, median error "
          f"{100 * out['relative_median_abs_error']:.1f}%, spread {100 * out['relative_spread_median']:.1f}% (the "
          f"table's {table.correction}; with the line {100 * out['relative_within_10pct_line']:.0f}%, the curve "
          f"{100 * out['relative_within_10pct_curve']:.0f}%, the classes' weights "
          f"{'-' if weights is None else format(100 * out['relative_within_10pct_classes'], '.0f') + '%'}; recalibrated after the candidates "
          f"{100 * out['relative_within_10pct_recalibrated']:.0f}%); calibration models relative to the base, "
          f"retimed against the table: {100 * out['calibration_drift_before'] - 100:+.1f}% before the candidates, "
          f"{100 * out['calibration_drift_after'] - 100:+.1f}% after (the base itself "
          f"{100 * out['base_drift_before'] - 100:+.1f}% / {100 * out['base_drift_after'] - 100:+.1f}%); predict "
          f"{out['predict_ms_median']:.2f} ms median, {out['predict_ms_mean']:.2f} mean ({traced} of {len(rows)} traced; "
          f"{out['predict_trace_ms']:.1f} ms trace + {out['predict_lookup_ms']:.2f} ms lookup each without templates) "
          f"vs measure {out['measure_ms_per_candidate']:.0f} ms; "
          f"profile {profile_s:.0f} s", flush=True)
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,mobilenet_v2")
    p.add_argument("--batches", default="1,16")
    p.add_argument("--methods", default="prune,tucker")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--candidates", type=int, default=100)
    p.add_argument("--plans", type=int, default=40)
    p.add_argument("--points", type=int, default=8)
    p.add_argument("--calibration", type=int, default=32)
    p.add_argument("--calibration-passes", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N: the target's device (default cpu)")
    p.add_argument("--predict-only", action="store_true",
                   help="only the prediction times (trace against templates, side by side): no candidate is timed")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    results = {"argv": sys.argv[1:], "cpu": os.cpu_count(), "cases": []}
    for model in args.models.split(","):
        for batch in (int(b) for b in args.batches.split(",")):
            results["cases"].append(run_case(model, batch, args))
            if args.out:  # after every case: a long run that is stopped keeps what it measured
                Path(args.out).parent.mkdir(parents=True, exist_ok=True)
                Path(args.out).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
