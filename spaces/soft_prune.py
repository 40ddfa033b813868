"""``prune.sfp``: soft filter pruning (He et al. 2018) as a searchable space.

The space of :class:`spaces.prune.ChannelPruning` - per-group pruning ratios (one per depth bin with
``bins``), channels rounded to ``round_to`` - with the criterion fixed to ``l1`` and the fine-tune spent
*before* the transform: after every epoch the lowest-L1 filters of each group are zeroed
(:func:`spaces.prune.soft_prune`) but kept trainable, so a filter zeroed once may grow back and be
kept; after the last epoch the transform removes the zeroed filters (their L1 norm is 0, the lowest,
so ``l1`` at the same ratios picks exactly them). ``pretransform_share = 1``: the whole fine-tune is
soft-pruned, nothing is fine-tuned after the removal.

Params and record are ``prune.channel``'s (``{"criterion": "l1", "round_to": 8, "ratios": {...}}``;
torch-pruning's pruning history), so a plan replays without data.

Use: ``python -m search.run --methods sfp``; a study's ``sfp`` method (at 5% per group, projected
onto the rate).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import nn

from spaces.base import Context, Params, Preset, TrainingHooks
from spaces.prune import ChannelPruning, soft_prune
from spaces.registry import register_space

__all__ = ["SoftFilterPruning"]


@register_space("prune.sfp")
class SoftFilterPruning(ChannelPruning):
    """Soft filter pruning: zeroed each epoch, kept trainable, removed at the end (module docstring).

    Args: those of :class:`spaces.prune.ChannelPruning` but ``criteria`` (always ``l1``).
    """

    aliases = ("sfp",)
    pretransform_share = 1.0
    presets = (Preset(name="sfp", family="pruning",
                      what="soft filter pruning: zeroed, kept trainable, removed at the end",
                      start=lambda space, model, context: space.uniform_params(model, context, criterion="l1")),)

    def __init__(self, *, round_to_choices: Sequence[int] = (8,), max_ratio: float = 0.8, per_layer: bool = True,
                 step: float = 0.05, bins: int | None = None) -> None:
        super().__init__(criteria=("l1",), round_to_choices=round_to_choices, max_ratio=max_ratio,
                         per_layer=per_layer, step=step, bins=bins)

    def validate(self, params: Params, groups: Sequence[str]) -> tuple[str, int | None, dict[str, float]]:
        criterion, round_to, ratios = super().validate(params, groups)
        if criterion != "l1":  # only l1 removes exactly the filters the epochs zeroed
            raise self.fail(f"the criterion is l1 (the zeroed filters are the ones removed), got {criterion!r}")
        return criterion, round_to, ratios

    def training_hooks(self, model: nn.Module, params: Params, context: Context) -> TrainingHooks:
        def zero(m: Any) -> None:
            soft_prune(m, params, context)

        return TrainingHooks(start=zero, end_of_epoch=zero)
