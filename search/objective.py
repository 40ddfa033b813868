"""The trial function: load -> project -> compress and fine-tune -> measure, from a request alone.

:func:`evaluate_trial` takes a :class:`search.request.TrialRequest` (or its plain-JSON dict: the plan, the
data and base-model *paths*, the analytic limits to project onto, the fine-tune settings) and returns
the plain-JSON form of a :class:`search.request.TrialResult`. It reads no module-level state and imports
its heavy dependencies itself, so it runs unchanged in a worker process or on another machine (the Ray
backend ships the request there; the data and checkpoint paths must be visible to the worker).

Its stages, each a function with a typed input and output:

1. :func:`load_inputs` - the cached dataset and the seeded split (its digest must match the driver's),
   the loaders, the base model, the calibration batches and the compression context;
2. :func:`project_onto_budget` - the sampled choices projected onto the analytic budget
   (:func:`spaces.project.project_plan`: one global strength factor, as AMC clips its actions), so a
   trial never lands over budget;
3. :func:`compress_and_finetune` - :func:`spaces.finetune.finetune_plan`: compress; with ``zero_shot``,
   score the compressed model before any gradient step (EagleEye's adaptive-BN validation OA,
   :func:`spaces.finetune.zero_epoch_oa`) and stop it there - screened - when a finished trial is cheaper
   and clearly better by that score; fine-tune ``epochs`` epochs (with the loss a distillation step asks
   for), stopping early when a finished trial is cheaper and clearly more accurate after as many epochs,
   then apply post-training steps (int8);
4. :func:`measure_model` - OA on the validation split (the test split only in the final stage), costs,
   compression rate and speed-up.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

from search.request import EarlyStop, TrialRequest, TrialResult
from spaces.finetune import StopFinetune

__all__ = ["evaluate_trial", "EarlyStopped", "POST_TRAINING_COSTS", "Loaded", "Projected", "Trained",
           "load_inputs", "project_onto_budget", "compress_and_finetune", "measure_model"]

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


@dataclass(frozen=True)
class Loaded:
    """Stage 1's output: what every later stage works on."""

    data: Any                   # rsc.scenes.SceneData
    train: Any                  # loaders of the split (``test``: read in the final stage only)
    val: Any
    test: Any
    base: Any                   # the base model, on ``device``, in eval mode
    calibration: list           # unaugmented training batches for data-dependent choices and int8
    bn_batches: list            # ... and for BatchNorm re-estimation
    hardware: Any               # the costs.targets.Target latency is measured on
    table: Any                  # its latency table, or None
    context: Any                # spaces.base.Context
    device: str
    seconds: float


@dataclass(frozen=True)
class Projected:
    """Stage 2's output: the plan at the strength that fits the budget, and that strength factor."""

    plan: Any                   # spaces.base.Plan
    factor: float
    seconds: float


@dataclass(frozen=True)
class Trained:
    """Stage 3's output: the compressed, fine-tuned model and its plan with records - or where it stopped."""

    model: Any                  # None when stopped
    plan: Any                   # spaces.base.Plan as compressed (when stopped: as far as it got)
    history: list[dict[str, Any]]
    zero_shot_oa: float | None
    stopped: EarlyStopped | None
    seconds: dict[str, float] = field(default_factory=dict)


def load_inputs(request: TrialRequest) -> Loaded:
    """Stage 1: threads and seeds, the data and its split, loaders, the base model, calibration batches, context."""
    import torch

    from costs.targets import parse_target
    from rsc.checkpoint import load_checkpoint, model_from_checkpoint
    from rsc.loaders import make_loaders
    from rsc.loop import seed_everything
    from rsc.scenes import load_scene_data, load_scene_file
    from rsc.splits import fold_split, make_split
    from spaces.base import Context

    t0 = time.perf_counter()
    if request.threads:
        torch.set_num_threads(int(request.threads))
    seed, device, d = int(request.seed), str(request.device), request.data
    seed_everything(seed)
    if d.file:  # the decoded set itself, shipped to a worker without the image folder
        data = load_scene_file(d.file, root=d.path)
    else:
        data = load_scene_data(d.path, dataset=d.dataset, image_size=int(d.image_size), progress=False)
    split = make_split(data, train_ratio=float(d.train_ratio), val_ratio=float(d.val_ratio), seed=int(d.split_seed))
    if d.digest and split.digest != d.digest:
        from rsc.errors import DataError

        raise DataError(f"split digest {split.digest} differs from the driver's {d.digest}: "
                        f"the worker sees different data at {d.path}")
    if d.fold:  # (folds, fold): a cross-validation fold of the training part (search.crossval)
        split = fold_split(data, split, folds=int(d.fold[0]), fold=int(d.fold[1]))
    batch_size = int(request.batch_size)
    train, val, test = make_loaders(data, split, batch_size=batch_size, seed=seed, device=device)
    base = model_from_checkpoint(load_checkpoint(request.base_checkpoint)).to(device).eval()
    n_calib, n_bn = int(request.calibration_batches), int(request.bn_batches)
    plain_batches = []
    if n_calib or n_bn:
        plain = make_loaders(data, split, batch_size=batch_size, augment=False, seed=seed, device=device)[0]
        for i, batch in enumerate(plain):
            if i >= max(n_calib, n_bn):
                break
            plain_batches.append(batch)
    calib, bn_batches = plain_batches[:n_calib], plain_batches[:n_bn]
    hardware = parse_target(request.hardware or "cpu")
    table = hardware.load_table() if hardware.table is not None else None
    context = Context(num_classes=data.num_classes, image_size=data.image_size, device=device,
                      calibration=calib or None, seed=seed, latency_table=table)
    return Loaded(data=data, train=train, val=val, test=test, base=base, calibration=calib, bn_batches=bn_batches,
                  hardware=hardware, table=table, context=context, device=device, seconds=time.perf_counter() - t0)


def project_onto_budget(request: TrialRequest, loaded: Loaded) -> Projected:
    """Stage 2: the plan projected onto the analytic ceilings (``target`` within ``limits``)."""
    from spaces.base import Plan
    from spaces.compose import to_cpu
    from spaces.project import cost_gap, project_plan

    t = time.perf_counter()
    plan = Plan.from_dict(request.plan)
    image_size = loaded.data.image_size
    limits = {k: float(v) for k, v in request.limits.items()}
    aim = {k: min(float(v), limits.get(k, math.inf)) for k, v in request.target.items()}
    aim = {**limits, **aim}
    factor = 1.0
    predictors = {"latency_ms": loaded.table.predict} if loaded.table is not None else {}
    if aim and plan.steps:
        # structures and their counts do not depend on the device: probe on the CPU, where small
        # builds are faster (a pruning trial's projection on an H200 machine: 1.7 s on CUDA, 1.1 s)
        probe_base, probe_ctx = to_cpu(loaded.base, loaded.context, copy_model=True)
        plan, factor = project_plan(probe_base, plan, probe_ctx, cost_gap(aim, image_size, predictors),
                                    probe_post_training=bool(POST_TRAINING_COSTS & set(aim)),
                                    fallback=None if aim == limits else
                                    cost_gap(limits, image_size, predictors) if limits else (lambda _model: -1.0))
    return Projected(plan=plan, factor=factor, seconds=time.perf_counter() - t)


def compress_and_finetune(request: TrialRequest, loaded: Loaded, projected: Projected) -> Trained:
    """Stage 3: compress, score (``zero_shot``), fine-tune - stopping clearly dominated trials - and apply the
    post-training steps. A stopped trial comes back with ``stopped`` set and no model."""
    from costs.registry import CostSettings, analytic_costs, measure
    from spaces.finetune import finetune_plan, zero_epoch_oa

    early, epochs, plan = request.early_stop, int(request.epochs), projected.plan
    settings = CostSettings(image_size=loaded.data.image_size)
    analytic_keys = analytic_costs()
    history: list[dict] = []
    pre_costs: dict[str, float] = {}
    seconds: dict[str, float] = {}
    marks = {"compressed": time.perf_counter()}
    zero_shot: dict[str, float] = {}

    def on_compressed(model: Any) -> None:
        marks["compressed"] = time.perf_counter()
        if early and epochs > 0:
            pre_costs.update(measure(model, [k for k in early.cost_keys if k in analytic_keys], settings))
        if request.zero_shot:
            zero_shot["oa"] = zero_epoch_oa(model, loaded.bn_batches or loaded.calibration, loaded.val,
                                            num_classes=loaded.data.num_classes, device=loaded.device)
            seconds["zero_shot"] = time.perf_counter() - marks["compressed"]
            if epochs > 0:
                _stop_if_dominated(early, pre_costs, 0, zero_shot["oa"], early.zero_shot_margin if early else None)

    def on_epoch(record: dict) -> None:
        history.append(dict(record))
        if early and record["epoch"] < epochs:
            _stop_if_dominated(early, pre_costs, record["epoch"], record.get("val_oa", math.nan), early.margin)

    t = time.perf_counter()
    stopped, model = None, None
    try:
        model, plan, _ = finetune_plan(loaded.base, plan, loaded.train, epochs=epochs, lr=float(request.lr),
                                       context=loaded.context, bn_batches=loaded.bn_batches, recalibrate_first=False,
                                       val_loader=loaded.val, on_epoch=on_epoch, on_compressed=on_compressed,
                                       label_smoothing=0.1, device=loaded.device, seed=int(request.seed),
                                       distill=True if request.finetune_kd else None)
    except EarlyStopped as stop:
        stopped, plan = stop, stop.plan or plan
    seconds["compress"] = marks["compressed"] - t
    seconds["finetune"] = time.perf_counter() - marks["compressed"] - seconds.get("zero_shot", 0.0)
    return Trained(model=model, plan=plan, history=history, zero_shot_oa=zero_shot.get("oa"), stopped=stopped,
                   seconds=seconds)


def _stop_if_dominated(early: EarlyStop | None, pre_costs: Mapping[str, float], epoch: int, val_oa: float,
                       margin: float | None) -> None:
    """Raise :class:`EarlyStopped` when a finished trial at the same ``epoch`` is as cheap and better by ``margin``."""
    from tracking.pareto import dominated_by

    front = early.fronts.get(str(epoch)) if early else None
    if not front or margin is None or float(margin) < 0:
        return  # nobody finished has a score at this point to compare with, or no stopping here
    keys = early.cost_keys
    if not all(k in pre_costs for k in keys):
        return  # a measured cost objective: not known before the end
    point = [val_oa, *[pre_costs[k] for k in keys]]
    if dominated_by(point, front, list(early.directions), margin=[float(margin)] + [0.0] * len(keys)):
        raise EarlyStopped(epoch, val_oa)


def measure_model(request: TrialRequest, loaded: Loaded, projected: Projected, trained: Trained
                  ) -> tuple[TrialResult, dict[str, float]]:
    """Stage 4: validation OA, costs, latency and speed-up on the target, the test OA in the final stage.
    Returns the result (its ``seconds`` left to the caller) and this stage's wall times."""
    from costs.registry import CostSettings, analytic_costs, measure
    from costs.targets import compare_latency_on
    from rsc.metrics import evaluate
    from spaces.compose import split_plan

    seconds: dict[str, float] = {}
    base, model, device, nc = loaded.base, trained.model, loaded.device, loaded.data.num_classes
    image_size = loaded.data.image_size
    t = time.perf_counter()
    eval_device = "cpu" if split_plan(projected.plan)[1].steps else device  # post-training models run on the CPU
    val_oa = evaluate(model, loaded.val if eval_device == device else _on(loaded.val, "cpu"), num_classes=nc,
                      device=eval_device).oa
    seconds["evaluate"] = time.perf_counter() - t
    t = time.perf_counter()
    model = model.eval()
    settings = CostSettings(image_size=image_size)
    analytic_keys = analytic_costs()
    costs = measure(model, analytic_keys, settings)
    base_costs = request.base_costs or measure(base, analytic_keys, settings)
    timed: dict[str, Any] = {}
    if request.latency:
        hardware = loaded.hardware
        models = {"base": base.cpu(), "model": model.cpu()}
        if hardware.table is not None and request.evaluate_test:
            # the final stage: timed on the target the table was measured on, the prediction beside it
            pred = compare_latency_on(hardware, models, image_size)
            costs["latency_ms_predicted"] = pred["model"]
            timed["base_latency_ms_predicted"] = pred["base"]
            lat = compare_latency_on(hardware.measured, models, image_size)
        else:
            lat = compare_latency_on(hardware, models, image_size)
        costs["latency_ms"] = lat["model"]
        timed.update(speedup=lat["base"] / lat["model"] if lat["model"] else math.inf, base_latency_ms=lat["base"],
                     hardware=hardware.spec)
    seconds["cost"] = time.perf_counter() - t
    test_oa = None
    if request.evaluate_test:
        t = time.perf_counter()
        test_oa = float(evaluate(model.cpu(), _on(loaded.test, "cpu"), num_classes=nc, device="cpu").oa)
        seconds["test"] = time.perf_counter() - t
    result = TrialResult(status="ok", val_oa=float(val_oa), epochs_run=len(trained.history),
                         history=tuple(trained.history), zero_shot_oa=trained.zero_shot_oa, test_oa=test_oa,
                         costs={k: float(v) for k, v in costs.items()},
                         compression_rate=float(base_costs["params"]) / costs["params"] if costs.get("params")
                         else math.inf, projection=projected.factor, plan=trained.plan.to_dict(), **timed)
    return result, seconds


def evaluate_trial(request: TrialRequest | Mapping[str, Any], *, return_model: bool = False) -> dict[str, Any]:
    """Run one trial; returns its :class:`search.request.TrialResult` as plain JSON (module docstring).

    ``request``: a :class:`search.request.TrialRequest` or its dict (:meth:`TrialRequest.to_dict`), as an
    executor ships it. With ``return_model``, the compressed model is added under ``model`` (the final
    stage ships it). Exceptions propagate: the caller records the trial as failed (or pruned for
    :class:`rsc.errors.BudgetInfeasible`).
    """
    t0 = time.perf_counter()
    if not isinstance(request, TrialRequest):
        request = TrialRequest.from_dict(request)
    loaded = load_inputs(request)
    projected = project_onto_budget(request, loaded)
    trained = compress_and_finetune(request, loaded, projected)
    seconds = {"load": loaded.seconds, "project": projected.seconds, **trained.seconds}
    if trained.stopped is not None:
        stop = trained.stopped
        result = TrialResult(status="pruned", val_oa=stop.val_oa, epochs_run=stop.epoch, history=tuple(trained.history),
                             projection=projected.factor, plan=trained.plan.to_dict(), seconds=seconds,
                             reason=str(stop), screened=stop.epoch == 0, zero_shot_oa=trained.zero_shot_oa)
        return result.to_dict()
    result, measured = measure_model(request, loaded, projected, trained)
    seconds.update(measured)
    seconds["total"] = time.perf_counter() - t0
    out = dataclasses.replace(result, seconds=seconds).to_dict()
    if return_model:
        out["model"] = trained.model
    return out


def _on(loader: Any, device: str) -> Any:
    """The same loader yielding CPU tensors (quantised models run on the CPU only)."""
    loader = copy.copy(loader)
    import torch

    loader.device = torch.device(device)
    return loader
