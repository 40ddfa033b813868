"""Costs counted from a model's structure: parameters, non-zero parameters, MACs, bytes.

* ``params``: all weights a model stores, including quantised (packed) conv/linear weights, which
  ``model.parameters()`` does not list. Buffers (BN running stats) are not parameters.
* ``nonzero_params``: the same, counting only non-zero entries (what unstructured pruning cuts).
* ``macs``: multiply-accumulates of one image's forward pass through Conv and Linear layers
  (float or quantised), counted with forward hooks: ``out_elements * in_channels/groups * kh*kw``
  per conv, ``out_elements * in_features`` per linear. BN, activations, pooling and additions are
  not counted (they fuse away at inference). Own counter rather than
  ``torch_pruning.utils.count_ops_and_params`` because it also counts quantised and decomposed
  models the same way.
* ``size``: bytes of ``torch.save(model.state_dict())``: what a dense checkpoint weighs.
* ``sparse_size``: bytes of a relative-index sparse encoding (Han et al. 2015) of every weight
  tensor with at least 2 dimensions (values at their own width, ``index_bits`` per gap, a filler
  entry whenever a gap overflows), or of the dense tensor when that is smaller; 1-D tensors dense.

Each is registered here as a cost (:mod:`costs.registry`).
"""

from __future__ import annotations

import io
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from costs.registry import BYTE_UNITS, COUNT_UNITS, register_cost

if TYPE_CHECKING:  # torch loads on first use, so that CLIs answer --help at once
    import torch
    from torch import nn

__all__ = ["count_params", "count_nonzero_params", "count_macs", "layer_kind", "hooked_forward", "eval_mode",
           "model_device", "packed_weights", "serialized_size", "sparse_size"]


def packed_weights(module: nn.Module) -> Iterator[torch.Tensor]:
    """Weights of quantised modules, which keep them packed outside ``parameters()``."""
    import torch
    from torch import nn

    for attr in ("weight", "bias"):
        fn = getattr(module, attr, None)
        if callable(fn) and not isinstance(fn, nn.Module):
            try:
                t = fn()
            except Exception:  # noqa: BLE001 - a method named weight that is not a getter
                continue
            if isinstance(t, torch.Tensor):
                yield t


def _all_weights(model: nn.Module) -> Iterator[torch.Tensor]:
    seen: set[int] = set()
    for p in model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            yield p.detach()
    for m in model.modules():
        yield from packed_weights(m)


def count_params(model: nn.Module) -> int:
    """All stored weights (float parameters + packed quantised weights)."""
    return sum(t.numel() for t in _all_weights(model))


def count_nonzero_params(model: nn.Module) -> int:
    """Non-zero stored weights (for quantised tensors: non-zero after dequantisation)."""
    import torch

    total = 0
    for t in _all_weights(model):
        if t.is_quantized:
            t = t.dequantize()
        total += int(torch.count_nonzero(t))
    return total


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in eval mode inside the block; every module's own training flag restored after."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        yield model
    finally:
        for m, mode in modes.items():
            m.training = mode


def model_device(model: nn.Module, default: str) -> torch.device:
    import torch

    for t in model.parameters():
        return t.device
    return torch.device(default)


def layer_kind(m: nn.Module) -> str | None:
    """``"conv"`` or ``"linear"`` for a module that computes like one (float, quantised or a custom
    wrapper with the same attributes), else None."""
    if all(hasattr(m, a) for a in ("in_channels", "out_channels", "kernel_size", "groups")):
        return "conv"
    if hasattr(m, "in_features") and hasattr(m, "out_features"):
        return "linear"
    return None


def count_macs(model: nn.Module, *, image_size: int, in_channels: int = 3, device: str = "cpu") -> int:
    """Multiply-accumulates of Conv and Linear layers for one image (see the module docstring)."""
    total = 0

    def conv_hook(m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        k = 1
        for s in (m.kernel_size if isinstance(m.kernel_size, tuple) else (m.kernel_size,)):
            k *= int(s)
        total += out.numel() * (m.in_channels // m.groups) * k

    def linear_hook(m: nn.Module, _inp: Any, out: torch.Tensor) -> None:
        nonlocal total
        total += out.numel() * m.in_features

    hooked_forward(model, lambda _name, kind: conv_hook if kind == "conv" else linear_hook,
                   image_size=image_size, in_channels=in_channels, device=device)
    return int(total)


def hooked_forward(model: nn.Module, hook_for: Callable[[str, str], Callable[..., None]], *, image_size: int,
                   in_channels: int = 3, device: str = "cpu", dtype: Any = None) -> None:
    """One forward of a zero image (batch 1) through ``model`` in eval mode (restored after), with
    ``hook_for(name, kind)``'s forward hook on each innermost Conv/Linear layer (:func:`layer_kind`).

    Innermost only: a wrapper that copies its conv's attributes must not count twice; quantised
    Linear is not a leaf (it holds a parameter-less packed-params child). The counters of MACs and
    energy both walk the layers this way.
    """
    import torch

    handles = []
    for name, m in model.named_modules():
        kind = layer_kind(m)
        if kind is None or any(layer_kind(c) for c in m.modules() if c is not m):
            continue
        handles.append(m.register_forward_hook(hook_for(name or type(m).__name__, kind)))
    x = torch.zeros(1, in_channels, image_size, image_size, device=model_device(model, device), dtype=dtype)
    try:
        with eval_mode(model), torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()


def serialized_size(model: nn.Module) -> int:
    """Bytes of ``torch.save(model.state_dict())``."""
    import torch

    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.tell()


def _sparse_tensor_bits(t: torch.Tensor, index_bits: int) -> int:
    import torch

    value_bits = t.element_size() * 8
    if t.is_quantized:
        t = t.dequantize()  # zeros stay zeros; the stored width is still the int8 one
    dense = t.numel() * value_bits
    if t.dim() < 2:
        return dense
    pos = torch.nonzero(t.reshape(-1)).reshape(-1)
    if pos.numel() == 0:
        return 0
    gaps = torch.diff(pos, prepend=torch.tensor([-1], device=pos.device)) - 1
    fillers = int(torch.div(gaps, 2 ** index_bits, rounding_mode="floor").sum())
    sparse = (pos.numel() + fillers) * (value_bits + index_bits)
    return min(dense, sparse)


def sparse_size(model: nn.Module, *, index_bits: int = 8) -> int:
    """Bytes of a relative-index sparse encoding of the state dict (see the module docstring)."""
    import torch

    bits = 0
    for t in model.state_dict().values():
        if isinstance(t, torch.Tensor):
            bits += _sparse_tensor_bits(t.detach(), index_bits)
    for m in model.modules():  # packed quantised weights are not plain state-dict tensors
        for t in packed_weights(m):
            bits += _sparse_tensor_bits(t.detach(), index_bits)
    return (bits + 7) // 8


register_cost("params", unit="count", budget="params", units=COUNT_UNITS)(lambda m, s: count_params(m))
register_cost("nonzero_params", unit="count", budget="nonzero_params", units=COUNT_UNITS)(
    lambda m, s: count_nonzero_params(m))
register_cost("macs", unit="MAC", budget="macs", units=COUNT_UNITS)(
    lambda m, s: count_macs(m, image_size=s.image_size, in_channels=s.in_channels, device=s.device))
register_cost("size", unit="byte", budget="size", units=BYTE_UNITS)(lambda m, s: serialized_size(m))
register_cost("sparse_size", unit="byte")(lambda m, s: sparse_size(m, index_bits=s.index_bits))
