"""A model's layers as the spaces address them: by dotted name, the classifier head, contiguous depth bins."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from torch import nn

from spaces.errors import SpaceError

__all__ = ["get_module", "set_module", "find_head", "round_channels", "depth_bins", "expand_bins", "bin_values"]


def get_module(model: nn.Module, name: str) -> nn.Module:
    """The submodule at dotted path ``name`` (SpaceError naming it when absent)."""
    try:
        return model.get_submodule(name)
    except AttributeError:
        raise SpaceError(f"model {type(model).__name__} has no layer {name!r}") from None



def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    """Replace the submodule at dotted path ``name`` by ``new``."""
    parent_name, _, child = name.rpartition(".")
    parent = get_module(model, parent_name) if parent_name else model
    setattr(parent, child, new)



def find_head(model: nn.Module, num_classes: int) -> list[str]:
    """Names of the classifier head(s): the last Linear/Conv2d with ``num_classes`` outputs.

    Auxiliary heads (GoogLeNet's ``aux1``/``aux2``) are returned too, so that compression keeps
    every layer that produces logits at its size. SqueezeNet's head is a 1x1 conv.
    """
    heads = [
        n for n, m in model.named_modules()
        if (isinstance(m, nn.Linear) and m.out_features == num_classes)
        or (isinstance(m, nn.Conv2d) and m.out_channels == num_classes)
    ]
    if not heads:
        raise SpaceError(f"cannot find a classifier head with {num_classes} outputs in "
                         f"{type(model).__name__}")
    aux = [n for n in heads if n.split(".")[0].startswith("aux")]
    main = [n for n in heads if n not in aux]
    return ([main[-1]] if main else []) + aux



def round_channels(count: int, channels: int, round_to: int | None) -> int:
    """``count`` to the nearest multiple of ``round_to`` (at least one multiple), within [1, channels].

    Channel pruning (kept channels) and Tucker (ranks) share it: conv kernels run channel counts
    that are multiples of 8 much faster.
    """
    if round_to and round_to > 1:
        count = max(round_to, int(round(count / round_to)) * round_to)
    return max(1, min(channels, count))



def depth_bins(model: nn.Module, names: Iterable[str], bins: int) -> list[list[str]]:
    """``names`` (modules of ``model``) in the model's module order, cut into ``bins`` contiguous
    runs of near-equal length (fewer when there are fewer names): a per-stage layout of the layers.

    On ResNet-18 four bins of its twelve channel groups (or sixteen 3x3 convs) are its four stages.
    """
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    ordered = sorted(names, key=lambda n: order.get(n, len(order)))
    k = max(1, min(int(bins), len(ordered)))
    cuts = [round(i * len(ordered) / k) for i in range(k + 1)]
    return [ordered[cuts[i]:cuts[i + 1]] for i in range(k)]



def expand_bins(layout: list[list[str]], order: Iterable[str], value_of_bin: Callable[[int], Any]) -> dict[str, Any]:
    """Per-layer values from one ``value_of_bin(i)`` per bin of ``layout`` (called once per bin, in
    bin order: it is where a space suggests), keyed in ``order``; each layer gets its own copy."""
    per: dict[str, Any] = {}
    for i, names in enumerate(layout):
        value = value_of_bin(i)
        per.update({n: copy.copy(value) for n in names})
    return {n: per[n] for n in order}



def bin_values(space: str, what: str, values: Mapping[str, Any], layout: list[list[str]], default: Any) -> list[Any]:
    """One value per bin of ``layout`` from per-layer ``values`` (a SpaceError when a bin's layers differ)."""
    out = []
    for i, names in enumerate(layout):
        seen = {repr(values.get(n, default)): values.get(n, default) for n in names}
        if len(seen) != 1:
            raise SpaceError(f"{space}: a space with one {what} per depth bin cannot express different "
                             f"values inside bin {i} ({', '.join(names)})")
        out.append(next(iter(seen.values())))
    return out
