"""Save and reload compressed models as base architecture + plan + state dict.

The file is one ``torch.save`` of plain types (``{"format": ..., "plan": <JSON str>,
"state_dict": {...}}``), so it loads with ``torch.load(weights_only=True)``: no pickled classes,
no code executed on load (torch-pruning's README pickles whole modules instead). Rebuilding is
``create_model(base) -> replay the plan -> load_state_dict``. TorchScript (trace) is written
where the model allows it; failures are reported, not raised, since the plan file is the
primary artefact.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from spaces.base import Plan
from spaces.errors import SpaceError

FORMAT = "rsc-compressed/1"


def save_compressed(path: str | os.PathLike, model: nn.Module, plan: Plan, *,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write ``plan`` + ``model.state_dict()`` (+ plain-JSON ``extra``, e.g. metrics) to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # keep the state dict itself (not a copy as a plain dict): its ``_metadata`` carries the module
    # versions that quantised layers need to load their packed weights back
    state = model.state_dict()
    for k, v in state.items():
        if isinstance(v, torch.Tensor):
            state[k] = v.detach().cpu()
    blob = {"format": FORMAT, "plan": plan.to_json(indent=None), "state_dict": state}
    if extra:
        import json

        blob["extra"] = json.dumps(extra)
    tmp = path.with_suffix(path.suffix + ".tmp")
    torch.save(blob, tmp)
    os.replace(tmp, path)
    return path


def load_compressed(path: str | os.PathLike) -> tuple[nn.Module, Plan]:
    """Rebuild the model saved by :func:`save_compressed` (eval mode, on CPU).

    Raises:
        SpaceError: missing file, not our format, or weights that do not match the plan.
    """
    from spaces.compose import build_from_plan

    path = Path(path)
    if not path.is_file():
        raise SpaceError(f"compressed model file not found: {path}")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        raise SpaceError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise SpaceError(f"{path} is not a compressed model file (format {FORMAT!r})")
    plan = Plan.from_json(blob["plan"])
    return build_from_plan(plan, blob["state_dict"]), plan


def export_torchscript(model: nn.Module, path: str | os.PathLike, *, image_size: int) -> str | None:
    """Trace ``model`` to TorchScript at ``path``; returns None on success, else why it failed."""
    x = torch.zeros(1, 3, image_size, image_size)
    model = model.eval()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(model, x)
            traced.save(str(path))
        return None
    except Exception as exc:  # noqa: BLE001 - tracing fails in many ways
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"


def export_onnx(model: nn.Module, path: str | os.PathLike, *, image_size: int) -> str | None:
    """Export to ONNX at ``path`` (input ``image`` with a dynamic batch axis, output ``logits``).

    Returns None on success, else why not: the ``onnx``/``onnxscript`` packages missing (the
    ``export`` extra installs them) or a model the exporter cannot take (int8 models of
    ``torch.ao`` have packed weights that ``torch.export`` does not handle; ship their plan file).
    """
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as exc:
        return f"the {exc.name} package is not installed (pip install 'rscompress[export]')"
    import contextlib
    import io

    if any(".quantized" in type(m).__module__ for m in model.modules()):
        return "int8 models do not export: torch.export cannot trace torch.ao's packed weights"
    x = torch.zeros(2, 3, image_size, image_size)
    batch = torch.export.Dim("batch", min=1)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            torch.onnx.export(model.eval(), (x,), str(path), dynamo=True, input_names=["image"],
                              output_names=["logits"], dynamic_shapes=({0: batch},), verbose=False,
                              external_data=False)  # one self-contained file (weights inside; < 2 GB)
        return None
    except Exception as exc:  # noqa: BLE001
        import re

        Path(path).unlink(missing_ok=True)
        first = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).splitlines()[0] if str(exc) else ""
        return f"{type(exc).__name__}: {first}"
