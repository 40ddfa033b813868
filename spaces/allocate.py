"""Cost-aware per-layer allocation: put compression where it buys the most cost per unit of damage.

The search's global factor (:func:`spaces.project.project_plan`) scales every layer's choice
alike. A uniform cut is rarely the cheapest in accuracy for a given saving: the layers differ in
what they cost (MACs, milliseconds on a target, joules) and in how much they lose. The allocators
here choose per-layer Tucker ranks (:func:`allocate_tucker`) or per-group channel counts
(:func:`allocate_channels`) greedily, NetAdapt-style (Yang et al. 2018) with a damage proxy
instead of a short fine-tune, as HALOC and other budgeted low-rank allocators do: start from the
uncompressed model and repeatedly take the move with the smallest *damage per cost saved* until
the summed layer cost is at most ``keep`` times the original. The result is ordinary params of the
space (``space.transform`` builds exactly the ranks or channel counts chosen), so it can be
enqueued in a study, scaled, or shipped in a plan like any sample.

**Cost.** A :data:`LayerCost` prices one layer: ``cost(module, input_shape) -> float`` for one
freshly built float ``nn.Conv2d``/``nn.Linear`` (on the CPU, zero weights, the candidate channel
counts) and its batch-1 input shape. A cost that reads only the module's attributes says so with
an attribute ``shape_only = True``; its candidates are then built on the meta device (no memory,
~4x faster to build). Layers are priced one by one and summed,
which is how MACs and the analytical energy are defined, and close to how latency behaves on
CPUs/GPUs per operator. :func:`macs_cost` counts like :func:`costs.counting.count_macs`,
:func:`params_cost` its weights (a params budget allocated where the parameters are),
:func:`energy_cost` is :mod:`costs.energy`'s model of the layer, and a latency lookup table is any
object with a ``layer_cost(module, input_shape)`` method of the same signature
(:func:`get_layer_cost` picks one by name). Every distinct layer shape is priced once per
allocation (memoised), so slow costs (a table that profiles its misses) stay affordable.

**Energy-aware pruning order** (Yang, Chen & Sze, CVPR 2017: prune first where the energy is, as
the analytical model counts it, data movement included) is :func:`allocate_channels` with
``cost=energy_cost`` (``get_layer_cost("energy")``): layers on large feature maps, whose
activations spill to DRAM, and weight-heavy layers whose weights are fetched from DRAM pay most
per channel, so they are cut first.

**Damage.** Tucker: the relative spectral energy a rank choice discards from the layer's mode-0
and mode-1 unfoldings (squared singular values beyond the rank over their total; their sum bounds
the relative squared reconstruction error of the Tucker-2 form; one SVD for a linear layer).
Channels, ``damage="importance"``: the share of the group's importance (the space's criterion, as
``transform`` scores it: L1 by default) that its least important channels, the ones ``transform``
removes, carry. Both are normalised per layer or group, so a move's damage is comparable across
layers of any size. A share of L1 mass is not what a layer loses in accuracy, though: measured
(``benchmarks/README.md``, latency-aware allocation) it cuts the early, wide-feature-map layers
deepest and loses accuracy against a uniform cut. ``damage="sensitivity"`` measures it instead, as
the sensitivity analysis of Li et al. (2017) and EagleEye's adaptive-BN evaluation (Li et al. 2020)
do without any fine-tuning: each group alone is pruned at :data:`SENSITIVITY_POINTS` depths, its
BatchNorm statistics re-estimated on the context's calibration batches, and the rise of the
cross-entropy on those batches (over the base's, re-estimated alike) is the damage; depths between
are interpolated, the curve is made non-decreasing, and the importance share breaks ties where the
loss did not rise. Summing the groups' rises is the usual first-order (independent layers)
approximation. It costs one pruned copy and a few forward passes per point (about a minute for
ResNet-18 at 64 px on 2 cores) and is computed once per model weights and settings in a process
(:func:`channel_sensitivity`).

**Moves.** A move lowers one mode of one layer (one group) by ``s >= 1`` rank (channel) steps of
the space's rounding, ``s`` chosen to minimise damage per cost saved along that line: the lower
convex hull of (cost saved, damage). With a cost linear in the channel count and damage that
grows with each step (it does: the cheapest channels or singular values go first) that is one
step, as NetAdapt; a factorised layer, though, saves nothing until its rank is well below full
(Tucker-1 at rank ``r`` of a square 3x3 conv costs ``10r/9`` of ``C`` output channels' worth), so
its first move jumps to where the ratio is best. The ratio along a line is unimodal for such costs,
so a line is scanned until it has worsened :data:`PATIENCE` times in a row. A move that would
overshoot the target is replaced by the least damaging move that just reaches it.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import math
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

import torch
from torch import nn

from costs.counting import hooked_forward, layer_kind
from spaces.checks import check_fraction, is_positive_int
from spaces.base import Context, Params
from spaces.errors import SpaceError

__all__ = [
    "LayerCost", "LAYER_COSTS", "DAMAGES", "CHANNEL_DAMAGES", "SENSITIVITY_POINTS", "PATIENCE", "Allocation",
    "macs_cost", "params_cost", "energy_cost", "get_layer_cost", "summed_cost", "tucker_allocation",
    "allocate_tucker", "channel_allocation", "channel_sensitivity", "allocate_channels",
]

#: ``cost(module, input_shape) -> float``: the cost of one float Conv/Linear layer at a batch-1 input.
LayerCost = Callable[[nn.Module, tuple[int, ...]], float]

#: Names :func:`get_layer_cost` knows.
LAYER_COSTS = ("macs", "params", "energy", "latency")

#: Damage measures of :func:`allocate_tucker` (spectral energy discarded by the truncation).
DAMAGES = ("energy",)

#: Damage measures of :func:`channel_allocation`: the share of the group's importance removed, or the
#: measured rise of the calibration loss with the group pruned alone (module docstring).
CHANNEL_DAMAGES = ("importance", "sensitivity")

#: Pruning depths per group at which ``damage="sensitivity"`` measures the loss (evenly spaced over
#: the group's choices up to ``max_ratio``; the choices between are interpolated).
SENSITIVITY_POINTS = 4

#: Scanned states along a line after its best ratio that may fail to improve on it before the
#: scan stops (the ratio is unimodal for affine costs; 2 tolerates a kink of energy or latency).
PATIENCE = 2

_LATENCY_HELP = "latency allocation needs a latency table (--target lut:FILE; build one with python -m search.profile)"
_REL_TOL = 1e-9  # a summed cost within this relative distance of the target meets it


# -- layers by their attributes -----------------------------------------------------------------


def _tuple(value: Any, n: int) -> tuple[int, ...]:
    if isinstance(value, (tuple, list)):
        return tuple(int(v) for v in value)
    return (int(value),) * n


@dataclass(frozen=True)
class _Layer:
    """A Conv/Linear layer by its attributes: what a cost sees, hashable for memoisation."""

    kind: str  # "conv" or "linear"
    cin: int
    cout: int
    bias: bool
    dtype: torch.dtype = torch.float32
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] | str = ()
    dilation: tuple[int, ...] = ()
    groups: int = 1
    padding_mode: str = "zeros"

    @classmethod
    def of(cls, m: nn.Module) -> _Layer:
        kind = layer_kind(m)
        if kind is None:
            raise SpaceError(f"{type(m).__name__} is neither a Conv nor a Linear layer; layer costs price those only")
        w, b = getattr(m, "weight", None), getattr(m, "bias", None)
        if callable(b) and not isinstance(b, torch.Tensor):  # quantised layers keep a getter
            b = b()
        dtype = w.dtype if isinstance(w, torch.Tensor) and w.is_floating_point() else torch.float32
        if kind == "linear":
            return cls("linear", int(m.in_features), int(m.out_features), b is not None, dtype)
        kernel = _tuple(m.kernel_size, 2)
        n = len(kernel)
        padding = m.padding if isinstance(m.padding, str) else _tuple(m.padding, n)
        return cls("conv", int(m.in_channels), int(m.out_channels), b is not None, dtype, kernel,
                   _tuple(m.stride, n), padding, _tuple(m.dilation, n), int(m.groups),
                   str(getattr(m, "padding_mode", "zeros")))

    @classmethod
    def conv(cls, cin: int, cout: int, like: _Layer, *, pointwise: bool = False, bias: bool = False) -> _Layer:
        """A groups=1 conv of ``cin -> cout`` with ``like``'s kernel, stride, padding and dilation, or a
        plain 1x1 conv (``pointwise``): the pieces Tucker decomposition builds."""
        if pointwise:
            n = len(like.kernel)
            return cls("conv", cin, cout, bias, like.dtype, (1,) * n, (1,) * n, (0,) * n, (1,) * n)
        return replace(like, cin=cin, cout=cout, bias=bias, groups=1, padding_mode="zeros")

    @property
    def depthwise(self) -> bool:
        """torch-pruning's test: a conv with as many groups as output channels (more than one)."""
        return self.kind == "conv" and self.groups == self.cout and self.cout > 1

    def build(self, device: str = "cpu") -> nn.Module:
        """A fresh float module with these attributes and zero weights (no initialisation cost)."""
        if self.kind == "linear":
            m: nn.Module = nn.Linear(self.cin, self.cout, bias=self.bias, device="meta", dtype=self.dtype)
        else:
            types = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
            if len(self.kernel) not in types:
                raise SpaceError(f"cannot price a {len(self.kernel)}-d convolution (1-d to 3-d only)")
            m = types[len(self.kernel)](self.cin, self.cout, self.kernel, stride=self.stride, padding=self.padding,
                                        dilation=self.dilation, groups=self.groups, bias=self.bias,
                                        padding_mode=self.padding_mode, device="meta", dtype=self.dtype)
        if device != "meta":
            m = m.to_empty(device=device)
            with torch.no_grad():
                for p in m.parameters():
                    p.zero_()
        return m.eval()

    def out_shape(self, shape: tuple[int, ...]) -> tuple[int, ...]:
        if self.kind == "linear":
            return (*shape[:-1], self.cout)
        spatial = shape[2:]
        if self.padding == "same":
            out = tuple(spatial)
        else:
            pad = (0,) * len(self.kernel) if self.padding == "valid" else self.padding
            out = tuple((h + 2 * p - d * (k - 1) - 1) // s + 1
                        for h, p, d, k, s in zip(spatial, pad, self.dilation, self.kernel, self.stride))
        return (shape[0], self.cout, *out)


def _with_inputs(shape: tuple[int, ...], kind: str, channels: int) -> tuple[int, ...]:
    """``shape`` with its channel (conv) or feature (linear) dimension set to ``channels``."""
    if kind == "linear":
        return (*shape[:-1], channels)
    return (shape[0], channels, *shape[2:])


class _Costs:
    """``cost`` memoised on (layer attributes, input shape); each miss builds one fresh layer, on the
    meta device (no memory, ~4x faster to build) when the cost says ``shape_only``."""

    def __init__(self, cost: LayerCost) -> None:
        if not callable(cost):
            raise SpaceError(f"a layer cost must be callable as cost(module, input_shape), got {cost!r:.80}")
        self.cost = cost
        self.device = "meta" if getattr(cost, "shape_only", False) else "cpu"
        self.memo: dict[tuple[_Layer, tuple[int, ...]], float] = {}

    def __call__(self, layer: _Layer, shape: tuple[int, ...]) -> float:
        key = (layer, shape)
        value = self.memo.get(key)
        if value is None:
            raw = self.cost(layer.build(self.device), shape)
            value = float(raw) if isinstance(raw, (int, float)) and not isinstance(raw, bool) else math.nan
            if not math.isfinite(value) or value < 0:
                raise SpaceError(f"layer cost {_cost_name(self.cost)} gave {raw!r} for a {layer.kind} "
                                 f"{layer.cin}->{layer.cout} at input {shape}; expected a finite number >= 0")
            self.memo[key] = value
        return value


def _cost_name(cost: Any) -> str:
    return getattr(cost, "__qualname__", None) or getattr(getattr(cost, "func", None), "__qualname__", None) \
        or type(cost).__name__


# -- per-layer costs ------------------------------------------------------------------------------


def macs_cost(module: nn.Module, input_shape: tuple[int, ...]) -> float:
    """Multiply-accumulates of one layer at ``input_shape``, counted as :func:`costs.counting.count_macs`
    counts them: ``out_elements * in_channels/groups * prod(kernel)`` for a conv, ``out_elements *
    in_features`` for a linear layer."""
    layer = _Layer.of(module)
    out = math.prod(layer.out_shape(tuple(input_shape)))
    if layer.kind == "linear":
        return float(out * layer.cin)
    return float(out * (layer.cin // layer.groups) * math.prod(layer.kernel))


macs_cost.shape_only = True  # type: ignore[attr-defined] - reads attributes only (see _Costs)


def params_cost(module: nn.Module, input_shape: tuple[int, ...]) -> float:
    """Parameters of one layer, weights and bias (as ``costs.counting.count_params`` counts them; the input
    shape does not matter)."""
    layer = _Layer.of(module)
    weights = layer.cin * layer.cout if layer.kind == "linear" else \
        layer.cout * (layer.cin // layer.groups) * math.prod(layer.kernel)
    return float(weights + (layer.cout if layer.bias else 0))


params_cost.shape_only = True  # type: ignore[attr-defined]


class _Feed(nn.Module):
    """Runs its one layer on zeros of a fixed shape, whatever it is given: a one-layer model whose
    layer sees exactly ``shape`` under :func:`costs.energy.energy_breakdown`."""

    def __init__(self, layer: nn.Module, shape: tuple[int, ...]) -> None:
        super().__init__()
        self.layer = layer
        self.shape = tuple(shape)

    def forward(self, _x: torch.Tensor) -> torch.Tensor:
        w = self.layer.weight
        return self.layer(torch.zeros(self.shape, device=w.device, dtype=w.dtype))


def energy_cost(module: nn.Module, input_shape: tuple[int, ...], energy_model: Any = None) -> float:
    """Picojoules of one layer at a batch-1 ``input_shape`` under :mod:`costs.energy`'s analytical model
    (``energy_model``: an :class:`costs.energy.EnergyModel`, the default one when None).

    A twin of the layer on the meta device (same attributes, no data, no arithmetic) runs through
    :func:`costs.energy.energy_breakdown` as a one-layer model. The layer is priced dense even under
    ``skip_zero_weights``: candidate layers are built with zero weights, and structured compression
    leaves no zeros to skip.
    """
    from costs.energy import EnergyModel, energy_breakdown

    em = energy_model if energy_model is not None else EnergyModel()
    if em.skip_zero_weights:
        em = replace(em, skip_zero_weights=False)
    twin = module if getattr(module.weight, "is_meta", False) else _Layer.of(module).build("meta")
    rows = energy_breakdown(_Feed(twin, tuple(input_shape)), 1, 1, em)
    return float(math.fsum(r.total_pj for r in rows))


energy_cost.shape_only = True  # type: ignore[attr-defined]


def get_layer_cost(name: str, *, table: Any = None, energy_model: Any = None) -> LayerCost:
    """The layer cost called ``name``: ``"macs"``, ``"params"``, ``"energy"`` (``energy_model``: a
    calibrated :class:`costs.energy.EnergyModel`, or the default) or ``"latency"`` (``table.layer_cost``,
    in ms)."""
    if name == "macs":
        return macs_cost
    if name == "params":
        return params_cost
    if name == "energy":
        if energy_model is None:
            return energy_cost
        fn = functools.partial(energy_cost, energy_model=energy_model)
        fn.shape_only = True  # type: ignore[attr-defined]
        return fn
    if name == "latency":
        if table is None:
            raise SpaceError(_LATENCY_HELP)
        fn = getattr(table, "layer_cost", None)
        if not callable(fn):
            raise SpaceError(f"latency table {type(table).__name__} has no layer_cost(module, input_shape) method")
        return fn
    raise SpaceError(f"unknown layer cost {name!r}; known: {', '.join(LAYER_COSTS)}")


def _layer_inputs(model: nn.Module, context: Context) -> dict[str, tuple[nn.Module, list[tuple[int, ...]]]]:
    """Every innermost Conv/Linear layer of ``model`` (by name) and its input shapes, one per call,
    from one batch-1 forward of zeros (as :func:`costs.counting.hooked_forward` walks layers)."""
    seen: dict[str, tuple[nn.Module, list[tuple[int, ...]]]] = {}

    def hook_for(name: str, _kind: str) -> Callable[..., None]:
        def hook(m: nn.Module, inp: Any, _out: Any) -> None:
            x = inp[0] if isinstance(inp, tuple) else inp
            seen.setdefault(name, (m, []))[1].append(tuple(int(d) for d in x.shape))
        return hook

    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    try:
        hooked_forward(model, hook_for, image_size=context.image_size, device=context.device, dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - a model that does not run at this size
        raise SpaceError(f"cannot run {type(model).__name__} at {context.image_size} px to find its layer inputs: "
                         f"{type(exc).__name__}: {exc}") from exc
    return seen


def summed_cost(model: nn.Module, context: Context, cost: LayerCost) -> float:
    """The summed ``cost`` of every innermost Conv/Linear layer of ``model`` over one batch-1 forward
    (a layer called twice counts twice; a Tucker or SVD chain counts each of its layers).

    Each layer is priced as a fresh float layer with its attributes, as the allocators price their
    candidates, so a built model's summed cost is exactly what its allocation predicted.
    """
    costs = _Costs(cost)
    return math.fsum(costs(_Layer.of(m), shape)
                     for m, shapes in _layer_inputs(model, context).values() for shape in shapes)


# -- the greedy -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Move:
    unit: int
    state: tuple[int, ...]
    steps: int
    saved: float
    damage: float  # added damage

    def key(self) -> tuple[float, int, float]:
        return (self.damage / self.saved, self.steps, -self.saved)


class _Problem(Protocol):
    """What the greedy needs of an allocation problem: units (layers or groups) with states."""

    size: int

    def state(self, u: int) -> tuple[int, ...]: ...

    def lines(self, u: int) -> list[list[tuple[int, ...]]]: ...

    def evaluate(self, u: int, state: tuple[int, ...]) -> tuple[float, float]: ...

    def apply(self, u: int, state: tuple[int, ...]) -> Iterable[int]: ...

    def total(self) -> float: ...


def _best_move(p: _Problem, u: int) -> _Move | None:
    """The move of unit ``u`` with the least damage per cost saved (each line scanned while it may improve)."""
    cur_cost, cur_dmg = p.evaluate(u, p.state(u))
    best: _Move | None = None
    for line in p.lines(u):
        line_best: _Move | None = None
        worse = 0
        for steps, state in enumerate(line, start=1):
            cost, dmg = p.evaluate(u, state)
            saved = cur_cost - cost
            if saved <= 0:
                if line_best is not None:
                    worse += 1
            else:
                move = _Move(u, state, steps, saved, dmg - cur_dmg)
                if line_best is None or move.key() < line_best.key():
                    line_best, worse = move, 0
                else:
                    worse += 1
            if worse > PATIENCE:
                break
        if line_best is not None and (best is None or line_best.key() < best.key()):
            best = line_best
    return best


def _finisher(p: _Problem, needed: float) -> _Move | None:
    """The least damaging move of any unit that saves at least ``needed`` (damage grows along a line,
    so each line stops at its first such state, or once it is more damaging than the best found)."""
    best: _Move | None = None
    for u in range(p.size):
        cur_cost, cur_dmg = p.evaluate(u, p.state(u))
        for line in p.lines(u):
            for steps, state in enumerate(line, start=1):
                cost, dmg = p.evaluate(u, state)
                if best is not None and dmg - cur_dmg > best.damage:
                    break
                if cur_cost - cost >= needed:
                    move = _Move(u, state, steps, cur_cost - cost, dmg - cur_dmg)
                    if best is None or (move.damage, move.saved) < (best.damage, best.saved):
                        best = move
                    break
    return best


def _greedy(p: _Problem, target: float, what: str, base: float, *, saturate: bool = False) -> None:
    """Apply best moves to ``p`` until its total is at most ``target``; when no move saves any more,
    stop there (``saturate``) or raise a SpaceError."""
    best = {u: _best_move(p, u) for u in range(p.size)}
    total = p.total()
    while total > target * (1 + _REL_TOL):
        moves = [m for m in best.values() if m is not None]
        if not moves and saturate:
            return
        if not moves:
            raise SpaceError(f"{what}: no further move saves cost at {total / base:.4g} of the original; "
                             f"the target {target / base:.4g} is not reachable with this cost")
        pick = min(moves, key=_Move.key)
        if pick.saved >= total - target:
            pick = _finisher(p, total - target) or pick
        for u in p.apply(pick.unit, pick.state):
            best[u] = _best_move(p, u)
        total = p.total()


@dataclass(frozen=True)
class Allocation:
    """An allocator's result.

    Attributes:
        params: Params for the space's ``transform``.
        choices: What ``transform`` will build: Tucker ``{layer: [r_out, r_in]}`` (``[r]`` for a
            linear layer), the same as its record's ``ranks``, for the decomposed layers;
            channel pruning ``{group root: kept channels}`` for every group.
        cost: The predicted summed layer cost after compression (Tucker: of the eligible layers;
            channels: of every Conv/Linear layer).
        base_cost: The same sum before compression.
    """

    params: Params
    choices: dict[str, Any]
    cost: float
    base_cost: float

    @property
    def fraction(self) -> float:
        """``cost / base_cost`` (1.0 when there is nothing to cost)."""
        return self.cost / self.base_cost if self.base_cost > 0 else 1.0


def _check_keep(what: str, keep: Any) -> float:
    return check_fraction(what, "keep", keep, low_open=True, high_open=False)


def _checked(what: str, space: Any, kind: type, keep: Any, label: str, value: Any, known: Sequence[str]) -> float:
    """``keep`` checked, after the space's kind and the named choice (criterion, damage)."""
    if not isinstance(space, kind):
        raise SpaceError(f"{what}: needs a {kind.__name__} space, got {type(space).__name__}")
    if value not in known:
        raise SpaceError(f"{what}: unknown {label} {value!r}; known: {', '.join(known)}")
    return _check_keep(what, keep)


def _solve(p: Any, what: str, base: float, floor: float, keep: float, saturate: bool, how: str) -> None:
    """Greedy down to ``keep * base``; at or below ``floor`` (the least reachable) go straight there
    (``saturate``: the greedy could stop short of it where the cost has kinks) or refuse."""
    target = keep * base
    if saturate and target <= floor * (1 + _REL_TOL):
        p.to_floor()
        return
    if floor > target * (1 + _REL_TOL):
        raise SpaceError(f"{what}: keep={keep:g} is not reachable: the best reachable is {floor / base:.4g} of "
                         f"the original cost ({how})")
    _greedy(p, target, what, base, saturate=saturate)


# -- Tucker ranks ---------------------------------------------------------------------------------


def _rank_choices(channels: int, round_to: int, min_fraction: float) -> list[tuple[int, float]]:
    """``(rank, fraction)`` for every rank ``TuckerDecomposition`` builds for ``channels`` from a
    fraction in [min_fraction, 1], highest first; ``_rank(fraction, channels, round_to) == rank``."""
    from spaces.tucker import _rank

    lowest = _rank(min_fraction, channels, round_to)
    found: dict[int, float] = {}
    for r in range(channels, 0, -1):
        v = _rank(r / channels, channels, round_to)
        if v >= lowest and v not in found:
            nice = round(v / channels, 6)
            found[v] = nice if _rank(nice, channels, round_to) == v else r / channels
    return sorted(found.items(), reverse=True)


def _discarded(gram: torch.Tensor, ranks: Sequence[int]) -> list[float]:
    """Relative spectral energy beyond each rank, from the Gram matrix of an unfolding."""
    ev = torch.linalg.eigvalsh(gram.double()).flip(0).clamp_min(0)
    total = float(ev.sum())
    if total <= 0:
        return [0.0 for _ in ranks]
    cum = torch.cumsum(ev, 0)
    return [max(0.0, 1.0 - float(cum[r - 1]) / total) for r in ranks]


class _TuckerUnit:
    """One eligible layer: its rank choices per mode, their damage, and its cost in each form."""

    def __init__(self, module: nn.Module, shapes: list[tuple[int, ...]], round_to: int, min_fraction: float,
                 costs: _Costs) -> None:
        self.module, self.shapes, self.costs = module, shapes, costs
        self.layer = _Layer.of(module)
        self.linear = self.layer.kind == "linear"
        w = module.weight.detach().to("cpu", torch.float32)
        if self.linear:
            self.axes = [_rank_choices(min(self.layer.cin, self.layer.cout), round_to, min_fraction)]
            m = w if w.shape[0] <= w.shape[1] else w.t()
            unfoldings = [m]
        else:
            self.axes = [_rank_choices(self.layer.cout, round_to, min_fraction),
                         _rank_choices(self.layer.cin, round_to, min_fraction)]
            unfoldings = [w.reshape(w.shape[0], -1), w.transpose(0, 1).reshape(w.shape[1], -1)]
        self.damage = [_discarded(u @ u.t(), [r for r, _ in axis]) for u, axis in zip(unfoldings, self.axes)]
        self.state: tuple[int, ...] = (0,) * len(self.axes)
        self.base = self._price([self.layer])
        self.memo: dict[tuple[int, ...], tuple[float, float, list[int] | None]] = {}

    def _price(self, chain: list[_Layer]) -> float:
        """Summed cost of a chain of layers run one after the other, at each recorded input."""
        total = 0.0
        for shape in self.shapes:
            for layer in chain:
                shape = _with_inputs(shape, layer.kind, layer.cin)
                total += self.costs(layer, shape)
                shape = layer.out_shape(shape)
        return total

    def _chain(self, ranks: list[int]) -> list[_Layer] | None:
        """The layers ``TuckerDecomposition.transform`` builds at ``ranks`` (Tucker-1 where a mode is
        at full rank), or None where it leaves the layer whole (not worthwhile)."""
        from spaces.tucker import _form, svd_worthwhile, tucker_worthwhile

        L = self.layer
        if self.linear:
            (r,) = ranks
            if not svd_worthwhile(self.module, r):
                return None
            return [_Layer("linear", L.cin, r, False, L.dtype), _Layer("linear", r, L.cout, L.bias, L.dtype)]
        r_out, r_in = ranks
        if not tucker_worthwhile(self.module, r_out, r_in, True):
            return None
        form = _form(self.module, r_out, r_in, True)
        if form == "out":
            return [_Layer.conv(L.cin, r_out, L), _Layer.conv(r_out, L.cout, L, pointwise=True, bias=L.bias)]
        if form == "in":
            return [_Layer.conv(L.cin, r_in, L, pointwise=True), _Layer.conv(r_in, L.cout, L, bias=L.bias)]
        return [_Layer.conv(L.cin, r_in, L, pointwise=True), _Layer.conv(r_in, r_out, L),
                _Layer.conv(r_out, L.cout, L, pointwise=True, bias=L.bias)]

    def evaluate(self, state: tuple[int, ...]) -> tuple[float, float, list[int] | None]:
        """(cost, damage, ranks transform builds or None when the layer stays whole) at ``state``."""
        hit = self.memo.get(state)
        if hit is None:
            ranks = [self.axes[a][i][0] for a, i in enumerate(state)]
            chain = self._chain(ranks) if any(state) else None
            if chain is None:
                hit = (self.base, 0.0, None)
            else:
                hit = (self._price(chain), math.fsum(d[i] for d, i in zip(self.damage, state)), ranks)
            self.memo[state] = hit
        return hit

    def fractions(self, state: tuple[int, ...]) -> list[float]:
        return [self.axes[a][i][1] for a, i in enumerate(state)]


class _TuckerProblem:
    """Layers are independent: a move changes its own layer's cost only."""

    def __init__(self, units: list[_TuckerUnit]) -> None:
        self.units = units
        self.size = len(units)

    def floor(self) -> float:
        """The summed cost with every layer in its cheapest corner form (:func:`_corners`)."""
        return math.fsum(min(u.evaluate(s)[0] for s in _corners(u)) for u in self.units)

    def to_floor(self) -> None:
        for u in self.units:
            u.state = min(_corners(u), key=lambda s: u.evaluate(s)[0])

    def state(self, u: int) -> tuple[int, ...]:
        return self.units[u].state

    def lines(self, u: int) -> list[list[tuple[int, ...]]]:
        unit = self.units[u]
        out = []
        for a, axis in enumerate(unit.axes):
            s = unit.state
            out.append([(*s[:a], i, *s[a + 1:]) for i in range(s[a] + 1, len(axis))])
        return out

    def evaluate(self, u: int, state: tuple[int, ...]) -> tuple[float, float]:
        cost, damage, _ = self.units[u].evaluate(state)
        return cost, damage

    def apply(self, u: int, state: tuple[int, ...]) -> list[int]:
        self.units[u].state = state
        return [u]

    def total(self) -> float:
        return math.fsum(unit.evaluate(unit.state)[0] for unit in self.units)


def tucker_allocation(space: Any, model: nn.Module, context: Context, *, cost: LayerCost, keep: float,
                      damage: str = "energy", saturate: bool = False) -> Allocation:
    """Per-layer Tucker-2/SVD ranks whose summed layer ``cost`` is at most ``keep`` times the original.

    Args:
        space: A :class:`spaces.tucker.TuckerDecomposition`; its eligibility (``conv_layers``,
            ``fc_layers``), ``min_fraction`` (the lowest rank offered) and ``round_to`` (ranks are
            multiples of it, as ``transform`` rounds them) are respected. Ranks up to full are
            offered whatever ``max_fraction`` is: a full-rank mode is Tucker-1 (``tucker1: true``).
        model: The model to compress (not mutated); its weights give the spectra.
        context: Image size (the layers' inputs) and classes (the head, never decomposed).
        cost: Prices one layer (:data:`LayerCost`).
        keep: Target summed cost of the eligible layers as a fraction of theirs now, in (0, 1].
        damage: ``"energy"``: the relative spectral energy a rank discards (module docstring).
        saturate: A ``keep`` below the lowest reachable cost gives the lowest ranks instead of
            an error (a strength clipped at its end, as ``scale`` clips).

    Returns:
        The allocation; its params name the decomposed layers only (a layer left whole is not
        named: ``[1.0, 1.0]`` may round below full rank where channels are not multiples of
        ``round_to``). Eligible layers whose padding mode is not ``zeros`` are left whole.

    Raises:
        SpaceError: bad ``keep``/``damage``, a space of another kind, or a target below what the
            lowest ranks reach (the message says the best reachable fraction).
    """
    from spaces.tucker import TuckerDecomposition

    what = "decompose.tucker allocation"
    keep = _checked(what, space, TuckerDecomposition, keep, "damage", damage, DAMAGES)
    costs = _Costs(cost)
    inputs = _layer_inputs(model, context)
    names = [n for n in (*space.conv_layers(model, context), *space.fc_layers(model, context))
             if n in inputs and getattr(inputs[n][0], "padding_mode", "zeros") == "zeros"]
    units = [_TuckerUnit(inputs[n][0], inputs[n][1], space.round_to, space.min_fraction, costs) for n in names]
    problem = _TuckerProblem(units)
    base = problem.total()
    _solve(problem, what, base, problem.floor(), keep, saturate, f"every eligible layer at its lowest ranks, "
                                                       f"min_fraction={space.min_fraction:g}, round_to={space.round_to}")
    conv: dict[str, list[float]] = {}
    fc: dict[str, float] = {}
    choices: dict[str, list[int]] = {}
    for n, u in zip(names, units):
        ranks = u.evaluate(u.state)[2]
        if ranks is None:
            continue
        choices[n] = ranks
        fractions = u.fractions(u.state)
        if u.linear:
            fc[n] = fractions[0]
        else:
            conv[n] = fractions
    params = {"conv": conv, "fc": fc, "round_to": space.round_to, "tucker1": True}
    return Allocation(params, choices, problem.total(), base)


def _corners(u: _TuckerUnit) -> list[tuple[int, ...]]:
    """Whole, lowest ranks, and (convs) each mode alone at its lowest: the cheapest forms under costs
    that grow with the ranks."""
    last = tuple(len(axis) - 1 for axis in u.axes)
    out = [(0,) * len(last), last]
    if len(last) == 2:
        out += [(last[0], 0), (0, last[1])]
    return out


def allocate_tucker(space: Any, model: nn.Module, context: Context, *, cost: LayerCost, keep: float,
                    damage: str = "energy") -> Params:
    """Params for ``space.transform``: per-layer ranks meeting ``keep`` of the summed layer cost
    (:func:`tucker_allocation`)."""
    return tucker_allocation(space, model, context, cost=cost, keep=keep, damage=damage).params


# -- channel counts -------------------------------------------------------------------------------


def _kept_choices(channels: int, round_to: int | None, max_ratio: float) -> list[tuple[int, float]]:
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


@dataclass
class _Priced:
    """A Conv/Linear layer of the channel problem and the groups that set its channels."""

    layer: _Layer
    shapes: list[tuple[int, ...]]
    outs: list[tuple[int, float]]  # (group, layer channels per root channel of the group)
    ins: list[tuple[int, float]]
    memo: dict[tuple[int, int], float]


class _ChannelProblem:
    """Groups share layers (a conv's input and output channels belong to two groups), so a move
    changes the savings of the groups beside it."""

    def __init__(self, channels: list[int], choices: list[list[tuple[int, float]]], damage: list[list[float]],
                 layers: list[_Priced], costs: _Costs) -> None:
        self.channels, self.choices, self.damage, self.layers, self.costs = channels, choices, damage, layers, costs
        self.size = len(channels)
        self.idx = [0] * self.size
        self.of_group: list[list[int]] = [[] for _ in channels]
        for i, pl in enumerate(layers):
            for g in {g for g, _ in (*pl.outs, *pl.ins)}:
                self.of_group[g].append(i)
        self.beside = [sorted({h for i in ls for h, _ in (*layers[i].outs, *layers[i].ins)} | {g})
                       for g, ls in enumerate(self.of_group)]
        self.current = [self._cost(i) for i in range(len(layers))]

    def kept(self, g: int, idx: int | None = None) -> int:
        return self.choices[g][self.idx[g] if idx is None else idx][0]

    def dims(self, i: int, override: tuple[int, int] | None = None) -> tuple[int, int]:
        """(in, out) channels of layer ``i`` at the current counts, group ``override[0]`` at index ``override[1]``."""
        pl = self.layers[i]

        def removed(terms: Iterable[tuple[int, float]]) -> int:
            total = 0.0
            for g, mult in terms:
                idx = override[1] if override is not None and override[0] == g else None
                total += (self.channels[g] - self.kept(g, idx)) * mult
            return int(round(total))

        if pl.layer.depthwise:  # in, out and groups move together
            c = pl.layer.cout - removed(dict([*pl.ins, *pl.outs]).items())
            return c, c
        return pl.layer.cin - removed(pl.ins), pl.layer.cout - removed(pl.outs)

    def _cost(self, i: int, override: tuple[int, int] | None = None) -> float:
        pl = self.layers[i]
        cin, cout = self.dims(i, override)
        hit = pl.memo.get((cin, cout))
        if hit is None:
            layer = replace(pl.layer, cin=cin, cout=cout, groups=cin if pl.layer.depthwise else pl.layer.groups)
            hit = math.fsum(self.costs(layer, _with_inputs(s, layer.kind, cin)) for s in pl.shapes)
            pl.memo[(cin, cout)] = hit
        return hit

    def state(self, g: int) -> tuple[int, ...]:
        return (self.idx[g],)

    def lines(self, g: int) -> list[list[tuple[int, ...]]]:
        return [[(i,) for i in range(self.idx[g] + 1, len(self.choices[g]))]]

    def evaluate(self, g: int, state: tuple[int, ...]) -> tuple[float, float]:
        over = (g, state[0])
        return math.fsum(self._cost(i, over) for i in self.of_group[g]), self.damage[g][state[0]]

    def apply(self, g: int, state: tuple[int, ...]) -> list[int]:
        self.idx[g] = state[0]
        for i in self.of_group[g]:
            self.current[i] = self._cost(i)
        return self.beside[g]

    def total(self) -> float:
        return math.fsum(self.current)

    def floor(self) -> float:
        """The summed cost with every group at its fewest channels (the least reachable for costs
        that grow with the channels)."""
        idx, self.idx = self.idx, [len(c) - 1 for c in self.choices]
        try:
            return math.fsum(self._cost(i) for i in range(len(self.layers)))
        finally:
            self.idx = idx

    def to_floor(self) -> None:
        """Every group at its fewest channels (what :meth:`floor` prices)."""
        self.idx = [len(c) - 1 for c in self.choices]
        self.current = [self._cost(i) for i in range(len(self.layers))]


def _group_scores(model: nn.Module, context: Context, criterion: str
                  ) -> tuple[Any, list[tuple[str, Any]], list[torch.Tensor], dict[nn.Module, str]]:
    """(dependency graph, groups, per-group scores, module names of the traced model) as
    ``ChannelPruning.transform`` computes them; Taylor's gradients are taken on a copy, so ``model``
    is not touched."""
    from spaces.prune import _calibration_grads, _device, _groups, _importance, _trace

    work = copy.deepcopy(model) if criterion == "taylor" else model
    dg = _trace(work, context.example_input(1).to(_device(work)))
    groups = _groups(work, dg, context)
    if criterion == "taylor":
        _calibration_grads(work, context.calibration_batches("prune.channel criterion 'taylor'"))
    imp_fn, fallback = _importance(criterion), _importance("l1")
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
    from rsc.training import recalibrate_bn

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
            for opts in [_kept_choices(g.channels, round_to, space.max_ratio)] for i in _sampled(len(opts) - 1, points)]
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


def _interpolated(options: list[tuple[int, float]], measured: list[tuple[int, float]]) -> list[float]:
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


def channel_allocation(space: Any, model: nn.Module, context: Context, *, cost: LayerCost, keep: float,
                       criterion: str = "l1", round_to: int | None = None, saturate: bool = False,
                       damage: str = "importance") -> Allocation:
    """Per-group channel counts whose pruned model's summed layer ``cost`` is at most ``keep`` times
    the original (every Conv/Linear layer counted, the head and the stem included).

    Args:
        space: A :class:`spaces.prune.ChannelPruning`; ratios stay within its ``max_ratio``.
        model: The model to prune (not mutated).
        context: Image size, classes (the head keeps its outputs) and, for ``taylor``, calibration.
        cost: Prices one layer (:data:`LayerCost`); ``energy_cost`` gives energy-aware pruning.
        keep: Target summed cost as a fraction of the original, in (0, 1].
        criterion: Channel importance, one of ``spaces.prune.CRITERIA`` (written into the params).
        round_to: Kept channels are multiples of it (at least one multiple); default the space's
            first ``round_to_choices``.
        saturate: A ``keep`` below the lowest reachable cost gives every group at ``max_ratio``
            instead of an error.
        damage: ``"importance"`` (the share of the group's importance removed) or
            ``"sensitivity"`` (the measured calibration-loss rise, :func:`channel_sensitivity`;
            needs calibration batches in the context).

    A group's channel count sets the output channels of the layers it roots and the input channels
    of the layers that consume it (torch-pruning's dependency graph, as ``transform`` prunes);
    groups that reach a grouped (not depthwise) convolution are left whole.

    Raises:
        SpaceError: bad ``keep``/``criterion``/``round_to``/``damage``, a space of another kind, a
            sensitivity without calibration batches, or a target below what ``max_ratio``
            everywhere reaches (the message says the best reachable fraction).
    """
    from spaces.prune import CRITERIA, ChannelPruning

    what = "prune.channel allocation"
    keep = _checked(what, space, ChannelPruning, keep, "criterion", criterion, CRITERIA)
    if damage not in CHANNEL_DAMAGES:
        raise SpaceError(f"{what}: unknown damage {damage!r}; known: {', '.join(CHANNEL_DAMAGES)}")
    if round_to is None:
        round_to = space.round_to_choices[0]
    if not is_positive_int(round_to):
        raise SpaceError(f"{what}: round_to must be a positive integer, got {round_to!r}")
    costs = _Costs(cost)
    inputs = _layer_inputs(model, context)
    dg, groups, scores, names = _group_scores(model, context, criterion)
    index = {n: i for i, n in enumerate(inputs)}
    layers = [_Priced(_Layer.of(m), shapes, [], [], {}) for m, shapes in inputs.values()]
    channels, choices, damages = [], [], []
    for g, ((_root, group), imp) in enumerate(zip(groups, scores)):
        c = len(group[0].idxs)
        seen: set[tuple[int, str]] = set()
        grouped = False
        for item in group:
            dep = item.dep
            i = index.get(names.get(dep.target.module, ""))
            side = ("out" if dg.is_out_channel_pruning_fn(dep.handler)
                    else "in" if dg.is_in_channel_pruning_fn(dep.handler) else None)
            if i is None or side is None or (i, side) in seen:
                continue
            seen.add((i, side))
            pl = layers[i]
            grouped |= pl.layer.kind == "conv" and pl.layer.groups > 1 and not pl.layer.depthwise
            (pl.outs if side == "out" else pl.ins).append((g, len(item.idxs) / c))
        options = [(c, 0.0)] if grouped else _kept_choices(c, round_to, space.max_ratio)
        order = torch.sort(imp).values
        total = float(order.sum())
        cum = torch.cumsum(order, 0)
        channels.append(c)
        choices.append(options)
        damages.append([float(cum[c - k - 1]) / total if k < c and total > 0 else 0.0 for k, _ in options])
    problem = _ChannelProblem(channels, choices, damages, layers, costs)
    base, floor = problem.total(), problem.floor()
    if damage == "sensitivity" and not (saturate and keep * base <= floor * (1 + _REL_TOL)):
        # measured only when the greedy runs (the strongest setting is every group at its floor)
        measured = channel_sensitivity(space, model, context, criterion=criterion, round_to=round_to)
        for g, (name, _) in enumerate(groups):
            if len(choices[g]) > 1:  # the importance share (<= 1) only breaks ties where the loss did not rise
                rises = _interpolated(choices[g], measured.get(name, []))
                damages[g] = [r + 1e-6 * sh for r, sh in zip(rises, damages[g])]
    _solve(problem, what, base, floor, keep, saturate,
           f"every group at max_ratio={space.max_ratio:g}, round_to={round_to}")
    ratios = {name: choices[g][problem.idx[g]][1] for g, (name, _) in enumerate(groups)}
    kept = {name: problem.kept(g) for g, (name, _) in enumerate(groups)}
    params = {"criterion": criterion, "round_to": round_to, "ratios": ratios}
    return Allocation(params, kept, problem.total(), base)


def allocate_channels(space: Any, model: nn.Module, context: Context, *, cost: LayerCost, keep: float,
                      criterion: str = "l1", round_to: int | None = None, damage: str = "importance") -> Params:
    """Params for ``space.transform``: per-group pruning ratios meeting ``keep`` of the summed layer
    cost (:func:`channel_allocation`)."""
    return channel_allocation(space, model, context, cost=cost, keep=keep, criterion=criterion,
                              round_to=round_to, damage=damage).params
