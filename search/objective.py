"""The trial function: compress -> fine-tune -> measure, from a JSON request alone.

:func:`evaluate_trial` takes a plain-JSON request (the plan's steps with their sampled params,
the data and base-model *paths*, the analytic limits to project onto, the fine-tune settings) and
returns a plain-JSON result. It reads no module-level state and imports its heavy dependencies
itself, so it runs unchanged in a worker process or on another machine (the Ray backend ships the
request there; the data and checkpoint paths must be visible to the worker).

Order of work inside a trial:

1. load the cached dataset and rebuild the seeded split (its digest must match the driver's);
2. project the sampled choices onto the analytic budget (one global strength factor, bisected on
   structural builds, as AMC clips its actions) - so a trial never lands over budget;
3. build the compressed model with calibration data, keeping each step's replay record;
4. fine-tune ``epochs`` epochs (with knowledge distillation from the base model when the plan
   asks), stopping early when a finished trial is cheaper and clearly more accurate;
5. apply post-training steps (int8 quantisation), then measure OA on the validation split (the
   test split only in the final stage), costs, compression rate and speed-up.
"""

from __future__ import annotations

import copy
import itertools
import math
import time
from typing import Any, Callable, Mapping, Sequence

__all__ = ["evaluate_trial", "EarlyStopped", "is_post_training", "build_steps", "project_steps"]


class EarlyStopped(Exception):
    """Raised inside fine-tuning when a trial is clearly dominated; the engine records it as pruned."""

    def __init__(self, epoch: int, val_oa: float) -> None:
        super().__init__(f"stopped after epoch {epoch}: val OA {val_oa:.3f} is clearly dominated")
        self.epoch = epoch
        self.val_oa = val_oa


def is_post_training(space: Any) -> bool:
    """Steps applied after fine-tuning (int8 quantisation cannot be trained further here)."""
    flag = getattr(space, "post_training", None)
    return bool(flag) if flag is not None else str(space.name).startswith("quant")


def is_distill(space: Any) -> bool:
    flag = getattr(space, "distill", None)
    return bool(flag) if flag is not None else str(space.name).startswith("distill")


def _gap_fn(limits: Mapping[str, float], image_size: int) -> Callable[[Any], float]:
    """``gap(model)``: the largest ``log(cost / limit)`` over the analytic ceilings (``<= 0`` fits).

    Counting only (no timing, no serialisation unless ``size`` is budgeted), so a probe is cheap.
    """
    from rsc.cost import CostSettings, measure

    settings = CostSettings(image_size=image_size)
    names = list(limits)

    def gap(model: Any) -> float:
        costs = measure(model, names, settings)
        return max(math.log(max(costs[k], 1e-12) / limits[k]) for k in names)

    return gap


def _to_cpu(model: Any, context: Any, *, copy_model: bool) -> tuple[Any, Any]:
    """``model`` and ``context`` on the CPU; ``copy_model``: never move the caller's model in place."""
    import dataclasses

    on_cpu = all(t.device.type == "cpu" for t in itertools.chain(model.parameters(), model.buffers()))
    if not on_cpu:
        model = (copy.deepcopy(model) if copy_model else model).cpu()
    if str(context.device) != "cpu":
        calib = [(x.cpu(), y.cpu()) for x, y in context.calibration] if context.calibration else context.calibration
        context = dataclasses.replace(context, device="cpu", calibration=calib)
    return model, context


def build_steps(model: Any, steps: Sequence[Mapping[str, Any]], context: Any, *, structure_only: bool = False,
                post_training: bool | None = None) -> tuple[Any, list[dict[str, Any]]]:
    """Apply ``steps`` (``{"space", "params", "options"?, "record"?}``) in order; returns model and records.

    ``post_training`` selects only post-training steps (True), only the others (False) or all (None).
    """
    from spaces.registry import get_space

    out = []
    for step in steps:
        space = get_space(step["space"], **(step.get("options") or {}))
        if post_training is not None and is_post_training(space) != post_training:
            continue
        if is_post_training(space):
            # int8 kernels exist on the CPU only: a search training on CUDA quantises a CPU copy
            model, context = _to_cpu(model, context, copy_model=not out)
        t = space.transform(model, step["params"], context, record=step.get("record"), structure_only=structure_only)
        model = t.model
        out.append({**step, "record": t.record})
    return model, out


def project_steps(model: Any, steps: Sequence[Mapping[str, Any]], context: Any, gap: Callable[[Any], float], *,
                  tolerance: float = 0.03, max_probes: int = 8, max_doublings: int = 8,
                  fallback: Callable[[Any], float] | None = None,
                  probe_post_training: bool = True) -> tuple[list[dict[str, Any]], float]:
    """Scale every step's choices by one factor, just enough that the structural build fits.

    The chained analogue of :meth:`spaces.base.Space.project` (AMC-style clipping): with
    ``prune then quant`` a size budget is judged on the quantised model, so all steps move
    together. ``gap(model)`` is ``log(cost / limit)`` maximised over the ceilings; the factor is
    bracketed by doubling and then found by regula falsi (Illinois) on that gap, stopping once the
    plan fits within ``tolerance`` of the budget - typically 3 to 5 structural builds instead of
    bisection's 10, which matters because each build traces the network.

    ``fallback``: a looser gap (the hard budget when ``gap`` is a trial's target below it). When
    no factor meets ``gap`` - the sampled choices saturate, e.g. layers sampled at ratio 0 stay
    at 0 - the most compressed scaling is kept if it meets ``fallback``, so a target deeper than
    a sample can reach costs no trial.

    ``probe_post_training=False`` leaves post-training steps (int8) out of the probes: right when
    no ceiling is on ``size``, since quantising never raises a count of weights or MACs, and it
    saves an int8 conversion per probe (4.5 of a 7.7 s trial on an H200).

    Returns the projected steps and the factor (1.0 when the sample already fitted).

    Raises:
        spaces.errors.BudgetInfeasible: no factor brings the chain under the budget.
    """
    from spaces.errors import BudgetInfeasible
    from spaces.registry import get_space

    spaces = [get_space(s["space"], **(s.get("options") or {})) for s in steps]
    slack = math.log1p(-tolerance)

    def scaled(factor: float) -> list[dict[str, Any]]:
        return [{**s, "params": sp.scale(s["params"], factor)} for s, sp in zip(steps, spaces)]

    def probe_with(cand: list[dict[str, Any]], fn: Callable[[Any], float]) -> float:
        built, _ = build_steps(model, cand, context, structure_only=True,
                               post_training=None if probe_post_training else False)
        return float(fn(built))

    def probe(cand: list[dict[str, Any]]) -> float:
        return probe_with(cand, gap)

    base = [dict(s) for s in steps]
    g_lo = probe(base)
    if g_lo <= 0:
        return base, 1.0
    lo, hi, g_hi, prev = 1.0, None, math.inf, base
    for _ in range(max_doublings):
        cand = scaled(lo * 2)
        g = probe(cand)
        if g <= 0:
            hi, g_hi = lo * 2, g
            break
        if [c["params"] for c in cand] == [p["params"] for p in prev]:
            break  # saturated: stronger factors change nothing
        lo, g_lo, prev = lo * 2, g, cand
    if hi is None and fallback is not None and probe_with(prev, fallback) <= 0:
        return prev, lo
    if hi is None:
        names = "+".join(s["space"] for s in steps)
        raise BudgetInfeasible(f"{names}: no scaling of the sampled choices fits the budget (factors up to {lo:g})")
    side, w_lo, w_hi = 0, g_lo, g_hi  # w_*: Illinois-weighted copies used only to interpolate
    for _ in range(max_probes):
        if g_hi >= slack:
            break  # fits, and uses the budget to within the tolerance
        mid = hi - w_hi * (hi - lo) / (w_hi - w_lo) if w_hi != w_lo else (lo + hi) / 2
        if not lo < mid < hi:
            mid = (lo + hi) / 2
        g = probe(scaled(mid))
        if g <= 0:
            hi, g_hi, w_hi = mid, g, g
            if side == -1:
                w_lo /= 2
            side = -1
        else:
            lo, g_lo, w_lo = mid, g, g
            if side == 1:
                w_hi /= 2
            side = 1
    return scaled(hi), hi


def _load_base(path: str, device: str) -> Any:
    from rsc.checkpoint import load_checkpoint, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(path))
    return model.to(device).eval()


def _finetune(model: Any, teacher: Any, train: Any, val: Any, *, epochs: int, lr: float, num_classes: int,
              device: str, seed: int, distill: Mapping[str, Any] | None, on_epoch: Callable[[dict], None],
              sparse: bool = False, bn_batches: Sequence[Any] | None = None) -> list[dict]:
    """Fine-tune through ``spaces.finetune`` with Hinton KD when the plan distils.

    The KD's hard-label term keeps ``fit``'s label smoothing (0.1); ``sparse``: the plan zeroed
    weights (magnitude pruning), so every layer's exact zeros stay zero; ``bn_batches``: unaugmented
    training batches on which BatchNorm statistics are re-estimated after every epoch, before it is
    validated (a one-epoch OA is otherwise read through running averages of earlier weights).
    """
    from spaces.distill import kd_loss
    from spaces.finetune import finetune

    loss_fn = None
    if distill is not None:
        loss_fn = kd_loss(teacher, temperature=float(distill.get("temperature", 4.0)),
                          alpha=float(distill.get("alpha", 0.7)), label_smoothing=0.1)
    return finetune(model, train, epochs=epochs, lr=lr, loss_fn=loss_fn, val_loader=val, num_classes=num_classes,
                    device=device, seed=seed, keep_sparsity=sparse, min_sparsity=0.0, on_epoch=on_epoch,
                    bn_batches=bn_batches)


def evaluate_trial(request: Mapping[str, Any], *, return_model: bool = False) -> dict[str, Any]:
    """Run one trial described by a JSON ``request``; returns a JSON result (see the module docstring).

    Request keys: ``data`` {path, dataset, image_size, train_ratio, val_ratio, split_seed, digest},
    ``base_checkpoint``, ``model`` {model, num_classes, image_size}, ``steps``, ``limits``
    (analytic ceilings by cost key), ``target`` (optional, tighter ceilings the plan aims at; a
    plan that cannot reach them keeps its most compressed form within ``limits``), ``base_costs``, ``epochs``, ``lr``, ``batch_size``, ``seed``,
    ``device``, ``calibration_batches``, ``bn_batches`` (BatchNorm re-estimation after every fine-tune
    epoch; 0: off), ``latency`` (bool), ``early_stop`` (or null:
    {fronts, directions, cost_keys, margin}; ``fronts`` maps an epoch, as a string, to the points
    [val OA after that epoch, costs...] of finished trials, so a trial is only ever compared with
    others at the same point of the same schedule), ``evaluate_test`` (bool), ``threads`` (or null).

    Result keys: ``status`` ("ok" or "pruned"), ``val_oa``, ``test_oa`` (final stage), ``costs``,
    ``compression_rate``, ``speedup``, ``plan`` (base + steps with records), ``projection``
    (factor), ``history``, ``epochs_run``, ``seconds``. Exceptions propagate: the caller records
    the trial as failed (or pruned for :class:`spaces.errors.BudgetInfeasible`).
    """
    import torch

    from rsc.cost import CostSettings, compare_latency, measure
    from rsc.data import load_scene_data, make_loaders, make_split
    from rsc.evaluation import evaluate
    from rsc.training import seed_everything
    from spaces.base import Context
    from tracking.pareto import dominated_by

    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    if request.get("threads"):
        torch.set_num_threads(int(request["threads"]))
    seed = int(request.get("seed", 0))
    device = str(request.get("device", "cpu"))
    seed_everything(seed)

    d = request["data"]
    data = load_scene_data(d.get("path"), dataset=d.get("dataset"), image_size=int(d["image_size"]), progress=False)
    split = make_split(data, train_ratio=float(d["train_ratio"]), val_ratio=float(d["val_ratio"]),
                       seed=int(d.get("split_seed", 0)))
    if d.get("digest") and split.digest != d["digest"]:
        from rsc.errors import DataError

        raise DataError(f"split digest {split.digest} differs from the driver's {d['digest']}: "
                        f"the worker sees different data at {d.get('path')}")
    train, val, test = make_loaders(data, split, batch_size=int(request.get("batch_size", 64)), seed=seed, device=device)
    num_classes = data.num_classes
    image_size = data.image_size
    base = _load_base(request["base_checkpoint"], device)
    n_calib = int(request.get("calibration_batches", 2))
    n_bn = int(request.get("bn_batches", 4))
    plain_batches = []
    if n_calib or n_bn:
        plain = make_loaders(data, split, batch_size=int(request.get("batch_size", 64)), augment=False, seed=seed,
                             device=device)[0]
        for i, batch in enumerate(plain):
            if i >= max(n_calib, n_bn):
                break
            plain_batches.append(batch)
    calib, bn_batches = plain_batches[:n_calib], plain_batches[:n_bn]
    context = Context(num_classes=num_classes, image_size=image_size, device=device, calibration=calib or None, seed=seed)
    seconds["load"] = time.perf_counter() - t0

    # 2. projection onto analytic ceilings
    t = time.perf_counter()
    steps = [dict(s) for s in request.get("steps") or []]
    limits = {k: float(v) for k, v in (request.get("limits") or {}).items()}
    aim = {k: min(float(v), limits.get(k, math.inf)) for k, v in (request.get("target") or {}).items()}
    aim = {**limits, **aim}
    factor = 1.0
    if aim and steps:
        # structures and their counts do not depend on the device: probe on the CPU, where small
        # builds are faster (a pruning trial's projection on an H200 machine: 1.7 s on CUDA, 1.1 s)
        probe_base, probe_ctx = _to_cpu(base, context, copy_model=True)
        steps, factor = project_steps(probe_base, steps, probe_ctx, _gap_fn(aim, image_size),
                                      probe_post_training="size" in aim,
                                      fallback=None if aim == limits else
                                      _gap_fn(limits, image_size) if limits else (lambda _model: -1.0))
    seconds["project"] = time.perf_counter() - t

    # 3. build (structural steps first; post-training ones after fine-tuning)
    t = time.perf_counter()
    model, built = build_steps(base, steps, context, post_training=False)
    model = model.to(device)
    seconds["compress"] = time.perf_counter() - t

    from spaces.registry import get_space

    distill = None
    for s in steps:
        if is_distill(get_space(s["space"], **(s.get("options") or {}))):
            distill = s["params"]
    settings = CostSettings(image_size=image_size)
    analytic_keys = ["params", "nonzero_params", "macs", "size"]

    # 4. fine-tune, stopping clearly dominated trials
    early = request.get("early_stop")
    epochs = int(request.get("epochs", 0))
    history: list[dict] = []
    t = time.perf_counter()
    if epochs > 0:
        pre_costs = measure(model, [k for k in (early or {}).get("cost_keys", []) if k in analytic_keys], settings)

        def on_epoch(record: dict) -> None:
            history.append(dict(record))
            if not early or record["epoch"] >= epochs:
                return
            front = (early.get("fronts") or {}).get(str(record["epoch"]))
            if not front:
                return  # nobody finished has an OA at this epoch to compare with
            keys = early["cost_keys"]
            if not all(k in pre_costs for k in keys):
                return  # a measured cost objective: not known before the end
            point = [record.get("val_oa", math.nan), *[pre_costs[k] for k in keys]]
            margin = [float(early.get("margin", 0.1))] + [0.0] * len(keys)
            if dominated_by(point, front, early["directions"], margin=margin):
                raise EarlyStopped(record["epoch"], point[0])

        try:
            _finetune(model, base, train, val, epochs=epochs, lr=float(request.get("lr", 0.01)),
                      num_classes=num_classes, device=device, seed=seed, distill=distill, on_epoch=on_epoch,
                      sparse=any("magnitude" in s["space"] or "sparse" in s["space"] for s in steps),
                      bn_batches=bn_batches)
        except EarlyStopped as stop:
            seconds["finetune"] = time.perf_counter() - t
            return {"status": "pruned", "val_oa": stop.val_oa, "epochs_run": stop.epoch, "history": history,
                    "projection": factor, "plan": {"base": request["model"], "steps": built},
                    "seconds": seconds, "reason": str(stop)}
    seconds["finetune"] = time.perf_counter() - t

    # 5. post-training steps (on the CPU: quantised kernels run there), then measure
    t = time.perf_counter()
    post: list[dict[str, Any]] = []
    if any(is_post_training(get_space(s["space"], **(s.get("options") or {}))) for s in steps):
        model, post = build_steps(model.cpu(), steps, context, post_training=True)  # the context follows to the CPU
    built = built + post
    seconds["post"] = time.perf_counter() - t

    t = time.perf_counter()
    eval_device = "cpu" if post else device
    val_oa = evaluate(model, val if eval_device == device else _on(val, "cpu"), num_classes=num_classes,
                      device=eval_device).oa
    seconds["evaluate"] = time.perf_counter() - t
    t = time.perf_counter()
    model = model.eval()
    costs = measure(model, analytic_keys, settings)
    base_costs = request.get("base_costs") or measure(base, analytic_keys, settings)
    result: dict[str, Any] = {"status": "ok", "val_oa": float(val_oa), "epochs_run": len(history), "history": history}
    if request.get("latency", True):
        base_cpu = base.cpu()
        lat = compare_latency({"base": base_cpu, "model": model.cpu()}, settings=settings)
        costs["latency_ms"] = lat["model"]
        result["speedup"] = lat["base"] / lat["model"] if lat["model"] else math.inf
        result["base_latency_ms"] = lat["base"]
    seconds["cost"] = time.perf_counter() - t
    if request.get("evaluate_test"):
        t = time.perf_counter()
        result["test_oa"] = float(evaluate(model.cpu(), _on(test, "cpu"), num_classes=num_classes, device="cpu").oa)
        seconds["test"] = time.perf_counter() - t
    result["costs"] = {k: float(v) for k, v in costs.items()}
    result["compression_rate"] = float(base_costs["params"]) / costs["params"] if costs.get("params") else math.inf
    result["projection"] = factor
    result["plan"] = {"base": dict(request["model"]), "steps": built}
    seconds["total"] = time.perf_counter() - t0
    result["seconds"] = seconds
    if return_model:
        result["model"] = model
    return result


def _on(loader: Any, device: str) -> Any:
    """The same loader yielding CPU tensors (quantised models run on the CPU only)."""
    loader = copy.copy(loader)
    import torch

    loader.device = torch.device(device)
    return loader
