"""The trial function: compress -> fine-tune -> measure, from a JSON request alone.

:func:`evaluate_trial` takes a plain-JSON request (the plan, the data and base-model *paths*, the
analytic limits to project onto, the fine-tune settings) and returns a plain-JSON result. It
reads no module-level state and imports its heavy dependencies itself, so it runs unchanged in a
worker process or on another machine (the Ray backend ships the request there; the data and
checkpoint paths must be visible to the worker).

Order of work inside a trial:

1. load the cached dataset and rebuild the seeded split (its digest must match the driver's);
2. project the sampled choices onto the analytic budget (:func:`spaces.project.project_plan`:
   one global strength factor, as AMC clips its actions), so a trial never lands over budget;
3. :func:`spaces.finetune.finetune_plan`: compress; with ``zero_shot``, score the compressed model
   before any gradient step (EagleEye's adaptive-BN validation OA,
   :func:`spaces.finetune.zero_epoch_oa`) and stop it there - screened - when a finished trial is
   cheaper and clearly better by that score; fine-tune ``epochs`` epochs (with the loss a
   distillation step asks for), stopping early when a finished trial is cheaper and clearly more
   accurate after as many epochs, then apply post-training steps (int8);
4. measure OA on the validation split (the test split only in the final stage), costs,
   compression rate and speed-up.
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any, Mapping

from spaces.finetune import StopFinetune

__all__ = ["evaluate_trial", "EarlyStopped", "POST_TRAINING_COSTS"]

#: Costs that post-training steps (int8) change: a plan aimed at them is projected with those steps
#: applied; others are probed without them, which is faster (int8 conversion per probe).
POST_TRAINING_COSTS = frozenset({"size", "energy_mj"})


class EarlyStopped(StopFinetune):
    """Raised inside fine-tuning when a trial is clearly dominated; the engine records it as pruned."""

    def __init__(self, epoch: int, val_oa: float) -> None:
        super().__init__(f"screened before fine-tuning: adaptive-BN val OA {val_oa:.3f} is clearly dominated"
                         if epoch == 0 else f"stopped after epoch {epoch}: val OA {val_oa:.3f} is clearly dominated")
        self.epoch = epoch
        self.val_oa = val_oa


def _load_base(path: str, device: str) -> Any:
    from rsc.checkpoint import load_checkpoint, model_from_checkpoint

    model = model_from_checkpoint(load_checkpoint(path))
    return model.to(device).eval()


def evaluate_trial(request: Mapping[str, Any], *, return_model: bool = False) -> dict[str, Any]:
    """Run one trial described by a JSON ``request``; returns a JSON result (see the module docstring).

    Request keys: ``data`` {path, dataset, image_size, train_ratio, val_ratio, split_seed, digest, and
    optionally file: the decoded set as :func:`rsc.data.save_scene_file` writes it, read instead of path, and
    fold: [folds, fold], that fold of the split's training part as validation (:func:`rsc.data.fold_split`)},
    ``base_checkpoint``, ``plan`` {base: {model, num_classes, image_size}, steps: [...]} (a
    :class:`spaces.Plan`), ``limits`` (analytic ceilings by cost key), ``target`` (optional, tighter
    ceilings the plan aims at; a plan that cannot reach them keeps its most compressed form within
    ``limits``), ``base_costs``, ``epochs``, ``lr``, ``batch_size``, ``seed``, ``device``,
    ``calibration_batches``, ``bn_batches`` (BatchNorm re-estimation after every fine-tune epoch;
    0: off), ``latency`` (bool), ``hardware`` (the :mod:`costs.targets` spec latency is measured on;
    default ``cpu``), ``distill`` (bool: KD from the base model
    during the fine-tune even without a distillation step), ``zero_shot`` (bool: score the
    compressed model before fine-tuning), ``early_stop`` (or null: {fronts, directions, cost_keys,
    margin, zero_shot_margin}; ``fronts`` maps an epoch, as a string, to the points [val OA after that
    epoch, costs...] of finished trials, so a trial is only ever compared with others at the same
    point of the same schedule; epoch "0" holds their zero-shot scores, compared with
    ``zero_shot_margin``), ``evaluate_test`` (bool), ``threads`` (or null).

    Result keys: ``status`` ("ok" or "pruned"), ``val_oa``, ``test_oa`` (final stage), ``costs``,
    ``compression_rate``, ``speedup``, ``plan`` (base + steps with records), ``projection``
    (factor), ``history``, ``epochs_run``, ``seconds``, ``zero_shot_oa`` (with ``zero_shot``), ``screened``
    (pruned before fine-tuning). Exceptions propagate: the caller records
    the trial as failed (or pruned for :class:`rsc.errors.BudgetInfeasible`).
    """
    import torch

    from costs.registry import CostSettings, analytic_costs, measure
    from rsc.data import fold_split, load_scene_data, load_scene_file, make_loaders, make_split
    from rsc.evaluation import evaluate
    from costs.targets import compare_latency_on, parse_target
    from rsc.training import seed_everything
    from spaces.base import Context, Plan
    from spaces.compose import split_plan, to_cpu
    from spaces.finetune import finetune_plan, zero_epoch_oa
    from spaces.project import cost_gap, project_plan
    from tracking.pareto import dominated_by

    t0 = time.perf_counter()
    seconds: dict[str, float] = {}
    if request.get("threads"):
        torch.set_num_threads(int(request["threads"]))
    seed = int(request.get("seed", 0))
    device = str(request.get("device", "cpu"))
    seed_everything(seed)

    d = request["data"]
    if d.get("file"):  # the decoded set itself, shipped to a worker without the image folder
        data = load_scene_file(d["file"], root=d.get("path"))
    else:
        data = load_scene_data(d.get("path"), dataset=d.get("dataset"), image_size=int(d["image_size"]),
                               progress=False)
    split = make_split(data, train_ratio=float(d["train_ratio"]), val_ratio=float(d["val_ratio"]),
                       seed=int(d.get("split_seed", 0)))
    if d.get("digest") and split.digest != d["digest"]:
        from rsc.errors import DataError

        raise DataError(f"split digest {split.digest} differs from the driver's {d['digest']}: "
                        f"the worker sees different data at {d.get('path')}")
    if d.get("fold"):  # [folds, fold]: a cross-validation fold of the training part (search.crossval)
        split = fold_split(data, split, folds=int(d["fold"][0]), fold=int(d["fold"][1]))
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
    hardware = parse_target(request.get("hardware") or "cpu")
    table = hardware.load_table() if hardware.table is not None else None
    context = Context(num_classes=num_classes, image_size=image_size, device=device, calibration=calib or None,
                      seed=seed, latency_table=table)
    seconds["load"] = time.perf_counter() - t0

    # 2. projection onto analytic ceilings
    t = time.perf_counter()
    plan = Plan.from_dict(request["plan"])
    limits = {k: float(v) for k, v in (request.get("limits") or {}).items()}
    aim = {k: min(float(v), limits.get(k, math.inf)) for k, v in (request.get("target") or {}).items()}
    aim = {**limits, **aim}
    factor = 1.0
    predictors = {"latency_ms": table.predict} if table is not None else {}
    if aim and plan.steps:
        # structures and their counts do not depend on the device: probe on the CPU, where small
        # builds are faster (a pruning trial's projection on an H200 machine: 1.7 s on CUDA, 1.1 s)
        probe_base, probe_ctx = to_cpu(base, context, copy_model=True)
        plan, factor = project_plan(probe_base, plan, probe_ctx, cost_gap(aim, image_size, predictors),
                                    probe_post_training=bool(POST_TRAINING_COSTS & set(aim)),
                                    fallback=None if aim == limits else
                                    cost_gap(limits, image_size, predictors) if limits else (lambda _model: -1.0))
    seconds["project"] = time.perf_counter() - t

    # 3. compress, fine-tune (stopping clearly dominated trials), post-training steps
    settings = CostSettings(image_size=image_size)
    analytic_keys = analytic_costs()
    early = request.get("early_stop")
    epochs = int(request.get("epochs", 0))
    history: list[dict] = []
    pre_costs: dict[str, float] = {}
    marks = {"compressed": time.perf_counter()}
    zero_shot: dict[str, float] = {}

    def stop_if_dominated(epoch: int, val_oa: float, margin: Any) -> None:
        front = (early.get("fronts") or {}).get(str(epoch)) if early else None
        if not front or margin is None or float(margin) < 0:
            return  # nobody finished has a score at this point to compare with, or no stopping here
        keys = early["cost_keys"]
        if not all(k in pre_costs for k in keys):
            return  # a measured cost objective: not known before the end
        point = [val_oa, *[pre_costs[k] for k in keys]]
        if dominated_by(point, front, early["directions"], margin=[float(margin)] + [0.0] * len(keys)):
            raise EarlyStopped(epoch, val_oa)

    def on_compressed(model: Any) -> None:
        marks["compressed"] = time.perf_counter()
        if early and epochs > 0:
            pre_costs.update(measure(model, [k for k in early.get("cost_keys", []) if k in analytic_keys], settings))
        if request.get("zero_shot"):
            zero_shot["oa"] = zero_epoch_oa(model, bn_batches or calib, val, num_classes=num_classes, device=device)
            seconds["zero_shot"] = time.perf_counter() - marks["compressed"]
            if epochs > 0:
                stop_if_dominated(0, zero_shot["oa"], early.get("zero_shot_margin") if early else None)

    def on_epoch(record: dict) -> None:
        history.append(dict(record))
        if early and record["epoch"] < epochs:
            stop_if_dominated(record["epoch"], record.get("val_oa", math.nan), early.get("margin", 0.1))

    t = time.perf_counter()
    try:
        model, done, _ = finetune_plan(base, plan, train, epochs=epochs, lr=float(request.get("lr", 0.01)),
                                       context=context, bn_batches=bn_batches, recalibrate_first=False,
                                       val_loader=val, on_epoch=on_epoch, on_compressed=on_compressed,
                                       label_smoothing=0.1, device=device, seed=seed,
                                       distill=True if request.get("distill") else None)
    except EarlyStopped as stop:
        seconds["compress"] = marks["compressed"] - t
        seconds["finetune"] = time.perf_counter() - marks["compressed"] - seconds.get("zero_shot", 0.0)
        return {"status": "pruned", "val_oa": stop.val_oa, "epochs_run": stop.epoch, "history": history,
                "projection": factor, "plan": stop.plan.to_dict() if stop.plan else plan.to_dict(),
                "seconds": seconds, "reason": str(stop), "screened": stop.epoch == 0,
                **({"zero_shot_oa": zero_shot["oa"]} if zero_shot else {})}
    seconds["compress"] = marks["compressed"] - t
    seconds["finetune"] = time.perf_counter() - marks["compressed"] - seconds.get("zero_shot", 0.0)

    t = time.perf_counter()
    eval_device = "cpu" if split_plan(plan)[1].steps else device  # post-training models run on the CPU
    val_oa = evaluate(model, val if eval_device == device else _on(val, "cpu"), num_classes=num_classes,
                      device=eval_device).oa
    seconds["evaluate"] = time.perf_counter() - t
    t = time.perf_counter()
    model = model.eval()
    costs = measure(model, analytic_keys, settings)
    base_costs = request.get("base_costs") or measure(base, analytic_keys, settings)
    result: dict[str, Any] = {"status": "ok", "val_oa": float(val_oa), "epochs_run": len(history), "history": history}
    if zero_shot:
        result["zero_shot_oa"] = zero_shot["oa"]
    if request.get("latency", True):
        models = {"base": base.cpu(), "model": model.cpu()}
        if hardware.table is not None and request.get("evaluate_test"):
            # the final stage: timed on the target the table was measured on, the prediction beside it
            pred = compare_latency_on(hardware, models, image_size)
            costs["latency_ms_predicted"] = pred["model"]
            result["base_latency_ms_predicted"] = pred["base"]
            lat = compare_latency_on(hardware.measured, models, image_size)
        else:
            lat = compare_latency_on(hardware, models, image_size)
        costs["latency_ms"] = lat["model"]
        result["speedup"] = lat["base"] / lat["model"] if lat["model"] else math.inf
        result["base_latency_ms"] = lat["base"]
        result["hardware"] = hardware.spec
    seconds["cost"] = time.perf_counter() - t
    if request.get("evaluate_test"):
        t = time.perf_counter()
        result["test_oa"] = float(evaluate(model.cpu(), _on(test, "cpu"), num_classes=num_classes, device="cpu").oa)
        seconds["test"] = time.perf_counter() - t
    result["costs"] = {k: float(v) for k, v in costs.items()}
    result["compression_rate"] = float(base_costs["params"]) / costs["params"] if costs.get("params") else math.inf
    result["projection"] = factor
    result["plan"] = done.to_dict()
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
