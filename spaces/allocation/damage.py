"""What a channel-pruning cut costs in accuracy: group scores and the measured sensitivity.

``damage="importance"``: the share of the group's importance (the space's criterion, as
``transform`` scores it: L1 by default) that its least important channels, the ones ``transform``
removes, carry (:func:`group_scores`). It is normalised per group, so a move's damage is comparable
across groups of any size. A share of L1 mass is not what a layer loses in accuracy, though (the
latency-aware allocation of ``benchmarks/README.md`` compares the two). ``damage="sensitivity"``
measures it instead, as the sensitivity analysis of Li et al. (2017) and EagleEye's adaptive-BN
evaluation (Li et al. 2020) do without any fine-tuning: each group alone is pruned at
:data:`SENSITIVITY_POINTS` depths, its BatchNorm statistics re-estimated on the context's calibration
batches, and the rise of the cross-entropy on those batches (over the base's, re-estimated alike) is
the damage; depths between are interpolated (:func:`interpolated_damage`), the curve is made
non-decreasing, and the importance share breaks ties where the loss did not rise. Summing the groups'
rises is the usual first-order (independent layers) approximation. It costs one pruned copy and a few
forward passes per point and is computed once per model weights and settings in a process
(:func:`channel_sensitivity`).

Use: :func:`kept_choices` lists the channel counts a group may keep; :func:`group_scores` traces the
model and scores its groups as ``transform`` would; :func:`channel_sensitivity` measures the loss rises
and :func:`interpolated_damage` spreads them over a group's choices.
"""

from __future__ import annotations

import copy
import hashlib
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import nn

from spaces.base import Context
from spaces.errors import SpaceError

__all__ = ["CHANNEL_DAMAGES", "SENSITIVITY_POINTS", "kept_choices", "group_scores", "channel_sensitivity",
           "interpolated_damage"]


#: Damage measures of :func:`channel_allocation`: the share of the group's importance removed, or the
#: measured rise of the calibration loss with the group pruned alone (module docstring).
CHANNEL_DAMAGES = ("importance", "sensitivity")

#: Pruning depths per group at which ``damage="sensitivity"`` measures the loss (evenly spaced over
#: the group's choices up to ``max_ratio``; the choices between are interpolated).
SENSITIVITY_POINTS = 4


def kept_choices(channels: int, round_to: int | None, max_ratio: float) -> list[tuple[int, float]]:
    """``(kept channels, ratio)`` for every count ``ChannelPruning`` keeps of ``channels`` at a ratio in
    [0, max_ratio], highest first; ``kept_channels(channels, ratio, round_to) == kept``."""
    from spaces.layers import round_channels
    from spaces.prune import kept_channels

    lowest = kept_channels(channels, max_ratio, round_to)
    found: dict[int, float] = {channels: 0.0}
    for c in range(channels - 1, 0, -1):
        v = round_channels(c, channels, round_to)
        if v >= lowest and v not in found:
            removed = channels - c  # floor(ratio * channels) must be this
            for ratio in (round(removed / channels, 6), (removed + 0.5) / channels):
                if ratio < 1 and kept_channels(channels, ratio, round_to) == v:
                    found[v] = ratio
                    break
    return sorted(found.items(), reverse=True)


def group_scores(model: nn.Module, context: Context, criterion: str
                 ) -> tuple[Any, list[tuple[str, Any]], list[torch.Tensor], dict[nn.Module, str]]:
    """(dependency graph, groups, per-group scores, module names of the traced model) as
    ``ChannelPruning.transform`` computes them; Taylor's gradients are taken on a copy, so ``model``
    is not touched."""
    from spaces.prune import (calibration_grads, dependency_groups, importance_of, parameter_device,
                              trace_dependencies)

    work = copy.deepcopy(model) if criterion == "taylor" else model
    dg = trace_dependencies(work, context.example_input(1).to(parameter_device(work)))
    groups = dependency_groups(work, dg, context)
    if criterion == "taylor":
        calibration_grads(work, context.calibration_batches("prune.channel criterion 'taylor'"))
    imp_fn, fallback = importance_of(criterion), importance_of("l1")
    scores = []
    with torch.no_grad():
        for name, group in groups:
            try:
                imp = imp_fn(group)
                if imp is None:
                    imp = fallback(group)
            except Exception as exc:  # noqa: BLE001 - torch-pruning raises every type
                raise SpaceError(f"prune.channel allocation: cannot score group {name!r} with {criterion!r}: "
                                 f"{type(exc).__name__}: {exc}") from exc
            if imp is None or len(imp) != len(group[0].idxs):
                raise SpaceError(f"prune.channel allocation: group {name!r}: criterion {criterion!r} gave no usable scores")
            scores.append(imp.detach().to("cpu", torch.float64).clamp_min(0))
    return dg, groups, scores, {m: n for n, m in work.named_modules()}


#: Measured sensitivities by (model weights digest, criterion, round_to, max_ratio, points, image
#: size, calibration digest), the most recent few: a search loads its base afresh for every trial, so
#: the weights, not the object, say whether it is the same model.
_SENSITIVITY: OrderedDict[tuple, dict[str, list[tuple[int, float]]]] = OrderedDict()
_SENSITIVITY_KEPT = 8


def _digest(tensors: Iterable[torch.Tensor]) -> str:
    h = hashlib.blake2b(digest_size=16)
    for t in tensors:
        t = t.detach().to("cpu").contiguous()
        h.update(str((t.dtype, tuple(t.shape))).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def _batch_tensors(batches: Sequence[Any]) -> Iterable[torch.Tensor]:
    for b in batches:
        yield from (b if isinstance(b, (tuple, list)) else (b,))


@torch.no_grad()
def _calibrated_loss(model: nn.Module, batches: Sequence[Any]) -> float:
    """Mean cross-entropy on ``batches`` after re-estimating ``model``'s BatchNorm statistics on them
    (in place: pass a copy)."""
    from rsc.loop import recalibrate_bn

    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    recalibrate_bn(model, batches, max_batches=len(batches), device=device)
    total, n = 0.0, 0
    for x, y in batches:
        out = model(x.to(device))
        total += float(nn.functional.cross_entropy(out.float(), y.to(device), reduction="sum"))
        n += len(y)
    return total / max(n, 1)


def _sampled(n: int, points: int) -> list[int]:
    """Indices of the ``points`` depths measured among choices ``1..n`` (evenly spaced, the last included)."""
    return sorted({max(1, round(n * (k + 1) / points)) for k in range(points)}) if n else []


def channel_sensitivity(space: Any, model: nn.Module, context: Context, *, criterion: str = "l1",
                        round_to: int | None = None, points: int = SENSITIVITY_POINTS
                        ) -> dict[str, list[tuple[int, float]]]:
    """Per group (by root name): ``(kept channels, calibration-loss rise)`` at ``points`` depths up to
    the space's ``max_ratio``, each group pruned alone with ``space.transform`` and its BatchNorm
    statistics re-estimated on the context's calibration batches (the base re-estimated alike).
    Rises are clamped at 0; a group the space cannot prune alone gets no points (it is left whole).
    Memoised by the model's weights and the settings.

    Raises:
        SpaceError: no calibration batches in the context.
    """
    from spaces.prune import prunable_groups

    what = "prune.channel allocation damage 'sensitivity'"
    batches = context.calibration_batches(what)
    if round_to is None:
        round_to = space.round_to_choices[0]
    key = (_digest(model.state_dict().values()), type(model).__name__, criterion, round_to, float(space.max_ratio),
           int(points), context.image_size, _digest(_batch_tensors(batches)))
    if key in _SENSITIVITY:
        _SENSITIVITY.move_to_end(key)
        return _SENSITIVITY[key]
    groups = prunable_groups(model, context)
    jobs = [(g.name, i, opts) for g in groups
            for opts in [kept_choices(g.channels, round_to, space.max_ratio)] for i in _sampled(len(opts) - 1, points)]
    base = _calibrated_loss(copy.deepcopy(model), batches)
    out: dict[str, list[tuple[int, float]]] = {g.name: [] for g in groups}
    for name, i, opts in jobs:
        kept, ratio = opts[i]
        try:
            pruned = space.transform(model, {"criterion": criterion, "round_to": round_to,
                                             "ratios": {name: ratio}}, context).model
        except SpaceError:
            continue  # a group the space cannot prune alone (one that reaches a grouped conv): left whole
        out[name].append((kept, max(0.0, _calibrated_loss(pruned, batches) - base)))
    _SENSITIVITY[key] = out
    while len(_SENSITIVITY) > _SENSITIVITY_KEPT:
        _SENSITIVITY.popitem(last=False)
    return out


def interpolated_damage(options: list[tuple[int, float]], measured: list[tuple[int, float]]) -> list[float]:
    """The damage of every choice (kept channels, highest first) from the measured ``(kept, rise)``
    points: linear in the kept count between them, 0 at the whole group, non-decreasing."""
    pts = sorted([(options[0][0], 0.0), *measured], reverse=True)
    out, best = [], 0.0
    for k, _ in options:
        hi = next(((a, da) for a, da in reversed(pts) if a >= k), pts[0])  # the nearest measured above k
        lo = next(((a, da) for a, da in pts if a <= k), pts[-1])            # and below
        d = hi[1] if hi[0] == lo[0] else hi[1] + (lo[1] - hi[1]) * (hi[0] - k) / (hi[0] - lo[0])
        best = max(best, d)
        out.append(best)
    return out
