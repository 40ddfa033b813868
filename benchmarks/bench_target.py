"""The target check for an accelerator: latency by runtime, a latency table measured there, measured energy.

    python benchmarks/bench_target.py --device cuda --out benchmarks/results/bench_target-h100.json
    bash benchmarks/device_check.sh      # the same on a bare GPU machine, with the wheels it lacks carried in .whl/

Built to run once, in a few minutes, on a GPU machine that is lent for a short while; ``--device cpu``
runs every part on this machine (the energy part then says why it measured nothing, if no counter reads).

1. **Runtimes.** The base and ``--runtime-candidates`` random candidates of the search's spaces are timed on
   ``--device`` at batch 1 and 16 with each runtime (eager, TorchScript, ONNX Runtime with the device's
   provider), each candidate beside the base in one interleaved call: the speed-up per runtime and batch.
   The same candidates on this machine's default target (``cpu``, 1 thread) give the speed-ups a search
   run on the CPU would have assumed. A runtime the machine cannot offer is recorded with its one-line
   reason (``TargetUnsupported``, a missing provider), not skipped silently.
2. **A latency table measured on the device** (``search.profile``), checked as ``bench_latency_table.py``
   checks the CPU's: the share of ``--candidates`` random candidates whose predicted latency, relative to
   the base timed beside them, is within +-10% of the measured one, and the measurement's own spread.
3. **Energy.** Joules per image at batch 1, measured by the machine's counters (``costs.energy_counters.measure_energy``:
   NVML on a GPU, RAPL on a CPU, Zeus where installed) over a window of ``--window`` seconds per model, for
   the base and the candidates, and the same with the idle power (measured over an idle window first)
   subtracted. Beside them the analytical model's estimate (``costs.energy.estimate_energy``, per-layer MACs
   and data movement, Yang et al. 2017), its rank correlation with the measurement, and the model
   calibrated (``costs.energy.calibrate``) on every other candidate, predicting the rest. No counter: the
   reason is written, never a zero.

Writes ``--out`` (JSON) after every part, so a run stopped by its time limit keeps what it measured.
Needs torch-pruning, tensorly and Optuna (the random plans), not MLflow or Ray.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _candidates(model: str, args: argparse.Namespace, n: int, seed: int) -> tuple[Any, dict[str, tuple[Any, str]]]:
    """The base and ``n`` random structural candidates (float only: int8 has no CUDA kernels)."""
    from benchmarks.bench_latency_table import random_candidates

    return random_candidates(model, args.methods.split(","), args.image_size, args.num_classes, n, seed=seed)


def runtimes_part(args: argparse.Namespace) -> dict[str, Any]:
    from benchmarks.bench_latency_table import target_spec
    from costs.targets import compare_latency_on, parse_target

    base, cands = _candidates(args.model, args, args.runtime_candidates, seed=777)
    rows: list[dict[str, Any]] = []
    unsupported: dict[str, str] = {}
    specs = [("cpu", "eager", 1)] + [(args.device, rt, b) for b in args.batches for rt in args.runtimes
                                     if (args.device, rt, b) != ("cpu", "eager", 1)]
    for device, runtime, batch in specs:
        spec = target_spec(device, batch, runtime)
        try:
            target = parse_target(spec).check()
            t0 = time.perf_counter()
            for k, (m, what) in cands.items():
                lat = compare_latency_on(target, {"model": m, "base": base}, args.image_size)
                rows.append({"target": target.spec, "runtime": runtime, "batch": batch, "candidate": int(k),
                             "methods": what, "model_ms": lat["model"], "base_ms": lat["base"],
                             "speedup": lat["base"] / lat["model"]})
            print(f"  {spec}: {len(cands)} candidates in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
        except Exception as exc:  # noqa: BLE001 - TargetUnsupported, a provider the machine lacks, an export
            # that fails: a one-shot check on a lent machine records it and goes on
            unsupported[spec] = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0]}"
            print(f"  {spec}: not measured: {unsupported[spec]}", file=sys.stderr)
    summary = {}
    for spec in {r["target"] for r in rows}:
        mine = [r for r in rows if r["target"] == spec]
        summary[spec] = {"base_ms_median": statistics.median(r["base_ms"] for r in mine),
                         "speedup_median": statistics.median(r["speedup"] for r in mine),
                         "speedups": [round(r["speedup"], 3) for r in mine]}
    # how far the CPU's speed-ups are from the device's, candidate by candidate (what a search that
    # measured on the wrong hardware would get wrong)
    cpu = {r["candidate"]: r["speedup"] for r in rows if r["target"] == "cpu"}
    for spec, s in summary.items():
        pairs = [(cpu[r["candidate"]], r["speedup"]) for r in rows if r["target"] == spec and r["candidate"] in cpu]
        if spec != "cpu" and pairs:
            s["speedup_device_over_cpu_median"] = statistics.median(d / c for c, d in pairs)
    return {"rows": rows, "unsupported": unsupported, "summary": summary}


def table_part(args: argparse.Namespace) -> list[dict[str, Any]]:
    from benchmarks.bench_latency_table import run_case

    ns = argparse.Namespace(methods=args.methods, image_size=args.image_size, num_classes=args.num_classes,
                            candidates=args.candidates, plans=args.plans, points=args.points,
                            calibration=args.calibration, threads=1, device=args.device, predict_only=False)
    cases = []
    for batch in args.batches:
        case = run_case(args.model, batch, ns)
        if args.brief:
            case.pop("rows", None)
        cases.append(case)
    return cases


def _sync(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def energy_part(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from costs.counting import count_macs
    from costs.energy import calibrate, estimate_energy
    from costs.energy_counters import measure_energy
    from rsc.errors import ConfigError
    from tracking.stats import rank_correlation

    idle_j, idle_how = measure_energy(lambda: time.sleep(args.window), repeats=1, warmup=0, source=args.energy_source)
    if idle_j is None:
        print(f"  energy: not measured: {idle_how}", file=sys.stderr)
        return {"measured": False, "reason": idle_how}
    idle_w = idle_j / args.window
    base, cands = _candidates(args.model, args, args.energy_candidates, seed=4242)
    models = {"base": (base, "base"), **cands}
    x = torch.randn(1, 3, args.image_size, args.image_size, device=args.device)
    rows = []
    for name, (m, what) in models.items():
        dev_m = copy.deepcopy(m).to(args.device).eval()
        with torch.inference_mode():
            def fn(dev_m=dev_m):
                return dev_m(x)

            for _ in range(5):
                fn()
            _sync(args.device)
            t0 = time.perf_counter()
            for _ in range(20):
                fn()
            _sync(args.device)
            call_s = (time.perf_counter() - t0) / 20
            repeats = max(20, math.ceil(args.window / call_s))
            joules, how = measure_energy(fn, repeats=repeats, warmup=3, source=args.energy_source)
        est = estimate_energy(m, args.image_size)
        row = {"model": name, "methods": what, "macs": count_macs(m, image_size=args.image_size),
               "call_ms": 1000 * call_s, "repeats": repeats, "measured_j": joules, "how": how,
               "active_j": None if joules is None else joules - idle_w * call_s, "estimate_j": est}
        rows.append(row)
        print(f"  energy {name} ({what}): {'-' if joules is None else f'{1000 * joules:.3f} mJ'} per image, "
              f"{1000 * call_s:.2f} ms, estimate {1000 * est:.3f} mJ", file=sys.stderr)
    got = [r for r in rows if r["measured_j"] is not None]
    out: dict[str, Any] = {"measured": bool(got), "idle_w": idle_w, "idle": idle_how, "window_s": args.window,
                           "rows": rows}
    if len(got) < 4:
        out["reason"] = "fewer than 4 models measured: no correlation or calibration"
        return out
    est, meas = [r["estimate_j"] for r in got], [r["measured_j"] for r in got]
    active = [r["active_j"] for r in got]
    out["estimate_vs_measured"] = rank_correlation(est, meas)
    out["estimate_vs_active"] = rank_correlation(est, active)
    out["latency_vs_measured"] = rank_correlation([r["call_ms"] for r in got], meas)
    out["macs_vs_measured"] = rank_correlation([r["macs"] for r in got], meas)
    fit, test = got[::2], got[1::2]
    for key in ("measured_j", "active_j"):
        try:
            fitted = calibrate([(models[r["model"]][0], r[key]) for r in fit if r[key] and r[key] > 0],
                               args.image_size)
        except ConfigError as exc:
            out[f"calibrated_{key}"] = {"error": str(exc).splitlines()[0]}
            continue
        errs = [abs(estimate_energy(models[r["model"]][0], args.image_size, energy_model=fitted) / r[key] - 1)
                for r in test if r[key] and r[key] > 0]
        out[f"calibrated_{key}"] = {"fitted_on": len(fit), "tested_on": len(errs),
                                    "median_abs_error": statistics.median(errs) if errs else None,
                                    "max_abs_error": max(errs) if errs else None,
                                    "within_10pct": sum(e <= 0.10 for e in errs) / len(errs) if errs else None}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cpu, cuda or cuda:N (default cuda)")
    p.add_argument("--model", default="resnet18")
    p.add_argument("--methods", default="prune,tucker")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--batches", default="1,16")
    p.add_argument("--runtimes", default="eager,torchscript,onnxruntime")
    p.add_argument("--runtime-candidates", type=int, default=8)
    p.add_argument("--candidates", type=int, default=100, help="candidates checked against the device's table")
    p.add_argument("--plans", type=int, default=40)
    p.add_argument("--points", type=int, default=8)
    p.add_argument("--calibration", type=int, default=32)
    p.add_argument("--energy-candidates", type=int, default=16)
    p.add_argument("--energy-source", default="auto", help="auto, nvml, rapl or zeus (costs.energy_counters.measure_energy)")
    p.add_argument("--window", type=float, default=1.0, help="seconds each model runs inside an energy window")
    p.add_argument("--parts", default="runtimes,table,energy")
    p.add_argument("--brief", action="store_true", help="leave the per-candidate rows of the table part out")
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    args.batches = [int(b) for b in args.batches.split(",")]
    args.runtimes = args.runtimes.split(",")

    import torch

    torch.set_num_threads(1)
    result: dict[str, Any] = {"argv": sys.argv[1:], "device": args.device, "torch": torch.__version__,
                              "host": platform.node(), "processor": platform.processor()}
    if args.device.startswith("cuda"):
        if not torch.cuda.is_available():
            print(f"error: --device {args.device}: torch {torch.__version__} sees no CUDA device", file=sys.stderr)
            return 2
        result["device_name"] = torch.cuda.get_device_name(torch.device(args.device))

    def save() -> None:
        if args.out:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            Path(args.out).write_text(json.dumps(result, indent=1, default=str))

    parts = {"runtimes": runtimes_part, "table": table_part, "energy": energy_part}
    for name in args.parts.split(","):
        t0 = time.perf_counter()
        print(f"{name}...", file=sys.stderr, flush=True)
        result[name] = parts[name](args)
        result[f"{name}_seconds"] = time.perf_counter() - t0
        save()
    if "runtimes" in result:
        for spec, s in sorted(result["runtimes"]["summary"].items()):
            extra = (f", {s['speedup_device_over_cpu_median']:.2f}x the CPU's speed-up"
                     if "speedup_device_over_cpu_median" in s else "")
            print(f"{spec}: base {s['base_ms_median']:.3f} ms, candidates' speed-up median {s['speedup_median']:.2f}{extra}")
        for spec, why in result["runtimes"]["unsupported"].items():
            print(f"{spec}: not measured: {why}")
    if "energy" in result:
        e = result["energy"]
        if not e["measured"]:
            print(f"energy: not measured: {e.get('reason')}")
        elif "estimate_vs_measured" in e:
            print(f"energy: idle {e['idle_w']:.1f} W; estimate vs measured Spearman "
                  f"{e['estimate_vs_measured'].get('spearman')}, vs active {e['estimate_vs_active'].get('spearman')}, "
                  f"latency vs measured {e['latency_vs_measured'].get('spearman')}; calibrated: "
                  f"{e.get('calibrated_measured_j')}, active {e.get('calibrated_active_j')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
