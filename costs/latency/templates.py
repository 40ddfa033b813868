"""A model's kernels without tracing it: one ``torch.fx`` trace per architecture, then attribute reads.

:func:`costs.latency.kernels.kernels_of` traces a model and propagates shapes through it: 20-40 ms for a
ResNet-18 on a CPU, most of a latency table's prediction. But the compressed candidates of one base
share their graph: channel pruning changes only channel counts, and Tucker-2 swaps a convolution for
the same three-layer sequence whatever its ranks. So a model's *structure* is keyed by its module
names and types and the hyper-parameters that shape the graph (kernel size, stride, padding,
dilation, grouped or not; a leaf's ``extra_repr``; a block's plain attributes, as MobileNetV2's
``use_res_connect``, which decides whether its forward adds), and the first model of a structure is traced once
into a *template*: per kernel, either the convolution or linear layer whose channel counts give its
dims (its spec is part of the structure), or, for everything else (BN, activations, pools, residual adds, flatten), the layer whose
output channels its input carries and the factor between them (an ``h x w`` map flattened). Every
later model of that structure is read from its modules.

A template is checked against its own trace when it is made, and a structure it cannot follow (an
``exact`` kernel, an operator that changes the channel count without a layer, a ``GraphModule``) is
traced every time: a template never guesses.
"""

from __future__ import annotations

import functools
import operator
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from costs.latency.kernels import Kernel, node_shape, split_kernels

if TYPE_CHECKING:
    from torch import nn

__all__ = ["KernelTemplates", "structure_key"]

#: layer attribute that gives the channels of its output
_OUT = {"Conv2d": "out_channels", "Linear": "out_features", "BatchNorm2d": "num_features"}
#: modules whose output has the channels of their input
_SAME_MODULES = {"ReLU", "ReLU6", "Hardswish", "SiLU", "Sigmoid", "GELU", "Hardsigmoid", "MaxPool2d", "AvgPool2d",
                 "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "Dropout", "Identity", "Flatten"}
_SAME_METHODS = {"relu", "relu_", "sigmoid", "flatten", "contiguous"}


@functools.cache
def _module_internals() -> frozenset[str]:
    """What every ``nn.Module`` keeps in its ``__dict__`` (hooks, ``training``): not the structure."""
    from torch import nn

    return frozenset(vars(nn.Module())) | {"_is_full_backward_hook"}


def _same_functions() -> set[Any]:
    import torch
    from torch.nn import functional as F

    return {operator.add, operator.iadd, torch.add, torch.relu, F.relu, F.relu6, F.hardswish, F.silu, torch.sigmoid,
            torch.flatten, F.adaptive_avg_pool2d, F.dropout, F.max_pool2d, F.avg_pool2d}


def structure_key(model: nn.Module, image_size: int, in_channels: int = 3,
                  modules: Mapping[str, nn.Module] | None = None) -> tuple[Any, ...] | None:
    """What a model's kernel graph depends on, channel counts left out; None for a model whose graph
    is its own (a ``torch.fx.GraphModule``). ``modules``: ``dict(model.named_modules())`` if at hand."""
    from torch import fx

    if isinstance(model, fx.GraphModule):
        return None
    parts: list[Any] = [type(model), int(image_size), int(in_channels)]
    for name, m in (modules if modules is not None else _modules_of(model)).items():
        t = type(m)
        kind = _KINDS.get(t) or _kind(t)
        if kind == "conv":
            parts.append((name, t, m.kernel_size, m.stride, m.padding, m.dilation, m.groups > 1, m.padding_mode,
                          m.bias is None))
        elif kind == "layer":
            parts.append((name, t, getattr(m, "bias", None) is None))
        elif not m._modules and m is not model:  # a leaf
            parts.append((name, t, m.extra_repr()))
        else:  # a block: its plain attributes may steer its forward (MobileNetV2's use_res_connect)
            own = vars(m)
            parts.append((name, t, tuple((k, own[k]) for k in sorted(own.keys() - _module_internals())
                                         if isinstance(own[k], (bool, int, str)))))
    return tuple(parts)


_KINDS: dict[type, str] = {}


def _modules_of(model: nn.Module) -> dict[str, nn.Module]:
    """``dict(model.named_modules())``, in its order, without its generators (a third of a read's time)."""
    out: dict[str, nn.Module] = {"": model}
    seen = {id(model)}

    def walk(prefix: str, m: nn.Module) -> None:
        for name, child in m._modules.items():
            if child is None or id(child) in seen:
                continue
            seen.add(id(child))
            full = f"{prefix}.{name}" if prefix else name
            out[full] = child
            walk(full, child)

    walk("", model)
    return out


def _kind(t: type) -> str:
    from torch import nn

    _KINDS[t] = "conv" if issubclass(t, nn.Conv2d) else "layer" if issubclass(t, (nn.Linear, nn.BatchNorm2d)) \
        else "other"
    return _KINDS[t]


@dataclass(frozen=True)
class _Entry:
    """How one kernel of a structure is read from a model of it (module docstring)."""

    name: str  # the traced node's name (Kernel.name)
    side: int
    shape: tuple[int, ...]  # the input shape in the traced model, without the batch
    traced: Mapping[str, Any]  # the traced kernel's spec ...
    key: str  # ... and its table key
    layer: str = ""  # a conv/linear kernel: the layer's qualified name (its spec is part of the structure)
    linear: bool = False  # ... a linear layer
    dw: bool = False  # ... a depthwise convolution
    source: str = ""  # ... the layer whose output channels its input carries ("" for the model's input)
    mult: int = 1  # ... channels = source's channels * mult


def _follow(node: Any, gm: Any, same_functions: set[Any]) -> tuple[str, Any] | None:
    """The layer (qualified name, module) whose output channels ``node``'s output carries, ``("", None)``
    for the model's input, None where an operator in between may change them."""
    while True:
        if node.op == "placeholder":
            return "", None
        if node.op == "call_module":
            m = gm.get_submodule(node.target)
            kind = type(m).__name__
            if kind in _OUT and type(m).__module__.startswith("torch.nn"):
                return str(node.target), m
            if kind not in _SAME_MODULES:
                return None
        elif node.op == "call_function":
            if node.target not in same_functions:
                return None
        elif node.op == "call_method":
            if node.target not in _SAME_METHODS:
                return None
        else:
            return None
        inputs = [a for a in node.all_input_nodes if node_shape(a)]
        if not inputs:
            return None
        node = inputs[0]


def _template(model: nn.Module, gm: Any, split: list[tuple[Kernel, list[Any]]], in_channels: int) -> list[_Entry] | None:
    from torch import nn

    same = _same_functions()
    entries: list[_Entry] = []
    for kernel, chain in split:
        first = chain[0]
        if kernel.spec["op"] == "exact":
            return None
        common = {"name": kernel.name, "side": kernel.side, "shape": tuple(kernel.shape), "traced": kernel.spec,
                  "key": kernel.key}
        m = gm.get_submodule(first.target) if first.op == "call_module" else None
        if isinstance(m, (nn.Conv2d, nn.Linear)) and kernel.spec["op"] in ("conv", "linear"):
            entries.append(_Entry(layer=str(first.target), linear=isinstance(m, nn.Linear),
                                  dw=bool(kernel.spec.get("dw")), **common))
            continue
        inputs = [a for a in first.all_input_nodes if node_shape(a)]
        found = _follow(inputs[0], gm, same) if inputs else None
        if found is None:
            return None
        name, layer = found
        channels = getattr(layer, _OUT[type(layer).__name__]) if layer is not None else in_channels
        if len(kernel.dims) != 1 or kernel.dims[0] % int(channels):
            return None
        entries.append(_Entry(source=name, mult=kernel.dims[0] // int(channels), **common))
    return entries


def _read(entries: list[_Entry], modules: Mapping[str, nn.Module], in_channels: int) -> list[Kernel] | None:
    out: list[Kernel] = []
    for e in entries:
        if e.linear:
            m = modules[e.layer]
            dims, shape = (m.in_features, m.out_features), (*e.shape[:-1], m.in_features)
        elif e.layer:
            m = modules[e.layer]
            if e.dw and not m.groups == m.in_channels == m.out_channels:
                return None  # no longer depthwise: a grouped convolution, traced
            dims, shape = ((m.in_channels,) if e.dw else (m.in_channels, m.out_channels)), (m.in_channels, *e.shape[1:])
        else:
            src = modules[e.source] if e.source else None
            channels = int(getattr(src, _OUT[type(src).__name__])) * e.mult if src is not None else in_channels * e.mult
            dims, shape = (channels,), (channels, *e.shape[1:])
        out.append(Kernel(spec=e.traced, side=e.side, dims=dims, shape=shape, name=e.name, known_key=e.key))
    return out


class KernelTemplates:
    """:func:`costs.latency.kernels.kernels_of` with one trace per model structure (module docstring).

    Holds the templates of the last ``maxsize`` structures seen; ``traces`` and ``reads`` count how
    each call was answered.
    """

    def __init__(self, maxsize: int = 64) -> None:
        self.maxsize = int(maxsize)
        self._templates: OrderedDict[tuple[Any, ...], list[_Entry] | None] = OrderedDict()
        self.traces = 0
        self.reads = 0

    def kernels(self, model: nn.Module, image_size: int, in_channels: int = 3) -> list[Kernel]:
        """The fused kernels of ``model`` (equal to ``kernels_of``'s, module names and all; the
        kernels read from a template carry no runnable module: a latency table rebuilds them).

        Raises:
            TableMiss: as :func:`costs.latency.kernels.kernels_of`.
        """
        modules = _modules_of(model)
        key = structure_key(model, image_size, in_channels, modules)
        entries = self._templates.get(key) if key is not None else None
        if entries is not None:
            self._templates.move_to_end(key)
            kernels = _read(entries, modules, in_channels)
            if kernels is not None:
                self.reads += 1
                return kernels
        self.traces += 1
        gm, split = split_kernels(model, image_size, in_channels)
        kernels = [k for k, _ in split]
        if key is not None and key not in self._templates:
            entries = _template(model, gm, split, in_channels)
            if entries is not None and _read(entries, modules, in_channels) != kernels:
                entries = None  # a template must reproduce its own trace
            self._templates[key] = entries
            while len(self._templates) > self.maxsize:
                self._templates.popitem(last=False)
        return kernels
