"""Speed-up of channel pruning and Tucker-2 when the per-layer cuts are allocated by the target's latency.

    .venv/bin/python benchmarks/bench_allocate.py [--model resnet18] [--image-size 64] [--reductions 2 4]
        [--batch-size 16] [--repeats 15] [--base-epochs 10] [--ft-epochs 2] [--no-finetune]
        [--data ../shared/datasets/UCMerced_LandUse] [--out benchmarks/results/allocate-latency-vs-macs]

For each method (``prune.channel``, ``decompose.tucker``) and reduction ``x`` in ``--reductions``, four
allocations of the same budget:

* ``uniform``: today's search default, a uniform setting moved onto ``base MACs / x`` by the
  search's projection (one global strength factor; as ``bench_spaces.py``);
* ``macs``: ``prune.allocated`` / ``decompose.allocated`` priced in MACs (the greedy of
  :mod:`spaces.allocation`), its kept fraction projected onto the same ``base MACs / x``;
* ``latency b1`` / ``latency bN``: the same priced by a latency table of this CPU
  (``search.profile``, built here at batch 1 and at ``--batch-size``), projected onto
  ``predicted base latency / x`` at that batch, as ``search.run --allocate latency`` does;
* ``uniform latency b1`` / ``bN``: the uniform setting projected onto that same predicted latency
  (what ``--target lut:FILE`` without ``--allocate`` does): the accuracy comparison at equal speed.

Every model is timed next to its base in one process (``costs.timing.compare``: interleaved, one
thread, channels-last, median of ``--repeats``, batch 1 and ``--batch-size``). ``ratio`` =
speed-up / MACs cut (the issue's target for pruning and Tucker: >= 0.8), ``vs x`` = speed-up / x.
With fine-tuning (default), the base is trained on UC Merced (80 % train, seed 0) and every model
fine-tuned ``--ft-epochs`` with BN recalibration, as ``bench_spaces.py --finetune``; test OA beside.
Writes ``<out>.json`` and ``<out>.md``. Run on a quiet machine (no other load: timings).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="resnet18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=21)
    p.add_argument("--reductions", nargs="+", type=float, default=[2.0, 4.0],
                   help="latency reduction factors to aim at (default 2 4)")
    p.add_argument("--methods", nargs="+", default=["prune.channel", "decompose.tucker"])
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--base-epochs", type=int, default=10)
    p.add_argument("--ft-epochs", type=int, default=2)
    p.add_argument("--no-finetune", dest="finetune", action="store_false")
    p.add_argument("--damage", choices=("importance", "sensitivity"), default="importance",
                   help="how the channel allocation prices a cut (spaces.allocation: L1 share, or measured loss rise)")
    p.add_argument("--data", default=str(REPO.parent / "shared" / "datasets" / "UCMerced_LandUse"))
    p.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "allocate-latency-vs-macs"))
    args = p.parse_args()

    import torch

    torch.set_num_threads(1)
    from benchmarks.bench_spaces import start_params
    from costs.counting import count_macs
    from costs.registry import CostSettings
    from costs.timing import compare
    from rsc.models import create_model
    from costs.targets import parse_target
    from search.profile import profile_table
    from spaces import Context, Plan, Step, compress, get_space
    from spaces.project import cost_gap, project_plan

    settings = CostSettings(image_size=args.image_size, threads=1, repeats=args.repeats, warmup=3,
                            batch_size=args.batch_size)
    loaders = None
    if args.finetune:
        from rsc.loaders import make_loaders
        from rsc.scenes import load_scene_data
        from rsc.splits import make_split

        data = load_scene_data(args.data, image_size=args.image_size, progress=False)
        loaders = make_loaders(data, make_split(data, train_ratio=0.8, seed=0), batch_size=64, seed=0)
        args.num_classes = data.num_classes
    torch.manual_seed(0)
    base = create_model(args.model, args.num_classes, image_size=args.image_size).eval()
    calib = [(torch.randn(8, 3, args.image_size, args.image_size), torch.zeros(8, dtype=torch.long))
             for _ in range(4)]
    base_oa = None
    if args.finetune:
        from rsc.metrics import evaluate
        from rsc.loop import fit

        t0 = time.perf_counter()
        fit(base, loaders[0], epochs=args.base_epochs, lr=0.05, device="cpu", seed=0, progress=False)
        base.eval()
        base_oa = evaluate(base, loaders[2], num_classes=args.num_classes).oa
        calib = [(x, y) for (x, y), _ in zip(loaders[0], range(4))]
        print(f"base trained {args.base_epochs} epochs in {time.perf_counter() - t0:.0f}s, test OA {base_oa:.3f}",
              flush=True)
    ctx = Context(num_classes=args.num_classes, image_size=args.image_size, calibration=calib)
    tables = {}
    for batch in (1, args.batch_size):
        t0 = time.perf_counter()
        target = parse_target("cpu" if batch == 1 else f"cpu:batch={batch}")
        tables[batch] = profile_table(target=target, model=args.model, image_size=args.image_size,
                                      num_classes=args.num_classes, methods=["prune", "tucker"], seed=0,
                                      say=lambda m: print(f"  {m}", file=sys.stderr))
        tables[batch].on_missing = "measure"
        print(f"table at batch {batch}: {time.perf_counter() - t0:.0f}s; {tables[batch].summary()}", flush=True)

    arch = {"model": args.model, "num_classes": args.num_classes, "image_size": args.image_size}
    base_macs = count_macs(base, image_size=args.image_size)
    allocated = {"prune.channel": "prune.allocated", "decompose.tucker": "decompose.allocated"}
    damage = {"prune.channel": {"damage": args.damage} if args.damage != "importance" else {}}
    jobs = []
    for method in args.methods:
        for x in args.reductions:
            # every plan is moved onto its budget by the search's own projection (whole-model cost)
            start = Step(space=method, params=start_params(method, get_space(method), base, ctx))
            aims = [("uniform", start, ctx, cost_gap({"macs": base_macs / x}, args.image_size)),
                    ("macs", Step(space=allocated[method], params={"keep": 0.9},
                                  options={"cost": "macs", **damage.get(method, {})}), ctx,
                     cost_gap({"macs": base_macs / x}, args.image_size))]
            for batch, table in tables.items():  # the same speed-up aimed at with a uniform shape, then allocated
                aim = cost_gap({"latency_ms": table.predict(base) / x}, args.image_size, {"latency_ms": table.predict})
                aims.append((f"uniform latency b{batch}", start, ctx, aim))
                aims.append((f"latency b{batch}", Step(space=allocated[method], params={"keep": 0.9},
                                                       options={"cost": "latency", **damage.get(method, {})}),
                             dataclasses.replace(ctx, latency_table=table), aim))
            for name, step, c, gap in aims:
                t0 = time.perf_counter()
                # a budget the method cannot reach (Tucker at 4x latency, batch 1) keeps its strongest form
                plan, factor = project_plan(base, Plan(base=arch, steps=(step,)), c, gap, tolerance=0.005,
                                            max_probes=12, fallback=lambda _model: -1.0)
                reached = gap(compress(base, plan, c, structure_only=True)[0]) <= 1e-9
                jobs.append((method, x, name, plan, c, {"project_s": time.perf_counter() - t0, "factor": factor,
                                                        "reached": reached}))
                print(f"{method} x{x:g} {name}: projected in {time.perf_counter() - t0:.1f}s", flush=True)

    rows = []
    for method, x, alloc, plan, c, info in jobs:
        model, done = compress(base, plan, c)
        res = compare(base, model, settings, names=("params", "macs"))
        row = {"method": method, "target": x, "allocation": alloc, **info,
               "params": res["compressed"]["params"], "macs": res["compressed"]["macs"],
               "macs_reduction": res["macs_reduction"], "compression_rate": res["compression_rate"],
               "speedup_b1": res["speedup"], "speedup_batch": res["speedup_batch"],
               "ratio_b1": res["speedup"] / res["macs_reduction"],
               "ratio_batch": res["speedup_batch"] / res["macs_reduction"],
               "vs_target_b1": res["speedup"] / x, "vs_target_batch": res["speedup_batch"] / x,
               "predicted_b1": tables[1].predict(model), "measured_b1_ms": res["compressed"]["latency_ms"],
               "plan": done.to_dict()["steps"][0]["params"]}
        if args.finetune:
            from rsc.metrics import evaluate
            from spaces import finetune_plan

            t0 = time.perf_counter()
            ft, _, _ = finetune_plan(base, done, loaders[0], epochs=args.ft_epochs, lr=0.01, context=c,
                                     bn_batches=10, seed=0)
            row["oa"] = evaluate(ft, loaders[2], num_classes=args.num_classes).oa
            row["base_oa"] = base_oa
            row["finetune_s"] = time.perf_counter() - t0
        rows.append(row)
        oa = f" OA {row['oa']:.3f} (base {base_oa:.3f})" if args.finetune else ""
        print(f"{method:17s} x{x:g} {alloc:11s}: MACs/{row['macs_reduction']:4.2f} CR {row['compression_rate']:4.2f} "
              f"speed-up b1 {row['speedup_b1']:4.2f} b{args.batch_size} {row['speedup_batch']:4.2f} "
              f"ratio {row['ratio_b1']:4.2f}/{row['ratio_batch']:4.2f}{oa}", flush=True)

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"argv": sys.argv[1:], "torch": torch.__version__, "machine": platform.machine(),
            "processor": tables[1].fingerprint.get("device_name"), "repeats": args.repeats,
            "batch_size": args.batch_size, "image_size": args.image_size, "model": args.model,
            "finetune": args.finetune, "base_epochs": args.base_epochs, "ft_epochs": args.ft_epochs,
            "damage": args.damage,
            # which whole-model correction each table chose (costs.latency.fit.fit_correction), its fit and the
            # leave-one-out errors it was chosen by
            "tables": {str(k): {"summary": t.summary(), "correction": t.correction, "weights": t.weights,
                                "line": {"alpha": t.alpha, "beta": t.beta},
                                "correction_loo": t.meta.get("correction_loo")} for k, t in tables.items()}}
    out.with_suffix(".json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    b = args.batch_size
    columns = {"method": "{method}", "x": "x{target:g}", "allocation": "{allocation}", "reached": "{reached}", "params (M)": "{params_m:.2f}",
               "MACs cut": "{macs_reduction:.2f}", "speed-up b1": "{speedup_b1:.2f}",
               f"speed-up b{b}": "{speedup_batch:.2f}", "ratio b1": "{ratio_b1:.2f}", f"ratio b{b}": "{ratio_batch:.2f}",
               "speed-up/x b1": "{vs_target_b1:.2f}", f"speed-up/x b{b}": "{vs_target_batch:.2f}",
               "OA": "{oa:.3f}", "base OA": "{base_oa:.3f}"}
    lines = [f"# bench_allocate ({args.model}, {args.image_size} px, 1 thread, channels-last, median of "
             f"{args.repeats}, torch {torch.__version__})", "", "| " + " | ".join(columns) + " |",
             "|" + "---|" * len(columns)]
    for r in rows:
        values = {**r, "params_m": r["params"] / 1e6}
        cells = ["-" if name.endswith("OA") and "oa" not in r else fmt.format(**values)
                 for name, fmt in columns.items()]
        lines.append("| " + " | ".join(cells) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
