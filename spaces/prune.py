"""Structured channel pruning on torch-pruning's dependency graph (Fang et al. 2023).

Channels are removed group by group: a *group* is every layer coupled to one channel dimension
(a conv, its BN, the next layer's input, residual partners, concat slices...), named after its
root layer, e.g. ``"layer1.0.conv1"``. Each group gets its own pruning ratio. Kept channels are
rounded to a multiple of ``round_to`` (8 suits CPU/GPU kernels). The classifier head keeps its
outputs. Criteria: ``l1``/``l2`` weight magnitude, ``fpgm`` (geometric median, He et al. 2019),
``bn_scale`` (|gamma| of the BN in the group, Network Slimming; groups without BN fall back to
``l1``) and ``taylor`` (first-order Taylor, Molchanov et al. 2019, gradients from the context's
calibration batches).

The record is torch-pruning's pruning history (root layer, out/in, removed indices), so a plan
replays on a fresh model with no data and no importance computation.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from costs.counting import eval_mode
from spaces.checks import check_bins, check_fraction, check_keys, check_mapping, check_no_extra, is_positive_int
from spaces.layers import bin_values, depth_bins, expand_bins, find_head, round_channels
from spaces.base import Context, Params, Preset, Record, Space, Transformed
from spaces.errors import SpaceError
from spaces.registry import register_space

CRITERIA = ("l1", "l2", "fpgm", "bn_scale", "taylor")


def importance_of(criterion: str) -> Callable[[Any], torch.Tensor | None]:
    """torch-pruning's scorer for ``criterion`` (one of :data:`CRITERIA`): ``scorer(group)`` -> channel scores."""
    import torch_pruning as tp

    factories: dict[str, Callable[[], Any]] = {
        "l1": lambda: tp.importance.MagnitudeImportance(p=1),
        "l2": lambda: tp.importance.MagnitudeImportance(p=2),
        "fpgm": lambda: tp.importance.FPGMImportance(),
        "bn_scale": lambda: tp.importance.BNScaleImportance(),
        "taylor": lambda: tp.importance.TaylorImportance(),
    }
    return factories[criterion]()


@dataclass(frozen=True)
class GroupInfo:
    """A prunable group: its root layer name and its channel count."""

    name: str
    channels: int


def trace_dependencies(model: nn.Module, example: torch.Tensor) -> Any:
    """torch-pruning's dependency graph of ``model`` (traced in eval mode: BN with batch 1)."""
    import torch_pruning as tp

    try:
        with eval_mode(model), torch.enable_grad():
            return tp.DependencyGraph().build_dependency(model, example_inputs=example, verbose=False)
    except Exception as exc:  # noqa: BLE001 - tracing errors come in every type
        raise _err(f"torch-pruning cannot trace {type(model).__name__}: "
                          f"{type(exc).__name__}: {exc}") from exc


def _err(msg: str) -> SpaceError:
    return SpaceError(f"prune.channel: {msg}")


def dependency_groups(model: nn.Module, dg: Any, context: Context) -> list[tuple[str, Any]]:
    """(root name, full-index group) for every group whose outputs may shrink."""
    names = {m: n for n, m in model.named_modules()}
    ignored = [model.get_submodule(h) for h in find_head(model, context.num_classes)]
    out = []
    for group in dg.get_all_groups(ignored_layers=ignored, root_module_types=[nn.Conv2d, nn.Linear]):
        root = group[0].dep.target.module
        if root not in names:
            continue
        out.append((names[root], group))
    return out


def prunable_groups(model: nn.Module, context: Context) -> list[GroupInfo]:
    """The groups channel pruning can act on, in model order (the head's group excluded)."""
    dg = trace_dependencies(model, context.example_input(1).to(parameter_device(model)))
    return [GroupInfo(n, len(g[0].idxs)) for n, g in dependency_groups(model, dg, context)]


def parameter_device(model: nn.Module) -> torch.device:
    """The device of ``model``'s first parameter (the CPU for a model without parameters)."""
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def kept_channels(channels: int, ratio: float, round_to: int | None) -> int:
    """Channels a group keeps at ``ratio``: ``channels - floor(ratio*channels)``, rounded.

    With ``round_to`` the count goes to the nearest multiple (at least one multiple, at most
    ``channels``); a ratio of 0 keeps the group as it is.
    """
    if ratio <= 0:
        return channels
    return round_channels(channels - int(math.floor(ratio * channels)), channels, round_to)


def calibration_grads(model: nn.Module, batches: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Accumulate loss gradients over the calibration batches (for Taylor importance)."""
    model.zero_grad(set_to_none=True)
    modes = {m: m.training for m in model.modules()}
    model.eval()  # BN statistics must not move; gradients flow the same
    try:
        dev = parameter_device(model)
        with torch.enable_grad():
            for x, y in batches:
                out = model(x.to(dev))
                if not isinstance(out, torch.Tensor):
                    out = out[0]
                nn.functional.cross_entropy(out, y.to(dev)).backward()
    finally:
        for m, mode in modes.items():
            m.training = mode


@register_space("prune.channel")
class ChannelPruning(Space):
    """Per-group structured channel pruning.

    Params: ``{"criterion": "l1", "round_to": 8, "ratios": {group_root_name: ratio in [0, 1)}}``;
    groups not named keep all channels.

    Args:
        criteria: Criteria the search may pick from (one value: fixed).
        round_to_choices: Channel multiples the search may pick from (1 = no rounding).
        max_ratio: Upper end of the sampled ratios and saturation point of :meth:`scale`.
        per_layer: One ratio per group (True) or one global ratio (False).
        step: Sampling grid of the ratios.
        bins: With ``per_layer``, one ratio per contiguous depth bin of the groups instead of one
            per group (ResNet-18: 4 bins = its stages); a smaller space for short searches. Bin
            ratios are sampled from ``step`` up, so that scaling can move every stage.
    """

    aliases = ("prune", "channel")
    binnable = True
    presets = (
        Preset(name="l1", family="pruning", what="L1 filter norm (Li et al.), uniform ratio", uniform=True,
               start=lambda space, model, context: space.uniform_params(model, context, criterion="l1")),
        Preset(name="fpgm", family="pruning", what="filter pruning via geometric median (He et al.)",
               start=lambda space, model, context: space.uniform_params(model, context, criterion="fpgm")),
        Preset(name="taylor", family="pruning", what="first-order Taylor importance (Molchanov et al.)",
               start=lambda space, model, context: space.uniform_params(model, context, criterion="taylor")),
    )

    def __init__(self, *, criteria: Sequence[str] = ("l1", "l2", "fpgm", "bn_scale"),
                 round_to_choices: Sequence[int] = (8,), max_ratio: float = 0.8,
                 per_layer: bool = True, step: float = 0.05, bins: int | None = None) -> None:
        bad = [c for c in criteria if c not in CRITERIA]
        if bad or not criteria:
            raise _err(f"unknown criteria {bad or list(criteria)}; known: {list(CRITERIA)}")
        if not round_to_choices or any(not isinstance(r, int) or r < 1 for r in round_to_choices):
            raise _err(f"round_to_choices must be positive integers, got {round_to_choices!r}")
        self.criteria = tuple(criteria)
        self.round_to_choices = tuple(round_to_choices)
        self.max_ratio = check_fraction("prune.channel", "max_ratio", max_ratio)
        self.per_layer = bool(per_layer)
        self.step = check_fraction("prune.channel", "step", step, low_open=True)
        self.bins = check_bins("prune.channel", bins)

    def uniform_params(self, model: nn.Module, context: Context, *, criterion: str, ratio: float = 0.05) -> Params:
        """Every group pruned by ``ratio`` with ``criterion`` (a preset's weak start: a projection strengthens it)."""
        return {"criterion": criterion, "round_to": self.round_to_choices[0],
                "ratios": {g.name: ratio for g in prunable_groups(model, context)}}

    def _layout(self, model: nn.Module, names: list[str]) -> list[list[str]]:
        return depth_bins(model, names, self.bins or 1)

    def suggest(self, trial: Any, model: nn.Module, context: Context) -> Params:
        groups = prunable_groups(model, context)
        criterion = (trial.suggest_categorical(self.key("criterion"), list(self.criteria))
                     if len(self.criteria) > 1 else self.criteria[0])
        round_to = (trial.suggest_categorical(self.key("round_to"), list(self.round_to_choices))
                    if len(self.round_to_choices) > 1 else self.round_to_choices[0])
        if self.per_layer and self.bins:
            names = [g.name for g in groups]
            # from one step up, not 0: a whole stage left at 0 stays there under the projection's
            # scaling, and ResNet-18's last stage holds 3/4 of its weights (measured: 2 of 24
            # trials could not reach params<=25%)
            ratios = expand_bins(self._layout(model, names), names, lambda i: trial.suggest_float(
                self.key("ratio", f"bin{i}"), self.step, self.max_ratio, step=self.step))
        elif self.per_layer:
            ratios = {g.name: trial.suggest_float(self.key("ratio", g.name), 0.0, self.max_ratio,
                                                  step=self.step) for g in groups}
        else:
            r = trial.suggest_float(self.key("ratio"), 0.0, self.max_ratio, step=self.step)
            ratios = {g.name: r for g in groups}
        return {"criterion": criterion, "round_to": round_to, "ratios": ratios}

    def trial_params(self, params: Params, model: nn.Module, context: Context) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if len(self.criteria) > 1:
            out[self.key("criterion")] = params.get("criterion", "l1")
        if len(self.round_to_choices) > 1:
            out[self.key("round_to")] = params.get("round_to", 1)
        ratios = params.get("ratios", {})
        groups = prunable_groups(model, context)
        if self.per_layer and self.bins:
            values = bin_values(self.name, "ratio", ratios, self._layout(model, [g.name for g in groups]), 0.0)
            out.update({self.key("ratio", f"bin{i}"): v for i, v in enumerate(values)})
        elif self.per_layer:
            out.update({self.key("ratio", g.name): ratios.get(g.name, 0.0) for g in groups})
        else:
            values = set(ratios.values()) or {0.0}
            if len(values) != 1:
                raise _err("global (per_layer=False) space cannot express different ratios")
            out[self.key("ratio")] = values.pop()
        return out

    def validate(self, params: Params, groups: Sequence[str]) -> tuple[str, int | None, dict[str, float]]:
        check_no_extra(self.name, params, ["criterion", "round_to", "ratios"])
        criterion = params.get("criterion", "l1")
        if criterion not in CRITERIA:
            raise _err(f"unknown criterion {criterion!r}; known: {list(CRITERIA)}")
        round_to = params.get("round_to")
        if round_to is not None and not is_positive_int(round_to):
            raise _err(f"round_to must be a positive integer or null, got {round_to!r}")
        ratios = check_mapping(self.name, "ratios", params.get("ratios", {}))
        check_keys(self.name, "ratios", ratios, groups)
        return criterion, round_to, {n: check_fraction(self.name, f"ratio of group {n!r}", r)
                                     for n, r in ratios.items()}

    def scale(self, params: Params, factor: float) -> Params:
        super().scale(params, factor)
        out = copy.deepcopy(params)
        if factor == 1:
            return out
        cap = self.max_ratio
        out["ratios"] = {n: round(r * factor if factor <= 1 else min(r * factor, max(r, cap)), 6)
                         for n, r in params.get("ratios", {}).items()}
        return out

    def transform(self, model: nn.Module, params: Params, context: Context, *,
                  record: Record | None = None, structure_only: bool = False) -> Transformed:
        new = copy.deepcopy(model)
        dg = trace_dependencies(new, context.example_input(1).to(parameter_device(new)))
        groups = dependency_groups(new, dg, context)
        criterion, round_to, ratios = self.validate(params, [n for n, _ in groups])
        if record is not None:
            history = _check_history(record, new)
            try:
                dg.load_pruning_history(history)
            except Exception as exc:  # noqa: BLE001
                raise _err(f"the plan's pruning record does not match this model: "
                                  f"{type(exc).__name__}: {exc}") from exc
            _check_forward(new, context, "replaying the pruning record")
            return Transformed(new, {"history": history})
        if criterion == "taylor" and structure_only:
            criterion = "l1"  # channel counts do not depend on the criterion
        if criterion == "taylor":
            calibration_grads(new, context.calibration_batches("prune.channel criterion 'taylor'"))
        plans = _selection(groups, criterion, ratios, round_to)
        with torch.no_grad():
            for name, group, idxs in plans:
                try:
                    # group.prune(idxs) would also log the full-index group in the history
                    dg.get_pruning_group(group[0].dep.target.module, group[0].dep.handler, idxs).prune()
                except Exception as exc:  # noqa: BLE001
                    raise _err(f"cannot prune group {name!r}: {type(exc).__name__}: {exc}") from exc
        new.zero_grad(set_to_none=True)
        _check_forward(new, context, "pruning")
        history = [[str(n), bool(o), [int(i) for i in idx]] for n, o, idx in dg.pruning_history()]
        return Transformed(new, {"history": history})


def _selection(groups: Sequence[tuple[str, Any]], criterion: str, ratios: dict[str, float],
               round_to: int | None) -> list[tuple[str, Any, list[int]]]:
    """``(group name, group, channel indices to remove)`` for every group that loses channels."""
    imp_fn = importance_of(criterion)
    fallback = importance_of("l1")
    plans: list[tuple[str, Any, list[int]]] = []
    with torch.no_grad():
        for name, group in groups:
            r = ratios.get(name, 0.0)
            channels = len(group[0].idxs)
            keep = kept_channels(channels, r, round_to)
            if keep >= channels:
                continue
            try:
                imp = imp_fn(group)
                if imp is None:
                    imp = fallback(group)
            except Exception as exc:  # noqa: BLE001
                raise _err(f"cannot score group {name!r} with {criterion!r}: "
                           f"{type(exc).__name__}: {exc}") from exc
            if imp is None or len(imp) != channels:
                raise _err(f"group {name!r}: criterion {criterion!r} gave no usable scores")
            order = torch.argsort(imp.detach().cpu(), stable=True)
            plans.append((name, group, sorted(int(i) for i in order[: channels - keep])))
    return plans


@torch.no_grad()
def soft_prune(model: nn.Module, params: Params, context: Context) -> int:
    """Zero, in place, the channels ``prune.channel`` with ``params`` would remove; returns their count.

    Soft filter pruning (He et al. 2018): every layer whose outputs a removed channel is made of
    (the root conv and every conv, linear and BatchNorm coupled to it) gets that output's weights
    and bias set to zero, but keeps them trainable, so a filter zeroed after one epoch may grow back
    and be kept at the next. After the last epoch, ``prune.channel`` with the ``l1`` criterion at
    the same ratios removes the zeroed channels (their L1 norm is 0, the lowest).
    """
    dg = trace_dependencies(model, context.example_input(1).to(parameter_device(model)))
    groups = dependency_groups(model, dg, context)
    criterion, round_to, ratios = ChannelPruning(criteria=CRITERIA).validate(params, [n for n, _ in groups])
    if criterion == "taylor":
        raise _err("soft pruning scores filters by their weights; use l1, l2, fpgm or bn_scale")
    zeroed = 0
    for _, group, idxs in _selection(groups, criterion, ratios, round_to):
        sub = dg.get_pruning_group(group[0].dep.target.module, group[0].dep.handler, idxs)
        for dep, dep_idxs in sub:
            layer = dep.target.module
            if not dg.is_out_channel_pruning_fn(dep.handler) or not isinstance(
                    layer, (nn.Conv2d, nn.Linear, nn.modules.batchnorm._BatchNorm)):
                continue
            index = torch.as_tensor(list(dep_idxs), dtype=torch.long, device=layer.weight.device)
            layer.weight.index_fill_(0, index, 0.0)
            if layer.bias is not None:
                layer.bias.index_fill_(0, index, 0.0)
        zeroed += len(idxs)
    return zeroed


def _check_history(record: Record, model: nn.Module) -> list[list[Any]]:
    history = record.get("history") if isinstance(record, dict) else None
    if not isinstance(history, list):
        raise _err(f"record must hold a 'history' list, got {record!r:.200}")
    names = dict(model.named_modules())
    for entry in history:
        if (not isinstance(entry, (list, tuple)) or len(entry) != 3 or entry[0] not in names
                or not isinstance(entry[2], list)):
            raise _err(f"record entry {entry!r:.120} does not name a layer of "
                              f"{type(model).__name__}")
    return [[e[0], bool(e[1]), [int(i) for i in e[2]]] for e in history]


def _check_forward(model: nn.Module, context: Context, what: str) -> None:
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        with torch.no_grad():
            model(context.example_input(1).to(parameter_device(model)))
    except Exception as exc:  # noqa: BLE001
        raise _err(f"the model no longer runs after {what}: {type(exc).__name__}: {exc}") from exc
    finally:
        for m, mode in modes.items():
            m.training = mode
