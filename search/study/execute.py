"""How one cell of a study is run: train or compress, fine-tune, and measure (OA, rate, speed-up).

Every compressed cell starts from its base model (trained once, cached), gets the same fine-tune
budget (``finetune_epochs``; Network Slimming spends half of it on its sparsity phase, soft filter
pruning all of it on the soft-pruned model) and the same BatchNorm re-estimation, and is measured
the same way: validation and test OA, the counted costs, and latency beside its base on the local
CPU target. The test split is touched only by that final measurement.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from search.report import Reporter
from search.study.cells import METHODS, Cell, StudyConfig, augment_config

__all__ = ["Workspace", "run_cell", "CellUnreachable"]

KD_TEMPERATURE, KD_ALPHA = 4.0, 0.7


class CellUnreachable(Exception):
    """The method cannot reach the cell's compression rate (the cell says so; the study goes on)."""


@dataclass
class Workspace:
    """What the cells of one study share: the data, its splits, the bases, the measuring target."""

    config: StudyConfig
    data: Any
    device: Any
    study_dir: Path
    tracking_uri: str
    say: Callable[[str], None] = print
    status: Callable[[str], None] = lambda detail: None  # where the running cell is (the study bar's postfix)
    _splits: dict = field(default_factory=dict)
    _bases: dict = field(default_factory=dict)

    def split(self, ratio: float, repeat: int) -> Any:
        from rsc.data import make_split

        key = (ratio, repeat)
        if key not in self._splits:
            self._splits[key] = make_split(self.data, train_ratio=ratio, val_ratio=self.config.val_ratio,
                                           seed=self.config.seed + repeat)
        return self._splits[key]

    def base_path(self, network: str, ratio: float, repeat: int, augment: str) -> Path:
        from search.base_model import obtain_base_checkpoint

        key = (network, ratio, repeat, augment)
        if key not in self._bases:
            c = self.config
            aug = augment_config(augment)
            path, _ = obtain_base_checkpoint(
                model_name=network, weights=c.weights.get(network), data=self.data, split=self.split(ratio, repeat),
                epochs=c.epochs, lr=c.lr_of(network), batch_size=c.batch_size, seed=c.seed + repeat,
                device=str(self.device),
                progress=c.progress, say=self.say, bn_batches=c.bn_batches,
                augment=True if augment == "default" else (aug if aug is not None else False))
            self._bases[key] = path
        return self._bases[key]

    def base_model(self, network: str, ratio: float, repeat: int, augment: str) -> Any:
        from rsc.checkpoint import load_checkpoint, model_from_checkpoint

        return model_from_checkpoint(load_checkpoint(self.base_path(network, ratio, repeat, augment))).to(
            self.device).eval()

    def loaders(self, cell: Cell) -> tuple[Any, Any, Any, list]:
        """``(train, val, test, plain)``: ``plain`` are unaugmented training batches (BN, calibration)."""
        from rsc.data import make_loaders

        split = self.split(cell.train_ratio, cell.repeat)
        aug = augment_config(cell.augment)
        seed = self.config.seed + cell.repeat
        train, val, test = make_loaders(self.data, split, batch_size=self.config.batch_size,
                                        augment=True if cell.augment == "default" else (aug or False),
                                        seed=seed, device=self.device)
        plain = make_loaders(self.data, split, batch_size=self.config.batch_size, augment=False, seed=seed,
                             device=self.device)[0]
        return train, val, test, [b for _, b in zip(range(max(self.config.bn_batches, 2)), plain)]


def _context(ws: Workspace, plain: list) -> Any:
    from spaces.base import Context

    return Context(num_classes=ws.data.num_classes, image_size=ws.data.image_size, device=str(ws.device),
                   calibration=plain[:2] or None, seed=ws.config.seed)


def measure_cell(ws: Workspace, model: Any, reference: Any, val: Any, test: Any) -> dict[str, Any]:
    """Validation and test OA, counted costs, and latency beside ``reference`` (its base) on the CPU."""
    from costs.counting import sparse_size
    from costs.registry import CostSettings, measure
    from rsc.evaluation import evaluate
    from costs.targets import compare_latency_on, parse_target

    nc = ws.data.num_classes
    settings = CostSettings(image_size=ws.data.image_size)
    keys = ["params", "nonzero_params", "macs", "size"]
    model, reference = model.eval(), reference.eval()
    out: dict[str, Any] = {"val_oa": evaluate(model, val, num_classes=nc, device=ws.device).oa,
                           "test_oa": evaluate(model, test, num_classes=nc, device=ws.device).oa}
    costs = measure(model.cpu(), keys, settings)
    ref = measure(reference.cpu(), keys, settings)
    lat = compare_latency_on(parse_target("cpu"), {"base": reference, "model": model}, ws.data.image_size)
    out.update({k: costs[k] for k in keys})
    out["sparse_size"] = float(sparse_size(model))
    out["base_params"], out["base_nonzero_params"] = ref["params"], ref["nonzero_params"]
    out["compression_rate_params"] = ref["params"] / costs["params"]
    out["compression_rate_nonzero"] = ref["nonzero_params"] / max(costs["nonzero_params"], 1.0)
    out["compression_rate"] = out["compression_rate_params"]
    out["latency_ms"], out["base_latency_ms"] = lat["model"], lat["base"]
    out["speedup"] = lat["base"] / lat["model"] if lat["model"] else math.inf
    model.to(ws.device), reference.to(ws.device)
    return out


def _plan_steps(method: str, cell: Cell, base: Any, ctx: Any) -> tuple[list[dict], dict[str, float]]:
    """The steps of a plan-kind method, and the ceiling they are projected onto.

    Every plan starts weak (5% pruned, ranks at 95%, a student at 95% width): the projection only
    strengthens a plan until it fits, so a start already past the rate would overshoot it."""
    from costs.registry import CostSettings, measure
    from spaces.prune import prunable_groups
    from spaces.registry import get_space, resolve_space

    base_costs = measure(base, ["params", "nonzero_params"], CostSettings(image_size=ctx.image_size))
    limits = {} if cell.rate is None else {"params": base_costs["params"] / cell.rate}
    m = METHODS[method]
    if method == "magnitude":
        space = get_space(resolve_space("magnitude"))
        params = {"sparsity": dict.fromkeys(space.layers(base, ctx), 0.05)}
        limits = {"nonzero_params": base_costs["nonzero_params"] / cell.rate}
        return [{"space": space.name, "params": params}], limits
    if method.startswith("tucker"):
        space = get_space(resolve_space("tucker"))
        if method == "tucker-vbmf":
            params = space.reference_params(base, ctx)
        elif method == "tucker-vbmf-scaled":  # 5% of every EVBMF cut, then one factor onto the rate
            params = space.scale(space.reference_params(base, ctx), 0.05)
        else:
            params = {"conv": {n: [0.95, 0.95] for n in space.conv_layers(base, ctx)}, "fc": {},
                      "round_to": space.round_to, "tucker1": True}
        return [{"space": space.name, "params": params}], limits
    if method == "distill-self":
        space = get_space(resolve_space("distill"))
        params = {"student": {"family": "self", "width": 0.95, "depth": 1.0}, "temperature": KD_TEMPERATURE,
                  "alpha": KD_ALPHA}
        return [{"space": space.name, "params": params}], limits
    if m.criterion and m.allocate:  # a weak allocation; the projection lowers its kept fraction
        options = {"cost": m.allocate, "damage": m.allocate_damage}
        space = get_space(resolve_space("prune-alloc"), **options)
        return [{"space": space.name, "params": {"criterion": m.criterion, "round_to": 8, "keep": 0.95},
                 "options": options}], limits
    if m.criterion:
        space = get_space(resolve_space("prune"))
        params = {"criterion": m.criterion, "round_to": 8,
                  "ratios": {g.name: 0.05 for g in prunable_groups(base, ctx)}}
        return [{"space": space.name, "params": params}], limits
    raise ValueError(f"method {method!r} has no plan")


def _projected(base: Any, method: str, cell: Cell, ctx: Any) -> Any:
    """The method's plan projected onto the cell's rate (CellUnreachable when no strength gets there)."""
    from spaces.base import Plan
    from spaces.compose import to_cpu
    from spaces.errors import BudgetInfeasible
    from spaces.project import cost_gap, project_plan

    steps, limits = _plan_steps(method, cell, base, ctx)
    plan = Plan.from_dict({"base": {"model": cell.network, "num_classes": ctx.num_classes,
                                    "image_size": ctx.image_size}, "steps": steps})
    if not limits:
        return plan
    probe, pctx = to_cpu(base, ctx, copy_model=True)
    try:
        plan, _ = project_plan(probe, plan, pctx, cost_gap(limits, ctx.image_size))
    except BudgetInfeasible as exc:
        raise CellUnreachable(f"{method} cannot reach {cell.rate:g}x: {exc}") from None
    return plan


def _kd(teacher: Any) -> Any:
    from spaces.distill import kd_loss

    return kd_loss(teacher, temperature=KD_TEMPERATURE, alpha=KD_ALPHA, label_smoothing=0.1)


def run_cell(ws: Workspace, cell: Cell) -> dict[str, Any]:
    """Run one cell; returns its row (raises CellUnreachable, or anything a failed cell raises)."""
    from rsc.training import recalibrate_bn, seed_everything

    c = ws.config
    seed_everything(c.seed + cell.repeat)
    train, val, test, plain = ws.loaders(cell)
    bn = plain[: c.bn_batches]
    row: dict[str, Any] = {"epochs": 0}
    if cell.method == "baseline":
        base = ws.base_model(cell.network, cell.train_ratio, cell.repeat, cell.augment)
        row.update(measure_cell(ws, base, copy.deepcopy(base), val, test))
        row["epochs"] = c.epochs
        row["base_checkpoint"] = str(ws.base_path(cell.network, cell.train_ratio, cell.repeat, cell.augment))
        return row
    m = METHODS[cell.method]
    if m.kind == "teacher":
        return _teacher_cell(ws, cell, train, val, test, bn)
    if m.kind == "search":
        return _search_cell(ws, cell)
    base = ws.base_model(cell.network, cell.train_ratio, cell.repeat, cell.augment)
    ctx = _context(ws, plain)
    plan = _projected(base, cell.method, cell, ctx)
    row["epochs"] = c.finetune_epochs
    if m.kind == "plan":
        from spaces.finetune import finetune_plan

        model, done, _ = finetune_plan(base, plan, train, epochs=c.finetune_epochs, lr=c.finetune_lr, context=ctx,
                                       distill=True if cell.kd else None, bn_batches=bn, device=ws.device,
                                       seed=c.seed + cell.repeat, label_smoothing=0.1)
    elif m.kind == "soft":
        model, done = _soft_filter_pruning(ws, cell, base, plan, ctx, train, bn)
    elif m.kind == "slimming":
        model, done = _slimming(ws, cell, base, ctx, train, bn)
    else:  # pragma: no cover - METHODS and this function are written together
        raise ValueError(f"unknown method kind {m.kind!r}")
    recalibrate_bn(model, bn, max_batches=len(bn), device=ws.device)
    row.update(measure_cell(ws, model, base, val, test))
    if cell.method == "magnitude":
        row["compression_rate"] = row["compression_rate_nonzero"]
    row["plan"] = done.to_dict()
    return row


def _soft_filter_pruning(ws: Workspace, cell: Cell, base: Any, plan: Any, ctx: Any, train: Any, bn: list) -> tuple:
    """SFP (He et al. 2018): after every epoch zero the lowest-L1 filters, keep them trainable; at the
    end remove the zeroed ones (``prune.channel`` with ``l1`` at the same ratios picks exactly them)."""
    from rsc.training import fit, recalibrate_bn
    from spaces.compose import compress
    from spaces.prune import soft_prune

    c = ws.config
    params = plan.steps[0].params
    model = copy.deepcopy(base)

    def end_of_epoch(m: Any) -> None:
        soft_prune(m, params, ctx)
        recalibrate_bn(m, bn, max_batches=len(bn), device=ws.device)

    soft_prune(model, params, ctx)
    fit(model, train, epochs=c.finetune_epochs, lr=c.finetune_lr, loss_fn=_kd(base) if cell.kd else None,
        device=ws.device, seed=c.seed + cell.repeat, progress=c.progress, desc="sfp", end_of_epoch=end_of_epoch)
    return compress(model.eval(), plan, ctx)


def _slimming(ws: Workspace, cell: Cell, base: Any, ctx: Any, train: Any, bn: list) -> tuple:
    """Network Slimming (Liu et al. 2017): train with L1 on BN scales (torch-pruning's
    ``BNScalePruner.regularize``) for half the budget, prune by BN scale at the rate, fine-tune the rest."""
    import torch_pruning as tp

    from rsc.training import fit
    from spaces.compose import compress
    from spaces.finetune import finetune

    c = ws.config
    sparse_epochs = c.finetune_epochs // 2
    model = copy.deepcopy(base)
    pruner = tp.pruner.BNScalePruner(model, ctx.example_input(1), importance=tp.importance.BNScaleImportance(),
                                     reg=c.slimming_reg)
    kd = _kd(base) if cell.kd else None
    fit(model, train, epochs=sparse_epochs, lr=c.finetune_lr, loss_fn=kd, device=ws.device, seed=c.seed + cell.repeat,
        progress=c.progress, desc="slimming (sparsity)", after_backward=lambda m: pruner.regularize(m))
    plan = _projected(model.eval(), cell.method, cell, ctx)  # the BN scales are read after the sparsity phase
    pruned, done = compress(model, plan, ctx)
    finetune(pruned, train, epochs=c.finetune_epochs - sparse_epochs, lr=c.finetune_lr, loss_fn=kd, device=ws.device,
             seed=c.seed + cell.repeat, progress=c.progress, bn_batches=bn, keep_sparsity=False)
    return pruned, done


def _teacher_cell(ws: Workspace, cell: Cell, train: Any, val: Any, test: Any, bn: list) -> dict[str, Any]:
    """The study's network trained from scratch for ``epochs`` with KD from the trained --teacher."""
    from rsc.models import create_model
    from rsc.training import fit, recalibrate_bn

    c = ws.config
    teacher = ws.base_model(c.teacher, cell.train_ratio, cell.repeat, cell.augment)
    student = create_model(cell.network, ws.data.num_classes, image_size=ws.data.image_size).to(ws.device)
    fit(student, train, epochs=c.epochs, lr=c.lr_of(cell.network), loss_fn=_kd(teacher), device=ws.device,
        seed=c.seed + cell.repeat, progress=c.progress, desc=f"KD {c.teacher} -> {cell.network}")
    recalibrate_bn(student, bn, max_batches=len(bn), device=ws.device)
    row = {"epochs": c.epochs, "teacher": c.teacher, **measure_cell(ws, student, teacher, val, test)}
    return row


class _CellProgress(Reporter):
    """A searched cell's progress on the study's bar: the trial count, then the final stage's step
    (a cell runs for tens of minutes; the bar itself moves once per cell)."""

    def __init__(self, status: Callable[[str], None]) -> None:
        self.status, self.done, self.total = status, 0, 0

    def message(self, text: str) -> None:
        if text.startswith("final stage"):
            self.status(text if len(text) <= 70 else text[:69] + "…")

    def start(self, total: int, done: int) -> None:
        self.total, self.done = total, done
        self.status(f"trial {done}/{total}")

    def trial(self, row: dict[str, Any]) -> None:
        self.done += row["state"] != "lost"
        self.status(f"trial {self.done}/{self.total}")

    def close(self) -> None:
        self.status("final stage")


def _search_cell(ws: Workspace, cell: Cell) -> dict[str, Any]:
    """The compression search at the cell's rate (``params <= 1/rate`` of the base) over the method's
    spaces with its sampler; the final model with the best validation OA is the cell's answer (its test
    OA is reported, not used to pick: :func:`search.final.chosen_row`)."""
    from search.config import SearchConfig
    from search.driver import run

    c = ws.config
    m = METHODS[cell.method]
    sc = SearchConfig(data=c.data, dataset=c.dataset, image_size=c.image_size, train_ratio=cell.train_ratio,
                      val_ratio=c.val_ratio, model=cell.network, weights=c.weights.get(cell.network),
                      base_epochs=c.epochs, base_lr=c.lr_of(cell.network), budgets=(f"params<={100 / cell.rate:.6g}%",),
                      methods=m.search_methods, sampler=m.sampler, trials=c.search_trials,
                      allocate=m.allocate, allocate_damage=m.allocate_damage,
                      fidelity_epochs=c.search_fidelity, final_epochs=c.finetune_epochs, final_max=c.search_final,
                      final_pick=c.search_pick, final_rungs=c.search_rungs, rank_sample=c.rank_sample, finetune_kd=cell.kd or c.search_kd,
                      **({"min_target": c.search_min_target} if c.search_min_target is not None else {}),
                      **({"zero_shot": True} if c.search_zero_shot else {}),
                      **({"final_folds": c.search_folds} if c.search_folds else {}),
                      finetune_lr=c.finetune_lr, batch_size=c.batch_size, bn_batches=c.bn_batches,
                      seed=c.seed + cell.repeat, study=f"{ws.study_dir.name}-{cell.id}", resume=True,
                      out=str(ws.study_dir / "searches"), tracking_uri=ws.tracking_uri, device=c.device,
                      progress=False, log_models=False)
    result = run(sc, reporter=_CellProgress(ws.status))
    if result.interrupted:  # the search stopped at Ctrl-C and kept its trials: the cell is not finished
        raise KeyboardInterrupt
    best = result.chosen if result.chosen and result.chosen.get("test_oa") is not None else None
    if best is None:
        raise CellUnreachable(f"the search found no model within params <= 1/{cell.rate:g} of the base")
    base_params = result.base_costs["params"]
    return {"epochs": c.search_trials * c.search_fidelity
            + (len(result.final) + len(result.rank_sample)) * c.finetune_epochs
            + sum(len(r["val_oa"]) * r["epochs"] for r in result.halving),
            "rank": result.rank or None, "search_kd": cell.kd or c.search_kd,
            "val_oa": best["val_oa"], "test_oa": best["test_oa"], "params": best.get("params"),
            "macs": best.get("macs"), "size": best.get("size"), "base_params": base_params,
            "compression_rate": best.get("compression_rate"), "compression_rate_params": best.get("compression_rate"),
            "speedup": best.get("speedup"), "latency_ms": best.get("latency_ms"),
            "search": {"study": result.study, "trials": result.counts.get("finished", len(result.trials)),
                       "final": len(result.final),
                       "sampler": m.sampler, "methods": list(m.search_methods), "pick": c.search_pick, "folds": c.search_folds,
                       "allocate": m.allocate, "allocate_damage": m.allocate_damage,
                       "halving": result.halving,
                       "picked_trial": best["trial"], "method": best.get("method"),
                       "finalists": [{k: r.get(k) for k in ("trial", "method", "search_val_oa", "val_oa", "cv_oa", "test_oa",
                                                            "params")} for r in result.final],
                       "rank_sample": [{k: r.get(k) for k in ("trial", "search_val_oa", "val_oa", "cv_oa", "test_oa", "params")}
                                       for r in result.rank_sample]}}
