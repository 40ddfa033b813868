"""What a model costs where it runs: counted costs, latency on a target, energy, latency tables.

The floor between remote-sensing classification (:mod:`rsc`) and the compression spaces
(:mod:`spaces`): every cost a budget, an objective or a report names is registered once
(:mod:`costs.registry`) and measured by :func:`measure`.

* :mod:`costs.counting`: params, non-zero params, MACs, bytes (analytic: from the structure);
* :mod:`costs.timing`: latency on this process's device (``latency_ms``), models interleaved;
* :mod:`costs.energy`: the analytical energy model (``energy_mj``); :mod:`costs.energy_counters`:
  RAPL, NVML and Zeus where they exist;
* :mod:`costs.hardware`: where latency is measured (a :class:`Target`: device, runtime, threads,
  layout, batch, a Ray node), with :mod:`costs.runtimes` (TorchScript, onnxruntime),
  :mod:`costs.remote` (Ray) and :mod:`costs.machine` (this machine);
* :mod:`costs.latency`: per-kernel latency tables; :mod:`costs.targets`: the ``--target`` grammar
  with ``lut:FILE`` tables.

Importing this package registers the built-in costs in a fixed order (counted, timed, energy).
"""

from __future__ import annotations

# registration order is the order of budget_metrics() and of every report's cost columns: keep it
from costs import counting as _counting  # noqa: F401, I001 - registers params, nonzero_params, macs, size, sparse_size
from costs import timing as _timing  # noqa: F401 - registers latency_ms, latency_ms_batch
from costs import energy as _energy  # noqa: F401 - registers energy_mj
from costs.registry import (CostMetric, CostSettings, analytic_costs, budget_metrics, get_cost, list_costs, measure,
                            register_cost)

__all__ = ["CostMetric", "CostSettings", "analytic_costs", "budget_metrics", "get_cost", "list_costs", "measure",
           "register_cost"]
