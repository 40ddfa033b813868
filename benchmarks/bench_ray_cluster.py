"""Benchmark of a search on a Ray cluster: two nodes against one, side by side (not collected by pytest).

    .venv/bin/python benchmarks/bench_ray_cluster.py --data ../shared/datasets/UCMerced_LandUse

Both clusters are started here on loopback (127.0.0.2; ``ray.cluster_utils.Cluster``), each node
with 1 CPU, and run the same search (same seed, random sampler: the same plans in the same order)
with one thread per trial; data set and base checkpoint reach the nodes through the object store
(``--ray-data object-store``, what a cluster without a shared disk gets). The base model is
trained (or taken from the cache) before either clock starts.

Reports, in ``benchmarks/results/ray_cluster-2-nodes-vs-1.json`` and on stdout:

* completed trials per hour of the trial loop, 2 nodes against 1 (target >= 1.8x);
* with 2 workers, the share of the loop's wall time outside the trial function: the driver's own
  work (Optuna, MLflow, bookkeeping; target <= 5%) and, beside it, the workers' idle share
  (1 - trial-function seconds / (2 x wall): scheduling, worker start-up, shipping, the tail
  where one trial is left).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LOOPBACK = "127.0.0.2"  # Ray rewrites 127.0.0.1 to the host's interface address


def start_cluster(nodes: int, temp_dir: str):
    from ray.cluster_utils import Cluster

    common = dict(num_cpus=1, node_ip_address=LOOPBACK, object_store_memory=200 * 1024**2)
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args=dict(**common, include_dashboard=False, temp_dir=temp_dir))
    for _ in range(nodes - 1):
        cluster.add_node(**common)
    cluster.wait_for_nodes()
    return cluster


def one(config, nodes: int, say) -> dict:
    from search.run import Reporter, run

    class Say(Reporter):
        def message(self, text: str) -> None:
            say(f"  [{nodes} node(s)] {text}")

    temp_dir = tempfile.mkdtemp(prefix="rsc-bench-ray-", dir="/tmp")
    cluster = start_cluster(nodes, temp_dir)
    try:
        t0 = time.perf_counter()
        result = run(config.replace(ray_address=cluster.address, workers=nodes, study=f"{config.study}-{nodes}n"),
                     reporter=Say())
        total = time.perf_counter() - t0
    finally:
        cluster.shutdown()
        shutil.rmtree(temp_dir, ignore_errors=True)
    timing = result.timing
    worker_s = [t.get("seconds", {}).get("worker", 0.0) for t in _trials(result)]
    complete = result.counts.get("complete", 0)
    return {"nodes": nodes, "workers": nodes, "trials": result.counts.get("finished", 0), "complete": complete,
            "lost": result.counts.get("lost", 0), "loop_wall_s": timing["wall"], "run_s": total,
            "complete_per_hour": 3600.0 * complete / timing["wall"], "driver_share": timing.get("overhead_share"),
            "trial_fn_s": sum(worker_s),
            "worker_idle_share": 1.0 - sum(worker_s) / (nodes * timing["wall"]),
            "nodes_used": sorted({t.get("worker", {}).get("node_id", "")[:8] for t in _trials(result)})}


def _trials(result) -> list[dict]:
    import optuna

    study = optuna.load_study(study_name=result.study, storage=result.storage)
    return [{"seconds": t.user_attrs.get("seconds") or {}, "worker": t.user_attrs.get("worker") or {}}
            for t in study.trials if t.state.name == "COMPLETE"]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=str(ROOT.parent / "shared" / "datasets" / "UCMerced_LandUse"))
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--trials", type=int, default=8)
    p.add_argument("--fidelity-epochs", type=int, default=1)
    p.add_argument("--base-epochs", type=int, default=5, help="the base model's quality does not enter (default 5)")
    p.add_argument("--methods", default="prune,tucker")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "ray_cluster-2-nodes-vs-1.json"))
    args = p.parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])

    from search.config import SearchConfig

    work = Path(tempfile.mkdtemp(prefix="rsc-bench-ray-runs-"))
    config = SearchConfig(data=args.data, image_size=args.image_size, model="resnet18",
                          methods=tuple(args.methods.split(",")), budgets=("params<=25%",), trials=args.trials,
                          fidelity_epochs=args.fidelity_epochs, final_epochs=0, final_max=0,
                          base_epochs=args.base_epochs, sampler="random", seed=0, early_stop_margin=None,
                          backend="ray", trial_cpus=1, ray_data="object-store", out=str(work), study="bench",
                          progress=False, log_models=False)
    rows = []
    t0 = time.perf_counter()
    for nodes in (1, 2):
        print(f"search on {nodes} node(s), 1 CPU each, {args.trials} trials ...", flush=True)
        rows.append(one(config, nodes, print))
        print(json.dumps(rows[-1]), flush=True)
    one_node, two = rows
    report = {
        "command": "python benchmarks/bench_ray_cluster.py " + " ".join(argv or sys.argv[1:]),
        "setup": {"data": Path(args.data).name, "image_size": args.image_size, "model": "resnet18",
                  "methods": args.methods, "budget": "params<=25%", "trials": args.trials,
                  "fidelity_epochs": args.fidelity_epochs, "threads_per_trial": 1, "cpu_per_node": 1,
                  "cpu_count": os.cpu_count()},
        "runs": rows,
        "speedup_2_over_1": two["complete_per_hour"] / one_node["complete_per_hour"],
        "targets": {"speedup_2_over_1": ">= 1.8", "driver_share_2_workers": "<= 0.05"},
        "wall_s": time.perf_counter() - t0,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=2))
    print(f"\ncompleted trials/hour: 1 node {one_node['complete_per_hour']:.1f}, 2 nodes {two['complete_per_hour']:.1f} "
          f"-> {report['speedup_2_over_1']:.2f}x (target >= 1.8x)")
    print(f"2 workers: driver work {100 * two['driver_share']:.1f}% of the loop (target <= 5%), workers idle "
          f"{100 * two['worker_idle_share']:.1f}%")
    print(f"written to {args.out}")
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
