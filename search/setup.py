"""Everything a search needs before its first trial, checked before any training where it can be.

:func:`prepare` parses the budgets and objectives, reaches the tracking store (and the Ray
address), builds the joint space, loads the data and its split, measures the base model's
costs, drops the method combinations that cannot reach the budget, opens the Optuna study,
trains (or loads) the base model, and starts or resumes the MLflow parent run. It also builds the
template every trial request is made from (:class:`search.request.TrialRequest`): the one place a
request's data reference, base model, limits and fine-tune settings are set.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from search.config import SearchConfig
from search.engines.base import Engine
from search.request import DataRef, TrialRequest
from search.state import Search

__all__ = ["PreparedSearch", "prepare"]


@dataclass
class PreparedSearch:
    """What :func:`prepare` leaves for the trial loop and the final stage."""

    config: SearchConfig
    search: Search
    engine: Engine
    tracker: Any
    joint: Any
    budgets: Any
    uri: str
    device: str
    data: Any
    split: Any
    ckpt: Path
    arch: dict[str, Any]
    skeleton: Any
    context: Any
    base_costs: dict[str, float]
    floors: dict[str, dict[str, float]]
    target_key: str | None
    target_ceiling: float | None
    request: TrialRequest  # the template of every trial's request (no plan, no seed yet)
    ray_nodes: dict[str, Any]
    hardware: Any = None  # the costs.targets.Target latency is measured on
    hardware_fingerprint: dict[str, Any] | None = None
    ray_joined: bool = False  # this search connected to Ray for a ray: target (and disconnects at the end)


def _git_sha() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=5,
                              cwd=Path(__file__).resolve().parent).stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def prepare(config: SearchConfig, say: Callable[[str], None]) -> PreparedSearch:
    """Check the input and set up study, tracking, data and base model (see the module docstring).

    Raises:
        UserError: bad input, found before any training where possible.
    """
    import torch

    from costs.registry import CostSettings, analytic_costs, measure
    from rsc.scenes import load_scene_data
    from rsc.splits import make_split
    from rsc.models import create_model
    from costs.targets import compare_latency_on, parse_target
    from rsc.loop import resolve_device
    from search.base_model import search_base_checkpoint
    from search.budget import parse_budgets
    from search.engines.optuna_engine import OptunaEngine
    from search.space import JointSpace
    from search.aims import check_reachable, objective_specs, target_key
    from spaces.base import Context
    from tracking.mlflow_log import Tracker, check_tracking_uri, default_tracking_uri

    device = str(resolve_device(config.device))
    # 1. everything that can be wrong with the input, before any training
    budgets = parse_budgets(config.budgets)
    objectives = objective_specs(config.objectives)
    uri = config.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(config.out)
    check_tracking_uri(uri)
    ray_nodes: dict[str, Any] = {}
    hardware = parse_target(config.hardware)
    if config.ray_address and (config.backend == "ray" or hardware.remote):  # joined within --ray-timeout, same code
        from search.executors import probe_cluster

        ray_nodes = probe_cluster(config.ray_address, config.ray_timeout)
        say(f"ray cluster at {config.ray_address}: {len(ray_nodes['nodes'])} node(s), "
            f"{ray_nodes['resources'].get('CPU', 0):g} CPUs, Ray {ray_nodes['ray']}, every node on this code")
    methods, options = config.space_methods()
    joint = JointSpace(methods, max_combo=config.max_combo, bins=config.depth_bins or None, options=options)
    ray_joined = _check_hardware(config, hardware, joint, say)
    torch.manual_seed(config.seed)

    if config.data is None:
        say(f"*** no --data: running on the built-in SYNTHETIC scene set ({config.image_size}px) - "
            "a demo, not a result ***")
    data = load_scene_data(config.data, dataset=config.dataset, image_size=config.image_size, progress=config.progress)
    split = make_split(data, train_ratio=config.train_ratio, val_ratio=config.val_ratio, seed=config.data_seed)
    say(f"data: {data.summary()}; split {split.digest}: train {len(split.train)}, val {len(split.val)}, "
        f"test {len(split.test)} (test untouched until the final stage)")
    arch = {"model": config.model, "num_classes": data.num_classes, "image_size": data.image_size}
    context = Context(num_classes=data.num_classes, image_size=data.image_size, device="cpu", seed=config.seed)
    skeleton = create_model(config.model, data.num_classes, image_size=data.image_size).eval()
    settings = CostSettings(image_size=data.image_size)
    base_costs = measure(skeleton, analytic_costs(), settings)
    measured = [b.spec.cost_key for b in budgets if b.spec.kind == "measured"]
    measured += [k for _, k, _ in objectives if k not in base_costs and k != "val_oa"]
    if config.latency:
        measured.append("latency_ms")
    measured = list(dict.fromkeys(measured))
    if "latency_ms" in measured:  # on the target; every other measured cost as costs defines it
        base_costs["latency_ms"] = compare_latency_on(hardware, {"model": skeleton}, data.image_size)["model"]
    if [k for k in measured if k != "latency_ms"]:
        base_costs.update(measure(skeleton, [k for k in measured if k != "latency_ms"], settings))
    predictors = {}
    if hardware.table is not None:  # latency predicted from the table: projected like the counted costs
        from costs.latency.table import check_table

        table = hardware.load_table()
        check_table(table, model=config.model, image_size=data.image_size, num_classes=data.num_classes)
        predictors["latency_ms"] = table.predict
        context = dataclasses.replace(context, latency_table=table)  # for choices allocated by latency
        say(table.summary())
    budgets = budgets.resolve(base_costs)
    projected = budgets.projected_keys(predictors)
    limits = {k: v for k, v in budgets.limits().items() if k in projected}
    key = target_key(objectives) if config.min_target < 1.0 else None  # trials aim at a fraction of its ceiling
    floors = check_reachable(joint, budgets, skeleton, arch, context, data.image_size, say,
                             extra_keys=[key] if key else [], predictors=predictors)
    ceiling = limits.get(key, base_costs.get(key)) if key else None
    if budgets:
        say(f"budget: {budgets} -> " + ", ".join(f"{k} <= {v:.4g}" for k, v in budgets.limits().items())
            + f" (base: {', '.join(f'{k} {base_costs[k]:.4g}' for k in budgets.limits())})")

    # 2. storage, tracking, base model
    config.study_dir.mkdir(parents=True, exist_ok=True)
    engine = OptunaEngine(storage=config.storage_url, study_name=config.study_name,
                          directions=[d for _, _, d in objectives], sampler=config.sampler, seed=config.seed,
                          resume=config.resume, population_size=config.population_size,
                          startup_trials=config.startup_trials, timeout=config.storage_timeout)
    measured_on = engine.get_attr("hardware", "cpu" if engine.finished() else hardware.spec)  # older studies: cpu
    if measured_on != hardware.spec:
        from rsc.errors import ConfigError

        raise ConfigError(f"study {config.study_name} measured latency on --target {measured_on}; resuming it on "
                          f"{hardware.spec} would mix the two (start another --study)")
    engine.set_attr("hardware", hardware.spec)
    fingerprint = hardware.fingerprint()
    tracker = Tracker(uri=uri, experiment=config.experiment)
    ckpt, _ = search_base_checkpoint(config, data, split, device, say)
    if config.final_folds and config.weights is not None and Path(ckpt) == Path(config.weights):
        from rsc.errors import ConfigError

        raise ConfigError(f"--final-folds trains a base without each fold, but --weights {config.weights} is a model "
                          "already trained on these classes (used as is): its folds would be scored on images it saw; "
                          "give backbone weights, or no --final-folds")
    if config.final_folds:  # a class too small for the folds: refused now, not after the search
        from rsc.splits import fold_split

        fold_split(data, split, folds=config.final_folds, fold=0)

    parent_id = engine.get_attr("mlflow_parent_run_id")
    if parent_id and engine.get_attr("mlflow_tracking_uri") == uri:
        tracker.resume_parent(parent_id)
        stale = engine.recover()
        for t in engine.trials():
            if t.number in stale and t.mlflow_run_id:
                tracker.finish_trial(t.mlflow_run_id, tags={"state": "INTERRUPTED"}, status="KILLED")
        say(f"resuming study {config.study_name}: {len(engine.finished())} finished trial(s) kept"
            + (f", {len(stale)} interrupted trial(s) marked failed" if stale else ""))
    else:
        engine.recover()
        params = {"budget": str(budgets), "space": ",".join(joint.combos), "methods": ",".join(config.methods),
                  "dataset": data.name, "data_path": config.data or "synthetic", "split_hash": split.digest,
                  "sampler": config.sampler, "objectives": ",".join(config.objectives), "model": config.model,
                  "trials": config.trials, "seed": config.seed, "split_seed": config.data_seed,
                  "min_accuracy": config.min_accuracy, "fidelity_epochs": config.fidelity_epochs,
                  "bn_batches": config.bn_batches, "final_epochs": config.final_epochs,
                  **({"allocate": config.allocate} if config.allocate else {}),
                  "image_size": data.image_size, "device": device, "hardware": hardware.spec,
                  "hardware_device": fingerprint.get("device_name", ""),
                  "min_target": config.min_target if key else 1.0, "target_key": key or "",
                  "base_checkpoint": str(ckpt), "study": config.study_name, "storage": config.storage_url}
        parent_id = tracker.start_parent(config.study_name, params=params,
                                         tags={"study": config.study_name, "git_sha": _git_sha(), "kind": "search",
                                               "hardware": hardware.spec})
        tracker.log_text(parent_id, config.to_json(), "config.json")
        tracker.log_text(parent_id, json.dumps(fingerprint, indent=1, sort_keys=True), "hardware.json")
        tracker.log_metrics(parent_id, {f"base_{k}": v for k, v in base_costs.items()})
        engine.set_attr("mlflow_parent_run_id", parent_id)
        engine.set_attr("mlflow_tracking_uri", uri)

    request = TrialRequest(
        data=DataRef.from_dict(config.data_request(split.digest)), base_checkpoint=str(Path(ckpt).resolve()),
        limits=limits, base_costs=base_costs, epochs=config.fidelity_epochs, lr=config.finetune_lr,
        batch_size=config.batch_size, device=device, calibration_batches=config.calibration_batches,
        bn_batches=config.bn_batches, latency=config.latency, hardware=hardware.spec,
        finetune_kd=config.finetune_kd, zero_shot=config.zero_shot)
    search = Search(config, engine, tracker, parent_id, joint, budgets, objectives, base_costs)
    return PreparedSearch(config=config, search=search, engine=engine, tracker=tracker, joint=joint, budgets=budgets,
                          uri=uri, device=device, data=data, split=split, ckpt=Path(ckpt), arch=arch,
                          skeleton=skeleton, context=context, base_costs=base_costs, floors=floors, target_key=key,
                          target_ceiling=ceiling, request=request, ray_nodes=ray_nodes, hardware=hardware,
                          hardware_fingerprint=fingerprint, ray_joined=ray_joined)


def _check_hardware(config: SearchConfig, hardware: Any, joint: Any, say: Callable[[str], None]) -> bool:
    """The latency target exists (joining Ray for a ``ray:`` one) and can time every method's models.

    Returns whether Ray was joined here. Raises ConfigError before any training otherwise.
    """
    from rsc.errors import ConfigError

    int8 = [m.name for m in joint.methods.values() if joint.space(m.name).post_training]
    if int8 and config.latency and not hardware.runs_int8:
        raise ConfigError(f"--target {hardware.spec} cannot time int8 models (their kernels run on the CPU only and "
                          f"do not export to ONNX): drop {', '.join(int8)} from --methods, or measure on the cpu "
                          "with runtime eager or torchscript")
    joined = False
    if hardware.remote:
        from search.cluster import join_for_target

        joined = join_for_target(config.ray_address, hardware.spec)
    try:
        hardware.check()
    except BaseException:
        if joined:
            import ray

            ray.shutdown()
        raise
    say(f"latency measured on {hardware.describe()} (--target {hardware.spec})")
    return joined
