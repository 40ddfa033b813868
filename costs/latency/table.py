"""Per-kernel latency tables: measure every kernel configuration once on a target, predict a model fast.

A model's latency on a target is predicted as the sum of its kernels' latencies
(:mod:`costs.latency.kernels`), read from a table measured on that target (NetAdapt, Yang et al.
2018; nn-Meter, Zhang et al. 2021), then corrected by a fit on whole models
(:mod:`costs.latency.fit`)::

    predicted_ms = alpha * sum(kernel_ms) + beta      or      sum(kernel_ms) * ratio(sum(kernel_ms))
                   or      sum over classes c of weight[c] * sum(kernel_ms of class c)

The table holds, per kernel spec and input side, a grid over the channel dims measured on the
target (:mod:`costs.latency.profile`); between grid points it interpolates multilinearly. A kernel
the table lacks (another spec, dims outside the grid) is *measured on the fly* on the table's
target (``on_missing="measure"``, cached in the table; :meth:`LatencyTable.save` keeps it) or is an
error (``on_missing="error"``): never a silent zero. A model that cannot be split into kernels (int8
``torch.ao`` graphs, models ``torch.fx`` cannot trace) is measured whole, or is an error, the same
way. Every table carries the fingerprint of the target it was measured on and the model, input
size and classes it was profiled for; :func:`check_table` refuses one that was measured elsewhere,
naming what differs. ``python -m search.profile`` builds tables; ``--target lut:FILE`` uses one
(:mod:`costs.targets`). :meth:`LatencyTable.predict` traces once per model *structure* and reads
the kernels of every later model of it from its modules (:mod:`costs.latency.templates`).
How well tables predict, per network and batch: ``benchmarks/README.md`` (latency tables).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from costs.errors import TableMiss, TableMismatch
from costs.hardware import compare_latency_on
from costs.latency.fit import curve_ratio
from costs.latency.kernels import (CLASSES, Kernel, build_kernel, class_sums, input_side, kernel_class,
                                   kernel_module, layer_spec)
from costs.latency.templates import KernelTemplates
from rsc.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["LatencyTable", "load_table", "check_table", "interpolate", "TABLE_VERSION", "FINGERPRINT_KEYS"]

TABLE_VERSION = 1
#: fingerprint fields that must agree between a table and the target it is used on (not the host name:
#: a table measured on one board serves its twins).
FINGERPRINT_KEYS = ("device", "device_name", "machine", "runtime", "provider", "threads", "memory_format",
                    "batch", "torch", "onnxruntime", "opset")


def interpolate(axes: Sequence[Sequence[int]], values: Any, dims: Sequence[int]) -> float | None:
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
        target: the :mod:`costs.hardware` spec it was measured on.
        fingerprint: what :meth:`costs.hardware.Target.fingerprint` said there.
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
        self._templates: Any = None  # costs.latency.templates.KernelTemplates, made on first use
        self._memo: dict[tuple[str, tuple[int, ...]], float] = {}  # kernel_ms by (key, dims)

    def kernels(self, model: nn.Module) -> list[Kernel]:
        """``model``'s kernels at the table's input size: traced once per model structure, then read
        from its modules (:mod:`costs.latency.templates`).

        Raises:
            TableMiss: as :func:`kernels_of`.
        """
        if self._templates is None:
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
            value = interpolate(grid["axes"], grid["ms"], kernel.dims) if grid else None
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
        :data:`spaces.allocation.LayerCost` asks); its bn/activation are not included."""
        from torch import nn

        if not isinstance(module, (nn.Conv2d, nn.Linear)):
            raise TableMiss(f"layer_cost takes a Conv2d or Linear layer, got {type(module).__name__}")
        spec, dims = layer_spec(module)
        shape = (module.in_features, 1, 1) if isinstance(module, nn.Linear) else tuple(int(d) for d in input_shape[1:])
        kernel = Kernel(spec=spec, side=input_side((1, *shape)), dims=dims, shape=shape,
                        module=nn.Sequential(nn.Flatten(1), module) if isinstance(module, nn.Linear) else module)
        ms = self.kernels_ms([kernel])[0]
        if self.correction == "classes":  # a 1x1 convolution weighs what a whole model says it costs
            ms *= self.weights[kernel_class(spec)] / self.weights["conv"]
        return ms

    # -- measuring -------------------------------------------------------------------------

    def _measure_exact(self, kernels: Sequence[Kernel]) -> None:
        models, shapes = {}, {}
        for i, k in enumerate(kernels):
            try:
                module, shape = build_kernel(k.spec, k.dims, k.side)
            except TableMiss:
                if k.module is None:
                    raise
                module, shape = kernel_module(k), k.shape
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

    ``fingerprint`` is what the table's target says now (:meth:`costs.hardware.Target.fingerprint`).

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
