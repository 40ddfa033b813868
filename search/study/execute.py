"""How one cell of a study is run: train or compress, fine-tune, and measure (OA, rate, speed-up).

Every compressed cell starts from its base model (trained once, cached), gets the same fine-tune
budget (``finetune_epochs``) and the same BatchNorm re-estimation, and is measured the same way:
validation and test OA, the counted costs, and latency beside its base on the local CPU target. The
test split is touched only by that final measurement. A method that is a space's preset starts from
the preset's params projected onto the cell's rate and is trained by :func:`spaces.finetune.finetune_plan`,
the one path from a plan to a trained model (a space trained before its transform - soft filter
pruning, Network Slimming - spends its share of the budget there); a searched cell runs the search
with its own :class:`search.config.SearchConfig`, derived from the study's template
(:func:`cell_search_config`).
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from search.report import Reporter
from search.study.cells import BASELINE, Cell, StudyConfig, augment_config
from search.study.config import SPACE_OPTIONS

__all__ = ["Workspace", "run_cell", "CellUnreachable", "cell_search_config"]


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
        from rsc.splits import make_split

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
        from rsc.loaders import make_loaders

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
    from rsc.metrics import evaluate
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


def _start_plan(method: Any, cell: Cell, base: Any, ctx: Any, config: StudyConfig) -> tuple[Any, dict[str, float]]:
    """The plan a preset starts from, and the ceiling the cell projects it onto (none at a fixed rate).

    A preset starts weak (5% pruned, ranks at 95%, a student at 95% width): the projection only
    strengthens a plan until it fits, so a start already past the rate would overshoot it."""
    from costs.registry import CostSettings, measure
    from search.study.methods import space_options
    from spaces.base import Plan
    from spaces.registry import get_space

    options = space_options(method, {option: getattr(config, flag) for flag, option in SPACE_OPTIONS.items()})
    space = get_space(method.space, **options)
    step = {"space": space.name, "params": method.preset.start(space, base, ctx), **({"options": options} if options else {})}
    plan = Plan.from_dict({"base": {"model": cell.network, "num_classes": ctx.num_classes,
                                    "image_size": ctx.image_size}, "steps": [step]})
    if cell.rate is None:
        return plan, {}
    base_cost = measure(base, [method.rate_cost], CostSettings(image_size=ctx.image_size))[method.rate_cost]
    return plan, {method.rate_cost: base_cost / cell.rate}


def _projected(base: Any, method: Any, cell: Cell, ctx: Any, config: StudyConfig) -> Any:
    """The method's plan projected onto the cell's rate (CellUnreachable when no strength gets there)."""
    from spaces.compose import to_cpu
    from spaces.errors import BudgetInfeasible
    from spaces.project import cost_gap, project_plan

    plan, limits = _start_plan(method, cell, base, ctx, config)
    if not limits:
        return plan
    probe, pctx = to_cpu(base, ctx, copy_model=True)
    try:
        plan, _ = project_plan(probe, plan, pctx, cost_gap(limits, ctx.image_size))
    except BudgetInfeasible as exc:
        raise CellUnreachable(f"{method.name} cannot reach {cell.rate:g}x: {exc}") from None
    return plan


def _kd(teacher: Any) -> Any:
    from spaces.distill import ALPHA, TEMPERATURE, kd_loss

    return kd_loss(teacher, temperature=TEMPERATURE, alpha=ALPHA, label_smoothing=0.1)


def run_cell(ws: Workspace, cell: Cell) -> dict[str, Any]:
    """Run one cell; returns its row (raises CellUnreachable, or anything a failed cell raises)."""
    from rsc.loop import recalibrate_bn, seed_everything

    c = ws.config
    seed_everything(c.seed + cell.repeat)
    train, val, test, plain = ws.loaders(cell)
    bn = plain[: c.bn_batches]
    row: dict[str, Any] = {"epochs": 0}
    if cell.method == BASELINE:
        base = ws.base_model(cell.network, cell.train_ratio, cell.repeat, cell.augment)
        row.update(measure_cell(ws, base, copy.deepcopy(base), val, test))
        row["epochs"] = c.epochs
        row["base_checkpoint"] = str(ws.base_path(cell.network, cell.train_ratio, cell.repeat, cell.augment))
        return row
    from search.study.methods import study_methods

    m = study_methods()[cell.method]
    if m.kind == "teacher":
        return _teacher_cell(ws, cell, train, val, test, bn)
    if m.kind == "search":
        return _search_cell(ws, cell)
    from spaces.finetune import finetune_plan

    base = ws.base_model(cell.network, cell.train_ratio, cell.repeat, cell.augment)
    ctx = _context(ws, plain)
    plan = _projected(base, m, cell, ctx, c)
    row["epochs"] = c.finetune_epochs
    model, done, _ = finetune_plan(base, plan, train, epochs=c.finetune_epochs, lr=c.finetune_lr, context=ctx,
                                   distill=True if cell.kd else None, bn_batches=bn, device=ws.device,
                                   seed=c.seed + cell.repeat, label_smoothing=0.1)
    recalibrate_bn(model, bn, max_batches=len(bn), device=ws.device)
    row.update(measure_cell(ws, model, base, val, test))
    row["compression_rate"] = row[{"params": "compression_rate_params",
                                   "nonzero_params": "compression_rate_nonzero"}[m.rate_cost]]
    row["plan"] = done.to_dict()
    return row


def _teacher_cell(ws: Workspace, cell: Cell, train: Any, val: Any, test: Any, bn: list) -> dict[str, Any]:
    """The study's network trained from scratch for ``epochs`` with KD from the trained --teacher."""
    from rsc.models import create_model
    from rsc.loop import fit, recalibrate_bn

    c = ws.config
    teacher = ws.base_model(c.teacher, cell.train_ratio, cell.repeat, cell.augment)
    student = create_model(cell.network, ws.data.num_classes, image_size=ws.data.image_size).to(ws.device)
    fit(student, train, epochs=c.epochs, lr=c.lr_of(cell.network), loss_fn=_kd(teacher), device=ws.device,
        seed=c.seed + cell.repeat, progress=c.progress, desc=f"KD {c.teacher} -> {cell.network}")
    recalibrate_bn(student, bn, max_batches=len(bn), device=ws.device)
    row = {"epochs": c.epochs, "teacher": c.teacher, **measure_cell(ws, student, teacher, val, test)}
    return row


class _CellProgress(Reporter):
    """A searched cell's progress on the study's bar: the trial count, then the search's later stages
    (a cell runs for tens of minutes; the bar itself moves once per cell)."""

    def __init__(self, status: Callable[[str], None]) -> None:
        self.status, self.done, self.total = status, 0, 0

    def stage(self, name: str, detail: str) -> None:
        text = f"{name} stage: {detail}"
        self.status(text if len(text) <= 70 else text[:69] + "…")

    def start(self, total: int, done: int) -> None:
        self.total, self.done = total, done
        self.status(f"trial {done}/{total}")

    def trial(self, row: dict[str, Any]) -> None:
        self.done += row["state"] != "lost"
        self.status(f"trial {self.done}/{self.total}")

    def close(self) -> None:
        self.status("final stage")


def cell_search_config(config: StudyConfig, cell: Cell, method: Any, study_dir: Path, tracking_uri: str) -> Any:
    """A searched cell's search: the study's template with the cell's own settings - its data and split, its
    network and base, its budget (params <= 1/rate of the base), the method's spaces, sampler and
    allocation, its study name and folders; the rest (trials, fidelity, final stage, aim...) the template's."""
    c = config
    return dataclasses.replace(
        c.search, data=c.data, dataset=c.dataset, image_size=c.image_size, train_ratio=cell.train_ratio,
        val_ratio=c.val_ratio, model=cell.network, weights=c.weights.get(cell.network), base_epochs=c.epochs,
        base_lr=c.lr_of(cell.network), budgets=(f"params<={100 / cell.rate:.6g}%",), methods=method.search_methods,
        sampler=method.sampler, allocate=method.allocate, allocate_damage=method.allocate_damage,
        final_epochs=c.finetune_epochs, finetune_kd=cell.kd or c.search.finetune_kd, finetune_lr=c.finetune_lr,
        batch_size=c.batch_size, bn_batches=c.bn_batches, seed=c.seed + cell.repeat,
        study=f"{study_dir.name}-{cell.id}", out=str(study_dir / "searches"), tracking_uri=tracking_uri,
        device=c.device)


def _search_cell(ws: Workspace, cell: Cell) -> dict[str, Any]:
    """The compression search at the cell's rate (``params <= 1/rate`` of the base) over the method's
    spaces with its sampler; the final model with the best validation OA is the cell's answer (its test
    OA is reported, not used to pick: :func:`search.final.chosen_row`)."""
    from search.driver import run
    from search.study.methods import study_methods

    c = ws.config
    s = c.search
    m = study_methods()[cell.method]
    sc = cell_search_config(c, cell, m, ws.study_dir, ws.tracking_uri)
    result = run(sc, reporter=_CellProgress(ws.status))
    if result.interrupted:  # the search stopped at Ctrl-C and kept its trials: the cell is not finished
        raise KeyboardInterrupt
    best = result.chosen if result.chosen and result.chosen.get("test_oa") is not None else None
    if best is None:
        raise CellUnreachable(f"the search found no model within params <= 1/{cell.rate:g} of the base")
    base_params = result.base_costs["params"]
    epochs = (s.trials * s.fidelity_epochs + (len(result.final) + len(result.rank_sample)) * c.finetune_epochs
              + sum(len(r["val_oa"]) * r["epochs"] for r in result.halving))
    if s.compute and result.compute:  # a budgeted search sets its own trials and final epochs: its ledger says
        epochs = round(result.compute.get("search_epochs", epochs))
    return {"epochs": epochs,
            "rank": result.rank or None, "search_kd": sc.finetune_kd,
            "val_oa": best["val_oa"], "test_oa": best["test_oa"], "params": best.get("params"),
            "macs": best.get("macs"), "size": best.get("size"), "base_params": base_params,
            "compression_rate": best.get("compression_rate"), "compression_rate_params": best.get("compression_rate"),
            "speedup": best.get("speedup"), "latency_ms": best.get("latency_ms"),
            "search": {"study": result.study, "trials": result.counts.get("finished", len(result.trials)),
                       "final": len(result.final),
                       "sampler": m.sampler, "methods": list(m.search_methods), "pick": s.final_pick, "folds": s.final_folds,
                       **({"compute": s.compute, "explore_share": s.explore_share} if s.compute else {}),
                       "allocate": m.allocate, "allocate_damage": m.allocate_damage,
                       "halving": result.halving,
                       "picked_trial": best["trial"], "method": best.get("method"),
                       "finalists": [{k: r.get(k) for k in ("trial", "method", "search_val_oa", "val_oa", "cv_oa", "test_oa",
                                                            "params")} for r in result.final],
                       "rank_sample": [{k: r.get(k) for k in ("trial", "search_val_oa", "val_oa", "cv_oa", "test_oa", "params")}
                                       for r in result.rank_sample]},
            "compute": result.compute or None,
            "uniform": None if not result.baseline else {
                **{k: result.baseline.get(k) for k in ("method", "epochs", "val_oa", "test_oa", "params",
                                                       "compression_rate", "speedup", "latency_ms")},
                "compute": sc.baseline_compute + (f", best of {sc.baseline_k}" if sc.baseline_k > 1 else ""), **{k: v for k, v in (result.verdict or {}).items()
                                                   if k.endswith("_minus_uniform")}}}
