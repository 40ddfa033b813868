"""Int8 post-training static quantisation for CPU (torch.ao FX graph mode).

Weights become int8 (per-channel), activations int8 with scales calibrated on the context's
calibration batches; conv+BN+ReLU are fused. It runs alone or after any other step (pruned,
decomposed and student models are plain modules FX can trace), and it must be the last step:
a quantised model cannot be pruned, decomposed or fine-tuned further.

Applying (and rebuilding) sets ``torch.backends.quantized.engine`` to the step's backend: the
engine is process-global in torch and packed int8 weights must be used with the engine that
packed them.

Rebuilding needs no data: the structure comes from ``prepare_fx``/``convert_fx`` on the
uncompressed graph, and every scale and zero point is in the state dict.

torch.ao.quantization is deprecated upstream in favour of torchao's pt2e flow; it is still the
only int8 path shipped inside torch 2.14 and gives real int8 kernels (fbgemm/x86 backends).
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import torch
from torch import nn

from spaces.checks import check_no_extra
from spaces.base import Context, Params, Record, Space, Transformed
from spaces.errors import SpaceError
from spaces.registry import register_space

BACKENDS = ("x86", "fbgemm", "qnnpack", "onednn")


def is_quantized(model: nn.Module) -> bool:
    """Whether ``model`` holds quantised modules (then it can only be evaluated, on CPU)."""
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") or
               type(m).__module__.startswith("torch.ao.nn.intrinsic.quantized") for m in model.modules())


def supported_engines() -> list[str]:
    """The quantised engines this torch build (and CPU) offers."""
    return list(torch.backends.quantized.supported_engines)


def check_backend(backend: str) -> None:
    """Raise a SpaceError unless this torch build has the int8 ``backend``."""
    engines = supported_engines()
    if backend not in BACKENDS:
        raise SpaceError(f"quant.int8: unknown backend {backend!r}; known: {list(BACKENDS)}")
    if backend not in engines:
        raise SpaceError(f"quant.int8: backend {backend!r} is not supported by this torch build "
                         f"(supported: {[e for e in engines if e != 'none']})")


@register_space("quant.int8")
class Int8Quantization(Space):
    """Int8 PTQ. Params: ``{"backend": "x86", "per_channel": true, "calibration_batches": 8}``.

    Args:
        backend: Default quantised engine (``x86`` or ``fbgemm`` on Intel/AMD, ``qnnpack`` on ARM).
        calibration_batches: How many context batches calibrate the activation observers.
    """

    aliases = ("quant", "int8")
    post_training = True

    def __init__(self, *, backend: str = "x86", calibration_batches: int = 8) -> None:
        if backend not in BACKENDS:
            raise SpaceError(f"quant.int8: unknown backend {backend!r}; known: {list(BACKENDS)}")
        self.backend = backend
        self.calibration_batches = int(calibration_batches)

    def suggest(self, trial: Any, model: nn.Module, context: Context) -> Params:
        per_channel = trial.suggest_categorical(self.key("per_channel"), [True, False])
        return {"backend": self.backend, "per_channel": per_channel,
                "calibration_batches": self.calibration_batches}

    def trial_params(self, params: Params, model: nn.Module, context: Context) -> dict[str, Any]:
        return {self.key("per_channel"): bool(params.get("per_channel", True))}

    def validate(self, params: Params) -> tuple[str, bool, int]:
        check_no_extra(self.name, params, ["backend", "per_channel", "calibration_batches"])
        backend = params.get("backend", self.backend)
        check_backend(backend)
        per_channel = params.get("per_channel", True)
        if not isinstance(per_channel, bool):
            raise SpaceError(f"quant.int8: per_channel must be true/false, got {per_channel!r}")
        n = params.get("calibration_batches", self.calibration_batches)
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise SpaceError(f"quant.int8: calibration_batches must be a positive integer, got {n!r}")
        return backend, per_channel, n

    def transform(self, model: nn.Module, params: Params, context: Context, *,
                  record: Record | None = None, structure_only: bool = False) -> Transformed:
        backend, per_channel, n = self.validate(params)
        if str(context.device) != "cpu" or any(p.device.type != "cpu" for p in model.parameters()):
            raise SpaceError(f"quant.int8: int8 kernels run on CPU only; the model/context is on "
                             f"{context.device!r}")
        if is_quantized(model):
            raise SpaceError("quant.int8: the model is already quantised")
        from torch.ao.quantization import QConfig, get_default_qconfig_mapping
        from torch.ao.quantization.observer import HistogramObserver, MinMaxObserver
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        torch.backends.quantized.engine = backend
        qmap = get_default_qconfig_mapping(backend)  # keeps fixed-qparams ops (sigmoid...) right
        if not per_channel:
            qmap.set_global(QConfig(
                activation=HistogramObserver.with_args(reduce_range=backend in ("x86", "fbgemm")),
                weight=MinMaxObserver.with_args(dtype=torch.qint8, qscheme=torch.per_tensor_symmetric)))
        new = copy.deepcopy(model).eval()
        example = (context.example_input(1),)
        # Scales are data: calibrate whenever real weights are wanted, record or not (the record
        # holds no scales; a structure-only build gets them from the state dict instead).
        batches = [] if structure_only else list(context.calibration_batches("quant.int8 calibration"))[:n]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao deprecation and uncalibrated-observer notes
            try:
                prepared = prepare_fx(new, qmap, example_inputs=example)
            except Exception as exc:  # noqa: BLE001 - FX tracing errors come in every type
                raise SpaceError(f"quant.int8: FX cannot trace {type(model).__name__}: "
                                 f"{type(exc).__name__}: {str(exc)[:300]}") from exc
            with torch.no_grad():
                for x, _ in batches:
                    prepared(x)
            quantized = convert_fx(prepared)
        return Transformed(quantized, {"backend": backend})
