"""Latency measured on this process's device: median wall time of forward passes, models interleaved.

* ``latency_ms`` / ``latency_ms_batch``: median wall time of one forward at batch 1 / at
  ``settings.batch_size`` on the local device, after warm-up, with a fixed thread count, on a copy
  of the model in the settings' memory format (channels-last by default).

:func:`compare_latency` times several models interleaved (A, B, A, B...), so that load from other
processes hits them alike and their ratio - the speed-up - stays meaningful on a shared machine.
:func:`compare` measures a base and a compressed model in the same process and derives the
compression rate (base params / compressed params) and the speed-up (base latency / compressed).
Where latency is measured on another device, runtime or machine: :mod:`costs.hardware`.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from costs.counting import eval_mode, model_device
from costs.registry import TIME_UNITS, CostSettings, measure, register_cost, torch_memory_format

if TYPE_CHECKING:  # torch loads on first use, so that CLIs answer --help at once
    import torch
    from torch import nn

__all__ = ["compare_latency", "measure_latency", "compare", "in_memory_format", "threads"]


@contextmanager
def threads(n: int) -> Iterator[None]:
    """torch's intra-op thread count set to ``n`` inside the block, restored after."""
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
    models = {k: in_memory_format(m, settings.memory_format) for k, m in models.items()}
    times: dict[str, list[float]] = {k: [] for k in models}
    inputs = {}
    for name, m in models.items():
        shape = (shapes or {}).get(name)
        inputs[name] = settings.example_input(batch_size, shape).to(model_device(m, settings.device))
    with threads(settings.threads), torch.inference_mode():
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


def in_memory_format(model: nn.Module, memory_format: str) -> nn.Module:
    """A copy of ``model`` whose 4-d weights use ``memory_format`` (the model itself if NCHW)."""
    if memory_format == "contiguous":
        return model
    import copy

    clone = copy.deepcopy(model)
    try:
        return clone.to(memory_format=torch_memory_format(memory_format))
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


register_cost("latency_ms", unit="ms", measured=True, budget="latency", units=TIME_UNITS)(
    lambda m, s: measure_latency(m, settings=s, batch_size=1))
register_cost("latency_ms_batch", unit="ms", measured=True)(
    lambda m, s: measure_latency(m, settings=s, batch_size=s.batch_size))
