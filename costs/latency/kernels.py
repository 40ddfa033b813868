"""A model as the kernels a runtime executes: traced with ``torch.fx``, fused, keyed for a latency table.

A convolution is fused with the BatchNorm and the activation that consume it alone (``conv+bn+relu``:
what TorchScript freezing and onnxruntime fuse; eager PyTorch runs them back to back, and the
kernel is timed the same way), a linear layer with its activation, a residual add with its ReLU.
The rest (pools, flatten, a lone BN...) are kernels of their own. Each kernel is keyed by its
*spec* (the operator and every hyper-parameter: kernel size, stride, padding, groups, fused ops),
its input side and its channel dims (``(c_in, c_out)`` for convolutions and linear layers, ``(c,)``
for depthwise convolutions and element-wise kernels). :func:`build_kernel` makes a runnable kernel
for a spec at any dims, which is how a table's grid is timed. Kernels fall into
:data:`CLASSES` (1x1 convolutions, other convolutions, the rest), which a table may weigh apart.
"""

from __future__ import annotations

import functools
import json
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from costs.errors import TableMiss

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Kernel", "CLASSES", "kernel_class", "class_sums", "kernels_of", "split_kernels", "build_kernel",
           "layer_spec", "input_side", "node_shape", "kernel_module"]

CLASSES = ("conv1x1", "conv", "other")  # the classes of kernel a table weighs apart (kernel_class)
_ACTS = {"ReLU": "relu", "ReLU6": "relu6", "Hardswish": "hardswish", "SiLU": "silu", "Sigmoid": "sigmoid",
         "Hardsigmoid": "hardsigmoid", "GELU": "gelu"}


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


def node_shape(node: Any) -> tuple[int, ...] | None:
    """The shape ``torch.fx``'s shape propagation recorded for ``node``, or None."""
    meta = node.meta.get("tensor_meta")
    return tuple(int(d) for d in meta.shape) if meta is not None and hasattr(meta, "shape") else None


def input_side(shape: Sequence[int]) -> int:
    """The spatial side of an input shape (1 for flat inputs)."""
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

    from costs.counting import eval_mode

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
        shape_in = next((node_shape(a) for a in node.all_input_nodes if node_shape(a)), None)
        if shape_in is None:
            continue
        chain = [node]
        spec: dict[str, Any]
        m = gm.get_submodule(node.target) if node.op == "call_module" else None
        if (isinstance(m, nn.Conv2d) and m.padding_mode == "zeros") or isinstance(m, nn.Linear):
            spec, dims = layer_spec(m)
            nxt = _only_user(node)
            if isinstance(m, nn.Conv2d) and nxt is not None and nxt.op == "call_module" and \
                    isinstance(gm.get_submodule(nxt.target), nn.BatchNorm2d):
                chain.append(nxt)
                spec["bn"] = True
            _fuse_act(chain, spec, gm)
        elif node.op == "call_function" and node.target in (operator.add, torch.add, operator.iadd) and \
                len(node.all_input_nodes) == 2 and node_shape(node.all_input_nodes[0]) == node_shape(node.all_input_nodes[1]):
            spec = {"op": "add"}
            _fuse_act(chain, spec, gm)
            dims = (shape_in[1],)
        else:
            spec = _simple_spec(node, m, gm)
            dims = (shape_in[1],) if spec["op"] != "exact" else tuple(shape_in[1:])
        done.update(chain)
        out.append((Kernel(spec=spec, side=input_side(shape_in), dims=tuple(int(d) for d in dims),
                           shape=tuple(shape_in[1:]), module=_Lazy(chain, gm), name=str(node.name)), chain))
    return gm, out


def layer_spec(m: Any) -> tuple[dict[str, Any], tuple[int, ...]]:
    """A conv or linear layer's spec and channel dims."""
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
    first_input = next(a for a in chain[0].all_input_nodes if node_shape(a))
    env[first_input] = x
    extras = nn.Module()
    holder = nn.Module()
    n_extra = 0
    for node in chain:
        for a in node.all_input_nodes:
            if a in env:
                continue
            shape = node_shape(a)
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


def kernel_module(kernel: Kernel) -> Any:
    """The kernel's runnable module (cut out of its graph on first use)."""
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
