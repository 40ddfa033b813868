"""Per-layer latency tables: measure every layer configuration once on a target, predict a model in microseconds.

A model's latency on a target is predicted as the sum of its *kernels*' latencies, read from a table
measured on that target (NetAdapt, Yang et al. 2018; nn-Meter, Zhang et al. 2021), then corrected
by a fit on whole models::

    predicted_ms = alpha * sum(kernel_ms) + beta      or      sum(kernel_ms) * ratio(sum(kernel_ms))
                   or      sum over classes c of weight[c] * sum(kernel_ms of class c)

*Kernels* are the units a runtime executes as one: the model is traced with ``torch.fx`` and a
convolution is fused with the BatchNorm and the activation that consume it alone (``conv+bn+relu``:
what TorchScript freezing and onnxruntime fuse; eager PyTorch runs them back to back, and the
kernel is timed the same way), a linear layer with its activation, a residual add with its ReLU.
The rest (pools, flatten, a lone BN...) are kernels of their own. Each kernel is keyed by its
*spec* (the operator and every hyper-parameter: kernel size, stride, padding, groups, fused ops),
its input side and its channel dims (``(c_in, c_out)`` for convolutions and linear layers, ``(c,)``
for depthwise convolutions and element-wise kernels). The table holds, per spec and side, a grid
over the dims, measured on the target in its runtime, memory format, threads and batch; between
grid points it interpolates multilinearly.

*Where* a kernel is timed decides whether the sum adds up. A kernel's time depends on what ran
before it: measured on ResNet-18 at batch 1 (41 candidates), the same kernels timed alone, back to
back, summed to 0.75x the whole model on average, with a spread (coefficient of variation of whole/sum
across models) of 8.3%; timed one kind at a time, 48 neighbouring grid points interleaved, 8.8%, with a
3x3 convolution at 2x2 pixels 1.5x too slow and a residual add 0.6x too fast; timed in the model's own
order, 1.6%. So the grid is timed in rounds that look like a forward pass (:func:`profile_kernels`):
one point of every kind per round, kinds in the order they run in a network, 4.2% there. A whole
model's prediction is the sum corrected by a fit on whole *calibration models* (:func:`fit_correction`):
a line (``alpha * sum + beta``: the forward's own overhead), a calibration curve (``measured / sum``
piecewise linear in the sum, knots at quantiles of the calibration sums, flat beyond them,
:func:`fit_curve`) or a weight per *class* of kernel (1x1 convolutions, other convolutions, the rest:
:func:`kernel_class`, :func:`fit_classes`), whichever has the smallest leave-one-out error. The classes are
there because the grid's time is not off alike for every kernel: in five ResNet-18 tables the whole
models ran their 1x1 convolutions at 1.0-1.4x of the grid's time relative to the other convolutions
(adds, pools and the linear layer 0.2-2.3x: nearly constant over the candidates, a fixed cost more
than a per-kernel one), so a correction of the sum alone can be off by method; at batch 16 the line
predicted Tucker-2 models (three convolutions per layer, two of them 1x1) 14% too fast and pruned ones
7%, the curve 7% too fast and 3% too slow, the classes' weights 1% and 3% too fast. The curve was
needed while kernels were timed out of context, when the ratio was not even monotone in model size (ResNet-18 at batch 1:
the base at 1.0x its kernels' sum, mid-size candidates ~1.12x, the most compressed plans ~0.8x); tables
made then keep it. (A per-kernel term was tried and dropped: fitted on a dozen whole models it
predicted Tucker-2 models, which have many more kernels, 14-45% too fast, so they broke latency
budgets. The classes' weights are fitted on 32 models including the strongest plans, and chosen only where
their leave-one-out error is the smallest.)

A kernel the table lacks (another spec, dims outside the grid) is *measured on the fly* on the
table's target (``on_missing="measure"``, cached in the table; :meth:`LatencyTable.save` keeps it)
or is an error (``on_missing="error"``): never a silent zero. A model that cannot be split into
kernels (int8 ``torch.ao`` graphs, models ``torch.fx`` cannot trace) is measured whole, or is an
error, the same way. Every table carries the fingerprint of the target it was measured on
(device, CPU or GPU name, runtime, threads, memory format, batch, library versions) and the
model, input size and classes it was profiled for; :func:`check_table` refuses one that was
measured elsewhere, naming what differs. ``python -m search.profile`` builds tables.

Tracing costs 20-40 ms a model; :meth:`LatencyTable.predict` traces once per model *structure* and
reads the kernels of every later model of it from its modules (:mod:`rsc.kernel_templates`), so a
search's candidates, which share a handful of structures, are predicted in about a millisecond or less.
"""

from __future__ import annotations

import functools
import json
import operator
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rsc.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Kernel", "LatencyTable", "TableMiss", "TableMismatch", "kernels_of", "build_kernel", "load_table",
           "check_table", "fit_curve", "fit_correction", "fit_classes", "kernel_class", "class_sums", "CLASSES",
           "curve_ratio", "profile_kernels", "profile_rounds", "FINGERPRINT_KEYS", "TABLE_VERSION"]

TABLE_VERSION = 1
CLASSES = ("conv1x1", "conv", "other")  # the classes of kernel a table weighs apart (kernel_class)
#: fingerprint fields that must agree between a table and the target it is used on (not the host name:
#: a table measured on one board serves its twins).
FINGERPRINT_KEYS = ("device", "device_name", "machine", "runtime", "provider", "threads", "memory_format",
                    "batch", "torch", "onnxruntime", "opset")
_ACTS = {"ReLU": "relu", "ReLU6": "relu6", "Hardswish": "hardswish", "SiLU": "silu", "Sigmoid": "sigmoid",
         "Hardsigmoid": "hardsigmoid", "GELU": "gelu"}


class TableMiss(ConfigError):
    """A kernel (or model) the table has no entry for, with ``on_missing="error"``."""


class TableMismatch(ConfigError):
    """A table measured on another target, or profiled for another model, input size or classes."""


@dataclass(frozen=True)
class Kernel:
    """One fused kernel of a traced model.

    Attributes:
        spec: the operator and its hyper-parameters, plain JSON (``{"op": "conv", "k": [3, 3], ...}``).
        side: the input's spatial side (1 for kernels after global pooling).
        dims: the channel dims the table interpolates over (see the module docstring).
        shape: the input shape without the batch, to time :attr:`module` with.
        module: a runnable copy of the kernel taking that input (for measuring on the fly).
        name: the traced node it starts at (for messages).
    """

    spec: Mapping[str, Any]
    side: int
    dims: tuple[int, ...]
    shape: tuple[int, ...]
    module: Any = field(default=None, compare=False, repr=False)
    name: str = ""
    known_key: str | None = field(default=None, compare=False, repr=False)

    @property
    def key(self) -> str:
        """The table's key of this kernel: its spec as canonical JSON and its side (``known_key`` where
        the caller has it already)."""
        if self.known_key is not None:
            return self.known_key
        return f"{json.dumps(dict(self.spec), sort_keys=True, separators=(',', ':'))}@{self.side}"


def kernel_class(spec: Mapping[str, Any]) -> str:
    """Which of :data:`CLASSES` a kernel's spec is: a 1x1 convolution, another convolution, or the rest
    (adds, pools, linear layers, lone BatchNorms...)."""
    if spec.get("op") != "conv":
        return "other"
    return "conv1x1" if list(spec.get("k", ())) == [1, 1] else "conv"


def class_sums(kernels: Sequence[Kernel], ms: Sequence[float]) -> dict[str, float]:
    """The kernels' latencies summed per class (:func:`kernel_class`), every class present (0.0 if none)."""
    out = dict.fromkeys(CLASSES, 0.0)
    for k, v in zip(kernels, ms):
        out[kernel_class(k.spec)] += float(v)
    return out


# -- splitting a model into kernels --------------------------------------------------------------


def _pair(v: Any) -> list[int]:
    return [int(x) for x in (v if isinstance(v, (tuple, list)) else (v, v))]


def _act_of(node: Any, gm: Any) -> str | None:
    import torch
    from torch.nn import functional as F

    if node.op == "call_module":
        return _ACTS.get(type(gm.get_submodule(node.target)).__name__)
    if node.op == "call_function":
        return {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.hardswish: "hardswish",
                F.silu: "silu", torch.sigmoid: "sigmoid"}.get(node.target)
    if node.op == "call_method" and node.target in ("relu", "relu_", "sigmoid"):
        return node.target.rstrip("_")
    return None


def _only_user(node: Any) -> Any | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _shape(node: Any) -> tuple[int, ...] | None:
    meta = node.meta.get("tensor_meta")
    return tuple(int(d) for d in meta.shape) if meta is not None and hasattr(meta, "shape") else None


def _side(shape: Sequence[int]) -> int:
    return int(shape[2]) if len(shape) == 4 else 1


def kernels_of(model: nn.Module, image_size: int, in_channels: int = 3) -> list[Kernel]:
    """The fused kernels of ``model`` in execution order (module docstring).

    Raises:
        TableMiss: the model cannot be split (int8 graphs, untraceable code): measure it whole.
    """
    return [k for k, _ in split_kernels(model, image_size, in_channels)[1]]


def split_kernels(model: nn.Module, image_size: int, in_channels: int = 3) -> tuple[Any, list[tuple[Kernel, list[Any]]]]:
    """:func:`kernels_of` with what it read them from: the traced graph module and, per kernel, its
    chain of graph nodes (the first is the operator, then the fused BN and activation).

    Raises:
        TableMiss: as :func:`kernels_of`.
    """
    import torch
    from torch import fx, nn
    from torch.fx.passes.shape_prop import ShapeProp

    from rsc.cost import eval_mode

    if any(".quantized" in type(m).__module__ for m in model.modules()):
        raise TableMiss("int8 (torch.ao) kernels are not in latency tables")
    try:
        with eval_mode(model):
            gm = model if isinstance(model, fx.GraphModule) else fx.symbolic_trace(model)
            with torch.no_grad():
                ShapeProp(gm).propagate(torch.zeros(1, in_channels, image_size, image_size,
                                                    device=next(iter(model.parameters())).device))
    except Exception as exc:  # noqa: BLE001 - tracing fails in many ways
        raise TableMiss(f"torch.fx cannot trace {type(model).__name__} into kernels: "
                        f"{type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''}") from None
    done: set[Any] = set()
    out: list[tuple[Kernel, list[Any]]] = []
    for node in gm.graph.nodes:
        if node in done or node.op in ("placeholder", "output", "get_attr"):
            continue
        shape_in = next((_shape(a) for a in node.all_input_nodes if _shape(a)), None)
        if shape_in is None:
            continue
        chain = [node]
        spec: dict[str, Any]
        m = gm.get_submodule(node.target) if node.op == "call_module" else None
        if (isinstance(m, nn.Conv2d) and m.padding_mode == "zeros") or isinstance(m, nn.Linear):
            spec, dims = _layer_spec(m)
            nxt = _only_user(node)
            if isinstance(m, nn.Conv2d) and nxt is not None and nxt.op == "call_module" and \
                    isinstance(gm.get_submodule(nxt.target), nn.BatchNorm2d):
                chain.append(nxt)
                spec["bn"] = True
            _fuse_act(chain, spec, gm)
        elif node.op == "call_function" and node.target in (operator.add, torch.add, operator.iadd) and \
                len(node.all_input_nodes) == 2 and _shape(node.all_input_nodes[0]) == _shape(node.all_input_nodes[1]):
            spec = {"op": "add"}
            _fuse_act(chain, spec, gm)
            dims = (shape_in[1],)
        else:
            spec = _simple_spec(node, m, gm)
            dims = (shape_in[1],) if spec["op"] != "exact" else tuple(shape_in[1:])
        done.update(chain)
        out.append((Kernel(spec=spec, side=_side(shape_in), dims=tuple(int(d) for d in dims),
                           shape=tuple(shape_in[1:]), module=_Lazy(chain, gm), name=str(node.name)), chain))
    return gm, out


def _layer_spec(m: Any) -> tuple[dict[str, Any], tuple[int, ...]]:
    """``(spec, dims)`` of a Conv2d or Linear layer alone (grouped convolutions other than depthwise:
    an ``exact`` spec, measured only at their own dims)."""
    from torch import nn

    if isinstance(m, nn.Linear):
        return {"op": "linear", "bias": m.bias is not None}, (int(m.in_features), int(m.out_features))
    dw = m.groups > 1 and m.groups == m.in_channels == m.out_channels
    dims = (int(m.in_channels),) if dw else (int(m.in_channels), int(m.out_channels))
    if m.groups > 1 and not dw:
        return {"op": "exact", "what": repr(m)}, dims
    return {"op": "conv", "k": _pair(m.kernel_size), "s": _pair(m.stride), "p": _pair(m.padding),
            "d": _pair(m.dilation), "dw": dw, "bias": m.bias is not None}, dims


def _fuse_act(chain: list[Any], spec: dict[str, Any], gm: Any) -> None:
    """Append the activation that alone consumes the chain's last node, if any, to the kernel."""
    nxt = _only_user(chain[-1])
    act = _act_of(nxt, gm) if nxt is not None else None
    if act:
        chain.append(nxt)
        spec["act"] = act


def _simple_spec(node: Any, m: Any, gm: Any) -> dict[str, Any]:
    """The spec of a kernel that is not a conv/linear/add: rebuilt from its spec where it is common."""
    import torch
    from torch import nn
    from torch.nn import functional as F

    if m is not None:
        if isinstance(m, nn.BatchNorm2d):
            return {"op": "bn"}
        if type(m).__name__ in _ACTS:
            return {"op": "act", "act": _ACTS[type(m).__name__]}
        if isinstance(m, nn.MaxPool2d):
            return {"op": "maxpool", "k": _pair(m.kernel_size), "s": _pair(m.stride or m.kernel_size),
                    "p": _pair(m.padding), "d": _pair(m.dilation), "ceil": bool(m.ceil_mode)}
        if isinstance(m, nn.AdaptiveAvgPool2d):
            return {"op": "gap", "out": _pair(m.output_size)}
        if isinstance(m, (nn.Dropout, nn.Identity)):
            return {"op": "identity", "what": type(m).__name__}
        if isinstance(m, nn.Flatten):
            return {"op": "flatten"}
        return {"op": "exact", "what": repr(m)}
    if node.op == "call_function":
        if node.target is F.adaptive_avg_pool2d:
            return {"op": "gap", "out": _pair(node.args[1] if len(node.args) > 1 else node.kwargs["output_size"])}
        if node.target is torch.flatten:
            return {"op": "flatten"}
        if _act_of(node, gm):
            return {"op": "act", "act": _act_of(node, gm)}
    return {"op": "exact", "what": f"{node.op}:{getattr(node.target, '__name__', node.target)}"}


class _Lazy:
    """A kernel's runnable module, cut out of its graph only when it is measured (:func:`_extract`)."""

    def __init__(self, chain: Sequence[Any], gm: Any) -> None:
        self.chain, self.gm = list(chain), gm

    def build(self) -> Any:
        return _extract(self.chain, self.gm)


def _extract(chain: Sequence[Any], gm: Any) -> Any:
    """A runnable copy of ``chain`` taking one input (plus a batch): the kernel cut out of its graph,
    its other tensor inputs fixed random tensors of their traced shapes."""
    import copy

    import torch
    from torch import fx, nn

    graph = fx.Graph()
    env: dict[Any, Any] = {}
    x = graph.placeholder("x")
    first_input = next(a for a in chain[0].all_input_nodes if _shape(a))
    env[first_input] = x
    extras = nn.Module()
    holder = nn.Module()
    n_extra = 0
    for node in chain:
        for a in node.all_input_nodes:
            if a in env:
                continue
            shape = _shape(a)
            name = f"extra{n_extra}"
            n_extra += 1
            extras.register_buffer(name, torch.randn(*(shape or (1,))))
            env[a] = graph.get_attr(f"extras.{name}")
        env[node] = graph.node_copy(node, lambda a: env[a])
    graph.output(env[chain[-1]])
    holder.extras = extras
    for node in chain:
        if node.op == "call_module":
            parts = node.target.split(".")
            parent = holder
            for p in parts[:-1]:
                if not hasattr(parent, p):
                    parent.add_module(p, nn.Module())
                parent = getattr(parent, p)
            parent.add_module(parts[-1], copy.deepcopy(gm.get_submodule(node.target)))
    return fx.GraphModule(holder, graph).eval()


def _module(kernel: Kernel) -> Any:
    return kernel.module.build() if isinstance(kernel.module, _Lazy) else kernel.module


def build_kernel(spec: Mapping[str, Any], dims: Sequence[int], side: int) -> tuple[Any, tuple[int, ...]]:
    """A fresh kernel module for ``spec`` at ``dims`` and its input shape (without the batch).

    Raises:
        TableMiss: an ``exact`` spec (rebuilt only from a model that has it).
    """
    import torch
    from torch import nn

    op = spec["op"]
    acts = {name: getattr(nn, cls) for cls, name in _ACTS.items()}
    act = [acts[spec["act"]]()] if spec.get("act") else []
    if op == "conv":
        if spec["dw"]:
            c_in = c_out = groups = int(dims[0])
        else:
            (c_in, c_out), groups = (int(d) for d in dims), 1
        layers = [nn.Conv2d(c_in, c_out, tuple(spec["k"]), stride=tuple(spec["s"]), padding=tuple(spec["p"]),
                            dilation=tuple(spec["d"]), groups=groups, bias=bool(spec["bias"]))]
        if spec.get("bn"):
            layers.append(nn.BatchNorm2d(c_out))
        return nn.Sequential(*layers, *act).eval(), (c_in, side, side)
    if op == "linear":
        return nn.Sequential(nn.Flatten(1), nn.Linear(int(dims[0]), int(dims[1]), bias=bool(spec["bias"])),
                             *act).eval(), (int(dims[0]), 1, 1)
    c = int(dims[0])
    shape = (c, side, side)
    if op == "add":
        return _add_module()(torch.randn(1, *shape), act[0] if act else None).eval(), shape
    if op == "bn":
        return nn.BatchNorm2d(c).eval(), shape
    if op == "act":
        return nn.Sequential(*act).eval(), shape
    if op == "maxpool":
        return nn.MaxPool2d(tuple(spec["k"]), stride=tuple(spec["s"]), padding=tuple(spec["p"]),
                            dilation=tuple(spec["d"]), ceil_mode=bool(spec["ceil"])), shape
    if op == "gap":
        return nn.AdaptiveAvgPool2d(tuple(spec["out"])), shape
    if op == "flatten":
        return nn.Flatten(1), shape
    if op == "identity":
        return nn.Identity(), shape
    raise TableMiss(f"kernel {spec} is measured only from a model that has it")


@functools.cache
def _add_module() -> type:
    """The residual-add kernel's module class (built on first use: torch loads lazily)."""
    from torch import nn

    class Add(nn.Module):
        """``x + y`` (a residual add; ``y`` a fixed tensor of the same shape), then the fused activation."""

        def __init__(self, y: Any, act: Any) -> None:
            super().__init__()
            self.register_buffer("y", y)
            self.act = act if act is not None else nn.Identity()

        def forward(self, x: Any) -> Any:
            return self.act(x + self.y)

    return Add


# -- the table -----------------------------------------------------------------------------------


def _interp(axes: Sequence[Sequence[int]], values: Any, dims: Sequence[int]) -> float | None:
    """Multilinear interpolation of a grid (``values`` nested lists over ``axes``); None outside it."""
    if len(axes) != len(dims):
        return None
    corners: list[list[tuple[int, float]]] = []
    for axis, d in zip(axes, dims):
        if d < axis[0] or d > axis[-1]:
            return None
        hi = next(i for i, a in enumerate(axis) if a >= d)
        if axis[hi] == d or hi == 0:
            corners.append([(hi, 1.0)])
            continue
        lo = hi - 1
        w = (d - axis[lo]) / (axis[hi] - axis[lo])
        corners.append([(lo, 1.0 - w), (hi, w)])
    total = 0.0

    def walk(level: int, node: Any, weight: float) -> None:
        nonlocal total
        if level == len(corners):
            total += weight * float(node)
            return
        for i, w in corners[level]:
            if w:
                walk(level + 1, node[i], weight * w)

    walk(0, values, 1.0)
    return total


class LatencyTable:
    """A measured latency table (module docstring); JSON on disk (:meth:`save`, :func:`load_table`).

    Attributes:
        target: the :mod:`rsc.targets` spec it was measured on.
        fingerprint: what :meth:`rsc.targets.Target.fingerprint` said there.
        model, image_size, num_classes: what it was profiled for.
        grids: ``kernel key -> {"axes": [[dim values]...], "ms": nested grid}``.
        exact: ``kernel key -> {"dims, joined by x": ms}``: points measured outside a grid or on the fly.
        curve: the calibration curve, ``{"sums": knots, "ratios": measured/sum at each knot}``
            (:func:`fit_curve`); None in tables made before it, which use ``alpha`` and ``beta``.
        alpha, beta: the line fitted on the same models (``alpha * sum + beta``).
        weights: ``class -> weight`` (:data:`CLASSES`, :func:`fit_classes`) fitted on the same models; None in
            tables made before it, or where no positive weights fit.
        correction: which predicts (``"curve"``, ``"line"`` or ``"classes"``, :func:`fit_correction`: the one
            with the smallest leave-one-out error on the calibration models); None (tables made before the
            choice): the curve where there is one.
        calibration: the whole models it was fitted on: ``[{"sum_ms", "measured_ms", "predicted_ms"}]``.
        on_missing: ``"measure"`` (on the table's target, cached here) or ``"error"``.
    """

    def __init__(self, *, target: str, fingerprint: Mapping[str, Any], model: str, image_size: int,
                 num_classes: int, grids: Mapping[str, Any] | None = None, exact: Mapping[str, Any] | None = None,
                 alpha: float = 1.0, beta: float = 0.0, curve: Mapping[str, Sequence[float]] | None = None,
                 correction: str | None = None, weights: Mapping[str, float] | None = None,
                 calibration: Sequence[Mapping[str, Any]] = (),
                 meta: Mapping[str, Any] | None = None, path: str | None = None) -> None:
        self.target = str(target)
        self.fingerprint = dict(fingerprint)
        self.model, self.image_size, self.num_classes = str(model), int(image_size), int(num_classes)
        self.grids: dict[str, Any] = dict(grids or {})
        self.exact: dict[str, dict[str, float]] = {k: dict(v) for k, v in (exact or {}).items()}
        self.alpha, self.beta = float(alpha), float(beta)
        self.curve = ({"sums": [float(v) for v in curve["sums"]], "ratios": [float(v) for v in curve["ratios"]]}
                      if curve else None)
        if self.curve and (not self.curve["sums"] or len(self.curve["sums"]) != len(self.curve["ratios"])):
            raise ValueError("a calibration curve needs as many ratios as knots, and at least one")
        if correction not in (None, "curve", "line", "classes"):
            raise ValueError(f"correction must be 'curve', 'line' or 'classes', got {correction!r}")
        self.weights = {k: float(v) for k, v in weights.items()} if weights else None
        if self.weights is not None and (set(self.weights) != set(CLASSES) or min(self.weights.values()) <= 0):
            raise ValueError(f"weights must be positive, one for each of {', '.join(CLASSES)}")
        if correction == "classes" and self.weights is None:
            raise ValueError("correction 'classes' needs the classes' weights")
        self.correction = correction
        self.calibration = [dict(c) for c in calibration]
        self.meta = dict(meta or {})
        self.path = path
        self.on_missing = "measure"
        self.measured_on_the_fly = 0
        self.dirty = False
        self._templates: Any = None  # rsc.kernel_templates.KernelTemplates, made on first use
        self._memo: dict[tuple[str, tuple[int, ...]], float] = {}  # kernel_ms by (key, dims)

    def kernels(self, model: nn.Module) -> list[Kernel]:
        """``model``'s kernels at the table's input size: traced once per model structure, then read
        from its modules (:mod:`rsc.kernel_templates`).

        Raises:
            TableMiss: as :func:`kernels_of`.
        """
        if self._templates is None:
            from rsc.kernel_templates import KernelTemplates

            self._templates = KernelTemplates()
        return self._templates.kernels(model, self.image_size)

    @property
    def structures_traced(self) -> int:
        """How many times :meth:`kernels` traced a model (once per structure) since the caches were cleared."""
        return self._templates.traces if self._templates is not None else 0

    def clear_caches(self) -> None:
        """Forget the model structures traced and the kernel latencies looked up (the table stays)."""
        self._templates, self._memo = None, {}

    # -- lookup ----------------------------------------------------------------------------

    def kernel_ms(self, kernel: Kernel) -> float | None:
        """The table's latency of one kernel (exact point, else interpolated), or None."""
        key = kernel.key
        known = self._memo.get((key, kernel.dims))
        if known is not None:
            return known
        hit = self.exact.get(key, {}).get("x".join(map(str, kernel.dims)))
        if hit is not None:
            value: float | None = float(hit)
        else:
            grid = self.grids.get(key)
            value = _interp(grid["axes"], grid["ms"], kernel.dims) if grid else None
        if value is not None:
            self._memo[(key, kernel.dims)] = value
        return value

    def kernels_ms(self, kernels: Sequence[Kernel]) -> list[float]:
        """Every kernel's latency; the missing ones measured on the fly (or :class:`TableMiss`)."""
        values = [self.kernel_ms(k) for k in kernels]
        missing = {k.key + "|" + "x".join(map(str, k.dims)): k for k, v in zip(kernels, values) if v is None}
        if missing:
            if self.on_missing != "measure":
                k = next(iter(missing.values()))
                raise TableMiss(f"latency table {self.path or ''} has no entry for kernel {k.name} "
                                f"{dict(k.spec)} at side {k.side}, dims {list(k.dims)} ({len(missing)} missing in all); "
                                "extend it with python -m search.profile, or let it measure on the fly")
            self._measure_exact(list(missing.values()))
            values = [self.kernel_ms(k) for k in kernels]
        return [float(v) for v in values]  # type: ignore[arg-type]

    def sum_ms(self, model: nn.Module) -> float:
        return float(sum(self.kernels_ms(self.kernels(model))))

    def class_sums(self, model: nn.Module) -> dict[str, float]:
        """The model's kernels' latencies summed per class (:func:`class_sums`)."""
        kernels = self.kernels(model)
        return class_sums(kernels, self.kernels_ms(kernels))

    def predict(self, model: nn.Module) -> float:
        """Predicted latency (ms per forward of the target's batch) of ``model``.

        A model that cannot be split into kernels is measured whole on the table's target (or, with
        ``on_missing="error"``, :class:`TableMiss`).
        """
        try:
            kernels = self.kernels(model)
        except TableMiss as exc:
            if self.on_missing != "measure":
                raise TableMiss(f"latency table {self.path or ''}: {exc}; measure on --target {self.target} "
                                "instead") from None
            from rsc.targets import compare_latency_on

            self.measured_on_the_fly += 1
            return float(compare_latency_on(self.target, {"model": model}, self.image_size)["model"])
        return self.combine_classes(class_sums(kernels, self.kernels_ms(kernels)))

    @property
    def uses_curve(self) -> bool:
        """Whether predictions go through the calibration curve (else the line or the classes' weights)."""
        return bool(self.curve) and self.correction not in ("line", "classes")

    def combine(self, total_ms: float) -> float:
        """A whole model's prediction from the sum of its kernels' latencies, by the curve or the line (a
        table that weighs classes predicts through :meth:`combine_classes`)."""
        if self.uses_curve:
            return total_ms * curve_ratio(self.curve, total_ms)
        return self.alpha * total_ms + self.beta

    def combine_classes(self, sums: Mapping[str, float], correction: str | None = None) -> float:
        """A whole model's prediction from its kernels' latencies summed per class (:func:`class_sums`):
        the classes' weights where the table chose them, else :meth:`combine` of the total. ``correction``
        (``"line"``, ``"curve"``, ``"classes"``) predicts with that one instead of the table's choice."""
        total = float(sum(sums.values()))
        if (correction or self.correction) == "classes":
            return float(sum(self.weights[k] * float(sums.get(k, 0.0)) for k in CLASSES))
        if correction == "line":
            return self.alpha * total + self.beta
        if correction == "curve":
            return total * curve_ratio(self.curve, total)
        return self.combine(total)

    def apply_fit(self, fit: Mapping[str, Any]) -> None:
        """Take the corrections :func:`fit_correction` returned, and its choice."""
        self.alpha, self.beta, self.curve = float(fit["alpha"]), float(fit["beta"]), fit["curve"]
        self.weights, self.correction = fit["weights"], fit["correction"]

    def layer_cost(self, module: nn.Module, input_shape: Sequence[int]) -> float:
        """Latency (ms) of one conv or linear layer at ``input_shape`` (batch 1 shape, as
        :data:`spaces.allocate.LayerCost` asks); its bn/activation are not included."""
        from torch import nn

        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            raise TableMiss(f"layer_cost takes a Conv2d or Linear layer, got {type(module).__name__}")
        spec, dims = _layer_spec(module)
        shape = (module.in_features, 1, 1) if isinstance(module, nn.Linear) else tuple(int(d) for d in input_shape[1:])
        kernel = Kernel(spec=spec, side=_side((1, *shape)), dims=dims, shape=shape,
                        module=nn.Sequential(nn.Flatten(1), module) if isinstance(module, nn.Linear) else module)
        ms = self.kernels_ms([kernel])[0]
        if self.correction == "classes":  # a 1x1 convolution weighs what a whole model says it costs
            ms *= self.weights[kernel_class(spec)] / self.weights["conv"]
        return ms

    # -- measuring -------------------------------------------------------------------------

    def _measure_exact(self, kernels: Sequence[Kernel]) -> None:
        from rsc.targets import compare_latency_on

        models, shapes = {}, {}
        for i, k in enumerate(kernels):
            try:
                module, shape = build_kernel(k.spec, k.dims, k.side)
            except TableMiss:
                if k.module is None:
                    raise
                module, shape = _module(k), k.shape
            models[str(i)], shapes[str(i)] = module, shape
        lat = compare_latency_on(self.target, models, self.image_size, shapes=shapes)
        self._memo.clear()
        for i, k in enumerate(kernels):
            self.exact.setdefault(k.key, {})["x".join(map(str, k.dims))] = float(lat[str(i)])
        self.measured_on_the_fly += len(kernels)
        self.dirty = True

    # -- files -----------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        return {"version": TABLE_VERSION, "target": self.target, "fingerprint": self.fingerprint,
                "model": self.model, "image_size": self.image_size, "num_classes": self.num_classes,
                "alpha": self.alpha, "beta": self.beta, "curve": self.curve, "correction": self.correction,
                "weights": self.weights,
                "calibration": self.calibration,
                "meta": self.meta,
                "grids": self.grids, "exact": self.exact}

    def save(self, path: str | os.PathLike | None = None) -> Path:
        """Write the table as JSON, atomically; returns the path."""
        out = Path(path or self.path or "lut.json")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + f".tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.to_dict(), indent=None, sort_keys=True, allow_nan=False))
        os.replace(tmp, out)
        self.path, self.dirty = str(out), False
        return out

    def summary(self) -> str:
        points = sum(_count(g["ms"]) for g in self.grids.values()) + sum(len(v) for v in self.exact.values())
        fit = ""
        if self.calibration:
            errs = [abs(c["predicted_ms"] / c["measured_ms"] - 1) for c in self.calibration if c.get("measured_ms")]
            fit = f"; whole-model fit on {len(errs)} models, max error {100 * max(errs):.1f}%" if errs else ""
        if self.correction == "classes":
            corr = "weights by kernel class " + ", ".join(f"{k} {self.weights[k]:.3f}" for k in CLASSES)
        elif self.uses_curve:
            r = self.curve["ratios"]
            corr = f"calibration curve over {len(r)} knot(s), measured/sum {min(r):.2f}-{max(r):.2f}"
        else:
            corr = f"alpha {self.alpha:.3f}, beta {self.beta:.3f} ms"
        loo = self.meta.get("correction_loo") or {}
        if "line" in loo and "curve" in loo:
            corr += (" (chosen by leave-one-out error: " + ", ".join(f"{k} {100 * v:.1f}%" for k, v in loo.items())
                     + ")")
        return (f"latency table for {self.model} at {self.image_size}px on {self.target} "
                f"({self.fingerprint.get('device_name', '?')}): {len(self.grids)} kernel grids, {points} points, "
                f"{corr}{fit}")


def _count(values: Any) -> int:
    return sum(_count(v) for v in values) if isinstance(values, list) else 1


_CACHE: dict[tuple[str, float], LatencyTable] = {}


def load_table(path: str | os.PathLike) -> LatencyTable:
    """Read a table written by :meth:`LatencyTable.save` (cached per path and mtime).

    Raises:
        ConfigError: missing, unreadable, not a table, or of another format version.
    """
    p = Path(path).expanduser()
    try:
        stamp = p.stat().st_mtime
    except OSError:
        raise ConfigError(f"latency table {path}: no such file (build one with python -m search.profile)") from None
    cached = _CACHE.get((str(p.resolve()), stamp))
    if cached is not None:
        return cached
    try:
        data = json.loads(p.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"latency table {path} is not readable JSON: {exc}") from None
    if not isinstance(data, dict) or "grids" not in data or "fingerprint" not in data:
        raise ConfigError(f"latency table {path} is not a latency table (no grids/fingerprint)")
    if data.get("version") != TABLE_VERSION:
        raise ConfigError(f"latency table {path} has format version {data.get('version')!r}, this code reads "
                          f"{TABLE_VERSION}: build it again with python -m search.profile")
    try:
        table = LatencyTable(target=data["target"], fingerprint=data["fingerprint"], model=data["model"],
                             image_size=data["image_size"], num_classes=data["num_classes"], grids=data["grids"],
                             exact=data.get("exact"), alpha=data.get("alpha", 1.0), beta=data.get("beta", 0.0),
                             curve=data.get("curve"), correction=data.get("correction"),
                             weights=data.get("weights"),
                             calibration=data.get("calibration", ()), meta=data.get("meta"), path=str(p))
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"latency table {path} is incomplete or malformed: {type(exc).__name__}: {exc}") from None
    _CACHE[(str(p.resolve()), stamp)] = table
    return table


def check_table(table: LatencyTable, *, fingerprint: Mapping[str, Any] | None = None, model: str | None = None,
                image_size: int | None = None, num_classes: int | None = None) -> None:
    """Refuse a table measured on another target or profiled for another model, size or classes.

    ``fingerprint`` is what the table's target says now (:meth:`rsc.targets.Target.fingerprint`).

    Raises:
        TableMismatch: one line naming every field that differs, the table's value and this one.
    """
    diffs = []
    for name, want in (("model", model), ("image_size", image_size), ("num_classes", num_classes)):
        have = getattr(table, name)
        if want is not None and str(want) != str(have):
            diffs.append(f"{name} {have} (here {want})")
    if fingerprint is not None:
        for k in FINGERPRINT_KEYS:
            a, b = table.fingerprint.get(k), fingerprint.get(k)
            if a != b and not (a is None and b is None):
                diffs.append(f"{k} {a!r} (here {b!r})")
    if diffs:
        raise TableMismatch(f"latency table {table.path or ''} does not fit: it was built for " + "; ".join(diffs)
                            + " (build one here with python -m search.profile)")


# -- profiling -----------------------------------------------------------------------------------


def grid_axis(lo: int, hi: int, points: int, multiple: int = 8) -> list[int]:
    """About ``points`` values from ``lo`` to ``hi`` (both kept), geometric, on multiples of ``multiple``
    where they fall between (channel counts the spaces produce are rounded to 8)."""
    lo, hi = int(lo), int(hi)
    if hi <= lo or points <= 1:
        return sorted({lo, hi})
    values = {lo, hi}
    for i in range(1, points - 1):
        v = lo * (hi / lo) ** (i / (points - 1))
        v = int(round(v / multiple) * multiple) if v > multiple else int(round(v))
        values.add(min(hi, max(lo, v)))
    return sorted(values)


def grid_axes(kernels: Sequence[Kernel], points: int) -> list[list[int]]:
    """The grid of one kernel kind: ``points`` values per dim (:func:`grid_axis`) spanning the dims seen."""
    return [grid_axis(min(k.dims[i] for k in kernels), max(k.dims[i] for k in kernels), points)
            for i in range(len(kernels[0].dims))]


def profile_rounds(observed: Mapping[str, list[Kernel]], points: int = 8,
                   seed: int = 0) -> list[list[tuple[str, tuple[int, ...], Kernel]]]:
    """The timing rounds of a table: each round holds one point of every kernel kind, in ``observed``'s order.

    A kind's points are its grid (:func:`grid_axes`), or, for ``exact`` specs, the dims seen; each
    kind's points are shuffled (seeded), and a kind with fewer points than the largest is cycled, so it
    is timed several times (:func:`profile_kernels` keeps the median). Returns ``(key, dims, kernel
    seen)`` per kernel, per round.
    """
    import random

    rng = random.Random(seed)
    per_kind: list[list[tuple[str, tuple[int, ...], Kernel]]] = []
    for key, kernels in observed.items():
        k0 = kernels[0]
        if k0.spec["op"] == "exact":
            points_of = [(key, k.dims, k) for k in {k.dims: k for k in kernels}.values()]
        else:
            points_of = [(key, dims, k0) for dims in _product(grid_axes(kernels, points))]
        rng.shuffle(points_of)
        per_kind.append(points_of)
    rounds = max((len(p) for p in per_kind), default=0)
    return [[p[r % len(p)] for p in per_kind] for r in range(rounds)]


def profile_kernels(target: Any, observed: Mapping[str, list[Kernel]], *, points: int = 8,
                    repeats: int | None = None, reference: Any = None, image_size: int = 8, seed: int = 0,
                    progress: Callable[[int], None] | None = None) -> tuple[dict[str, Any], dict[str, Any], list[float]]:
    """Measure a grid for every kernel key in ``observed`` (key -> kernels seen with it) on ``target``.

    Each grid spans the dims seen, ``points`` values per dim (:func:`grid_axis`); kernels without a
    builder (``exact`` specs) are measured at the dims seen, from their own module. The kernels are
    timed in rounds that look like a forward pass (:func:`profile_rounds`): one point of every kind,
    in the order the kinds run in a model (``observed``'s order: the caller's), interleaved as
    :func:`rsc.targets.compare_latency_on` times models, so that a kernel runs after other kinds of
    kernels and among about a model's worth of weights, as it does in a network. Measured on
    ResNet-18 at batch 1, 41 candidates: the sum of kernels timed in the model's own order matched the
    whole model within 1.6% (coefficient of variation of whole/sum); the same kernels timed alone,
    back to back, 8.3%; a grid timed one kind at a time, 48 neighbouring points together, 8.8%; in
    rounds like these, 4.2%. A kind timed in several rounds keeps its median. A ``reference`` model
    (the base, input ``image_size``) is timed on its own after every few rounds, so that the table
    records how steady the machine was while profiling; its times do not rescale anything (measured,
    rescaling by a reference biased the predictions by -9% on ResNet-18). Calls ``progress`` with the
    number of kernels timed after each round. Returns ``(grids, exact, reference times)``.
    """
    import statistics

    from rsc.targets import compare_latency_on

    rounds = profile_rounds(observed, points, seed)
    grids = {key: {"axes": grid_axes(kernels, points), "ms": None} for key, kernels in observed.items()
             if kernels[0].spec["op"] != "exact"}
    times: dict[tuple[str, tuple[int, ...]], list[float]] = {}
    refs: list[float] = []
    every = max(1, len(rounds) // 8)
    for r, part in enumerate(rounds):
        models, shapes = {}, {}
        for i, (key, dims, k) in enumerate(part):
            if key in grids:
                models[str(i)], shapes[str(i)] = build_kernel(k.spec, dims, k.side)
            else:
                models[str(i)], shapes[str(i)] = _module(k), k.shape
        lat = compare_latency_on(target, models, image_size, shapes=shapes, repeats=repeats)
        for i, (key, dims, _) in enumerate(part):
            times.setdefault((key, dims), []).append(float(lat[str(i)]))
        if reference is not None and (r % every == every - 1 or r == len(rounds) - 1):
            refs.append(float(compare_latency_on(target, {"reference": reference}, image_size,
                                                 repeats=repeats)["reference"]))
        if progress:
            progress(len(part))
    results = {key: statistics.median(ms) for key, ms in times.items()}
    exact: dict[str, dict[str, float]] = {}
    for key, grid in grids.items():
        grid["ms"] = _nest(grid["axes"], lambda dims, key=key: results[(key, dims)])
    for (key, dims), ms in results.items():
        if key not in grids:
            exact.setdefault(key, {})["x".join(map(str, dims))] = ms
    return grids, exact, refs


def _product(axes: Sequence[Sequence[int]]) -> Iterable[tuple[int, ...]]:
    import itertools

    return (tuple(p) for p in itertools.product(*axes))


def _nest(axes: Sequence[Sequence[int]], value: Callable[[tuple[int, ...]], float], prefix: tuple[int, ...] = ()) -> Any:
    if len(prefix) == len(axes):
        return value(prefix)
    return [_nest(axes, value, (*prefix, a)) for a in axes[len(prefix)]]


def fit_line(sums: Sequence[float], measured: Sequence[float]) -> tuple[float, float]:
    """Least squares ``measured ~ alpha * sum + beta`` with ``beta >= 0`` (relative errors weighed alike)."""
    import numpy as np

    s, m = np.asarray(sums, float), np.asarray(measured, float)
    if len(s) < 2 or float(np.ptp(s)) == 0.0:
        return (float(np.mean(m / s)) if len(s) else 1.0), 0.0
    w = 1.0 / m  # relative error
    a = np.stack([s * w, w], axis=1)
    (alpha, beta), *_ = np.linalg.lstsq(a, m * w, rcond=None)
    if beta < 0:
        return float(np.sum(s * m * w * w) / np.sum(s * s * w * w)), 0.0
    return float(alpha), float(beta)


def fit_curve(sums: Sequence[float], measured: Sequence[float], knots: int = 5) -> dict[str, list[float]]:
    """The calibration curve: ``measured / sum`` as a piecewise-linear function of ``sum``.

    Knots at ``knots`` quantiles of ``sums`` (fewer where they coincide, so one model gives a constant
    ratio); the ratio at each knot by least squares on the models' ratios (relative errors weighed
    alike), flat beyond the end knots. Returns ``{"sums": knots, "ratios": ratio at each knot}``
    (:func:`curve_ratio` reads it).
    """
    import numpy as np

    s, m = np.asarray(sums, float), np.asarray(measured, float)
    if len(s) == 0 or len(s) != len(m) or np.any(s <= 0) or np.any(m <= 0):
        raise ValueError("fit_curve needs as many positive sums as positive measured times, at least one")
    at = np.unique(np.quantile(s, np.linspace(0.0, 1.0, max(1, min(int(knots), len(s))))))
    basis = np.stack([_hat(at, j, s) for j in range(len(at))], axis=1)
    ratios, *_ = np.linalg.lstsq(basis, m / s, rcond=None)
    return {"sums": [float(v) for v in at], "ratios": [float(v) for v in ratios]}


def fit_classes(classes: Sequence[Mapping[str, float]], measured: Sequence[float], reference: int | None = None,
                anchor: float | None = None) -> dict[str, float] | None:
    """Least squares ``measured ~ sum over c of weight[c] * classes[c]`` (each model's kernels summed per
    class, :func:`class_sums`), no intercept, relative errors weighed alike; a class no more than two
    models have takes the weight of the sum as a whole (the line through the origin). None where a weight
    comes out zero or negative, or the classes are collinear (one weight for the sum is then all the
    models can say). Model ``reference`` (the base, which every prediction is read against) weighs as much
    as all the others together (``anchor`` times one model, if given)."""
    import numpy as np

    m = np.asarray(measured, float)
    x = np.array([[float(c.get(name, 0.0)) for name in CLASSES] for c in classes])
    if len(m) == 0 or x.shape != (len(m), len(CLASSES)):
        return None
    w = 1.0 / m
    if reference is not None:
        w[reference] *= anchor if anchor is not None else max(len(m) - 1, 1)
    total = x.sum(axis=1)
    whole = float(np.sum(total * m * w * w) / np.sum(total * total * w * w))
    fitted = [j for j in range(len(CLASSES)) if np.count_nonzero(x[:, j]) > 2]
    rest = [j for j in range(len(CLASSES)) if j not in fitted]
    y = m - whole * x[:, rest].sum(axis=1)
    a = x[:, fitted] * w[:, None]
    if not fitted or np.linalg.matrix_rank(a) < len(fitted):
        return None
    coef, *_ = np.linalg.lstsq(a, y * w, rcond=None)
    weights = dict.fromkeys(CLASSES, whole)
    weights.update({CLASSES[j]: float(c) for j, c in zip(fitted, coef)})
    return weights if min(weights.values()) > 0 else None


def fit_correction(sums: Sequence[float], measured: Sequence[float], knots: int = 5,
                   reference: int | None = None, classes: Sequence[Mapping[str, float]] | None = None
                   ) -> dict[str, Any]:
    """Fit the whole-model corrections and choose one by leave-one-out error.

    The line (:func:`fit_line`: ``measured ~ alpha * sum + beta``, a forward's fixed overhead outside
    its kernels) and the curve (:func:`fit_curve`: the ratio as a piecewise-linear function of the sum,
    which bends where the kernels' sum is off by model size) are each fitted with one calibration
    model left out and scored on it, in turn; the one with the smallest mean error predicts. The error is
    relative to model ``reference`` (the base: predicted model/base against measured model/base, what a
    speed-up or a ``latency<40%`` budget reads; the reference itself is never left out), or, without
    one, the plain relative error. A table whose kernels were timed out of context needed the curve;
    timed in rounds like a forward pass (:func:`profile_kernels`) the sum is nearly proportional for some
    networks (ResNet-18 at batch 16, 100 candidates: 97-100% within +-10% with the line, 77-85% with the
    curve) and still bends for others (MobileNetV2 at batch 1: 76-93% with the line, 100% with the curve).
    ``classes`` (each model's kernels summed per class, :func:`class_sums`) adds the third candidate, a
    weight per class (:func:`fit_classes`); it is left out where its weights do not fit, in all models or
    in any leave-one-out fit. With fewer than 4 models the curve is kept. Returns ``{"alpha", "beta", "curve",
    "weights" (None without classes or a fit), "correction", "loo": {"line", "curve"[, "classes"]: mean error}}``.
    """
    alpha, beta = fit_line(sums, measured)
    curve = fit_curve(sums, measured, knots)
    weights = fit_classes(classes, measured, reference) if classes is not None else None
    loo: dict[str, float] = {}
    if len(sums) >= 4:
        errs: dict[str, list[float]] = {"line": [], "curve": [], **({"classes": []} if weights else {})}
        for i in range(len(sums)):
            if i == reference:
                continue
            s, m = [*sums[:i], *sums[i + 1:]], [*measured[:i], *measured[i + 1:]]
            a, b = fit_line(s, m)
            c = fit_curve(s, m, knots)
            predictors = {"line": lambda j: a * sums[j] + b, "curve": lambda j: sums[j] * curve_ratio(c, sums[j])}
            if "classes" in errs:
                ref = None if reference is None else reference - (i < reference)
                wc = fit_classes([*classes[:i], *classes[i + 1:]], m, ref)
                if wc is None:
                    del errs["classes"]
                else:
                    predictors["classes"] = lambda j: sum(wc[g] * classes[j].get(g, 0.0) for g in CLASSES)
            for kind, predict in predictors.items():
                ratio = predict(i) / measured[i]
                if reference is not None:
                    ratio /= predict(reference) / measured[reference]
                errs[kind].append(abs(ratio - 1))
        loo = {k: float(sum(v) / len(v)) for k, v in errs.items()}
    correction = min((k for k in ("curve", "line", "classes") if k in loo), key=loo.get) if loo else "curve"
    return {"alpha": alpha, "beta": beta, "curve": curve, "weights": weights if "classes" in loo else None,
            "correction": correction, "loo": loo}


def curve_ratio(curve: Mapping[str, Sequence[float]], total_ms: float) -> float:
    """The curve's ``measured / sum`` at ``total_ms`` (linear between knots, flat beyond)."""
    import numpy as np

    return float(np.interp(total_ms, curve["sums"], curve["ratios"]))


def _hat(at: Any, j: int, x: Any) -> Any:
    """The j-th piecewise-linear basis function over the knots ``at`` (1 at knot j, 0 at the others, flat
    beyond the ends), at ``x``: ``np.interp`` of a unit vector."""
    import numpy as np

    unit = np.zeros(len(at))
    unit[j] = 1.0
    return np.interp(x, at, unit)
