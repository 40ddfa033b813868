"""costs: every cost defined once, a registry of metrics, and interleaved latency."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from costs.counting import count_macs, count_nonzero_params, count_params, sparse_size
from costs.registry import CostSettings, get_cost, list_costs, measure, register_cost
from costs.timing import compare_latency, compare
from rsc.errors import ConfigError


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(8, 4))


def test_counts_match_hand_computation():
    net = _net()
    assert count_params(net) == (3 * 8 * 9 + 8) + 16 + (8 * 9 + 8) + (8 * 4 + 4)
    assert count_macs(net, image_size=16) == 16 * 16 * 8 * 3 * 9 + 16 * 16 * 8 * 9 + 8 * 4
    with torch.no_grad():
        net[0].weight.zero_()
    assert count_nonzero_params(net) == count_params(net) - 3 * 8 * 9 - 8  # BN beta starts at 0


def test_registry_has_the_documented_metrics_and_refuses_duplicates():
    assert {"params", "nonzero_params", "macs", "size", "latency_ms"} <= set(list_costs())
    with pytest.raises(ConfigError, match="unknown cost metric 'joules'.*macs"):
        get_cost("joules")
    with pytest.raises(ConfigError, match="already registered"):
        register_cost("params", unit="count")(lambda m, s: 0.0)


def test_measure_and_compare():
    settings = CostSettings(image_size=16, repeats=3, warmup=1, batch_size=4)
    net = _net()
    costs = measure(net, ["params", "macs", "size", "latency_ms"], settings)
    assert costs["size"] > 4 * costs["params"] - 1 and costs["latency_ms"] > 0
    small = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 4))
    out = compare(net, small, settings)
    assert out["compression_rate"] == pytest.approx(count_params(net) / count_params(small))
    assert out["macs_reduction"] > 1 and out["speedup"] > 0 and "latency_ms_batch" in out["base"]


def test_sparse_size_rewards_zeros_and_counts_fillers():
    dense = nn.Linear(1000, 100, bias=False)
    s_dense = sparse_size(dense)
    assert s_dense == 1000 * 100 * 4  # dense storage wins for a dense tensor
    with torch.no_grad():
        dense.weight.zero_()
        dense.weight[0, 0] = 1.0
        dense.weight[99, 999] = 1.0  # a gap of ~100k positions: 390 fillers of 256
    assert sparse_size(dense, index_bits=8) == (2 + 99_998 // 256) * 5


def test_bad_settings():
    with pytest.raises(ConfigError, match="threads"):
        CostSettings(threads=0)
    with pytest.raises(ConfigError, match="memory_format must be one of channels_last, contiguous"):
        CostSettings(memory_format="nhwc")


@pytest.mark.parametrize("fmt", ["channels_last", "contiguous"])
def test_latency_in_either_memory_format_leaves_the_model_alone(fmt):
    net = _net().eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    settings = CostSettings(image_size=16, repeats=2, warmup=1, memory_format=fmt)
    x = settings.example_input(2)
    assert x.is_contiguous(memory_format=torch.channels_last) == (fmt == "channels_last")
    assert compare_latency({"a": net, "b": net}, settings=settings)["a"] > 0
    for k, v in net.state_dict().items():  # same values, same (NCHW) layout
        assert v.is_contiguous() and torch.equal(v, before[k])


def test_quantised_models_count_the_same_macs_and_params():
    from spaces import Context, get_space

    net = _net().eval()
    ctx = Context(num_classes=4, image_size=16, calibration=[(torch.randn(2, 3, 16, 16), torch.zeros(2).long())])
    q = get_space("quant.int8").apply(net, {}, ctx)
    assert count_macs(q, image_size=16) == count_macs(net, image_size=16)
    assert count_params(q) == count_params(net) - 16  # BN (gamma, beta) is folded into the conv
