"""Layer costs: what one Conv/Linear layer costs at its input, and a model's summed cost.

A :data:`LayerCost` prices one layer: ``cost(module, input_shape) -> float`` for one freshly built float
``nn.Conv2d``/``nn.Linear`` (on the CPU, zero weights, the candidate channel counts) and its batch-1 input
shape. A cost that reads only the module's attributes says so with an attribute ``shape_only = True``; its
candidates are then built on the meta device (no memory, faster to build). Layers are priced one by one and
summed, which is how MACs and the analytical energy are defined, and close to how latency behaves on
CPUs/GPUs per operator. :func:`macs_cost` counts like :func:`costs.counting.count_macs`,
:func:`params_cost` its weights (a params budget allocated where the parameters are),
:func:`energy_cost` is :mod:`costs.energy`'s model of the layer, and a latency lookup table is any
object with a ``layer_cost(module, input_shape)`` method of the same signature
(:func:`get_layer_cost` picks one by name). Every distinct layer shape is priced once per
allocation (memoised: :class:`CostMemo`), so slow costs (a table that profiles its misses) stay affordable.

**Energy-aware pruning order** (Yang, Chen & Sze, CVPR 2017: prune first where the energy is, as
the analytical model counts it, data movement included) is :func:`spaces.allocation.allocate_channels`
with ``cost=energy_cost`` (``get_layer_cost("energy")``): layers on large feature maps, whose
activations spill to DRAM, and weight-heavy layers whose weights are fetched from DRAM pay most
per channel, so they are cut first.

Use: ``cost = get_layer_cost("macs")`` (``"params"``, ``"energy"``, or ``"latency"`` with ``table=``) for
an allocator; ``summed_cost(model, context, cost)`` prices a built model as its allocation predicted it.
:class:`LayerSpec`, :class:`CostMemo`, :func:`with_inputs` and :func:`layer_inputs` (every layer's input
shapes, from one forward) are what the allocators price their candidates with.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import nn

from costs.counting import hooked_forward, layer_kind
from spaces.base import Context
from spaces.errors import SpaceError

__all__ = [
    "LayerCost", "LAYER_COSTS", "LayerSpec", "CostMemo", "with_inputs", "macs_cost", "params_cost", "energy_cost",
    "get_layer_cost", "layer_inputs", "summed_cost",
]


#: ``cost(module, input_shape) -> float``: the cost of one float Conv/Linear layer at a batch-1 input.
LayerCost = Callable[[nn.Module, tuple[int, ...]], float]

#: Names :func:`get_layer_cost` knows.
LAYER_COSTS = ("macs", "params", "energy", "latency")

_LATENCY_HELP = "latency allocation needs a latency table (--target lut:FILE; build one with python -m search.profile)"


# -- layers by their attributes -----------------------------------------------------------------


def _tuple(value: Any, n: int) -> tuple[int, ...]:
    if isinstance(value, (tuple, list)):
        return tuple(int(v) for v in value)
    return (int(value),) * n


@dataclass(frozen=True)
class LayerSpec:
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
    def of(cls, m: nn.Module) -> LayerSpec:
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
    def conv(cls, cin: int, cout: int, like: LayerSpec, *, pointwise: bool = False, bias: bool = False) -> LayerSpec:
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


def with_inputs(shape: tuple[int, ...], kind: str, channels: int) -> tuple[int, ...]:
    """``shape`` with its channel (conv) or feature (linear) dimension set to ``channels``."""
    if kind == "linear":
        return (*shape[:-1], channels)
    return (shape[0], channels, *shape[2:])


class CostMemo:
    """``cost`` memoised on (layer attributes, input shape); each miss builds one fresh layer, on the
    meta device (no memory, faster to build) when the cost says ``shape_only``."""

    def __init__(self, cost: LayerCost) -> None:
        if not callable(cost):
            raise SpaceError(f"a layer cost must be callable as cost(module, input_shape), got {cost!r:.80}")
        self.cost = cost
        self.device = "meta" if getattr(cost, "shape_only", False) else "cpu"
        self.memo: dict[tuple[LayerSpec, tuple[int, ...]], float] = {}

    def __call__(self, layer: LayerSpec, shape: tuple[int, ...]) -> float:
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
    layer = LayerSpec.of(module)
    out = math.prod(layer.out_shape(tuple(input_shape)))
    if layer.kind == "linear":
        return float(out * layer.cin)
    return float(out * (layer.cin // layer.groups) * math.prod(layer.kernel))


macs_cost.shape_only = True  # type: ignore[attr-defined] - reads attributes only (see CostMemo)


def params_cost(module: nn.Module, input_shape: tuple[int, ...]) -> float:
    """Parameters of one layer, weights and bias (as ``costs.counting.count_params`` counts them; the input
    shape does not matter)."""
    layer = LayerSpec.of(module)
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
    twin = module if getattr(module.weight, "is_meta", False) else LayerSpec.of(module).build("meta")
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


def layer_inputs(model: nn.Module, context: Context) -> dict[str, tuple[nn.Module, list[tuple[int, ...]]]]:
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
    costs = CostMemo(cost)
    return math.fsum(costs(LayerSpec.of(m), shape)
                     for m, shapes in layer_inputs(model, context).values() for shape in shapes)
