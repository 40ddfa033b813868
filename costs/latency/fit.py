"""Whole-model corrections of a latency table: how the sum of a model's kernels becomes its latency.

A table predicts a model as the sum of its kernels' latencies, corrected by a fit on whole
*calibration models* measured on the target: a line (``alpha * sum + beta``: the forward's own
overhead, :func:`fit_line`), a calibration curve (``measured / sum`` piecewise linear in the sum,
knots at quantiles of the calibration sums, flat beyond them, :func:`fit_curve`) or a weight per
class of kernel (:data:`costs.latency.kernels.CLASSES`, :func:`fit_classes`).
:func:`fit_correction` fits all three and chooses the one with the smallest leave-one-out error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from costs.latency.kernels import CLASSES

__all__ = ["fit_line", "fit_curve", "fit_classes", "fit_correction", "curve_ratio"]


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
