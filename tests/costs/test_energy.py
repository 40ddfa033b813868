"""costs.energy: the analytical energy model by hand, its ranking of compressed models, calibration,
the registered ``energy`` budget, the measured counters and the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from costs import energy, energy_counters, energy_report
from costs.registry import CostSettings, get_cost, list_costs, measure
from costs.energy import EnergyModel, calibrate, energy_breakdown, estimate_energy, summarize
from costs.energy_counters import counters, measure_energy
from rsc.errors import ConfigError
from tests.conftest import REPO

# round numbers, so the hand computation below is exact
SIMPLE = dict(mac_fp32_pj=2.0, mac_int8_pj=0.5, rf_pj=0.5, buffer_pj=3.0, dram_pj=100.0, buffer_bytes=1024,
              array_reuse=16, rf_accesses_per_mac=4)


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 2)).eval()


def test_one_conv_one_linear_by_hand():
    em = EnergyModel(**SIMPLE)
    conv, fc = energy_breakdown(_tiny(), 8, energy_model=em)
    # conv 3->4, 3x3, 8x8 out: M = 256 * 27, W = 4*27 + 4 bias, I = 3*64, O = 256; M/R = 432
    assert (conv.name, conv.kind, conv.bits) == ("0", "conv 3x3", 32)
    assert (conv.macs, conv.weights, conv.inputs, conv.outputs) == (6912, 112, 192, 256)
    assert conv.compute_pj == 6912 * 2.0
    assert conv.rf_pj == 4 * 6912 * 0.5
    assert conv.buffer_pj == (432 + 432 + 432) * 3.0
    assert conv.spills and conv.dram_pj == (112 + 192 + 256) * 100.0  # (192 + 256) * 4 B > 1 KiB
    # linear 4->2: M = 8, W = 10, I = 4, O = 2; M/R = 0.5 < every count; 24 B fit
    assert (fc.name, fc.kind, fc.macs, fc.weights, fc.inputs, fc.outputs) == ("4", "linear", 8, 10, 4, 2)
    assert (fc.compute_pj, fc.rf_pj, fc.buffer_pj, fc.dram_pj) == (16.0, 16.0, (10 + 4 + 2) * 3.0, 1000.0)
    assert not fc.spills
    total = 13824 + 13824 + 3888 + 56000 + 16 + 16 + 48 + 1000
    assert conv.total_pj + fc.total_pj == total and summarize([conv, fc])["total"] == total
    assert estimate_energy(_tiny(), 8, energy_model=em) == pytest.approx(total * 1e-12, rel=1e-12)


@pytest.mark.filterwarnings("ignore:torch.quantize_per_tensor:UserWarning")
def test_int8_conv_by_hand_uses_int8_costs_and_bytes():
    import torch.ao.nn.quantized as nnq

    if not {"x86", "fbgemm", "qnnpack"} & set(torch.backends.quantized.supported_engines):
        pytest.skip("no int8 engine in this torch build")
    engine = next(e for e in ("x86", "fbgemm", "qnnpack") if e in torch.backends.quantized.supported_engines)
    torch.backends.quantized.engine = engine
    q = nn.Sequential(nnq.Quantize(0.1, 0, torch.quint8), nnq.Conv2d(3, 4, 3, padding=1), nnq.DeQuantize())
    (layer,) = energy_breakdown(q, 8, energy_model=EnergyModel(**SIMPLE))
    assert (layer.bits, layer.macs, layer.weights) == (8, 6912, 112)
    assert layer.compute_pj == 6912 * 0.5 and layer.rf_pj == 4 * 6912 * 0.5 * 0.25
    assert layer.buffer_pj == 3 * 432 * 3.0 * 0.25
    assert not layer.spills and layer.dram_pj == 112 * 100.0 * 0.25  # 448 bytes fit in the buffer


def test_grouped_and_depthwise_convs():
    net = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.Conv2d(8, 4, 1, groups=2, bias=False))
    dw, g2 = energy_breakdown(net, 8, in_channels=8, energy_model=EnergyModel(**SIMPLE))
    assert (dw.kind, dw.macs, dw.weights) == ("conv dw 3x3", 64 * 8 * 9, 8 * 9)
    assert (g2.kind, g2.macs, g2.weights) == ("conv g2 1x1", 64 * 4 * 4, 4 * 4)
    dense = energy_breakdown(nn.Conv2d(8, 8, 3, padding=1, bias=False), 8, in_channels=8)[0]
    assert dense.macs == 8 * dw.macs and dense.total_pj > dw.total_pj


def test_defaults_are_the_published_figures():
    em = EnergyModel()
    assert em.mac_fp32_pj == pytest.approx(4.6) and em.mac_int8_pj == pytest.approx(0.23)
    assert em.rf_pj == 1.0 and em.dram_pj == 640.0 and em.buffer_pj == pytest.approx(26.0)
    assert energy.sram_pj_per_word(8 * 2**10) == 5.0 and energy.sram_pj_per_word(32 * 2**10) == pytest.approx(10.0)
    assert energy.sram_pj_per_word(2**20) == pytest.approx(50.0)
    ey = EnergyModel.eyeriss()
    assert (ey.rf_pj, ey.buffer_pj, ey.dram_pj) == (1.0, 6.0, 200.0)


@pytest.fixture(scope="module")
def resnet():
    from rsc.models import create_model
    from spaces import Context

    torch.manual_seed(0)
    return create_model("resnet18", 5, image_size=32).eval(), Context(num_classes=5, image_size=32)


def test_compressed_resnet18_costs_less(resnet):
    from spaces import get_space
    from spaces.prune import prunable_groups

    model, ctx = resnet
    base = estimate_energy(model, 32)
    ratios = {g.name: 0.5 for g in prunable_groups(model, ctx)}
    pruned = get_space("prune.channel").transform(model, {"criterion": "l1", "round_to": 8, "ratios": ratios}, ctx,
                                                  structure_only=True).model
    tucker = get_space("decompose.tucker")
    layers = tucker.conv_layers(model, ctx)
    decomposed = tucker.transform(model, {"conv": {n: [0.25, 0.25] for n in layers}, "round_to": 8}, ctx,
                                  structure_only=True).model
    e_pruned, e_tucker = estimate_energy(pruned, 32), estimate_energy(decomposed, 32)
    assert e_pruned < 0.6 * base and e_tucker < 0.6 * base
    # int8 of the same structure: int8 MACs and 1-byte words
    from spaces.quant import supported_engines

    if "x86" not in supported_engines():
        pytest.skip("no x86 int8 engine")
    q = get_space("quant.int8").transform(model, {"backend": "x86"}, ctx, structure_only=True).model
    qb = energy_breakdown(q, 32)
    assert {layer.bits for layer in qb} == {8}
    assert summarize(qb)["macs"] == summarize(energy_breakdown(model, 32))["macs"]
    assert estimate_energy(q, 32) < 0.3 * base


def test_zero_weights_count_only_when_skipped():
    net = _tiny()
    with torch.no_grad():
        net[0].weight[:2] = 0.0  # half the conv's filters
    dense = estimate_energy(net, 8)
    sparse = estimate_energy(net, 8, energy_model=EnergyModel(skip_zero_weights=True))
    assert dense == estimate_energy(_tiny(), 8) and sparse < dense


def test_calibration_recovers_known_scales():
    models = [_tiny(), nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 1)),
              nn.Sequential(nn.Conv2d(3, 8, 5, padding=2, groups=1), nn.Flatten(), nn.Linear(8 * 64, 3))]
    base = EnergyModel()
    truth = base.scaled(compute=2.5, data=0.4)
    measured = [(m, estimate_energy(m, 8, energy_model=truth)) for m in models]
    fitted = calibrate(measured, 8, base=base)
    assert fitted.mac_fp32_pj == pytest.approx(2.5 * base.mac_fp32_pj, rel=1e-6)
    assert fitted.dram_pj == pytest.approx(0.4 * base.dram_pj, rel=1e-6)
    assert "calibrated" in fitted.source
    for m, j in measured:
        assert estimate_energy(m, 8, energy_model=fitted) == pytest.approx(j, rel=1e-6)
    one = base.calibrated([(models[0], 3 * estimate_energy(models[0], 8))], 8, split=False)
    assert one.rf_pj == pytest.approx(3.0) and one.mac_int8_pj == pytest.approx(3 * 0.23)


def test_bad_input_is_a_config_error():
    for bad in (dict(dram_pj=-1.0), dict(mac_fp32_pj=float("nan")), dict(rf_pj=float("inf")),
                dict(buffer_bytes=0), dict(array_reuse=0.5), dict(buffer_pj=-3.0)):
        with pytest.raises(ConfigError, match="energy model"):
            EnergyModel(**bad)
    with pytest.raises(ConfigError, match="no measurements"):
        calibrate([], 8)
    with pytest.raises(ConfigError, match="positive finite"):
        calibrate([(_tiny(), 0.0)], 8)
    with pytest.raises(ConfigError, match="cannot fit 2 scale factors"):
        calibrate([(_tiny(), 1e-6)], 8)
    with pytest.raises(ConfigError, match="no MAC cost for 64-bit"):
        energy_breakdown(_tiny().double(), 8)
    with pytest.raises(ConfigError, match="repeats"):
        measure_energy(lambda: None, 0)


def test_registered_as_an_analytic_budget_and_objective():
    from search.budget import get_metric, parse_budgets

    assert "energy_mj" in list_costs()
    cost = get_cost("energy_mj")
    assert (cost.unit, cost.kind, cost.budget) == ("mJ", "analytic", "energy")
    spec = get_metric("energy")
    assert spec.cost_key == "energy_mj" and spec.kind == "analytic"
    (b,) = parse_budgets("energy<5mJ")
    assert b.limit() == 5.0 and b.is_upper
    assert parse_budgets("energy<=0.5J").items[0].limit() == 500.0
    assert parse_budgets("energy<200uJ").items[0].limit() == pytest.approx(0.2)
    rel = parse_budgets(["energy<50%"]).resolve({"energy_mj": 8.0})
    assert rel.limits() == {"energy_mj": 4.0} and len(rel.analytic) == 1
    costs = measure(_tiny(), ["energy_mj", "macs"], CostSettings(image_size=8))
    assert costs["energy_mj"] == pytest.approx(estimate_energy(_tiny(), 8) * 1e3)


def test_objective_on_energy():
    from search.aims import objective_specs, target_key

    objectives = objective_specs(["accuracy", "energy"])
    assert objectives[1] == ("energy", "energy_mj", "minimize") and target_key(objectives) == "energy_mj"


def test_counters_say_why_not(monkeypatch, tmp_path):
    monkeypatch.setattr(energy_counters, "POWERCAP", tmp_path / "no-powercap")
    monkeypatch.setitem(sys.modules, "pynvml", None)  # not importable, whatever is installed
    monkeypatch.setitem(sys.modules, "zeus", None)
    monkeypatch.setitem(sys.modules, "zeus.monitor", None)
    c = counters()
    assert not c["rapl"].available and c["rapl"].detail == f"no {tmp_path / 'no-powercap'}"
    assert not c["nvml"].available and "pynvml is not importable" in c["nvml"].detail
    assert not c["zeus"].available and "not installed" in c["zeus"].detail
    calls = []
    joules, why = measure_energy(lambda: calls.append(1), 3)
    assert joules is None and "no energy counter" in why and "rapl: no " in why and calls == []


@pytest.mark.skipif(Path("/sys/class/powercap").exists(), reason="this machine has a powercap tree")
def test_this_machine_has_no_counters():
    c = counters()
    assert not c["rapl"].available and c["rapl"].detail == "no /sys/class/powercap"
    if not c["nvml"].available:
        assert c["nvml"].detail  # a reason, never an empty string
        joules, why = measure_energy(lambda: None, 2)
        if not c["zeus"].available:
            assert joules is None and why


def test_rapl_counter_measures_and_handles_wraparound(monkeypatch, tmp_path):
    pkg = tmp_path / "intel-rapl:0"
    pkg.mkdir()
    (pkg / "name").write_text("package-0\n")
    (pkg / "max_energy_range_uj").write_text("1000000\n")
    (pkg / "energy_uj").write_text("999000\n")
    (tmp_path / "intel-rapl:0:0").mkdir()  # a subdomain (core): not summed again
    monkeypatch.setattr(energy_counters, "POWERCAP", tmp_path)
    monkeypatch.setitem(sys.modules, "pynvml", None)
    monkeypatch.setitem(sys.modules, "zeus", None)
    monkeypatch.setitem(sys.modules, "zeus.monitor", None)
    assert counters()["rapl"].available and counters()["rapl"].detail == "rapl package-0"
    state = {"uj": 999000}

    def work():  # each call burns 0.5 J, wrapping the counter past its 1 J range
        state["uj"] = (state["uj"] + 500000) % 1000000
        (pkg / "energy_uj").write_text(f"{state['uj']}\n")

    joules, why = measure_energy(work, 1, warmup=0, source="rapl")
    assert joules == pytest.approx(0.5) and "rapl package-0" in why
    joules, why = measure_energy(lambda: None, 2, source="rapl")  # counter never moves: unknown, not 0
    assert joules is None and "did not advance" in why


def test_cli_prints_the_table_and_counters(capsys):
    assert energy_report.main(["--model", "resnet18", "--image-size", "32", "--num-classes", "5", "--top", "3"]) == 0
    out = capsys.readouterr().out
    assert "compute uJ" in out and "data uJ" in out and "share" in out
    assert "total " in out and " mJ per image" in out and "rapl: " in out and "nvml: " in out
    assert energy_report.main(["--model", "resnet1"]) == 2
    assert "error: unknown model 'resnet1'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:
        energy_report.main(["--image-size", "0"])
    assert exit_.value.code == 2 and capsys.readouterr().err.startswith("error: argument --image-size")


def test_registered_without_torch_and_runs_as_a_module():
    r = subprocess.run([sys.executable, "-c", "import sys, costs, search.budget; "
                        "assert 'energy_mj' in costs.list_costs(); print('torch' in sys.modules)"],
                       cwd=REPO, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout.strip() == "False", r.stderr
    r = subprocess.run([sys.executable, "-m", "costs.energy_report", "--image-size", "32", "--num-classes", "5", "--top", "2"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "mJ per image" in r.stdout and "Warning" not in r.stderr, r.stderr


def test_zeus_is_used_when_installed(monkeypatch, tmp_path):
    import types

    class FakeMonitor:  # the zeus 0.16 API: windows give per-GPU and per-CPU-package joules
        gpu_indices, cpu_indices = [0], [0]

        def begin_window(self, key):
            self.key = key

        def end_window(self, key):
            assert key == self.key
            return types.SimpleNamespace(time=0.1, gpu_energy={0: 2.0}, cpu_energy={0: joules_cpu})

    joules_cpu = 1.0
    module = types.ModuleType("zeus.monitor")
    module.ZeusMonitor = FakeMonitor
    monkeypatch.setitem(sys.modules, "zeus", types.ModuleType("zeus"))
    monkeypatch.setitem(sys.modules, "zeus.monitor", module)
    monkeypatch.setattr(energy_counters, "POWERCAP", tmp_path)
    assert counters()["zeus"].available and "GPUs [0], CPUs [0]" in counters()["zeus"].detail
    joules, why = measure_energy(lambda: None, 3)
    assert joules == pytest.approx(1.0) and why.startswith("zeus: ")  # (2 J GPU + 1 J CPU) / 3 calls
    FakeMonitor.end_window = lambda self, key: types.SimpleNamespace(time=0.1, gpu_energy={0: 0.0}, cpu_energy=None)
    joules, why = measure_energy(lambda: None, 3, source="zeus")
    assert joules is None and "measured no energy" in why
