"""The runtimes a target times models in besides eager PyTorch: TorchScript and onnxruntime.

:func:`traced` freezes a traced TorchScript module that :func:`costs.timing.compare_latency` times
like any module; :func:`onnxruntime_latency` exports each model to ONNX (opset :data:`ONNX_OPSET`)
and times its inference session, interleaved and after warm-up like the torch runtimes. A model a
runtime cannot take (int8 ``torch.ao`` models: no ONNX export, no CUDA kernels; a failed trace or
export) raises :class:`costs.errors.TargetUnsupported` naming the model and the target. ``target``
arguments are :class:`costs.hardware.Target` objects (read for their spec, device, batch, threads,
memory format and provider).
"""

from __future__ import annotations

import contextlib
import copy
import io
import statistics
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from costs.counting import eval_mode
from costs.errors import TargetUnsupported
from costs.machine import first_line
from costs.timing import in_memory_format
from rsc.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["ONNX_OPSET", "is_int8", "on_device", "traced", "Frozen", "require_onnxruntime", "export_onnx",
           "onnxruntime_latency"]

#: The lowest opset torch 2.14's ONNX exporter implements: asked for 17 it exports 18 and converts down,
#: which fails on ResNet-18 (onnx's version converter: "No initializer or constant input to node").
ONNX_OPSET = 18


def is_int8(model: nn.Module) -> bool:
    """Whether ``model`` holds int8 ``torch.ao`` modules."""
    return any(".quantized" in type(m).__module__ for m in model.modules())


def on_device(target: Any, name: str, model: nn.Module) -> nn.Module:
    """``model`` itself on the CPU; a copy on CUDA (int8 models refused: their kernels are CPU-only)."""
    if target.device == "cpu":
        return model
    if is_int8(model):
        raise TargetUnsupported(f"model {name!r} is int8 (torch.ao kernels run on the CPU only): target "
                                f"{target.spec} cannot time it")
    return copy.deepcopy(model).to(target.device)


def traced(target: Any, name: str, model: nn.Module, settings: Any, shape: Sequence[int] | None = None) -> Any:
    """``torch.jit.freeze(torch.jit.trace(model))`` in the target's memory format and batch."""
    import torch

    model = in_memory_format(model, target.memory_format)
    x = settings.example_input(target.batch, shape)
    modes = {m: m.training for m in model.modules()}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            model.eval()
            return Frozen(torch.jit.freeze(torch.jit.trace(model, x, check_trace=False)))
    except Exception as exc:  # noqa: BLE001 - tracing fails in many ways
        raise TargetUnsupported(f"model {name!r} does not run on target {target.spec}: torch.jit.trace/freeze "
                                f"failed: {first_line(exc)}") from None
    finally:
        for m, mode in modes.items():
            m.training = mode


class Frozen:
    """A frozen TorchScript module as :func:`costs.timing.compare_latency` times modules: callable, with
    ``modules()``/``parameters()``/``to()``/``eval()`` (a frozen module has no ``training`` flag and no parameters
    left), and shared rather than copied (it is never changed)."""

    def __init__(self, scripted: Any) -> None:
        self.scripted = scripted
        self.training = False

    def __call__(self, x: Any) -> Any:
        return self.scripted(x)

    def modules(self) -> Any:
        return iter((self,))

    def parameters(self) -> Any:
        return iter(())

    def to(self, *args: Any, **kwargs: Any) -> Frozen:
        return self

    def eval(self) -> Frozen:
        return self

    def __deepcopy__(self, memo: dict) -> Frozen:
        return self


def require_onnxruntime(target: Any) -> Any:
    """The onnxruntime module, or a ConfigError naming the missing package."""
    try:
        import onnx  # noqa: F401 - the exporter's dependencies
        import onnxruntime as ort
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"target {target.spec}: runtime onnxruntime needs the {exc.name} package "
                          "(pip install 'rscompress[export]')") from None
    return ort


def export_onnx(target: Any, name: str, model: nn.Module, x: Any, path: Path) -> None:
    """Export ``model`` on input ``x`` to ``path`` for timing (TargetUnsupported where it cannot)."""
    import torch

    if is_int8(model):
        raise TargetUnsupported(f"model {name!r} is int8: torch.ao's packed weights do not export to ONNX, so "
                                f"target {target.spec} cannot time it (use runtime=eager or torchscript on the cpu)")
    if any(p.device.type != "cpu" for p in model.parameters()):
        model = copy.deepcopy(model).cpu()
    try:
        with (warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), torch.no_grad(),
              eval_mode(model)):
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (x,), str(path), opset_version=ONNX_OPSET, input_names=["image"],
                              output_names=["logits"], external_data=False, verbose=False)
    except Exception as exc:  # noqa: BLE001 - the exporter fails in many ways
        raise TargetUnsupported(f"model {name!r} does not export to ONNX for target {target.spec}: "
                                f"{first_line(exc)}") from None


def onnxruntime_latency(target: Any, models: Mapping[str, nn.Module], settings: Any,
                        shapes: Mapping[str, Sequence[int]] | None = None) -> dict[str, float]:
    """Median latency (ms) of each model in an onnxruntime session on ``target``, interleaved."""
    ort = require_onnxruntime(target)
    feeds = {}
    sessions = {}
    with tempfile.TemporaryDirectory(prefix="rsc-target-") as tmp:
        for i, (name, model) in enumerate(models.items()):
            path = Path(tmp) / f"model-{i}.onnx"
            x = settings.example_input(target.batch, (shapes or {}).get(name)).cpu().contiguous()
            feeds[name] = x.numpy()
            export_onnx(target, name, model, x, path)
            options = ort.SessionOptions()
            options.intra_op_num_threads = target.threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.log_severity_level = 3
            session = ort.InferenceSession(str(path), sess_options=options, providers=[target.provider])
            sessions[name] = (session, session.get_inputs()[0].name)
    times: dict[str, list[float]] = {name: [] for name in sessions}
    for _ in range(settings.warmup):
        for name, (session, inp) in sessions.items():
            session.run(None, {inp: feeds[name]})
    for _ in range(settings.repeats):
        for name, (session, inp) in sessions.items():
            t0 = time.perf_counter()
            session.run(None, {inp: feeds[name]})  # outputs come back as host arrays: synchronised
            times[name].append((time.perf_counter() - t0) * 1000.0)
    return {name: statistics.median(v) for name, v in times.items()}
