"""Compression methods as searchable spaces behind one protocol.

The search engine needs only this surface:

* ``get_space(name, **options) -> Space`` / ``list_spaces()`` / ``register_space(name)`` /
  ``resolve_space(name_or_alias)``;
* ``Space.suggest(trial, model, context) -> params`` (define-by-run, cheap),
  ``Space.transform(model, params, context, record=None, structure_only=False) -> Transformed``
  (``apply`` = the model only), ``Space.scale(params, factor)``, ``Space.reference_params`` /
  ``Space.trial_params`` for enqueuing points, ``Space.finetune_loss``, ``Space.training_hooks``; the
  capabilities ``aliases``, ``post_training``, ``distill``, ``keeps_sparsity``, ``binnable``,
  ``rate_cost``, ``pretransform_share`` and the named starting points ``presets`` (class attributes);
* ``Plan`` / ``Step`` (plain JSON) and ``Context``;
* ``compress(model, plan, context) -> (model, plan with records)`` (the one compress path),
  ``split_plan``, ``apply_plan``, ``build_from_plan(plan, state_dict)``;
* ``project_plan(model, plan, context, gap)`` / ``cost_gap(limits, image_size)``: move a sample
  onto a params/MACs budget before training;
* ``finetune_plan``, ``recalibrate_bn`` (and :func:`spaces.finetune.finetune`); ``save_compressed`` / ``load_compressed``;
* errors: ``SpaceError`` (a ``rsc.errors.UserError``) and ``BudgetInfeasible``.

Registered spaces: ``prune.channel``, ``prune.sfp`` (soft filter pruning), ``prune.slimming``
(Network Slimming), ``prune.magnitude``, ``decompose.tucker``, ``distill.kd``, ``quant.int8``, and ``prune.allocated`` / ``decompose.allocated`` (per-layer choices allocated by
a layer cost: MACs, energy or a latency table, :mod:`spaces.allocation`). The names below load on first use (PEP 562), and the built-in spaces register on the first
registry lookup (:func:`spaces.registry.load_spaces`), so ``import spaces.registry`` stays cheap.
Costs (params, MACs, size, latency) are measured by :mod:`costs`.
"""

from __future__ import annotations

import importlib
from typing import Any

#: public name -> the module that defines it
_EXPORTS = {
    **dict.fromkeys(("Context", "Plan", "Space", "Step", "Transformed"), "spaces.base"),
    **dict.fromkeys(("apply_plan", "build_from_plan", "check_plan", "compress", "create_base", "split_plan"),
                    "spaces.compose"),
    **dict.fromkeys(("BudgetInfeasible", "SpaceError"), "spaces.errors"),
    **dict.fromkeys(("export_onnx", "export_torchscript", "load_compressed", "save_compressed"), "spaces.export"),
    **dict.fromkeys(("finetune_plan", "recalibrate_bn"), "spaces.finetune"),
    **dict.fromkeys(("cost_gap", "project_plan"), "spaces.project"),
    **dict.fromkeys(("get_space", "list_spaces", "register_space", "resolve_space"), "spaces.registry"),
}

__all__ = sorted(_EXPORTS)  # no name of a submodule: importing it would shadow the name (spaces.finetune)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'spaces' has no attribute {name!r}")
