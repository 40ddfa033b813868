"""``python -m search.profile``: measure a per-kernel latency table on a target, for ``--target lut:FILE``.

The table (:mod:`costs.latency.table`) must hold every kernel the search can produce from the model:
this command builds (structure only, no weights computed) the base model, each method
combination's most compressed plan and ``--plans`` random plans of the search's own space
(:class:`search.space.JointSpace`: channel counts at the pruning rounding step, Tucker-2 ranks and
their 1x1 projections, student architectures), collects their fused kernels and measures, on the
target, a grid of ``--points`` values per channel dim spanning what was seen, in rounds that look
like a forward pass (:func:`costs.latency.profile.profile_kernels`). Then it times ``--calibration`` whole
models (the base, other random plans) and every combination's most compressed plan (the floor a
budget is checked against), each beside the base in ``--calibration-passes`` passes, against the sum of
their kernels and fits the whole-model correction (a line, a calibration curve or a weight per kernel
class, whichever has the smallest leave-one-out error: :func:`costs.latency.fit.fit_correction`), which
it reports with its error. Post-training steps
(int8) are not tabled: a model with them is measured whole when it is predicted.

Example::

    python -m search.profile --target cpu --model resnet18 --image-size 64 --num-classes 21 --out lut.json
    python -m search.run --target lut:lut.json --budget 'latency<40%' --data ../shared/datasets/UCMerced_LandUse
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from spaces.registry import DEFAULT_METHODS

__all__ = ["main", "build_parser", "sample_plans", "structural_model", "built_plans", "profile_table",
           "structural_defaults"]


def build_parser() -> Any:
    from rsc.cli import ArgumentParser

    p = ArgumentParser(prog="python -m search.profile",
                       description="Measure a per-kernel latency table of a model's compressed variants on a "
                                   "target (for search.run --target lut:FILE).",
                       epilog="Example: python -m search.profile --target cpu --model resnet18 --image-size 64 "
                              "--num-classes 21 --out lut.json")
    p.add_argument("--target", default="cpu", help="where to measure (costs.targets grammar: cpu[:threads=N,"
                   "runtime=eager|torchscript|onnxruntime,format=...,batch=N], cuda[:N], ray:RESOURCE); default cpu")
    p.add_argument("--model", default="resnet18", help="base architecture (rsc.models registry); default resnet18")
    p.add_argument("--image-size", type=int, default=64, help="input side in pixels; default 64")
    p.add_argument("--num-classes", type=int, default=21, help="classes of the head; default 21 (UC Merced)")
    p.add_argument("--methods", help="methods whose kernels to table, comma-separated; default: the search's default "
                                     f"methods that change the structure ({','.join(DEFAULT_METHODS)} without the "
                                     "post-training ones)")
    p.add_argument("--depth-bins", type=int, default=4, help="as search.run's --depth-bins; default 4")
    p.add_argument("--plans", type=int, default=40, help="random plans whose kernels are tabled; default 40")
    p.add_argument("--points", type=int, default=8, help="grid values per channel dim; default 8")
    p.add_argument("--calibration", type=int, default=32,
                   help="whole models timed to fit the correction of the kernels' sum (a line, a curve or weights "
                        "per kernel class); default 32")
    p.add_argument("--calibration-passes", type=int, default=3,
                   help="times each calibration model is timed beside the base (its median ratio fits); default 3")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per kernel (default: the target's 10)")
    p.add_argument("--ray-address", default=None, help="Ray cluster to join for a ray:RESOURCE target")
    p.add_argument("--seed", type=int, default=0, help="seed of the random plans; default 0")
    p.add_argument("--out", default="lut.json", help="table file to write; default lut.json")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    return p


def sample_plans(joint: Any, base: Any, context: Any, arch: dict[str, Any], n: int, seed: int) -> list[Any]:
    """``n`` random plans of ``joint`` (Optuna's RandomSampler, seeded), as :class:`spaces.Plan`."""
    import optuna

    from spaces.base import Plan

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    plans = []
    for _ in range(n):
        _, steps = joint.suggest(study.ask(), base, context)
        plans.append(Plan(base=arch, steps=steps))
    return plans


def strongest_plans(joint: Any, base: Any, context: Any, arch: dict[str, Any], say: Any = print) -> list[Any]:
    """The strongest plan of every combination of ``joint`` that has one (the others are said)."""
    from spaces.base import Plan
    from spaces.errors import SpaceError

    strongest = []
    for combo in joint.combos:
        try:
            strongest.append(Plan(base=arch, steps=joint.strongest(combo, base, context)))
        except SpaceError as exc:
            say(f"note: {combo} has no strongest plan here ({exc})")
    return strongest


def calibration_plans(joint: Any, base: Any, context: Any, arch: dict[str, Any], strongest: Sequence[Any],
                      n: int, seed: int) -> list[Any]:
    """The plans a table's whole-model correction is fitted on: the base, ``strongest`` and random ones
    (``n`` in all with the base; drawn with ``seed`` + 7919, apart from the kernel grid's plans)."""
    from spaces.base import Plan

    return [Plan(base=arch), *strongest, *sample_plans(joint, base, context, arch, max(n - 1, 0), seed + 7919)]


def calibration_times(passes: Sequence[Sequence[Mapping[str, float]]]) -> list[float]:
    """Each calibration model's time (ms) from its ``{"model", "base"}`` pairs, one list per pass, the base
    plan first: the median over passes of its ratio to the base beside it, times the base's median over
    every pair. Scaled by how its base ran beside it: a machine that drifts 20-40% in streaks (a shared
    VM) would otherwise bend the fit with whichever models it slowed. The base plan's own time is the base
    as a trial sees it - beside a smaller model, the median over every pair - not its copy's single time
    beside it: one pair's noise (a copy ran 1.035x the base on ResNet-18 at batch 1) shifted every
    prediction relative to the base by as much (replayed on that table's 100 candidates: 80% within
    +-10% with the curve, 89% with this reference)."""
    typical_base = statistics.median(pair["base"] for one in passes for pair in one)
    times = [statistics.median(one[i]["model"] / one[i]["base"] for one in passes) * typical_base
             for i in range(len(passes[0]))]
    times[0] = typical_base
    return times


def structural_model(base: Any, plan: Any, context: Any) -> Any:
    """The plan's structure (no decomposition or importance computed; post-training steps left out)."""
    from spaces.compose import compress, split_plan

    model, _ = compress(base, split_plan(plan)[0], context, structure_only=True)
    return model.eval()


def built_plans(base: Any, plans: Iterable[Any], context: Any) -> Iterator[tuple[int, Any, Any]]:
    """``(index, plan, structural model)`` for every plan the space builds, in order; a plan it refuses
    (:class:`spaces.errors.SpaceError`, e.g. a random draw past a layer's floor) is skipped and costs
    nothing. The index is the plan's place in ``plans``."""
    from spaces.errors import SpaceError

    for i, plan in enumerate(plans):
        try:
            model = structural_model(base, plan, context)
        except SpaceError:
            continue
        yield i, plan, model


def structural_defaults() -> list[str]:
    """The search's default methods that change a model's structure (a post-training step adds no kernel kind
    a float table could time)."""
    from spaces.registry import resolve_space, space_class

    return [m for m in DEFAULT_METHODS if not space_class(resolve_space(m)).post_training]


def profile_table(*, target: Any, model: str, image_size: int, num_classes: int, methods: Sequence[str],
                  depth_bins: int = 4, plans: int = 40, points: int = 8, calibration: int = 32,
                  calibration_passes: int = 3,
                  repeats: int | None = None, seed: int = 0, progress: bool = False,
                  say: Any = print) -> Any:
    """Measure a :class:`costs.latency.table.LatencyTable` (module docstring); returns it unsaved."""
    from tqdm.auto import tqdm

    from costs.latency.fit import fit_correction
    from costs.latency.kernels import kernels_of
    from costs.latency.profile import profile_kernels
    from costs.latency.table import LatencyTable
    from rsc.models import create_model
    from costs.targets import compare_latency_on, parse_target
    from search.space import JointSpace
    from spaces.base import Context, Plan

    target = parse_target(target)
    t0 = time.perf_counter()
    base = create_model(model, num_classes, image_size=image_size).eval()
    arch = {"model": model, "num_classes": num_classes, "image_size": image_size}
    context = Context(num_classes=num_classes, image_size=image_size, seed=seed)
    joint = JointSpace(methods, max_combo=2, bins=depth_bins or None)
    strongest = strongest_plans(joint, base, context, arch, say)
    candidates = [Plan(base=arch), *strongest, *sample_plans(joint, base, context, arch, plans, seed)]
    observed: dict[str, list[Any]] = {}
    where: dict[str, list[float]] = {}  # a kind's places in the forward passes, 0 (first) to 1 (last)
    bar = tqdm(candidates, desc="kernels of candidate plans", unit="plan", disable=not progress, leave=False)
    for _, _, built in built_plans(base, bar, context):
        kernels = kernels_of(built, image_size)
        for i, k in enumerate(kernels):
            observed.setdefault(k.key, []).append(k)
            where.setdefault(k.key, []).append(i / len(kernels))
    # timed in rounds that run the kinds in the order a forward pass does (profile_kernels says why)
    observed = dict(sorted(observed.items(), key=lambda kv: sum(where[kv[0]]) / len(where[kv[0]])))
    sizes = [_grid_size(v, points) for v in observed.values()]
    rounds = max(sizes, default=0)  # as profile_rounds lays them out: one point of every kind per round
    say(f"{len(observed)} kernel kinds in {len(candidates)} candidate plans; measuring {sum(sizes)} grid points in "
        f"{rounds} rounds on {target.describe()}")
    with tqdm(total=rounds * len(observed), desc="measuring kernels", unit="kernel", disable=not progress,
              leave=False) as bar:
        grids, exact, refs = profile_kernels(target, observed, points=points, repeats=repeats, reference=base,
                                             image_size=image_size, seed=seed, progress=bar.update)
    typical = sorted(refs)[len(refs) // 2]
    table = LatencyTable(target=target.spec, fingerprint=target.fingerprint(), model=model, image_size=image_size,
                         num_classes=num_classes, grids=grids, exact=exact)
    # the base, the strongest plans (the floor a budget is checked against: without them the line, fitted
    # on mid-size models only, predicted ResNet-18's strongest pruning at 43% of the base, measured ~23%)
    # and random ones
    cal_plans = calibration_plans(joint, base, context, arch, strongest, calibration, seed)
    models, sums, classes = {}, {}, {}
    for i, _, built in built_plans(base, cal_plans, context):
        models[str(i)], classes[str(i)] = built, table.class_sums(built)
        sums[str(i)] = sum(classes[str(i)].values())
    # each timed beside the base, as a trial times its model: how many models share the caches changes
    # a model's time (measured: 40 models interleaved ran ~10% slower each than two)
    # in ``calibration_passes`` passes over the models, each model's ratio to the base its median: one pass
    # is noisy enough to move the fit (ResNet-18 at batch 16, 100 candidates: 87% within +-10% with the
    # table's single pass, 96% with the median of three passes of the same models)
    passes = [{k: compare_latency_on(target, {"model": m, "base": base}, image_size) for k, m in models.items()}
              for _ in range(max(int(calibration_passes), 1))]
    measured = dict(zip(models, calibration_times([[p[k] for k in models] for p in passes])))
    # chosen by its error relative to the base (cal_plans[0]), as budgets and speed-ups read predictions
    fit = fit_correction([sums[k] for k in models], [measured[k] for k in models], reference=0,
                         classes=[classes[k] for k in models])
    table.apply_fit(fit)
    table.calibration = [{"plan": i, "sum_ms": sums[k], "classes_ms": classes[k], "measured_ms": measured[k],
                          "raw_ms": [p[k]["model"] for p in passes], "base_ms": [p[k]["base"] for p in passes],
                          "predicted_ms": table.combine_classes(classes[k])}
                         for i, k in enumerate(models)]
    table.meta = {"methods": list(methods), "depth_bins": depth_bins, "plans": len(candidates), "points": points,
                  "repeats": repeats, "calibration_passes": len(passes), "seed": seed,
                  "seconds": round(time.perf_counter() - t0, 1),
                  "rounds": rounds, "correction_loo": fit["loo"],
                  "reference_ms": {"median": typical, "min": min(refs), "max": max(refs), "times": len(refs)},
                  "on_the_fly": table.measured_on_the_fly}
    return table


def _grid_size(kernels: Sequence[Any], points: int) -> int:
    import math

    from costs.latency.profile import grid_axes

    if kernels[0].spec["op"] == "exact":
        return len({k.dims for k in kernels})
    return math.prod(len(axis) for axis in grid_axes(kernels, points))


def main(argv: Sequence[str] | None = None) -> int:
    from rsc.cli import run_cli

    args = build_parser().parse_args(argv)

    def body() -> int:
        from rsc.errors import ConfigError
        from costs.targets import parse_target

        least = {"image_size": 1, "num_classes": 2, "plans": 0, "points": 2, "calibration": 1,
                 "calibration_passes": 1}
        for name, low in least.items():
            if getattr(args, name) < low:
                raise ConfigError(f"--{name.replace('_', '-')} {getattr(args, name)} is too small")
        target = parse_target(args.target)
        if target.table is not None:
            raise ConfigError(f"--target {target.spec} is a table already: profile the target it was measured on "
                              f"({target.measured.spec})")
        if target.remote is not None:
            from search.cluster import join_for_target

            join_for_target(args.ray_address, target.spec)
        target.check()
        methods = ([m.strip() for m in args.methods.split(",") if m.strip()] if args.methods
                   else structural_defaults())
        table = profile_table(target=target, model=args.model, image_size=args.image_size,
                              num_classes=args.num_classes, methods=methods, depth_bins=args.depth_bins,
                              plans=args.plans, points=args.points, calibration=args.calibration,
                              calibration_passes=args.calibration_passes, repeats=args.repeats, seed=args.seed,
                              progress=args.progress,
                              say=lambda m: print(m, file=sys.stderr))
        path = table.save(args.out)
        print(table.summary())
        print(json.dumps({"out": str(path), "seconds": table.meta["seconds"]}))
        return 0

    return run_cli(body)


if __name__ == "__main__":
    sys.exit(main())
