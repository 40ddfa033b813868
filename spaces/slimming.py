"""``prune.slimming``: Network Slimming (Liu et al. 2017) as a searchable space.

The space of :class:`spaces.prune.ChannelPruning` - per-group pruning ratios (one per depth bin with
``bins``), channels rounded to ``round_to`` - with the criterion fixed to ``bn_scale`` (|gamma| of the
group's BatchNorm; groups without one fall back to ``l1``) and half the fine-tune spent *before* the
transform, training with an L1 penalty of weight ``reg`` on the BatchNorm scales (torch-pruning's
``BNScalePruner.regularize``, its subgradient added after every backward pass), so the scales the
transform ranks channels by are sparse. The other half fine-tunes the pruned model without the penalty.
The ratios are structural (the channel counts do not depend on which channels go), so a plan projected
onto a budget before the sparsity phase is the one it would be after it.

Params and record are ``prune.channel``'s (``{"criterion": "bn_scale", "round_to": 8, "ratios": {...}}``;
torch-pruning's pruning history), so a plan replays without data.

Use: ``python -m search.run --methods slimming``; a study's ``slimming`` method (at 5% per group,
projected onto the rate; ``--slimming-reg`` sets ``reg``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from spaces.base import Context, Params, Preset, TrainingHooks
from spaces.prune import ChannelPruning
from spaces.registry import register_space

__all__ = ["NetworkSlimming"]


@register_space("prune.slimming")
class NetworkSlimming(ChannelPruning):
    """Network Slimming: sparse BatchNorm scales for half the fine-tune, pruned by them (module docstring).

    Args:
        reg: The L1 weight on the BatchNorm scales during the sparsity phase (Liu et al.: 1e-4 to 1e-5).
        Others: those of :class:`spaces.prune.ChannelPruning` but ``criteria`` (always ``bn_scale``).
    """

    aliases = ("slimming",)
    pretransform_share = 0.5
    presets = (Preset(name="slimming", family="pruning",
                      what="Network Slimming: L1 on BN scales for half the epochs, prune by BN scale, fine-tune the rest",
                      start=lambda space, model, context: space.uniform_params(model, context, criterion="bn_scale")),)

    def __init__(self, *, reg: float = 1e-4, round_to_choices: Sequence[int] = (8,), max_ratio: float = 0.8,
                 per_layer: bool = True, step: float = 0.05, bins: int | None = None) -> None:
        super().__init__(criteria=("bn_scale",), round_to_choices=round_to_choices, max_ratio=max_ratio,
                         per_layer=per_layer, step=step, bins=bins)
        if not float(reg) >= 0:
            raise self.fail(f"reg must be >= 0, got {reg!r}")
        self.reg = float(reg)

    def validate(self, params: Params, groups: Sequence[str]) -> tuple[str, int | None, dict[str, float]]:
        criterion, round_to, ratios = super().validate(params, groups)
        if criterion != "bn_scale":  # the sparsity phase made the BN scales the ranking
            raise self.fail(f"the criterion is bn_scale (the scales the sparsity phase made sparse), got {criterion!r}")
        return criterion, round_to, ratios

    def training_hooks(self, model: nn.Module, params: Params, context: Context) -> TrainingHooks:
        pruner: list[Any] = []

        def start(m: nn.Module) -> None:
            import torch_pruning as tp

            pruner.append(tp.pruner.BNScalePruner(m, context.example_input(1), reg=self.reg,
                                                  importance=tp.importance.BNScaleImportance()))

        def after_backward(m: nn.Module) -> None:
            pruner[-1].regularize(m)

        return TrainingHooks(start=start, after_backward=after_backward)
