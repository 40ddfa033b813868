"""Profiling a latency table: the grid of every kernel kind, timed in rounds that look like a forward pass.

Each grid spans the channel dims seen in the models profiled (:func:`grid_axes`); the kernels are
timed in rounds (:func:`profile_rounds`) that hold one point of every kind, in the order the kinds
run in a network, so that a kernel runs after other kinds of kernels and among about a model's
worth of weights, as it does in a network. Why rounds (the sums of kernels timed alone were off by
8%, in rounds by 4%, on ResNet-18): ``benchmarks/README.md`` (latency tables).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from costs.hardware import compare_latency_on
from costs.latency.kernels import Kernel, build_kernel, kernel_module

__all__ = ["grid_axis", "grid_axes", "profile_rounds", "profile_kernels"]


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
    :func:`costs.hardware.compare_latency_on` times models, so that a kernel runs after other kinds of
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
                models[str(i)], shapes[str(i)] = kernel_module(k), k.shape
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
