"""Cost (and optionally accuracy) of every compression method at ~2x and ~4x reduction.

    .venv/bin/python benchmarks/bench_spaces.py [--models resnet18 vgg11] [--image-size 64]
        [--reductions 2 4] [--threads 1] [--repeats 15] [--batch-size 16] [--memory-format channels_last]
        [--tucker-fc]
        [--finetune [--finetune-models resnet18] [--base-epochs 10] [--ft-epochs 2]
         [--data ../shared/datasets/UCMerced_LandUse]]

For each model and method, the method's choices are moved onto the target with the same hook the
search uses (``spaces.project_plan``: one global strength factor, found by regula falsi until the
structurally built model fits ``base MACs / target`` to within 0.5%; the recorded results were made
with the bisection it replaced; for magnitude pruning one sparsity computed analytically to hit
``base non-zero params / target``), starting from a uniform
setting: channel pruning of every group (L1, multiples of 8), Tucker-2 of every eligible conv,
a thinned copy of the teacher for KD, and per-layer sparsity for magnitude pruning. Int8 runs
alone and after 2x channel pruning. Every compressed model is measured next to its base in the
same process with ``costs.timing.compare``: latency runs interleaved, fixed threads, median of
``--repeats``, at batch 1 and ``--batch-size``. ``ratio`` = speed-up / MACs reduction (target for
channel pruning and Tucker: >= 0.8). Magnitude pruning cuts non-zero params only: no dense
speed-up is expected or claimed. Int8 keeps MACs but runs them in int8 kernels.

``--finetune`` also trains the base on UC Merced (80 % train, seed 0) for ``--base-epochs``,
fine-tunes each compressed model for ``--ft-epochs`` (KD from the base for distill.kd) after BN
recalibration, and reports test OA next to the base's. Without it the weights are random, which
does not change any cost number. Writes benchmarks/results/spaces-methods-2x-4x.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def start_params(space_name: str, space, model, ctx) -> dict:
    """A weak uniform setting that ``project`` scales up to the target."""
    if space_name == "prune.channel":
        from spaces.prune import prunable_groups

        return {"criterion": "l1", "round_to": 8, "ratios": {g.name: 0.05 for g in prunable_groups(model, ctx)}}
    if space_name == "decompose.tucker":
        return {"conv": {n: [0.95, 0.95] for n in space.conv_layers(model, ctx)},
                "fc": {n: 0.95 for n in space.fc_layers(model, ctx)}, "round_to": space.round_to, "tucker1": True}
    if space_name == "prune.magnitude":
        return {"sparsity": {n: 0.05 for n in space.layers(model, ctx)}}
    if space_name == "distill.kd":
        return {"student": {"family": "self", "width": 0.95, "depth": 1.0}, "temperature": 4.0, "alpha": 0.7}
    raise ValueError(space_name)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=["resnet18", "vgg11"])
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--reductions", nargs="+", type=float, default=[2.0, 4.0],
                   help="reduction factors of the cost each method is aimed at (default 2 4)")
    p.add_argument("--methods", nargs="+",
                   default=["prune.channel", "decompose.tucker", "distill.kd", "prune.magnitude", "quant.int8"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--memory-format", choices=["channels_last", "contiguous"], default="channels_last",
                   help="layout of weights and input during latency runs (costs.registry.CostSettings)")
    p.add_argument("--tucker-fc", action="store_true",
                   help="also SVD the hidden FC layers (minutes per VGG/AlexNet layer on a busy CPU)")
    p.add_argument("--finetune", action="store_true")
    p.add_argument("--finetune-models", nargs="+", default=["resnet18"])
    p.add_argument("--base-epochs", type=int, default=10)
    p.add_argument("--ft-epochs", type=int, default=2)
    p.add_argument("--data", default=str(REPO / ".." / "shared" / "datasets" / "UCMerced_LandUse"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "spaces-methods-2x-4x"))
    args = p.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    from costs.counting import count_macs, count_nonzero_params
    from costs.registry import CostSettings
    from costs.timing import compare
    from rsc.models import create_model
    from spaces import Context, Plan, Step, compress, get_space
    from spaces.project import cost_gap, project_plan

    settings = CostSettings(image_size=args.image_size, threads=args.threads, repeats=args.repeats,
                            warmup=3, batch_size=args.batch_size, memory_format=args.memory_format)
    loaders = None
    if args.finetune:
        from rsc.loaders import make_loaders
        from rsc.scenes import load_scene_data
        from rsc.splits import make_split

        data = load_scene_data(args.data, image_size=args.image_size, progress=False)
        split = make_split(data, train_ratio=0.8, seed=0)
        loaders = make_loaders(data, split, batch_size=64, seed=0)
        args.num_classes = data.num_classes

    rows: list[dict] = []
    for model_name in args.models:
        torch.manual_seed(0)
        base = create_model(model_name, args.num_classes, image_size=args.image_size).eval()
        calib = [(torch.randn(8, 3, args.image_size, args.image_size), torch.zeros(8, dtype=torch.long))
                 for _ in range(4)]
        base_oa = None
        tuned = args.finetune and model_name in args.finetune_models
        if tuned:
            from rsc.metrics import evaluate
            from rsc.loop import fit

            t0 = time.perf_counter()
            fit(base, loaders[0], epochs=args.base_epochs, lr=0.05, device="cpu", seed=0, progress=False)
            base.eval()
            base_oa = evaluate(base, loaders[2], num_classes=args.num_classes).oa
            calib = [(x, y) for (x, y), _ in zip(loaders[0], range(4))]
            print(f"{model_name}: base trained {args.base_epochs} epochs in {time.perf_counter() - t0:.0f}s, "
                  f"test OA {base_oa:.3f}", flush=True)
        ctx = Context(num_classes=args.num_classes, image_size=args.image_size, calibration=calib)
        base_macs = count_macs(base, image_size=args.image_size)
        base_nnz = count_nonzero_params(base)
        plan_base = {"model": model_name, "num_classes": args.num_classes, "image_size": args.image_size}

        jobs: list[tuple[str, float | None, list[Step]]] = []
        for method in args.methods:
            if method == "quant.int8":
                jobs.append(("quant.int8", None, [Step(space="quant.int8", params={})]))
                continue
            options = {"decompose_fc": args.tucker_fc} if method == "decompose.tucker" else {}
            space = get_space(method, **options)
            for target in args.reductions:
                t0 = time.perf_counter()
                if method == "prune.magnitude":
                    # analytic: one sparsity s over the prunable layers gives the non-zero target
                    # (projecting would sort every weight once per probe: minutes on VGG)
                    layers = space.layers(base, ctx)
                    prunable = sum(base.get_submodule(n).weight.numel() for n in layers)
                    s = min(0.99, max(0.0, 1 - (base_nnz / target - (base_nnz - prunable)) / prunable))
                    params = {"sparsity": dict.fromkeys(layers, round(s, 6))}
                else:
                    start = Plan(base=plan_base, steps=(Step(space=method, params=start_params(method, space, base, ctx),
                                                             options=options),))
                    gap = cost_gap({"macs": base_macs / target}, args.image_size)
                    params = project_plan(base, start, ctx, gap, tolerance=0.005, max_probes=12)[0].steps[0].params
                print(f"{model_name} {method} x{target:g}: projected in {time.perf_counter() - t0:.1f}s",
                      flush=True)
                jobs.append((method, target, [Step(space=method, params=params)]))
                if method == "prune.channel" and target == args.reductions[0] and "quant.int8" in args.methods:
                    jobs.append(("prune.channel+quant.int8", target,
                                 [Step(space=method, params=params), Step(space="quant.int8", params={})]))
        if "decompose.tucker" in args.methods and not args.tucker_fc:
            print(f"{model_name}: decompose.tucker benchmarked on convs only (--tucker-fc adds FC SVD)")

        for label, target, steps in jobs:
            plan = Plan(base=plan_base, steps=tuple(steps))
            t0 = time.perf_counter()
            model, done = compress(base, plan, ctx)
            build_s = time.perf_counter() - t0
            res = compare(base, model, settings, names=("params", "nonzero_params", "macs", "size"))
            row = {"model": model_name, "method": label, "target": target,
                   "params": res["compressed"]["params"], "nonzero_params": res["compressed"]["nonzero_params"],
                   "macs": res["compressed"]["macs"], "size_bytes": res["compressed"]["size"],
                   "base_params": res["base"]["params"], "base_macs": res["base"]["macs"],
                   "compression_rate": res["compression_rate"],
                   "compression_rate_nonzero": res["compression_rate_nonzero"],
                   "macs_reduction": res["macs_reduction"],
                   "base_ms_b1": res["base"]["latency_ms"], "ms_b1": res["compressed"]["latency_ms"],
                   "base_ms_batch": res["base"]["latency_ms_batch"], "ms_batch": res["compressed"]["latency_ms_batch"],
                   "speedup_b1": res["speedup"], "speedup_batch": res["speedup_batch"],
                   "ratio_b1": res["speedup"] / res["macs_reduction"],
                   "ratio_batch": res["speedup_batch"] / res["macs_reduction"],
                   "build_s": build_s, "plan": done.to_dict()["steps"][0]["params"] if len(steps) == 1 else None}
            if tuned:
                from rsc.metrics import evaluate
                from spaces import finetune_plan

                t0 = time.perf_counter()
                ft_model, _, _ = finetune_plan(base, done, loaders[0], epochs=args.ft_epochs, lr=0.01,
                                               context=ctx, bn_batches=10, seed=0)
                row["oa"] = evaluate(ft_model, loaders[2], num_classes=args.num_classes).oa
                row["base_oa"] = base_oa
                row["finetune_s"] = time.perf_counter() - t0
            rows.append(row)
            oa = f"  OA {row['oa']:.3f} (base {base_oa:.3f})" if tuned else ""
            print(f"{model_name:9s} {label:25s} x{target if target else '-'}: params {row['params'] / 1e6:7.2f}M "
                  f"(nz {row['nonzero_params'] / 1e6:6.2f}M) MACs {row['macs'] / 1e6:8.1f}M "
                  f"CR {row['compression_rate']:5.2f} CRnz {row['compression_rate_nonzero']:5.2f} "
                  f"MACs/{row['macs_reduction']:4.2f} speed-up b1 {row['speedup_b1']:4.2f} "
                  f"b{args.batch_size} {row['speedup_batch']:4.2f} ratio b1 {row['ratio_b1']:4.2f} "
                  f"b{args.batch_size} {row['ratio_batch']:4.2f}{oa}", flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"argv": sys.argv[1:], "torch": torch.__version__, "machine": platform.machine(),
            "threads": args.threads, "repeats": args.repeats, "batch_size": args.batch_size,
            "image_size": args.image_size, "finetune": args.finetune, "memory_format": args.memory_format}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    lines = [f"# bench_spaces ({args.image_size} px, {args.threads} thread(s), {args.memory_format}, median of "
             f"{args.repeats}, torch {torch.__version__})", "",
             f"| model | method | target | params (M) | non-zero (M) | MACs (M) | CR | CR non-zero | MACs cut | "
             f"speed-up b1 | speed-up b{args.batch_size} | ratio b1 | ratio b{args.batch_size} | OA | base OA |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        oa = f"{r['oa']:.3f} | {r['base_oa']:.3f}" if "oa" in r else "- | -"
        lines.append(f"| {r['model']} | {r['method']} | {('x%g' % r['target']) if r['target'] else '-'} | "
                     f"{r['params'] / 1e6:.2f} | {r['nonzero_params'] / 1e6:.2f} | {r['macs'] / 1e6:.1f} | "
                     f"{r['compression_rate']:.2f} | {r['compression_rate_nonzero']:.2f} | {r['macs_reduction']:.2f} | "
                     f"{r['speedup_b1']:.2f} | {r['speedup_batch']:.2f} | {r['ratio_b1']:.2f} | "
                     f"{r['ratio_batch']:.2f} | {oa} |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
