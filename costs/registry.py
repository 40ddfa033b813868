"""The registry of model costs and the settings they are measured with.

Every cost the project reports is one registered :class:`CostMetric` (``register_cost``): its key,
unit, whether it is counted from the structure (*analytic*: known before training, projected onto
budgets) or timed on a device (*measured*), and, when it can be budgeted, its budget name and unit
grammar. The budget parser, the trial function and the reports read the registry, so a new cost
is one registration. The built-in costs register in :mod:`costs.counting` (params, non-zero
params, MACs, size, sparse size), :mod:`costs.timing` (latency) and :mod:`costs.energy` (energy);
importing :mod:`costs` registers them all, in that order.

    from costs import CostSettings, measure
    measure(model, ["params", "macs"], CostSettings(image_size=64))
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rsc.errors import ConfigError

if TYPE_CHECKING:  # torch loads on first use, so that CLIs answer --help at once
    import torch
    from torch import nn

__all__ = ["CostSettings", "CostMetric", "register_cost", "list_costs", "get_cost", "budget_metrics",
           "analytic_costs", "measure", "torch_memory_format", "MEMORY_FORMATS", "COUNT_UNITS", "BYTE_UNITS", "TIME_UNITS"]

MEMORY_FORMATS = ("channels_last", "contiguous")


def torch_memory_format(name: str) -> Any:
    """The torch memory format named ``name`` (one of :data:`MEMORY_FORMATS`)."""
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
        return x.contiguous(memory_format=torch_memory_format(self.memory_format)) if x.dim() == 4 else x


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

