"""Unstructured magnitude pruning (Han et al. 2015, "Learning both weights and connections").

Per layer, the ``sparsity`` fraction of weights with the smallest magnitude is set to zero, and
the zeros are made permanent (no ``weight_orig``/mask re-parametrisation is left in the model;
:func:`spaces.finetune.finetune` re-applies the zero pattern as a mask while fine-tuning so that
pruned weights stay pruned).

What it buys, plainly: fewer *non-zero* parameters (``costs`` metric ``nonzero_params``,
compression rate on non-zero parameters) and a smaller *sparse* encoding (``sparse_size``).
It brings **no dense speed-up**: the tensors keep their shape and dense kernels multiply the
zeros, so MACs and latency are unchanged unless a sparse kernel runs the model.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from spaces.checks import check_bins, check_fraction, check_keys, check_mapping, check_no_extra
from spaces.layers import bin_values, depth_bins, expand_bins, find_head
from spaces.base import Context, Params, Preset, Record, Space, Transformed
from spaces.registry import register_space


def prunable_layers(model: nn.Module, num_classes: int, *, include_head: bool) -> list[str]:
    """Conv2d/Linear layers whose weights magnitude pruning may sparsify, in model order."""
    heads = set() if include_head else set(find_head(model, num_classes))
    return [n for n, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and n not in heads]


@register_space("prune.magnitude")
class MagnitudePruning(Space):
    """Per-layer unstructured sparsity by weight magnitude.

    Params: ``{"sparsity": {layer_name: fraction in [0, 1)}}``; layers not named stay dense.

    Args:
        max_sparsity: Upper end of the sampled range and saturation point of :meth:`scale`.
        per_layer: Sample one sparsity per layer (True) or one global value (False).
        include_head: Also sparsify the classifier head (Han et al. do; default keeps it dense).
        step: Sampling grid of the sparsities.
        bins: With ``per_layer``, one sparsity per contiguous depth bin of the layers instead of
            one per layer (a smaller space for short searches), sampled from ``step`` up so that
            scaling can move every bin.
    """

    aliases = ("sparse", "magnitude")
    keeps_sparsity = True
    binnable = True
    rate_cost = "nonzero_params"  # the tensors keep their shapes: the rate counts the weights left non-zero
    presets = (Preset(name="magnitude", family="weight",
                      what="unstructured magnitude pruning (Han et al.), rate on non-zero params",
                      start=lambda space, model, context: {"sparsity": dict.fromkeys(space.layers(model, context),
                                                                                     0.05)}),)

    def __init__(self, *, max_sparsity: float = 0.95, per_layer: bool = True,
                 include_head: bool = False, step: float = 0.05, bins: int | None = None) -> None:
        self.max_sparsity = check_fraction("prune.magnitude", "max_sparsity", max_sparsity)
        self.per_layer = bool(per_layer)
        self.include_head = bool(include_head)
        self.step = check_fraction("prune.magnitude", "step", step, low_open=True)
        self.bins = check_bins("prune.magnitude", bins)

    def layers(self, model: nn.Module, context: Context) -> list[str]:
        return prunable_layers(model, context.num_classes, include_head=self.include_head)

    def suggest(self, trial: Any, model: nn.Module, context: Context) -> Params:
        layers = self.layers(model, context)
        if self.per_layer and self.bins:  # from one step up: scaling must move every bin
            sp = expand_bins(depth_bins(model, layers, self.bins), layers, lambda i: trial.suggest_float(
                self.key("sparsity", f"bin{i}"), self.step, self.max_sparsity, step=self.step))
        elif self.per_layer:
            sp = {n: trial.suggest_float(self.key("sparsity", n), 0.0, self.max_sparsity, step=self.step)
                  for n in layers}
        else:
            s = trial.suggest_float(self.key("sparsity"), 0.0, self.max_sparsity, step=self.step)
            sp = dict.fromkeys(layers, s)
        return {"sparsity": sp}

    def trial_params(self, params: Params, model: nn.Module, context: Context) -> dict[str, Any]:
        sp = self.validate(params, model, context)
        if self.per_layer and self.bins:
            layout = depth_bins(model, self.layers(model, context), self.bins)
            return {self.key("sparsity", f"bin{i}"): v
                    for i, v in enumerate(bin_values(self.name, "sparsity", sp, layout, 0.0))}
        if self.per_layer:
            return {self.key("sparsity", n): sp.get(n, 0.0) for n in self.layers(model, context)}
        values = set(sp.values()) or {0.0}
        if len(values) != 1:
            raise self.fail("global (per_layer=False) space cannot express different sparsities")
        return {self.key("sparsity"): values.pop()}

    def validate(self, params: Params, model: nn.Module, context: Context) -> dict[str, float]:
        check_no_extra(self.name, params, ["sparsity"])
        sp = check_mapping(self.name, "sparsity", params.get("sparsity", {}))
        check_keys(self.name, "sparsity", sp, self.layers(model, context))
        return {n: check_fraction(self.name, f"sparsity of layer {n!r}", v) for n, v in sp.items()}

    def scale(self, params: Params, factor: float) -> Params:
        super().scale(params, factor)
        if factor == 1:
            return copy.deepcopy(params)
        cap = self.max_sparsity
        return {"sparsity": {n: round(s * factor if factor <= 1 else min(s * factor, max(s, cap)), 6)
                             for n, s in params.get("sparsity", {}).items()}}

    def transform(self, model: nn.Module, params: Params, context: Context, *,
                  record: Record | None = None, structure_only: bool = False) -> Transformed:
        sp = self.validate(params, model, context)
        new = copy.deepcopy(model)
        nonzero: dict[str, int] = {}
        with torch.no_grad():
            for name, s in sp.items():
                w = new.get_submodule(name).weight
                k = int(round(s * w.numel()))
                if k > 0:
                    # kthvalue ties could zero more than k; rank by sorted index instead.
                    idx = torch.argsort(w.detach().abs().reshape(-1), stable=True)[:k]
                    w.data.view(-1)[idx] = 0.0
                nonzero[name] = int(torch.count_nonzero(w))
        return Transformed(new, {"nonzero": nonzero})

