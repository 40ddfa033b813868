"""Compression methods as searchable spaces behind one protocol.

The search engine needs only this surface:

* ``get_space(name, **options) -> Space`` / ``list_spaces()`` / ``register_space(name)`` /
  ``resolve_space(name_or_alias)``;
* ``Space.suggest(trial, model, context) -> params`` (define-by-run, cheap),
  ``Space.transform(model, params, context, record=None, structure_only=False) -> Transformed``
  (``apply`` = the model only), ``Space.scale(params, factor)``, ``Space.reference_params`` /
  ``Space.trial_params`` for enqueuing points, ``Space.finetune_loss``; the capabilities
  ``aliases``, ``post_training``, ``distill``, ``keeps_sparsity``, ``binnable`` (class attributes);
* ``Plan`` / ``Step`` (plain JSON) and ``Context``;
* ``compress(model, plan, context) -> (model, plan with records)`` (the one compress path),
  ``split_plan``, ``apply_plan``, ``build_from_plan(plan, state_dict)``;
* ``project_plan(model, plan, context, gap)`` / ``cost_gap(limits, image_size)``: move a sample
  onto a params/MACs budget before training;
* ``finetune``, ``finetune_plan``, ``recalibrate_bn``; ``save_compressed`` / ``load_compressed``;
* errors: ``SpaceError`` (a ``rsc.errors.UserError``) and ``BudgetInfeasible``.

Registered spaces: ``prune.channel``, ``prune.magnitude``, ``decompose.tucker``, ``distill.kd``,
``quant.int8``, and ``prune.allocated`` / ``decompose.allocated`` (per-layer choices allocated by
a layer cost: MACs, energy or a latency table, :mod:`spaces.allocate`). Heavy dependencies (torch-pruning, tensorly, torch.ao) load on first use.
Costs (params, MACs, size, latency) are measured by :mod:`costs`.
"""

from __future__ import annotations

from spaces import allocated as _allocated  # noqa: F401 - registers prune.allocated, decompose.allocated
from spaces import distill as _distill  # noqa: F401 - registers distill.kd
from spaces import magnitude as _magnitude  # noqa: F401 - registers prune.magnitude
from spaces import prune as _prune  # noqa: F401 - registers prune.channel
from spaces import quant as _quant  # noqa: F401 - registers quant.int8
from spaces import tucker as _tucker  # noqa: F401 - registers decompose.tucker
from spaces.base import Context, Plan, Space, Step, Transformed
from spaces.compose import apply_plan, build_from_plan, check_plan, compress, create_base, split_plan
from spaces.errors import BudgetInfeasible, SpaceError
from spaces.export import export_onnx, export_torchscript, load_compressed, save_compressed
from spaces.finetune import finetune, finetune_plan, recalibrate_bn
from spaces.project import cost_gap, project_plan
from spaces.registry import get_space, list_spaces, register_space, resolve_space

__all__ = [
    "BudgetInfeasible", "Context", "Plan", "Space", "SpaceError", "Step", "Transformed",
    "apply_plan", "build_from_plan", "check_plan", "compress", "cost_gap", "create_base", "export_onnx",
    "export_torchscript", "finetune", "finetune_plan", "get_space", "list_spaces", "load_compressed",
    "project_plan", "recalibrate_bn", "register_space", "resolve_space", "save_compressed", "split_plan",
]
