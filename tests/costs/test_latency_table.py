"""Latency tables: kernels and their fusion, grids and interpolation, files and their refusals, misses
measured on the fly or refused, and lut: targets. No timing asserts: values are only checked to be
positive and finite, or equal to what the table holds."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

from rsc.errors import ConfigError
from costs.errors import TableMismatch, TableMiss
from costs.latency.fit import curve_ratio, fit_classes, fit_correction, fit_curve, fit_line
from costs.latency.kernels import CLASSES, build_kernel, class_sums, kernel_class, kernels_of
from costs.latency.profile import grid_axes, grid_axis, profile_kernels, profile_rounds
from costs.latency.table import LatencyTable, check_table, load_table
from costs.targets import compare_latency_on, parse_target

SIZE = 16


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.bn(self.conv(x)) + x)


def _net(width: int = 8, classes: int = 3) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.Conv2d(width, 8, 1, bias=False), Block(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.ReLU6(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, classes)).eval()


class Both(nn.Module):
    def __init__(self, *nets: nn.Module) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)

    def forward(self, x):
        return tuple(n(x) for n in self.nets)


def _table(model: nn.Module, points: int = 3) -> LatencyTable:
    observed: dict = {}
    for k in kernels_of(model, SIZE):
        observed.setdefault(k.key, []).append(k)
    grids, exact, _ = profile_kernels("cpu", observed, points=points, repeats=2)
    target = parse_target("cpu")
    return LatencyTable(target="cpu", fingerprint=target.fingerprint(), model="net", image_size=SIZE, num_classes=3,
                        grids=grids, exact=exact)


def test_kernels_fuse_conv_bn_relu_and_add_relu_in_order():
    kernels = kernels_of(_net(), SIZE)
    ops = [(k.spec["op"], k.spec.get("bn"), k.spec.get("act"), k.dims) for k in kernels]
    assert ops == [("conv", True, "relu", (3, 8)), ("conv", None, None, (8, 8)), ("conv", True, None, (8, 8)),
                   ("add", None, "relu", (8,)), ("conv", None, "relu6", (8,)), ("gap", None, None, (8,)),
                   ("flatten", None, None, (8,)), ("linear", None, None, (8, 3))]
    assert kernels[4].spec["dw"] is True and kernels[4].spec["bias"] is True
    assert all(k.side == SIZE for k in kernels[:5]) and kernels[-1].side == 1


def test_built_kernels_and_cut_out_kernels_compute_alike():
    for k in kernels_of(_net(), SIZE):
        module, shape = build_kernel(k.spec, k.dims, k.side)
        x = torch.randn(2, *shape)
        cut = k.module.build()
        assert module(x).numel() == cut(torch.randn(2, *k.shape)).numel()


def test_grid_axis_keeps_ends_and_rounds_between():
    axis = grid_axis(8, 512, 8)
    assert axis[0] == 8 and axis[-1] == 512 and axis == sorted(set(axis)) and len(axis) <= 8
    assert all(v % 8 == 0 for v in axis)
    assert grid_axis(5, 5, 8) == [5]


def test_prediction_is_exact_on_grid_points_and_interpolates_between(tmp_path):
    model = _net()
    table = _table(model)
    key = kernels_of(model, SIZE)[0].key
    axes, ms = table.grids[key]["axes"], table.grids[key]["ms"]
    assert axes[0] == [3] and axes[1] == [8]
    wide = _net(width=32)
    table2 = _table(Both(_net(width=8), _net(width=32)))  # a grid over widths 8..32 of the stem
    k_stem = kernels_of(wide, SIZE)[0]
    grid = table2.grids[k_stem.key]
    assert grid["axes"][1][0] == 8 and grid["axes"][1][-1] == 32
    lo, hi = grid["ms"][0][0], grid["ms"][0][-1]
    mid = [d for d in grid["axes"][1] if 8 < d < 32]
    probe = type(k_stem)(spec=k_stem.spec, side=k_stem.side, dims=(3, 20), shape=k_stem.shape)
    value = table2.kernel_ms(probe)
    if not mid:  # two points: the interpolation is linear between them
        assert value == pytest.approx(lo + (hi - lo) * (20 - 8) / 24)
    assert min(grid["ms"][0]) - 1e-12 <= value <= max(grid["ms"][0]) + 1e-12
    assert ms[0][0] > 0


def test_predict_is_alpha_sum_plus_beta_and_round_trips_through_json(tmp_path):
    model = _net()
    table = _table(model)
    table.alpha, table.beta = 1.5, 0.25
    s = table.sum_ms(model)
    assert s > 0 and table.predict(model) == pytest.approx(1.5 * s + 0.25)
    path = table.save(tmp_path / "t.json")
    again = load_table(path)
    assert again.predict(model) == pytest.approx(table.predict(model))
    assert again.to_dict() == json.loads(path.read_text())


def test_a_missing_kernel_is_measured_on_the_fly_or_refused(tmp_path):
    table = _table(_net())
    other = nn.Sequential(nn.Conv2d(3, 8, 5, padding=2), nn.ReLU(), nn.Flatten(), nn.Linear(8 * SIZE * SIZE, 3)).eval()
    table.on_missing = "error"
    with pytest.raises(TableMiss, match="no entry for kernel"):
        table.predict(other)
    table.on_missing = "measure"
    value = table.predict(other)
    assert math.isfinite(value) and value > 0 and table.measured_on_the_fly == 3 and table.dirty  # conv5x5+relu, flatten at 16 px, linear
    table.on_missing = "error"
    assert table.predict(other) == pytest.approx(value)  # cached now


def test_a_model_that_is_not_tabled_is_measured_whole_or_refused():
    table = _table(_net())
    int8 = torch.ao.quantization.quantize_dynamic(_net(), {nn.Linear}, dtype=torch.qint8)
    table.on_missing = "error"
    with pytest.raises(TableMiss, match="int8"):
        table.predict(int8)
    table.on_missing = "measure"
    assert table.predict(int8) > 0 and table.measured_on_the_fly == 1


def test_layer_cost_reads_bare_conv_and_linear_layers():
    model = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1, bias=False), nn.Flatten(), nn.Linear(16 * SIZE * SIZE, 4))
    table = _table(_net())
    conv = table.layer_cost(model[0], (1, 8, SIZE, SIZE))
    fc = table.layer_cost(model[2], (1, 16 * SIZE * SIZE))
    assert conv > 0 and fc > 0
    with pytest.raises(TableMiss):
        table.layer_cost(nn.ReLU(), (1, 8, SIZE, SIZE))


def test_fit_line_recovers_a_line_and_never_a_negative_offset():
    alpha, beta = fit_line([1.0, 2.0, 4.0], [2.5, 4.5, 8.5])
    assert alpha == pytest.approx(2.0) and beta == pytest.approx(0.5)
    alpha, beta = fit_line([1.0, 2.0, 4.0], [1.0, 3.0, 7.0])
    assert beta == 0.0 and alpha > 0


def test_fit_curve_follows_a_ratio_that_is_not_monotone_where_a_line_cannot():
    # measured / sum as seen on ResNet-18 at batch 1: ~0.8 for the smallest models, ~1.12 mid-size, 1.0 the base
    sums = [1.9, 2.3, 2.8, 3.0, 3.4, 3.9, 4.2, 4.7, 5.2, 6.3, 7.6]
    ratio = {1.9: 0.78, 2.3: 0.95, 2.8: 1.08, 3.0: 1.12, 3.4: 1.13, 3.9: 1.12, 4.2: 1.12, 4.7: 1.10, 5.2: 1.07,
             6.3: 1.03, 7.6: 1.00}
    measured = [s * ratio[s] for s in sums]
    curve = fit_curve(sums, measured, knots=5)
    assert curve["sums"][0] == 1.9 and curve["sums"][-1] == 7.6 and len(curve["sums"]) == 5
    rel = lambda s: s * curve_ratio(curve, s) / (7.6 * curve_ratio(curve, 7.6))  # noqa: E731
    worst_curve = max(abs(rel(s) / (s * ratio[s] / 7.6) - 1) for s in sums)
    alpha, beta = fit_line(sums, measured)
    worst_line = max(abs((alpha * s + beta) / (alpha * 7.6 + beta) / (s * ratio[s] / 7.6) - 1) for s in sums)
    assert worst_curve < 0.06 < 0.10 < worst_line  # relative to the base, as budgets and speed-ups read it
    assert curve_ratio(curve, 0.5) == pytest.approx(curve["ratios"][0])  # flat beyond the ends
    assert curve_ratio(curve, 50.0) == pytest.approx(curve["ratios"][-1])


def test_fit_curve_with_few_models_and_bad_input():
    assert fit_curve([2.0], [3.0]) == {"sums": [2.0], "ratios": [pytest.approx(1.5)]}
    two = fit_curve([1.0, 4.0], [2.0, 4.0], knots=5)
    assert two["sums"] == [1.0, 4.0] and two["ratios"] == [pytest.approx(2.0), pytest.approx(1.0)]
    for sums, measured in (([], []), ([1.0, 2.0], [1.0]), ([0.0], [1.0]), ([1.0], [-1.0])):
        with pytest.raises(ValueError):
            fit_curve(sums, measured)


def test_a_table_with_a_curve_predicts_through_it_and_keeps_it_in_its_file(tmp_path):
    model = _net()
    table = _table(model)
    s = table.sum_ms(model)
    table.alpha, table.beta = 1.5, 0.25  # the line is kept for reading, not used while there is a curve
    table.curve = {"sums": [s / 2, 2 * s], "ratios": [1.4, 1.0]}
    assert table.predict(model) == pytest.approx(s * (1.4 + (1.0 - 1.4) * (s - s / 2) / (2 * s - s / 2)))
    assert "calibration curve over 2 knot(s)" in table.summary()
    again = load_table(table.save(tmp_path / "t.json"))
    assert again.curve == table.curve and again.predict(model) == pytest.approx(table.predict(model))
    data = json.loads((tmp_path / "t.json").read_text())
    data["curve"] = {"sums": [1.0, 2.0], "ratios": [1.0]}
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="incomplete or malformed") as err:
        load_table(tmp_path / "bad.json")
    assert "\n" not in str(err.value)
    del data["curve"]  # a table made before curves: the line
    (tmp_path / "old.json").write_text(json.dumps(data))
    assert load_table(tmp_path / "old.json").predict(model) == pytest.approx(1.5 * s + 0.25)


def test_check_table_names_every_difference():
    table = _table(_net())
    check_table(table, fingerprint=parse_target("cpu").fingerprint(), model="net", image_size=SIZE, num_classes=3)
    other = dict(parse_target("cpu").fingerprint(), device_name="Cortex-A76", batch=16)
    with pytest.raises(TableMismatch) as err:
        check_table(table, fingerprint=other, model="resnet18", image_size=64, num_classes=3)
    text = str(err.value)
    for word in ("model net (here resnet18)", "image_size 16 (here 64)", "device_name", "Cortex-A76", "batch 1 (here 16)"):
        assert word in text, text
    assert "\n" not in text


def test_lut_targets_parse_predict_and_check(tmp_path):
    table = _table(_net())
    path = table.save(tmp_path / "lut.json")
    target = parse_target(f"lut:{path}")
    assert target.table == str(path) and target.spec == f"lut:{path}" and parse_target(target.spec) == target
    assert target.measured == parse_target("cpu") and "latency table" in target.describe()
    assert target.check() is target
    lat = compare_latency_on(target, {"a": _net(), "b": _net(width=8)}, SIZE)
    assert lat["a"] == pytest.approx(table.predict(_net()))
    assert target.fingerprint()["table"] == str(path)
    data = json.loads(path.read_text())
    data["fingerprint"]["device_name"] = "another CPU"
    (tmp_path / "elsewhere.json").write_text(json.dumps(data))
    with pytest.raises(TableMismatch, match="another CPU"):
        parse_target(f"lut:{tmp_path / 'elsewhere.json'}").check()


@pytest.mark.parametrize("content, words", [
    (None, "no such file"),
    ("{not json", "not readable JSON"),
    ('{"a": 1}', "not a latency table"),
    ('{"version": 99, "grids": {}, "fingerprint": {}}', "format version 99"),
])
def test_bad_table_files_are_one_line_errors(tmp_path, content, words):
    path = tmp_path / "lut.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ConfigError, match=words) as err:
        parse_target(f"lut:{path}")
    assert "\n" not in str(err.value)
    with pytest.raises(ConfigError, match="lut: takes a latency table file"):
        parse_target("lut:")


def test_fit_correction_chooses_by_leave_one_out_and_the_table_predicts_with_its_choice(tmp_path):
    sums = [1.9, 2.3, 2.8, 3.0, 3.4, 3.9, 4.2, 4.7, 5.2, 6.3, 7.6]
    rng = np.random.default_rng(0)
    noisy_line = [1.02 * s + 0.1 + 0.03 * e for s, e in zip(sums, rng.standard_normal(len(sums)))]
    fit = fit_correction(sums, noisy_line)
    assert fit["correction"] == "line" and fit["loo"]["line"] < fit["loo"]["curve"]
    assert fit["alpha"] == pytest.approx(1.02, abs=0.03) and fit["curve"]["sums"][0] == 1.9
    assert fit_correction(sums, noisy_line, reference=len(sums) - 1)["correction"] == "line"  # relative to a base
    bent = {1.9: 0.78, 2.3: 0.95, 2.8: 1.08, 3.0: 1.12, 3.4: 1.13, 3.9: 1.12, 4.2: 1.12, 4.7: 1.10, 5.2: 1.07,
            6.3: 1.03, 7.6: 1.00}  # the ratio of kernels timed out of context (test above)
    assert fit_correction(sums, [s * bent[s] for s in sums])["correction"] == "curve"
    assert fit_correction([2.0, 3.0], [2.2, 3.1])["loo"] == {}  # too few models to leave one out: the curve
    model = _net()
    table = _table(model)
    s = table.sum_ms(model)
    table.alpha, table.beta, table.curve = 1.5, 0.25, {"sums": [s], "ratios": [1.2]}
    assert table.predict(model) == pytest.approx(1.2 * s)  # no choice recorded: the curve
    table.correction = "line"
    assert table.predict(model) == pytest.approx(1.5 * s + 0.25) and "alpha 1.500" in table.summary()
    again = load_table(table.save(tmp_path / "t.json"))
    assert again.correction == "line" and again.predict(model) == pytest.approx(1.5 * s + 0.25)
    data = json.loads((tmp_path / "t.json").read_text())
    data["correction"] = "spline"
    (tmp_path / "bad.json").write_text(json.dumps(data))
    with pytest.raises(ConfigError, match="incomplete or malformed"):
        load_table(tmp_path / "bad.json")


def test_kernels_fall_in_three_classes_and_their_sums_add_up():
    kernels = kernels_of(_net(), SIZE)
    # the depthwise 3x3 is a convolution; the add, the pool, flatten and the linear layer the rest
    assert [kernel_class(k.spec) for k in kernels] == ["conv", "conv1x1", "conv", "other", "conv", "other", "other",
                                                       "other"]
    sums = class_sums(kernels, [1.0, 2.0, 3.0, 0.5, 4.0, 0.25, 0.125, 0.125])
    assert sums == {"conv1x1": 2.0, "conv": 8.0, "other": 1.0} and list(sums) == list(CLASSES)
    assert class_sums([], []) == dict.fromkeys(CLASSES, 0.0)


def _classed_models(n: int = 14, seed: int = 0) -> list[dict[str, float]]:
    rng = np.random.default_rng(seed)
    return [{"conv1x1": float(a), "conv": float(b), "other": float(c)}
            for a, b, c in zip(rng.uniform(0.2, 3.0, n), rng.uniform(1.0, 8.0, n), rng.uniform(0.1, 1.0, n))]


def test_fit_classes_recovers_per_class_weights_and_the_correction_chooses_them_only_where_they_fit():
    truth = {"conv1x1": 1.4, "conv": 1.0, "other": 2.2}  # ResNet-18 at batch 16 ran about so (module docstring)
    classes = _classed_models()
    rng = np.random.default_rng(1)
    noise = rng.standard_normal(len(classes))
    measured = [sum(truth[g] * c[g] for g in CLASSES) * (1 + 0.01 * e) for c, e in zip(classes, noise)]
    weights = fit_classes(classes, measured, reference=0)
    assert weights == pytest.approx(truth, rel=0.1)
    sums = [sum(c.values()) for c in classes]
    fit = fit_correction(sums, measured, reference=0, classes=classes)
    assert fit["correction"] == "classes" and fit["loo"]["classes"] < min(fit["loo"]["line"], fit["loo"]["curve"])
    assert fit["weights"] == pytest.approx(weights)
    without = fit_correction(sums, measured, reference=0)
    assert "classes" not in without["loo"] and without["weights"] is None and without["correction"] != "classes"
    # a forward's fixed overhead, which weights without an intercept cannot follow: the line is kept
    line = [1.1 * s + 0.5 for s in sums]
    assert fit_correction(sums, line, reference=0, classes=classes)["correction"] == "line"
    # weights that would come out negative, and classes that move together, are no fit: never offered
    negative = [sum(c.values()) - 1.5 * c["other"] for c in classes]
    assert fit_classes(classes, negative) is None
    assert "classes" not in fit_correction(sums, negative, reference=0, classes=classes)["loo"]
    collinear = [{"conv1x1": s, "conv": 2 * s, "other": 0.5 * s} for s in sums]
    assert fit_classes(collinear, sums) is None
    # a class that only two models have takes the weight of the sum as a whole, not an unfounded one
    rare = [{**c, "conv1x1": c["conv1x1"] if i < 2 else 0.0} for i, c in enumerate(classes)]
    rare_measured = [1.0 * c["conv"] + 2.0 * c["other"] + 5.0 * c["conv1x1"] for c in rare]
    rare_weights = fit_classes(rare, rare_measured)
    ratio = np.array([sum(c.values()) for c in rare]) / np.array(rare_measured)  # the line through the origin
    assert rare_weights["conv1x1"] == pytest.approx(float(np.sum(ratio) / np.sum(ratio ** 2)))


def test_a_table_that_weighs_classes_predicts_saves_and_refuses_bad_weights(tmp_path):
    model = _net()
    table = _table(model)
    kernels = kernels_of(model, SIZE)
    sums = class_sums(kernels, table.kernels_ms(kernels))
    table.weights, table.correction = {"conv1x1": 1.5, "conv": 1.0, "other": 2.0}, "classes"
    expected = 1.5 * sums["conv1x1"] + sums["conv"] + 2.0 * sums["other"]
    assert table.predict(model) == pytest.approx(expected) and "weights by kernel class" in table.summary()
    assert table.combine_classes(sums) == pytest.approx(expected)
    one_by_one = kernels[1]  # the 1x1 convolution: read as a layer, it costs what the weights say it does
    assert table.layer_cost(model[3], (1, 8, SIZE, SIZE)) == pytest.approx(1.5 * table.kernels_ms([one_by_one])[0])
    again = load_table(table.save(tmp_path / "t.json"))
    assert again.correction == "classes" and again.weights == table.weights
    assert again.predict(model) == pytest.approx(expected)
    table.correction = "line"  # the weights are kept for reading; the choice predicts
    assert table.predict(model) == pytest.approx(table.alpha * sum(sums.values()) + table.beta)
    data = json.loads((tmp_path / "t.json").read_text())
    for bad in ({"conv1x1": -1.0, "conv": 1.0, "other": 1.0}, {"conv": 1.0}, None):
        (tmp_path / "bad.json").write_text(json.dumps({**data, "weights": bad}))
        with pytest.raises(ConfigError, match="incomplete or malformed"):
            load_table(tmp_path / "bad.json")


def test_profile_rounds_hold_one_point_of_every_kind_in_order_and_cover_every_grid_point():
    observed: dict = {}
    for k in [*kernels_of(_net(8), SIZE), *kernels_of(_net(40), SIZE)]:  # the first conv's c_out spans 8-40
        observed.setdefault(k.key, []).append(k)
    rounds = profile_rounds(observed, points=3, seed=0)
    sizes = [int(np.prod([len(a) for a in grid_axes(v, 3)])) for v in observed.values()]
    assert len(rounds) == max(sizes)
    assert all([key for key, _, _ in r] == list(observed) for r in rounds)  # a forward pass's order, every round
    for key, kernels in observed.items():
        seen = {dims for r in rounds for k, dims, _ in r if k == key}
        assert seen == {tuple(p) for p in itertools.product(*grid_axes(kernels, 3))}
    assert profile_rounds(observed, points=3, seed=0) == rounds and profile_rounds(observed, 3, seed=1) != rounds
