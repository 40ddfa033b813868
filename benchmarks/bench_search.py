"""Benchmark of the compression search (not collected by pytest).

Full run (UC Merced, ResNet-18 at 64 px, budget params <= 25% of the base, two fine-tune epochs per
trial as the search's default; about 50 min on 2 idle CPU cores, 30 with ``--fidelity-epochs 1``):

    .venv/bin/python benchmarks/bench_search.py --data ../shared/datasets/UCMerced_LandUse

Quick smoke (minutes): ``--quick`` (32 px, 6 trials, 1 seed, 1 fine-tune epoch).

Reports, in ``benchmarks/results/search-samplers.json`` and as a table on stdout:

(a) test OA of the searched model a user ships (``search.crossval.chosen_row``), beside uniform L1 channel
    pruning at the same budget with the same fine-tune epochs (started weak and projected onto the budget, as
    the study's uniform L1), and beside the base model
    (targets: searched >= uniform + 2 pts, searched >= base - 1 pt); also beside the base model with
    only its BatchNorm statistics re-estimated as every fine-tune's are (``--bn-batches``);
(b) hypervolume after N trials for NSGA-II and TPE against random search, mean over seeds
    (target: >= 1.15x random), with the reference point at the base model's params (as the search
    logs it) and at the budget (only the area inside the budget); beside them, the hypervolume of
    every run's trials together (the best front the whole benchmark found) against random;
(c) share of completed trials inside the budget (target 100%);
(d) wall time outside the trial function (Optuna + MLflow + bookkeeping) as a share of trial wall time
    (target <= 5%).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _data_and_base(config):
    """The search's data, split and (cached) base checkpoint for ``config``."""
    from rsc.scenes import load_scene_data
    from rsc.splits import make_split
    from search.base_model import obtain_base_checkpoint

    data = load_scene_data(config.data, image_size=config.image_size, progress=False)
    split = make_split(data, train_ratio=config.train_ratio, val_ratio=config.val_ratio, seed=config.data_seed)
    ckpt, _ = obtain_base_checkpoint(model_name=config.model, weights=config.weights, data=data, split=split,
                                     epochs=config.base_epochs, lr=config.base_lr, batch_size=config.batch_size,
                                     seed=config.data_seed, device=config.device, progress=False, say=print)
    return data, split, ckpt


#: uniform L1's ratio before the projection: the study's plan-kind methods start weak (5% pruned, ranks at
#: 95%) and are projected onto the rate (search/study/execute.py ``_plan_steps``, private there: matched, not
#: imported), since the projection only strengthens a plan until it fits and a start past the rate overshoots
UNIFORM_START = 0.05


def uniform_l1(config, *, budget_key: str, limit: float):
    """Uniform L1 channel pruning projected onto the same ceiling, fine-tuned like the final stage
    (a :class:`search.request.TrialResult`)."""
    from rsc.models import create_model
    from search.objective import evaluate_trial
    from search.request import DataRef, TrialRequest, TrialResult
    from spaces.base import Context
    from spaces.prune import prunable_groups
    from spaces.registry import get_space, resolve_space

    data, split, ckpt = _data_and_base(config)
    skeleton = create_model(config.model, data.num_classes, image_size=data.image_size)
    ctx = Context(num_classes=data.num_classes, image_size=data.image_size)
    groups = prunable_groups(skeleton, ctx)
    steps = [{"space": get_space(resolve_space("prune")).name,
              "params": {"criterion": "l1", "round_to": 8, "ratios": {g.name: UNIFORM_START for g in groups}}}]
    request = TrialRequest(
        data=DataRef.from_dict(config.data_request(split.digest)), base_checkpoint=str(ckpt),
        plan={"base": {"model": config.model, "num_classes": data.num_classes, "image_size": data.image_size},
              "steps": steps},
        limits={budget_key: limit}, epochs=config.final_epochs, lr=config.finetune_lr, batch_size=config.batch_size,
        device=config.device or "cpu", calibration_batches=config.calibration_batches, bn_batches=config.bn_batches,
        latency=True, seed=config.seed, evaluate_test=True)
    return TrialResult.from_dict(evaluate_trial(request))


def base_bn_reestimated(config) -> float:
    """Test OA of the base model with only its BatchNorm statistics re-estimated, as every fine-tune
    now ends (``--bn-batches`` unaugmented training batches, no weight changed): what of a
    compressed model's lead over the base is that re-estimation alone."""
    from rsc.checkpoint import load_checkpoint, model_from_checkpoint
    from rsc.loaders import make_loaders
    from rsc.metrics import evaluate
    from spaces.finetune import recalibrate_bn

    device = config.device
    data, split, ckpt = _data_and_base(config)
    model = model_from_checkpoint(load_checkpoint(ckpt)).to(device)
    plain, _, test = make_loaders(data, split, batch_size=config.batch_size, augment=False, seed=config.seed,
                                  device=device)
    batches = [b for _, b in zip(range(config.bn_batches), plain)]
    recalibrate_bn(model, batches, max_batches=len(batches), device=device)
    return evaluate(model, test, num_classes=data.num_classes, device=device).oa


def _hv_budget_ref(res, budget: str) -> float:
    """Hypervolume of the run's feasible trials with the reference point on the budget (OA 0, the
    params ceiling) instead of the base model's params: only the area inside the budget counts."""
    from search.budget import parse_budgets
    from tracking.pareto import hypervolume

    base = res.base_costs["params"]
    limit = parse_budgets([budget]).resolve(res.base_costs).limits()["params"] / base
    pts = [[r["values"][0], r["values"][1] / base] for r in res.trials
           if r.get("state") == "complete" and r.get("feasible", True) and r.get("values")]
    pts = [p for p in pts if p[1] <= limit]
    return hypervolume(pts, ["maximize", "minimize"], [0.0, limit]) if pts else 0.0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "UCMerced_LandUse"))
    p.add_argument("--model", default="resnet18")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--budget", default="params<=25%")
    p.add_argument("--methods", default="prune,tucker,quant")
    p.add_argument("--trials", type=int, default=24)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--samplers", default="nsga2,tpe,random")
    p.add_argument("--fidelity-epochs", type=int, default=2)
    p.add_argument("--final-epochs", type=int, default=20)
    p.add_argument("--final-max", type=int, default=3)
    p.add_argument("--base-epochs", type=int, default=30)
    p.add_argument("--min-target", type=float, default=None,
                   help="lowest per-trial target as a fraction of the budget (default: the search's)")
    p.add_argument("--depth-bins", type=int, default=None,
                   help="one ratio / rank pair per contiguous depth bin instead of per layer (default: the search's)")
    p.add_argument("--bn-batches", type=int, default=None,
                   help="BatchNorm re-estimation batches after every fine-tune epoch (default: the search's; 0: off)")
    p.add_argument("--device", default="cpu", help="training device (latency is measured on the CPU)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "search-runs"))
    p.add_argument("--result-name", default="search-samplers.json", help="file under benchmarks/results (default search-samplers.json)")
    p.add_argument("--quick", action="store_true", help="32 px, 6 trials, seed 0, 1 epoch: a smoke run")
    args = p.parse_args(argv)
    if args.quick:
        args.image_size, args.trials, args.seeds = 32, 6, "0"
        args.fidelity_epochs, args.final_epochs, args.base_epochs, args.final_max = 1, 2, 3, 2

    from search.budget import parse_budgets
    from search.config import SearchConfig
    from search.crossval import chosen_row
    from search.run import Reporter, run

    class Say(Reporter):
        def message(self, text: str) -> None:
            print(text, flush=True)

    seeds = [int(s) for s in args.seeds.split(",")]
    samplers = args.samplers.split(",")
    runs: dict[str, list[dict]] = {}
    found: list[list[float]] = []  # every feasible trial of every run: [val OA, params / base params]
    best = None
    for sampler in samplers:
        for seed in seeds:
            first = sampler == samplers[0] and seed == seeds[0]
            cfg = SearchConfig(data=args.data or None, model=args.model, image_size=args.image_size,
                               budgets=(args.budget,), methods=tuple(args.methods.split(",")), trials=args.trials,
                               sampler=sampler, seed=seed, split_seed=seeds[0], fidelity_epochs=args.fidelity_epochs,
                               final_epochs=args.final_epochs if first else 0, final_max=args.final_max if first else 0,
                               base_epochs=args.base_epochs, out=args.out, study=f"bench-{sampler}-s{seed}-{int(time.time())}",
                               progress=False, log_models=False, device=args.device,
                               **({"min_target": args.min_target} if args.min_target is not None else {}),
                               **({"depth_bins": args.depth_bins} if args.depth_bins is not None else {}),
                               **({"bn_batches": args.bn_batches} if args.bn_batches is not None else {}))
            t0 = time.perf_counter()
            res = run(cfg, reporter=Say())
            row = {"sampler": sampler, "seed": seed, "hypervolume": res.hypervolume,
                   "hypervolume_budget_ref": _hv_budget_ref(res, args.budget), "counts": res.counts,
                   "overhead_share": res.timing.get("overhead_share"), "wall_s": time.perf_counter() - t0,
                   "trial_fn_s": res.timing.get("trial_fn"), "loop_wall_s": res.timing.get("wall"),
                   "parent_run_id": res.parent_run_id}
            runs.setdefault(sampler, []).append(row)
            base_params = res.base_costs["params"]
            found.extend([r["values"][0], r["values"][1] / base_params] for r in res.trials
                         if r.get("state") == "complete" and r.get("feasible", True) and r.get("values"))
            print(json.dumps(row), flush=True)
            if first:
                # the model a user would ship, by the search's own rule (the test split only reports it)
                best = {"base": res.base, "final": res.final, "best": chosen_row(res.final)}
                base_cfg = cfg
    report: dict = {"args": vars(args), "runs": runs}
    # (a)
    if best and best["best"]:
        budgets = parse_budgets([args.budget]).resolve({"params": best["base"]["params"]})
        limit = budgets.limits()["params"]
        uni = uniform_l1(base_cfg, budget_key="params", limit=limit)
        report["a"] = {"searched_test_oa": best["best"]["test_oa"], "searched_params": best["best"]["params"],
                       "uniform_l1_test_oa": uni.test_oa, "uniform_l1_params": uni.costs["params"],
                       "uniform_l1_start_ratio": UNIFORM_START,
                       "base_test_oa": best["base"]["test_oa"], "base_params": best["base"]["params"],
                       "limit_params": limit,
                       "searched_minus_uniform_pts": 100 * (best["best"]["test_oa"] - uni.test_oa),
                       "searched_minus_base_pts": 100 * (best["best"]["test_oa"] - best["base"]["test_oa"]),
                       "selected_trial": best["best"]["trial"], "selection": "search.crossval.chosen_row: the best "
                       "val OA after the final fine-tune among the models that meet the budget, ties to fewer params",
                       "final": [{k: r.get(k) for k in ("trial", "method", "val_oa", "test_oa", "params", "speedup")}
                                 for r in best["final"]]}
        if base_cfg.bn_batches:
            bn = base_bn_reestimated(base_cfg)
            report["a"].update(base_bn_test_oa=bn, searched_minus_base_bn_pts=100 * (best["best"]["test_oa"] - bn))
    # (b)
    if "random" in runs:
        rnd = statistics.mean(r["hypervolume"] for r in runs["random"]) or float("nan")
        rnd_b = statistics.mean(r["hypervolume_budget_ref"] for r in runs["random"]) or float("nan")
        report["b"] = {s: {"mean_hv": statistics.mean(r["hypervolume"] for r in rs),
                           "ratio_to_random": statistics.mean(r["hypervolume"] for r in rs) / rnd,
                           "mean_hv_budget_ref": statistics.mean(r["hypervolume_budget_ref"] for r in rs),
                           "ratio_to_random_budget_ref": statistics.mean(r["hypervolume_budget_ref"] for r in rs) / rnd_b}
                       for s, rs in runs.items()}
        # the front of all runs' trials together: a sampler whose front beat it would have found
        # what no run found, so its ratio to random bounds what (b) can show on this benchmark
        from tracking.pareto import hypervolume

        union = hypervolume(found, ["maximize", "minimize"], [0.0, 1.0]) if found else 0.0
        report["b"]["all_runs_together"] = {"trials": len(found), "hv": union, "ratio_to_random": union / rnd}
    # (c), (d)
    all_rows = [r for rs in runs.values() for r in rs]
    complete = sum(r["counts"].get("complete", 0) for r in all_rows)
    report["c"] = {"inside_budget": sum(r["counts"].get("inside_budget", 0) for r in all_rows), "complete": complete}
    loop = sum(r["loop_wall_s"] or 0 for r in all_rows)
    report["d"] = {"overhead_share": (loop - sum(r["trial_fn_s"] or 0 for r in all_rows)) / loop if loop else None}
    out = ROOT / "benchmarks" / "results"
    out.mkdir(parents=True, exist_ok=True)
    name = "search-samplers-quick.json" if args.quick else args.result_name
    (out / name).write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps({k: report[k] for k in ("a", "b", "c", "d") if k in report}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
