"""Trials on an accelerator beside the CPU, same plans and seeds (not collected by pytest).

    python benchmarks/bench_device.py --device cuda --data ../shared/datasets/UCMerced_LandUse

1. Trains the base model on ``--device`` (``--base-epochs``) and times one epoch of that
   training on the CPU.
2. For each method combination, builds one plan (every choice at the middle of its range,
   projected onto ``--budget``) and runs the search's trial function on ``--device`` and on the
   CPU with the same seed: validation OA, costs and wall time of each. Fine-tuning on CUDA runs
   in bf16 autocast, so the two OAs differ by rounding, not by plan.

Writes ``benchmarks/results/device-cuda-vs-cpu.json`` and ``.md`` (``--out`` elsewhere). Needs
torch-pruning and tensorly, not Optuna or MLflow, so it runs on a bare accelerator machine.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

COMBOS = ("prune", "sparse", "tucker", "distill", "prune+quant", "tucker+distill", "prune+distill")


def _plan(combo: str, model, context) -> tuple[list[dict], bool]:
    """Mid-range steps of ``combo`` as plain JSON, and whether a step zeroes weights (keeps sparsity)."""
    from search.space import JointSpace, _MidTrial

    methods = combo.split("+")
    joint = JointSpace(methods, max_combo=len(methods))
    trial = _MidTrial()
    params = [joint.space(m).suggest(trial, model, context) for m in methods]
    return ([s.to_dict() for s in joint.steps_of(combo, params)],
            any(joint.space(m).keeps_sparsity for m in methods))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--data", default=None, help="dataset folder (default: the built-in synthetic set)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--model", default="resnet18")
    p.add_argument("--budget", default="params<=25%")
    p.add_argument("--base-epochs", type=int, default=30)
    p.add_argument("--epochs", type=int, default=2, help="fine-tune epochs per trial")
    p.add_argument("--combos", default=",".join(COMBOS))
    p.add_argument("--cpu-combos", default="prune,tucker,prune+quant",
                   help="combinations also run on the CPU for the OA and time comparison")
    p.add_argument("--determinism", type=int, default=0, metavar="EPOCHS",
                   help="also train the model twice for EPOCHS epochs with one seed and compare the weights")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    args = p.parse_args(argv)

    import torch

    from costs.registry import CostSettings, analytic_costs, measure
    from rsc.loaders import make_loaders
    from rsc.scenes import load_scene_data
    from rsc.splits import make_split
    from rsc.models import create_model
    from rsc.loop import fit, resolve_device, seed_everything
    from search.base_model import obtain_base_checkpoint
    from search.budget import parse_budgets
    from search.objective import evaluate_trial
    from search.request import DataRef, TrialRequest, TrialResult
    from spaces.base import Context

    device = resolve_device(args.device)
    data = load_scene_data(args.data, image_size=args.image_size, progress=False)
    split = make_split(data, train_ratio=0.8, val_ratio=0.1, seed=0)
    report: dict = {"args": vars(args), "device": str(device), "host": platform.node(),
                    "torch": torch.__version__, "cpu_threads": torch.get_num_threads(),
                    "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                    "data": data.summary(), "rows": []}
    print(json.dumps({k: report[k] for k in ("device", "gpu", "torch", "cpu_threads", "data")}), flush=True)

    # 1. the base model on the device; one epoch of the same training on the CPU for the ratio
    t = time.perf_counter()
    ckpt, _ = obtain_base_checkpoint(model_name=args.model, weights=None, data=data, split=split,
                                     epochs=args.base_epochs, lr=0.05, batch_size=64, seed=0, device=str(device),
                                     progress=False, say=print)
    report["base_train_s_device"] = time.perf_counter() - t
    train, _, _ = make_loaders(data, split, batch_size=64, seed=0, device="cpu")
    seed_everything(0)
    net = create_model(args.model, data.num_classes, image_size=data.image_size)
    t = time.perf_counter()
    fit(net, train, epochs=1, device="cpu", progress=False)
    report["train_epoch_s_cpu"] = time.perf_counter() - t
    report["train_epoch_s_device"] = report["base_train_s_device"] / max(args.base_epochs, 1)

    if args.determinism:
        from rsc.metrics import evaluate

        runs = []
        for _ in range(2):
            train_d, val, _ = make_loaders(data, split, batch_size=64, seed=0, device=str(device))
            seed_everything(0)
            net = create_model(args.model, data.num_classes, image_size=data.image_size).to(device)
            t = time.perf_counter()
            fit(net, train_d, epochs=args.determinism, device=device, seed=0, progress=False)
            runs.append((net.state_dict(), evaluate(net, val, num_classes=data.num_classes, device=device).oa,
                         time.perf_counter() - t))
        same = all(torch.equal(runs[0][0][k], runs[1][0][k]) for k in runs[0][0])
        report["determinism"] = {"epochs": args.determinism, "identical_weights": same,
                                 "val_oa": [r[1] for r in runs], "seconds": [r[2] for r in runs]}
        print(json.dumps(report["determinism"]), flush=True)

    skeleton = create_model(args.model, data.num_classes, image_size=data.image_size).eval()
    context = Context(num_classes=data.num_classes, image_size=data.image_size, device="cpu", seed=0)
    base_costs = measure(skeleton, analytic_costs(), CostSettings(image_size=data.image_size))
    limits = parse_budgets([args.budget]).resolve(base_costs).limits()
    template = TrialRequest(
        data=DataRef(path=str(Path(args.data).resolve()) if args.data else None, image_size=data.image_size,
                     train_ratio=0.8, val_ratio=0.1, split_seed=0, digest=split.digest),
        base_checkpoint=str(ckpt), base_costs=base_costs, epochs=args.epochs, lr=0.01, batch_size=64,
        calibration_batches=2, latency=True, seed=7)
    cpu_combos = set(args.cpu_combos.split(",")) if args.cpu_combos else set()

    # 2. one trial per combination on the device and (for some) on the CPU
    for combo in args.combos.split(","):
        steps, sparse = _plan(combo, skeleton, context)
        # magnitude pruning zeroes weights without removing them: its budget is on nonzero params
        trial_limits = {"nonzero_params": v for k, v in limits.items() if k == "params"} if sparse else limits
        for dev in [str(device)] + (["cpu"] if combo in cpu_combos and device.type != "cpu" else []):
            request = template.replace(plan={"base": {"model": args.model, "num_classes": data.num_classes,
                                                      "image_size": data.image_size}, "steps": steps},
                                       limits=trial_limits, device=dev)
            t = time.perf_counter()
            try:
                out = TrialResult.from_dict(evaluate_trial(request.to_dict()))  # across the JSON boundary
                row = {"combo": combo, "device": dev, "ok": True, "val_oa": out.val_oa,
                       "params": out.costs["params"], "compression_rate": out.compression_rate,
                       "speedup_cpu_latency": out.speedup, "seconds": time.perf_counter() - t,
                       "phases": {k: round(v, 3) for k, v in out.seconds.items()}}
            except Exception as exc:  # noqa: BLE001 - a failure on the device is the finding
                import traceback

                row = {"combo": combo, "device": dev, "ok": False, "error": f"{type(exc).__name__}: {exc}",
                       "traceback": traceback.format_exc()[-3000:], "seconds": time.perf_counter() - t}
            report["rows"].append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "traceback"}), flush=True)

    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "device-cuda-vs-cpu.json").write_text(json.dumps(report, indent=1, default=str))
    lines = [f"# Trials on {report['gpu'] or report['device']} beside the CPU ({report['cpu_threads']} threads)", "",
             f"data: {report['data']}; torch {report['torch']}", "",
             f"base model, {args.base_epochs} epochs on {report['device']}: {report['base_train_s_device']:.1f} s "
             f"({report['train_epoch_s_device']:.2f} s/epoch); one epoch on the CPU: {report['train_epoch_s_cpu']:.1f} s", "",
             *([f"determinism: the same seed trained twice for {report['determinism']['epochs']} epochs gave "
                f"{'identical' if report['determinism']['identical_weights'] else 'DIFFERENT'} weights "
                f"(val OA {', '.join(f'{v:.3f}' for v in report['determinism']['val_oa'])})", ""]
               if "determinism" in report else []),
             "| combination | device | ok | val OA | compression | trial s | fine-tune s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in report["rows"]:
        if r["ok"]:
            lines.append(f"| {r['combo']} | {r['device']} | yes | {r['val_oa']:.3f} | {r['compression_rate']:.1f}x | "
                         f"{r['seconds']:.1f} | {r['phases'].get('finetune', 0):.1f} |")
        else:
            lines.append(f"| {r['combo']} | {r['device']} | **no**: {r['error'][:120]} | | | {r['seconds']:.1f} | |")
    (out_dir / "device-cuda-vs-cpu.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(r["ok"] for r in report["rows"]) else 1


if __name__ == "__main__":
    sys.exit(main())
