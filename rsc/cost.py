"""The cost of a model, measured in one place.

Every number the project reports about model cost is defined here, once:

* ``params``: all weights a model stores, including quantised (packed) conv/linear weights, which
  ``model.parameters()`` does not list. Buffers (BN running stats) are not parameters.
* ``nonzero_params``: the same, counting only non-zero entries (what unstructured pruning cuts).
* ``macs``: multiply-accumulates of one image's forward pass through Conv and Linear layers
  (float or quantised), counted with forward hooks: ``out_elements * in_channels/groups * kh*kw``
  per conv, ``out_elements * in_features`` per linear. BN, activations, pooling and additions are
  not counted (they are a few percent and fuse away at inference). Own counter rather than
  ``torch_pruning.utils.count_ops_and_params`` because it also counts quantised and decomposed
  models the same way.
* ``size``: bytes of ``torch.save(model.state_dict())``: what a dense checkpoint weighs.
* ``sparse_size``: bytes of a relative-index sparse encoding (Han et al. 2015) of every weight
  tensor with at least 2 dimensions (values at their own width, ``index_bits`` per gap, a filler
  entry whenever a gap overflows), or of the dense tensor when that is smaller; 1-D tensors dense.
* ``latency_ms`` / ``latency_ms_batch``: median wall time of one forward at batch 1 / at
  ``settings.batch_size`` on the local device, after warm-up, with a fixed thread count.

The metrics live in one registry (``register_cost``): each says its unit, whether it is counted
(analytic) or measured, and, when it can be budgeted, its budget name and unit grammar. The
search's budget parser, trial function and reports read it, so energy or latency on another
target is one registration, with no caller to touch. :func:`compare` measures a base and a compressed model in the same
process, interleaving their latency runs so that machine load hits both alike, and derives the
compression rate (base params / compressed params) and the speed-up (base latency / compressed).
"""

from __future__ import annotations

import io
import statistics
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rsc.errors import ConfigError

if TYPE_CHECKING:  # torch loads on first use, so that CLIs answer --help at once
    import torch
    from torch import nn

__all__ = [
    "CostSettings", "CostMetric", "register_cost", "list_costs", "get_cost", "budget_metrics", "analytic_costs",
    "measure", "compare", "COUNT_UNITS", "BYTE_UNITS", "TIME_UNITS",
    "count_params", "count_nonzero_params", "count_macs", "layer_kind", "hooked_forward", "eval_mode", "serialized_size", "sparse_size",
    "measure_latency", "compare_latency",
]


MEMORY_FORMATS = ("channels_last", "contiguous")


def _memory_format(name: str) -> Any:
    import torch

    return {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}[name]


@dataclass(frozen=True, kw_only=True)
class CostSettings:
    """How costs are measured. One object, so every number says how it was obtained.

    Attributes:
        image_size: Side of the square input.
        in_channels: Input channels (3 for RGB scenes).
        device: Where to run the forward passes.
        batch_size: The "larger batch" of ``latency_ms_batch``.
        threads: ``torch.set_num_threads`` during latency runs (fixed, so numbers compare).
        warmup: Untimed forwards before timing.
        repeats: Timed forwards; the median is reported.
        index_bits: Width of a relative index in ``sparse_size``.
        memory_format: ``"channels_last"`` (NHWC; how CNNs are deployed on CPUs: oneDNN's
            convolutions skip a layout reorder per layer, measured 2x faster for ResNet-18 at
            64 px, batch 1, and up to 1.5x for low-rank 1x1 convolutions at batch 16) or
            ``"contiguous"`` (NCHW, PyTorch's default). Latency is measured on a copy of the
            model in that format, with an input in that format; the model is not changed.
    """

    image_size: int = 64
    in_channels: int = 3
    device: str = "cpu"
    batch_size: int = 32
    threads: int = 1
    warmup: int = 3
    repeats: int = 10
    index_bits: int = 8
    memory_format: str = "channels_last"

    def __post_init__(self) -> None:
        if self.memory_format not in MEMORY_FORMATS:
            raise ConfigError(f"cost settings: memory_format must be one of {', '.join(MEMORY_FORMATS)}, "
                              f"got {self.memory_format!r}")
        for name in ("image_size", "in_channels", "batch_size", "threads", "repeats", "index_bits"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ConfigError(f"cost settings: {name} must be a positive integer, got {value!r}")
        if not isinstance(self.warmup, int) or self.warmup < 0:
            raise ConfigError(f"cost settings: warmup must be an integer >= 0, got {self.warmup!r}")

    def example_input(self, batch_size: int = 1, shape: Sequence[int] | None = None) -> torch.Tensor:
        """A seeded random input: ``(batch, in_channels, image_size, image_size)``, or ``(batch, *shape)``."""
        import torch

        gen = torch.Generator().manual_seed(0)
        dims = tuple(shape) if shape is not None else (self.in_channels, self.image_size, self.image_size)
        x = torch.randn(batch_size, *dims, generator=gen).to(self.device)
        return x.contiguous(memory_format=_memory_format(self.memory_format)) if x.dim() == 4 else x


CostFn = Callable[["nn.Module", CostSettings], float]

#: Unit grammars of budgets (``params<5M``, ``size<2MB``, ``latency<20ms``): lower-case unit ->
#: factor to the metric's base unit; ``""`` is the bare number.
COUNT_UNITS: Mapping[str, float] = {"": 1.0, "k": 1e3, "m": 1e6, "g": 1e9}
BYTE_UNITS: Mapping[str, float] = {"": 1.0, "b": 1.0, "kb": 1e3, "mb": 1e6, "gb": 1e9,
                                   "kib": 2.0**10, "mib": 2.0**20, "gib": 2.0**30}
TIME_UNITS: Mapping[str, float] = {"": 1.0, "ms": 1.0, "s": 1e3, "us": 1e-3}


@dataclass(frozen=True)
class CostMetric:
    """A registered cost, described once for everything that reads it.

    Attributes:
        name: the key costs are reported under (``latency_ms``); lower is always better.
        fn: ``fn(model, settings) -> float`` in the base unit.
        unit: the base unit, as printed (``count``, ``byte``, ``ms``).
        measured: timed on a device (noisy, known only after building the model: a search
            constraint) rather than counted from the structure (analytic: projected before training).
        budget: the name budgets and objectives use (``latency``), or None when it cannot be budgeted.
        units: the unit grammar of budgets on it (see ``COUNT_UNITS``).
    """

    name: str
    fn: CostFn
    unit: str
    measured: bool
    budget: str | None = None
    units: Mapping[str, float] = field(default_factory=dict)

    @property
    def kind(self) -> str:
        """``"measured"`` or ``"analytic"``."""
        return "measured" if self.measured else "analytic"


_COSTS: dict[str, CostMetric] = {}


def register_cost(name: str, *, unit: str, measured: bool = False, budget: str | None = None,
                  units: Mapping[str, float] | None = None) -> Callable[[CostFn], CostFn]:
    """Register ``fn(model, settings) -> float`` as the cost ``name`` (lower is better).

    ``budget`` makes it a budget and objective metric under that name, with the unit grammar
    ``units``: the search's budget parser, trial function and reports read it from here.

    Raises:
        ConfigError: ``name`` (or its budget name) is already registered.
    """

    def deco(fn: CostFn) -> CostFn:
        if name in _COSTS:
            raise ConfigError(f"cost metric {name!r} is already registered")
        if budget is not None and any(c.budget == budget for c in _COSTS.values()):
            raise ConfigError(f"budget metric {budget!r} is already registered")
        _COSTS[name] = CostMetric(name=name, fn=fn, unit=unit, measured=measured, budget=budget,
                                  units=dict(units or {"": 1.0}))
        return fn

    return deco


def list_costs() -> list[str]:
    """Names of the registered cost metrics, sorted."""
    return sorted(_COSTS)


def get_cost(name: str) -> CostMetric:
    """The registered metric ``name``; unknown names raise a ConfigError listing known ones."""
    try:
        return _COSTS[name]
    except KeyError:
        raise ConfigError(f"unknown cost metric {name!r}; known: {', '.join(list_costs())}") from None


def budget_metrics() -> dict[str, CostMetric]:
    """Budget name -> cost metric, for every cost that can be budgeted (in registration order)."""
    return {c.budget: c for c in _COSTS.values() if c.budget is not None}


def analytic_costs() -> list[str]:
    """Cost keys of the budgetable metrics counted from the structure (what every trial reports)."""
    return [c.name for c in budget_metrics().values() if not c.measured]


def measure(model: nn.Module, names: Sequence[str] | None = None,
            settings: CostSettings | None = None) -> dict[str, float]:
    """Measure the named costs (all registered ones by default) of ``model``."""
    settings = settings or CostSettings()
    metrics = [get_cost(n) for n in (names if names is not None else list_costs())]
    return {m.name: float(m.fn(model, settings)) for m in metrics}


# -- counting --------------------------------------------------------------------------------


def _packed_weights(module: nn.Module) -> Iterator[torch.Tensor]:
    """Weights of quantised modules, which keep them packed outside ``parameters()``."""
    import torch
    from torch import nn

    for attr in ("weight", "bias"):
        fn = getattr(module, attr, None)
        if callable(fn) and not isinstance(fn, nn.Module):
            try:
                t = fn()
            except Exception:  # noqa: BLE001 - a method named weight that is not a getter
                continue
            if isinstance(t, torch.Tensor):
                yield t


def _all_weights(model: nn.Module) -> Iterator[torch.Tensor]:
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            yield p.detach()
    for m in model.modules():
        yield from _packed_weights(m)


def count_params(model: nn.Module) -> int:
    """All stored weights (float parameters + packed quantised weights)."""
    return sum(t.numel() for t in _all_weights(model))


def count_nonzero_params(model: nn.Module) -> int:
    """Non-zero stored weights (for quantised tensors: non-zero after dequantisation)."""
    import torch

    total = 0
    for t in _all_weights(model):
        if t.is_quantized:
            t = t.dequantize()
        total += int(torch.count_nonzero(t))
    return total


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block; every module's own training flag restored after."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.training = mode


def _model_device(model: nn.Module, default: str) -> torch.device:
    import torch

    for t in model.parameters():
        return t.device
    return torch.device(default)


def layer_kind(m: nn.Module) -> str | None:
    """``"conv"`` or ``"linear"`` for a module that computes like one (float, quantised or a custom
    wrapper with the same attributes), else None."""
    if all(hasattr(m, a) for a in ("in_channels", "out_channels", "kernel_size", "groups")):
        return "conv"
    if hasattr(m, "in_features") and hasattr(m, "out_features"):
        return "linear"
    return None


def count_macs(model: nn.Module, *, image_size: int, in_channels: int = 3, device: str = "cpu") -> int:
    """Multiply-accumulates of Conv and Linear layers for one image (see the module docstring)."""
    total = 0

    def conv_hook(m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        k = 1
        for s in (m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,)):
            k *= int(s)
        total += out.numel() * (m.in_channels // m.groups) * k

    def linear_hook(m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    hooked_forward(model, lambda _name, kind: conv_hook if kind == "conv" else linear_hook,
                   image_size=image_size, in_channels=in_channels, device=device)
    return int(total)


def hooked_forward(model: nn.Module, hook_for: Callable[[str, str], Callable[..., None]], *, image_size: int,
                   in_channels: int = 3, device: str = "cpu", dtype: Any = None) -> None:
    """One forward of a zero image (batch 1) through ``model`` in eval mode (restored after), with
    ``hook_for(name, kind)``'s forward hook on each innermost Conv/Linear layer (:func:`layer_kind`).

    Innermost only: a wrapper that copies its conv's attributes must not count twice; quantised
    Linear is not a leaf (it holds a parameter-less packed-params child). The counters of MACs and
    energy both walk the layers this way.
    """
    import torch

    handles = []
    for name, m in model.named_modules():
        kind = layer_kind(m)
        if kind is None or any(layer_kind(c) for c in m.modules() if c is not m):
            continue
        handles.append(m.register_forward_hook(hook_for(name or type(m).__name__, kind)))
    x = torch.zeros(1, in_channels, image_size, image_size, device=_model_device(model, device), dtype=dtype)
    try:
        with eval_mode(model), torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()


def serialized_size(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``."""
    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def _sparse_tensor_bits(t: torch.Tensor, index_bits: int) -> int:
    import torch

    value_bits = t.element_size() * 8
    if t.is_quantized:
        t = t.dequantize()  # zeros stay zeros; the stored width is still the int8 one
    dense = t.numel() * value_bits
    if t.dim() < 2:
        return dense
    pos = torch.nonzero(t.reshape(-1)).reshape(-1)
    if pos.numel() == 0:
        return 0
    gaps = torch.diff(pos, prepend=torch.tensor([-1], device=pos.device)) - 1
    fillers = int(torch.div(gaps, 2 ** index_bits, rounding_mode="floor").sum())
    sparse = (pos.numel() + fillers) * (value_bits + index_bits)
    return min(dense, sparse)


def sparse_size(model: nn.Module, *, index_bits: int = 8) -> int:
    """Bytes of a relative-index sparse encoding of the state dict (see the module docstring)."""
    import torch

    bits = 0
    for t in model.state_dict().values():
        if isinstance(t, torch.Tensor):
            bits += _sparse_tensor_bits(t.detach(), index_bits)
    for m in model.modules():  # packed quantised weights are not plain state-dict tensors
        for t in _packed_weights(m):
            bits += _sparse_tensor_bits(t.detach(), index_bits)
    return (bits + 7) // 8


# -- latency ---------------------------------------------------------------------------------


@contextmanager
def _threads(n: int) -> Iterator[None]:
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _sync(device: torch.device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare_latency(models: Mapping[str, nn.Module], *, settings: CostSettings | None = None,
                    batch_size: int = 1, shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, float]:
    """Median forward latency (ms) of each model, with the models' runs interleaved.

    Interleaving (A, B, A, B, ...) rather than timing A then B means a burst of load from other
    processes slows both alike, so their ratio (the speed-up) stays meaningful on a shared machine.
    ``shapes`` gives a model its own input shape (without the batch), e.g. a layer of a latency table.
    """
    import torch

    settings = settings or CostSettings()
    models = {k: _in_format(m, settings.memory_format) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    inputs = {}
    for name, m in models.items():
        shape = (shapes or {}).get(name)
        inputs[name] = settings.example_input(batch_size, shape).to(_model_device(m, settings.device))
    with _threads(settings.threads), torch.inference_mode():
        modes = [eval_mode(m) for m in models.values()]
        for ctx in modes:
            ctx.__enter__()
        try:
            for _ in range(settings.warmup):
                for name, m in models.items():
                    m(inputs[name])
            for _ in range(settings.repeats):
                for name, m in models.items():
                    dev = inputs[name].device
                    _sync(dev)
                    t0 = time.perf_counter()
                    m(inputs[name])
                    _sync(dev)
                    times[name].append((time.perf_counter() - t0) * 1000.0)
        finally:
            for ctx in modes:
                ctx.__exit__(None, None, None)
    return {k: statistics.median(v) for k, v in times.items()}


def _in_format(model: nn.Module, memory_format: str) -> nn.Module:
    """A copy of ``model`` whose 4-d weights use ``memory_format`` (the model itself if NCHW)."""
    if memory_format == "contiguous":
        return model
    import copy

    clone = copy.deepcopy(model)
    try:
        return clone.to(memory_format=_memory_format(memory_format))
    except (RuntimeError, TypeError):  # modules without plain tensor weights: they run as they are
        return clone


def measure_latency(model: nn.Module, *, settings: CostSettings | None = None, batch_size: int = 1) -> float:
    """Median forward latency of one model in milliseconds."""
    return compare_latency({"model": model}, settings=settings, batch_size=batch_size)["model"]


def compare(base: nn.Module, compressed: nn.Module, settings: CostSettings | None = None, *,
            names: Sequence[str] = ("params", "nonzero_params", "macs", "size"),
            latency: bool = True) -> dict[str, Any]:
    """Costs of a base and a compressed model, measured in one process, and their ratios.

    Returns:
        ``{"base": {...}, "compressed": {...}, "compression_rate": base params / compressed params,
        "compression_rate_nonzero": same on non-zero params, "macs_reduction": base MACs /
        compressed MACs, "speedup": base latency / compressed latency (batch 1),
        "speedup_batch": the same at ``settings.batch_size``}``. Latency keys only if ``latency``.
    """
    settings = settings or CostSettings()
    wanted = list(dict.fromkeys([*names, "params", "nonzero_params", "macs"]))
    out: dict[str, Any] = {"base": measure(base, wanted, settings),
                           "compressed": measure(compressed, wanted, settings)}
    b, c = out["base"], out["compressed"]

    def ratio(x: float, y: float) -> float:
        return float(x) / float(y) if y else float("inf")

    out["compression_rate"] = ratio(b["params"], c["params"])
    out["compression_rate_nonzero"] = ratio(b["nonzero_params"], c["nonzero_params"])
    out["macs_reduction"] = ratio(b["macs"], c["macs"])
    if latency:
        models = {"base": base, "compressed": compressed}
        for key, bs in (("latency_ms", 1), ("latency_ms_batch", settings.batch_size)):
            lat = compare_latency(models, settings=settings, batch_size=bs)
            b[key], c[key] = lat["base"], lat["compressed"]
        out["speedup"] = ratio(b["latency_ms"], c["latency_ms"])
        out["speedup_batch"] = ratio(b["latency_ms_batch"], c["latency_ms_batch"])
    return out


# -- the built-in metrics ----------------------------------------------------------------------

register_cost("params", unit="count", budget="params", units=COUNT_UNITS)(lambda m, s: count_params(m))
register_cost("nonzero_params", unit="count", budget="nonzero_params", units=COUNT_UNITS)(
    lambda m, s: count_nonzero_params(m))
register_cost("macs", unit="MAC", budget="macs", units=COUNT_UNITS)(
    lambda m, s: count_macs(m, image_size=s.image_size, in_channels=s.in_channels, device=s.device))
register_cost("size", unit="byte", budget="size", units=BYTE_UNITS)(lambda m, s: serialized_size(m))
register_cost("sparse_size", unit="byte")(lambda m, s: sparse_size(m, index_bits=s.index_bits))
register_cost("latency_ms", unit="ms", measured=True, budget="latency", units=TIME_UNITS)(
    lambda m, s: measure_latency(m, settings=s, batch_size=1))
register_cost("latency_ms_batch", unit="ms", measured=True)(
    lambda m, s: measure_latency(m, settings=s, batch_size=s.batch_size))
from rsc import energy as _energy  # noqa: F401 - registers energy_mj (analytic energy per image, rsc/energy.py)
