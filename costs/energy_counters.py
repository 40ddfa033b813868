"""Measured energy counters: Intel RAPL, NVIDIA NVML and the Zeus library, where this machine has them.

:func:`counters` reports which counters exist here (RAPL under ``/sys/class/powercap``, NVML
through ``pynvml``, Zeus if installed), each with the reason when it is unavailable;
:func:`measure_energy` measures a function's energy with them, or returns None and the reason -
never 0.0 for "unknown". The analytical energy model, which needs no counter, is
:mod:`costs.energy`.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsc.errors import ConfigError

__all__ = ["Counter", "counters", "measure_energy", "POWERCAP", "SOURCES"]

POWERCAP = Path("/sys/class/powercap")


@dataclass(frozen=True)
class Counter:
    """A measured energy counter: whether this machine has it, and what it measures or why not."""

    name: str
    available: bool
    detail: str

    def __str__(self) -> str:
        return f"{self.name}: {'available' if self.available else 'unavailable'}: {self.detail}"


@dataclass
class _Domain:
    label: str
    read: Callable[[], float]  # joules since some origin
    wrap: float = math.inf  # joules at which the counter wraps


def _rapl() -> tuple[list[_Domain], str]:
    root = POWERCAP
    if not root.is_dir():
        return [], f"no {root}"
    tops = sorted(p for p in root.glob("intel-rapl:*") if p.name.count(":") == 1)
    if not tops:
        return [], f"no intel-rapl domains under {root}"

    def name_of(p: Path) -> str:
        try:
            return (p / "name").read_text().strip()
        except OSError:
            return p.name

    packages = [p for p in tops if name_of(p).startswith("package")]
    chosen = packages or tops  # psys (platform) includes the packages: never summed with them
    domains, problems = [], []
    for p in chosen:
        f = p / "energy_uj"
        try:
            int(f.read_text())
        except PermissionError:
            problems.append(f"{f} is not readable (root-only since Linux 5.10, the PLATYPUS fix)")
            continue
        except (OSError, ValueError) as exc:
            problems.append(f"cannot read {f}: {exc}")
            continue
        try:
            wrap = int((p / "max_energy_range_uj").read_text()) * 1e-6
        except (OSError, ValueError):
            wrap = math.inf
        domains.append(_Domain(f"rapl {name_of(p)}", (lambda f=f: int(f.read_text()) * 1e-6), wrap))
    if not domains:
        return [], "; ".join(problems)
    return domains, ", ".join(d.label for d in domains)


def _nvml() -> tuple[list[_Domain], str, Any]:
    """NVML energy domains, their description or the reason, and the module (to shut down)."""
    try:
        import pynvml
    except ImportError:
        return [], "pynvml is not importable (pip install nvidia-ml-py)", None
    try:
        pynvml.nvmlInit()
    except Exception as exc:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded...
        return [], f"nvmlInit failed: {exc}", None
    domains, problems = [], []
    try:
        n = pynvml.nvmlDeviceGetCount()
        for i in range(n):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            try:
                pynvml.nvmlDeviceGetTotalEnergyConsumption(h)
            except Exception as exc:  # noqa: BLE001 - NVMLError_NotSupported before Volta
                problems.append(f"GPU {i}: total energy counter not supported ({exc})")
                continue
            domains.append(_Domain(f"nvml GPU {i}",
                                   (lambda h=h: pynvml.nvmlDeviceGetTotalEnergyConsumption(h) * 1e-3)))
    except Exception as exc:  # noqa: BLE001
        problems.append(f"NVML query failed: {exc}")
    if not domains:
        _nvml_shutdown(pynvml)
        return [], "; ".join(problems) or "NVML sees no NVIDIA GPU", None
    return domains, ", ".join(d.label for d in domains), pynvml


def _nvml_shutdown(pynvml: Any) -> None:
    if pynvml is not None:
        try:
            pynvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def _zeus_monitor() -> tuple[Any, str]:
    """A ZeusMonitor over every GPU and CPU it finds, or None and the reason."""
    try:
        from zeus.monitor import ZeusMonitor
    except ImportError:
        return None, "zeus is not installed (optional: pip install zeus)"
    except Exception as exc:  # noqa: BLE001 - a broken install
        return None, f"zeus cannot be imported: {type(exc).__name__}: {exc}"
    try:
        monitor = ZeusMonitor()
    except Exception as exc:  # noqa: BLE001 - no GPU/CPU backend, permissions
        return None, f"ZeusMonitor cannot start: {type(exc).__name__}: {exc}"
    gpus, cpus = list(getattr(monitor, "gpu_indices", []) or []), list(getattr(monitor, "cpu_indices", []) or [])
    if not gpus and not cpus:
        return None, "ZeusMonitor finds no GPU or CPU energy counter"
    return monitor, f"ZeusMonitor over GPUs {gpus or 'none'}, CPUs {cpus or 'none'}"


def counters() -> dict[str, Counter]:
    """The measured energy counters of this machine: ``rapl``, ``nvml`` and ``zeus``, each
    available (with what it measures) or not (with the reason)."""
    rapl, rapl_detail = _rapl()
    nvml, nvml_detail, handle = _nvml()
    _nvml_shutdown(handle)
    monitor, zeus_detail = _zeus_monitor()
    return {"rapl": Counter("rapl", bool(rapl), rapl_detail),
            "nvml": Counter("nvml", bool(nvml), nvml_detail),
            "zeus": Counter("zeus", monitor is not None, zeus_detail)}


def _sync() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


SOURCES = ("auto", "zeus", "rapl", "nvml")


def measure_energy(fn: Callable[[], Any], repeats: int = 10, *, warmup: int = 1,
                   source: str = "auto") -> tuple[float | None, str]:
    """Measured joules per call of ``fn``, or ``(None, why not)``; never 0.0 for "unknown".

    ``source``: ``"zeus"`` (ZeusMonitor), ``"rapl"`` (CPU packages), ``"nvml"`` (GPUs), or
    ``"auto"``: Zeus if it is installed and finds a counter, else RAPL and NVML together (their
    domains summed: CPU packages plus GPUs). ``fn`` runs ``warmup`` times untimed, then
    ``repeats`` times inside the window; CUDA work is synchronised at both ends. A counter that
    does not advance over the window (too short for its update interval) gives None, not 0.

    Returns:
        ``(joules per call, what measured it)`` or ``(None, the reason no counter could)``.
    """
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ConfigError(f"measure_energy: repeats must be a positive integer, got {repeats!r}")
    if not isinstance(warmup, int) or isinstance(warmup, bool) or warmup < 0:
        raise ConfigError(f"measure_energy: warmup must be an integer >= 0, got {warmup!r}")
    if source not in SOURCES:
        raise ConfigError(f"measure_energy: source must be one of {', '.join(SOURCES)}, got {source!r}")
    reasons = []
    if source in ("auto", "zeus"):
        monitor, detail = _zeus_monitor()
        if monitor is not None:
            return _measure_zeus(monitor, detail, fn, repeats, warmup)
        reasons.append(f"zeus: {detail}")
        if source == "zeus":
            return None, "; ".join(reasons)
    domains, handle = [], None
    if source in ("auto", "rapl"):
        found, detail = _rapl()
        domains += found
        if not found:
            reasons.append(f"rapl: {detail}")
    if source in ("auto", "nvml"):
        found, detail, handle = _nvml()
        domains += found
        if not found:
            reasons.append(f"nvml: {detail}")
    if not domains:
        return None, "no energy counter: " + "; ".join(reasons)
    try:
        for _ in range(warmup):
            fn()
        _sync()
        start = [d.read() for d in domains]
        t0 = time.perf_counter()
        for _ in range(repeats):
            fn()
        _sync()
        seconds = time.perf_counter() - t0
        end = [d.read() for d in domains]
    finally:
        _nvml_shutdown(handle)
    total = 0.0
    for d, a, b in zip(domains, start, end):
        delta = b - a
        if delta < 0 and math.isfinite(d.wrap):
            delta += d.wrap  # the counter wrapped once during the window
        total += max(delta, 0.0)
    labels = " + ".join(d.label for d in domains)
    if total <= 0:
        return None, (f"{labels}: the counter did not advance over {seconds:.3g} s of {repeats} call(s); "
                      "raise repeats so the window spans its update interval")
    return total / repeats, f"{labels}: {total:.4g} J over {repeats} call(s) in {seconds:.3g} s"


def _measure_zeus(monitor: Any, detail: str, fn: Callable[[], Any], repeats: int,
                  warmup: int) -> tuple[float | None, str]:
    for _ in range(warmup):
        fn()
    key = f"costs.energy.{id(fn)}"
    monitor.begin_window(key)
    for _ in range(repeats):
        fn()
    m = monitor.end_window(key)
    # Measurement.total_energy is the GPUs' alone (zeus 0.16); the CPU packages are added, as with raw RAPL
    parts = [*(getattr(m, "gpu_energy", None) or {}).values(), *(getattr(m, "cpu_energy", None) or {}).values()]
    total = float(sum(parts)) if parts else math.nan
    if not math.isfinite(total) or total <= 0:
        return None, f"zeus: {detail} measured no energy ({total!r} J) over {repeats} call(s)"
    return total / repeats, f"zeus: {detail}: {total:.4g} J over {repeats} call(s) in {float(m.time):.3g} s"

